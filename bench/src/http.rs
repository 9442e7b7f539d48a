//! The HTTP/JSON API (`http.sock`, docs/HTTP.md) against a bare hyper
//! server on a Unix socket that answers every request with the bytes tokend
//! answers a token request with (same status, same headers, same body; hyper
//! adds `date` and `content-length` to both). The bare server runs as its own
//! process, like tokend (the bench's hidden `http-server` mode).
//!
//! Both are driven by the same minimal blocking client: one write of a fixed
//! request per iteration, then the response read into a reused buffer, its
//! status and `content-length` checked, nothing parsed further. The client
//! is deliberately cheap and identical for both sides, so the ratio measures
//! the servers.

use crate::measure::Endpoint;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The request line and headers the client sends for credential `name`
/// (fixed width names, so every request has the same size).
pub fn request_bytes(name: &str) -> Vec<u8> {
    format!("GET /v1/credentials/{name}/token HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// One captured answer: the header lines to repeat (without `date` and
/// `content-length`, which hyper writes itself) and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// Asks `socket` once for `name`'s token and keeps what came back.
    pub fn capture(socket: &Path, name: &str) -> Result<Answer, String> {
        let mut conn = HttpConn::connect(socket)?;
        conn.stream
            .write_all(&request_bytes(name))
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        let (status, head_len, body_len) = conn.read_response()?;
        let head = std::str::from_utf8(&conn.buf[..head_len])
            .map_err(|_| "the answer's head is not UTF-8".to_string())?;
        let headers = head
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .filter(|(k, _)| k != "date" && k != "content-length")
            .collect();
        Ok(Answer {
            status,
            headers,
            body: conn.buf[head_len..head_len + body_len].to_vec(),
        })
    }

    /// The file the server process reads: status, header lines, a blank
    /// line, the body.
    fn write(&self, path: &Path) -> Result<(), String> {
        let mut text = format!("{}\n", self.status).into_bytes();
        for (k, v) in &self.headers {
            text.extend_from_slice(format!("{k}: {v}\n").as_bytes());
        }
        text.push(b'\n');
        text.extend_from_slice(&self.body);
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn read(path: &Path) -> Result<Answer, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let split = text
            .windows(2)
            .position(|w| w == b"\n\n")
            .ok_or("no blank line in the answer file")?;
        let head = String::from_utf8_lossy(&text[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("no status in the answer file")?;
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Answer {
            status,
            headers,
            body: text[split + 2..].to_vec(),
        })
    }
}

/// Runs the bare hyper server on `socket` until killed (the child-process
/// side), answering every request with the answer in `answer_file`.
pub fn serve(socket: &Path, answer_file: &Path) -> Result<(), String> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::header::{HeaderName, HeaderValue};

    let answer = Answer::read(answer_file)?;
    let status = hyper::StatusCode::from_u16(answer.status).map_err(|e| e.to_string())?;
    let mut headers = hyper::HeaderMap::new();
    for (k, v) in &answer.headers {
        let name = HeaderName::try_from(k.as_str()).map_err(|e| e.to_string())?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    let body = Bytes::from(answer.body);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept failed: {e}"))?;
            let (headers, body) = (headers.clone(), body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let mut response = hyper::Response::new(Full::new(body.clone()));
                    *response.status_mut() = status;
                    *response.headers_mut() = headers.clone();
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The bare HTTP server process; killed when dropped.
pub struct BareServer {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl BareServer {
    /// Starts this executable's hidden `http-server` mode answering `answer`
    /// and waits until it listens.
    pub fn start(answer: &Answer) -> Result<BareServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("tokend-bench-http")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let socket = dir.path().join("http.sock");
        let file = dir.path().join("answer");
        answer.write(&file)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("http-server")
            .arg(&socket)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the bare HTTP server: {e}"))?;
        let server = BareServer {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if UnixStream::connect(&server.socket).is_ok() {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err("the bare HTTP server did not start".into())
    }
}

impl BareServer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where an HTTP server listens.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// An HTTP server asked by the minimal client.
pub struct HttpEndpoint {
    pub target: Target,
    /// One request per credential, cycled through.
    pub requests: Vec<Vec<u8>>,
    /// Every answer must be a 200 with a body of this length.
    pub body_len: usize,
}

impl HttpEndpoint {
    /// Token requests for `names` on the HTTP API at `socket`.
    pub fn new(socket: &Path, names: &[String], body_len: usize) -> HttpEndpoint {
        HttpEndpoint {
            target: Target::Unix(socket.to_path_buf()),
            requests: names.iter().map(|n| request_bytes(n)).collect(),
            body_len,
        }
    }

    /// `GET path` at `target`, over and over (`Host` as a client that was
    /// given the target's URL sends it).
    pub fn get(target: Target, path: &str, body_len: usize) -> HttpEndpoint {
        let host = match &target {
            Target::Unix(_) => "localhost".to_string(),
            Target::Tcp(addr) => addr.to_string(),
        };
        HttpEndpoint {
            target,
            requests: vec![format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()],
            body_len,
        }
    }
}

/// A connected stream of either kind.
pub enum Stream {
    Unix(UnixStream),
    Tcp(std::net::TcpStream),
}

impl Stream {
    pub fn connect(target: &Target) -> Result<Stream, String> {
        let fail = |e: std::io::Error| format!("{target}: {e}");
        Ok(match target {
            Target::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(fail)?),
            Target::Tcp(addr) => {
                let stream = std::net::TcpStream::connect(addr).map_err(fail)?;
                stream.set_nodelay(true).map_err(fail)?;
                Stream::Tcp(stream)
            }
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// A kept-alive connection and its reused read buffer.
pub struct HttpConn {
    stream: Stream,
    buf: Vec<u8>,
    /// How much of `buf` holds the response being read.
    len: usize,
}

impl HttpConn {
    fn connect(socket: &Path) -> Result<HttpConn, String> {
        HttpConn::to(&Target::Unix(socket.to_path_buf()))
    }

    fn to(target: &Target) -> Result<HttpConn, String> {
        Ok(HttpConn {
            stream: Stream::connect(target)?,
            buf: vec![0; 32 * 1024],
            len: 0,
        })
    }

    /// Reads one whole response into `buf`: (status, head length including
    /// the blank line, body length). No pipelining, so nothing follows it.
    fn read_response(&mut self) -> Result<(u16, usize, usize), String> {
        self.len = 0;
        let mut searched: usize = 0;
        let head_len = loop {
            self.fill()?;
            let from = searched.saturating_sub(3);
            if let Some(at) = self.buf[from..self.len]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
            {
                break from + at + 4;
            }
            searched = self.len;
            if searched > 16 * 1024 {
                return Err("an HTTP head over 16 KiB".into());
            }
        };
        let head = &self.buf[..head_len];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse().ok())
            .ok_or("no HTTP status line")?;
        let body_len = content_length(head).ok_or("no content-length")?;
        while self.len < head_len + body_len {
            self.fill()?;
        }
        Ok((status, head_len, body_len))
    }

    /// One `read` appended to the filled part of `buf` (grown when full).
    fn fill(&mut self) -> Result<(), String> {
        if self.len == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.len..]) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

/// The value of the `content-length` header in `head`.
fn content_length(head: &[u8]) -> Option<usize> {
    const NAME: &[u8] = b"content-length:";
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            std::str::from_utf8(&line[NAME.len()..])
                .ok()?
                .trim()
                .parse()
                .ok()
        } else {
            None
        }
    })
}

impl Endpoint for HttpEndpoint {
    type Conn = HttpConn;

    fn connect(&self) -> Result<HttpConn, String> {
        HttpConn::to(&self.target)
    }

    fn request(&self, conn: &mut HttpConn, i: usize) -> Result<(), String> {
        let request = &self.requests[i % self.requests.len()];
        conn.stream
            .write_all(request)
            .map_err(|e| format!("{}: {e}", self.target))?;
        let (status, head_len, body_len) = conn.read_response()?;
        if status != 200 || body_len != self.body_len {
            return Err(format!(
                "{}: answered {status} with {body_len} bytes, expected 200 with {}: {}",
                self.target,
                self.body_len,
                String::from_utf8_lossy(&conn.buf[head_len..head_len + body_len.min(300)])
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_content_length() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: x\r\nContent-Length: 1077\r\n\r\n";
        assert_eq!(content_length(head), Some(1077));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\n\r\n"), None);
    }
}
