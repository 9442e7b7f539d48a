//! The API the proxy benchmark fronts: a bare hyper HTTP/1.1 server on a
//! loopback port, its own process (the bench's hidden `upstream-server`
//! mode), answering every request with 1 KiB at once — or, at `/work`,
//! after [`WORK`] (an API that does something, as real ones do), or, at
//! `/slow`, a 2 MiB body in 16 KiB pieces every 50 ms, for the
//! slow-download figure.

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The body of every fast answer.
pub const BODY_LEN: usize = 1024;
/// The slow download: this many pieces of [`PIECE`] bytes, one per [`EVERY`].
const PIECES: usize = 128;
const PIECE: usize = 16 * 1024;
const EVERY: Duration = Duration::from_millis(50);
/// What `/work` takes before it answers: a fast real API's time.
pub const WORK: Duration = Duration::from_millis(1);

/// Runs the server until killed (the child-process side): binds
/// 127.0.0.1:0 and writes the port it got to `port_file`.
pub fn serve(port_file: &std::path::Path) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        // Written whole, then renamed: the bench never reads half a number.
        let partial = port_file.with_extension("partial");
        std::fs::write(&partial, port.to_string()).map_err(|e| e.to_string())?;
        std::fs::rename(&partial, port_file).map_err(|e| e.to_string())?;
        let fast = Bytes::from(vec![b'a'; BODY_LEN]);
        loop {
            let (stream, _) = listener
                .accept()
                .await
                .map_err(|e| format!("accept: {e}"))?;
            let _ = stream.set_nodelay(true);
            let fast = fast.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let work = request.uri().path() == "/work";
                        let body = if request.uri().path() == "/slow" {
                            Either::Slow(Slow::new())
                        } else {
                            Either::Fast(Full::new(fast.clone()))
                        };
                        async move {
                            if work {
                                tokio::time::sleep(WORK).await;
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A fast answer or the slow download.
enum Either {
    Fast(Full<Bytes>),
    Slow(Slow),
}

impl Body for Either {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Either::Fast(full) => Pin::new(full).poll_frame(cx),
            Either::Slow(slow) => Pin::new(slow).poll_frame(cx),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Either::Fast(full) => full.size_hint(),
            Either::Slow(_) => hyper::body::SizeHint::with_exact((PIECES * PIECE) as u64),
        }
    }
}

/// [`PIECES`] pieces, one per tick.
struct Slow {
    left: usize,
    tick: tokio::time::Interval,
}

impl Slow {
    fn new() -> Slow {
        Slow {
            left: PIECES,
            tick: tokio::time::interval(EVERY),
        }
    }
}

impl Body for Slow {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.tick.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                self.left -= 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b's'; PIECE])))))
            }
        }
    }
}

/// The upstream process; killed when dropped.
pub struct Upstream {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Upstream {
    pub fn start() -> Result<Upstream, String> {
        let dir = tempfile::Builder::new()
            .prefix("tokend-bench-upstream")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let port_file = dir.path().join("port");
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .arg("upstream-server")
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the upstream server: {e}"))?;
        let mut upstream = Upstream {
            child,
            port: 0,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.parse().ok())
            {
                upstream.port = port;
                return Ok(upstream);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err("the upstream server did not start".into())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
