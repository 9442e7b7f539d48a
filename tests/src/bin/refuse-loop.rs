//! Test helper: a hostile local user looping requests the daemon refuses,
//! each naming a credential of about 60 KiB (12 KiB over HTTP, whose head
//! is capped at 16 KiB) that starts with a forged log line.
//!
//! `refuse-loop SOCKET HTTP_SOCKET SECONDS`: for SECONDS, alternates on
//! the main socket `remove` (permission denied for a non-admin) and
//! `token` (unknown credential), over one connection while the daemon
//! keeps it open, and on the HTTP socket `GET …/NAME/token` (unknown) and
//! `POST /v1/credentials/up/refresh` (permission denied for a non-owner).
//! Then prints `socket=N http=M`: the refusals it received.
//!
//! Unix only, like the tests that use it; elsewhere it only says so.

#[cfg(unix)]
use std::io::{Read, Write};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
#[cfg(unix)]
use std::time::{Duration, Instant};
#[cfg(unix)]
use tokend_proto::{Hello, HelloReply, Request, Response, read_response_frame, write_frame};

/// What every name starts with: a newline and a line the log must never show.
#[cfg(unix)]
const FORGED: &str = "x\n2000-01-01T00:00:00Z  INFO FORGED credential added";

#[cfg(unix)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, http, seconds] = args.as_slice() else {
        die("usage: refuse-loop SOCKET HTTP_SOCKET SECONDS");
    };
    let seconds: u64 = seconds.parse().unwrap_or_else(|_| die("SECONDS: a number"));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let name = format!("{FORGED}{}", "a".repeat(60 * 1024));
    let http_name = format!("x%0A2000-FORGED{}", "a".repeat(12 * 1024));
    let (mut on_socket, mut on_http) = (0u64, 0u64);
    let mut conn = None;
    while Instant::now() < deadline {
        let stream = match conn.take() {
            Some(stream) => stream,
            None => greet(socket),
        };
        conn = refused(stream, &name, &mut on_socket);
        on_http += u64::from(http_refused(
            http,
            &format!("GET /v1/credentials/{http_name}/token"),
        ));
        on_http += u64::from(http_refused(http, "POST /v1/credentials/up/refresh"));
    }
    println!("socket={on_socket} http={on_http}");
}

/// A connection past the hello.
#[cfg(unix)]
fn greet(socket: &str) -> UnixStream {
    let mut s = UnixStream::connect(socket).unwrap_or_else(|e| die(&format!("connect: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write_frame(&mut s, &Hello::current()).unwrap_or_else(|e| die(&format!("hello: {e}")));
    let reply: HelloReply =
        read_response_frame(&mut s).unwrap_or_else(|e| die(&format!("hello: {e}")));
    if !reply.accepted {
        die(&format!("refused at hello: {}", reply.message));
    }
    s
}

/// Two refused requests; the connection back if it is still open.
#[cfg(unix)]
fn refused(mut s: UnixStream, name: &str, count: &mut u64) -> Option<UnixStream> {
    let requests = [
        Request::Remove { name: name.into() },
        Request::Token {
            name: name.into(),
            min_valid_secs: 0,
        },
    ];
    for request in requests {
        write_frame(&mut s, &request).ok()?;
        match read_response_frame::<Response>(&mut s).ok()? {
            Response::Error(_) => *count += 1,
            other => die(&format!("not refused: {other:?}")),
        }
    }
    Some(s)
}

/// One HTTP request on its own connection; true if answered 4xx.
#[cfg(unix)]
fn http_refused(http: &str, request_line: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(http) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let head = format!(
        "{request_line} HTTP/1.1\r\nHost: tokend\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 4")
}

#[cfg(unix)]
fn die(message: &str) -> ! {
    eprintln!("refuse-loop: {message}");
    std::process::exit(2)
}

#[cfg(not(unix))]
fn main() {
    eprintln!("refuse-loop: Unix only");
    std::process::exit(2)
}
