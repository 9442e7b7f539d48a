//! The blocking client never hangs on a daemon that takes the connection but
//! does not answer: the hello and every call fail with `Error::Timeout`.
#![cfg(unix)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokend_client::{Client, Error};
use tokend_proto::{Hello, HelloReply, PROTOCOL_VERSION, Request, read_frame, write_frame};

const QUICK: Duration = Duration::from_millis(300);

/// A socket path of its own in the temp directory, removed on drop.
struct TempSocket(PathBuf);

impl TempSocket {
    fn new(tag: &str) -> TempSocket {
        let path =
            std::env::temp_dir().join(format!("tokend-client-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempSocket(path)
    }
}

impl Drop for TempSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fake daemon: accepts one connection, runs `serve` on it, then keeps it
/// open (silent) until the test ends.
fn fake_daemon(socket: &TempSocket, serve: fn(&mut UnixStream)) {
    let listener = UnixListener::bind(&socket.0).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        serve(&mut stream);
        std::thread::sleep(Duration::from_secs(60));
    });
}

fn assert_timed_out(
    result: Result<impl std::fmt::Debug, Error>,
    socket: &TempSocket,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let err = result.expect_err("the call must fail");
    assert!(
        matches!(err, Error::Timeout { .. }),
        "expected a timeout, got {err:?}"
    );
    assert_eq!(err.exit_code(), 3);
    let message = err.to_string();
    assert!(
        message.contains(&socket.0.display().to_string())
            && message.contains("did not answer within 0.3 s"),
        "{message}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[test]
fn a_daemon_that_never_answers_the_hello_fails_the_connect_in_time() {
    let socket = TempSocket::new("hello");
    fake_daemon(&socket, |_| {});
    let started = Instant::now();
    let result = Client::connect_with_timeout(&socket.0, QUICK);
    assert_timed_out(result, &socket, started);
}

#[test]
fn a_daemon_that_never_answers_a_call_fails_it_in_time_and_the_client_is_not_reused() {
    let socket = TempSocket::new("call");
    fake_daemon(&socket, |stream| {
        let _: Hello = read_frame(stream).unwrap();
        let reply = HelloReply {
            version: PROTOCOL_VERSION,
            accepted: true,
            message: "fake".into(),
        };
        write_frame(stream, &reply).unwrap();
        let _: Request = read_frame(stream).unwrap();
    });
    let mut client = Client::connect(&socket.0).unwrap();
    assert_eq!(client.timeout(), tokend_client::DEFAULT_TIMEOUT);
    client.set_timeout(QUICK);
    let started = Instant::now();
    assert_timed_out(client.token("up"), &socket, started);
    let again = client
        .token("up")
        .expect_err("a timed-out connection is not reused");
    assert!(matches!(again, Error::Connection(_)), "{again:?}");
}
