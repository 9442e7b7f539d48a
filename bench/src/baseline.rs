//! The baseline: a bare tokio Unix-socket server that answers each 4-byte
//! length-prefixed frame with a frame of the size tokend would send (a hello
//! reply first, then token replies), and a minimal blocking client for it.
//! It runs as its own process, like tokend, so `tokend / baseline` is what
//! tokend and its client library add over the cost of local IPC itself.

use crate::measure::Endpoint;
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokend_proto::{Hello, HelloReply, PROTOCOL_VERSION, Request, Response, Secret, TokenReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The frames of one token exchange, sized exactly as tokend's.
#[derive(Debug, Clone)]
pub struct Frames {
    pub hello: Vec<u8>,
    pub hello_reply_len: usize,
    pub request: Vec<u8>,
    pub reply_len: usize,
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

impl Frames {
    /// Encodes the real messages tokend exchanges for a cached token of
    /// `token` (credential `name`, as served by the daemon; both are built
    /// from the same workspace version, so the hello reply matches too).
    pub fn of(name: &str, token: &str) -> Frames {
        let hello_reply = HelloReply {
            version: PROTOCOL_VERSION,
            accepted: true,
            message: env!("CARGO_PKG_VERSION").to_string(),
        };
        let reply = Response::Token(TokenReply {
            token: Secret::new(token),
            expires_at: None,
            generation: 1,
        });
        let request = Request::Token {
            name: name.into(),
            min_valid_secs: 0,
        };
        Frames {
            hello: frame(enc(&Hello::current())),
            hello_reply_len: enc(&hello_reply).len(),
            request: frame(enc(&request)),
            reply_len: enc(&reply).len(),
        }
    }
}

fn enc<T: serde::Serialize>(value: &T) -> Vec<u8> {
    tokend_proto::encode(value).expect("fixed messages encode")
}

/// Runs the echo server on `socket` until killed (the child-process side).
pub fn serve(socket: &Path, hello_reply_len: usize, reply_len: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
        let hello_reply: &'static [u8] = frame(vec![0; hello_reply_len]).leak();
        let reply: &'static [u8] = frame(vec![0; reply_len]).leak();
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept failed: {e}"))?;
            tokio::spawn(answer(stream, hello_reply, reply));
        }
    })
}

/// Answers one connection: the hello reply to the first frame, then a
/// token-sized reply to each frame, through a buffered reader as tokend does.
async fn answer(stream: tokio::net::UnixStream, hello_reply: &[u8], reply: &[u8]) {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut body = Vec::new();
    let mut answer = hello_reply;
    loop {
        let mut prefix = [0u8; 4];
        if read.read_exact(&mut prefix).await.is_err() {
            return;
        }
        body.resize(u32::from_be_bytes(prefix) as usize, 0);
        if read.read_exact(&mut body).await.is_err() || write.write_all(answer).await.is_err() {
            return;
        }
        answer = reply;
    }
}

/// The echo server process; killed when dropped.
pub struct EchoServer {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl EchoServer {
    /// Starts this executable's hidden `echo-server` mode and waits until it listens.
    pub fn start(frames: &Frames) -> Result<EchoServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("tokend-bench-echo")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let socket = dir.path().join("echo.sock");
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("echo-server")
            .arg(&socket)
            .arg(frames.hello_reply_len.to_string())
            .arg(frames.reply_len.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the echo server: {e}"))?;
        let server = EchoServer {
            child,
            socket,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err("the echo server did not start".into())
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The baseline client: one write per frame, one buffered read per reply,
/// a reused body buffer. The floor any client could reach.
pub struct EchoEndpoint {
    pub socket: PathBuf,
    pub frames: Frames,
}

pub struct EchoConn {
    stream: BufReader<UnixStream>,
    body: Vec<u8>,
}

impl EchoConn {
    fn round_trip(&mut self, frame: &[u8], expect: usize) -> Result<(), String> {
        let io = |e: std::io::Error| format!("echo server: {e}");
        self.stream.get_mut().write_all(frame).map_err(io)?;
        let mut prefix = [0u8; 4];
        self.stream.read_exact(&mut prefix).map_err(io)?;
        let len = u32::from_be_bytes(prefix) as usize;
        if len != expect {
            return Err(format!("echo server sent {len} bytes, expected {expect}"));
        }
        self.body.resize(len, 0);
        self.stream.read_exact(&mut self.body).map_err(io)
    }
}

impl Endpoint for EchoEndpoint {
    type Conn = EchoConn;

    fn connect(&self) -> Result<EchoConn, String> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| format!("echo server: {e}"))?;
        let mut conn = EchoConn {
            stream: BufReader::new(stream),
            body: Vec::new(),
        };
        conn.round_trip(&self.frames.hello, self.frames.hello_reply_len)?;
        Ok(conn)
    }

    fn request(&self, conn: &mut EchoConn, _i: usize) -> Result<(), String> {
        conn.round_trip(&self.frames.request, self.frames.reply_len)
    }
}
