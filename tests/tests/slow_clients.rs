//! Slow, idle and surplus clients (docs/DESIGN.md §5: "a malformed, oversized or
//! slow client loses only its own connection"): hundreds of idle
//! connections and a byte-a-second trickler do not hold up anyone else, the
//! trickler is cut off by the frame timeout, and a client over the
//! connection limit is told why while the others keep working.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use tokend_proto::{Hello, HelloReply, Request, Response, read_frame, write_frame};
use tokend_tests::*;

const TOKEN: &str = "slow-clients-e2e-token";
const FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// A raw connection that has completed the hello.
fn greeted(d: &Daemon) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write_frame(&mut s, &Hello::current()).unwrap();
    let reply: HelloReply = read_frame(&mut s).expect("hello reply");
    assert!(reply.accepted, "{}", reply.message);
    s
}

fn token_on(s: &mut UnixStream) -> Response {
    let request = Request::Token {
        name: "up".into(),
        min_valid_secs: 0,
    };
    write_frame(s, &request).unwrap();
    read_frame(s).expect("a response")
}

fn is_the_token(response: &Response) -> bool {
    matches!(response, Response::Token(t) if t.token.expose() == TOKEN)
}

/// Sends a frame one byte a second (announcing a 100-byte body) until the
/// daemon closes the connection; returns how long after the first byte
/// that was, or `None` if the daemon never closed it.
fn trickle(mut s: UnixStream) -> Option<Duration> {
    let mut reader = s.try_clone().unwrap();
    reader.set_read_timeout(Some(FRAME_TIMEOUT * 10)).unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 100]);
        for b in bytes {
            if s.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let mut buf = [0u8; 64];
    let closed = loop {
        match reader.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let elapsed = started.elapsed();
    let _ = reader.shutdown(std::net::Shutdown::Both);
    writer.join().unwrap();
    closed.then_some(elapsed)
}

#[test]
fn idle_and_trickling_clients_do_not_hold_up_token_requests() {
    let d = Daemon::start_with(Options {
        config: Some(format!(
            "[limits]\nframe_timeout_secs = {}\n",
            FRAME_TIMEOUT.as_secs()
        )),
        ..Default::default()
    });
    d.add_bearer("up", TOKEN);
    let mut idle: Vec<UnixStream> = (0..500).map(|_| greeted(&d)).collect();
    let trickler = std::thread::spawn({
        let s = greeted(&d);
        move || trickle(s)
    });

    // While 500 connections sit idle and one trickles, 50 token requests
    // (tokenctl processes and a library client) are each answered promptly.
    let mut client = d.client();
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let started = Instant::now();
        if i % 2 == 0 {
            let out = d.tokenctl(&["token", "up"]);
            assert_ok(&out);
            assert_eq!(stdout(&out), format!("{TOKEN}\n"));
        } else {
            assert_eq!(client.token("up").unwrap().expose(), TOKEN);
        }
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < FRAME_TIMEOUT,
        "a token request took {slowest:?}, as long as the trickler's frame timeout"
    );

    let cut_after = trickler
        .join()
        .unwrap()
        .expect("the trickling client was never disconnected");
    assert!(
        cut_after < FRAME_TIMEOUT + Duration::from_secs(2),
        "the trickler was cut off only after {cut_after:?} (frame timeout {FRAME_TIMEOUT:?})"
    );
    eprintln!("trickler cut off after {cut_after:?}; slowest token request {slowest:?}");
    assert!(d.log_text().contains("client too slow to send a frame"));

    // The idle connections were not dropped to make room: each still works.
    for s in &mut idle {
        assert!(is_the_token(&token_on(s)));
    }
}

#[test]
fn a_client_over_the_connection_limit_is_told_why() {
    let d = Daemon::start_with(Options {
        config: Some("[limits]\nmax_connections = 10\n".into()),
        ..Default::default()
    });
    d.add_bearer("up", TOKEN);
    // `add_bearer`'s tokenctl has gone, but the daemon may not have noticed
    // yet: wait until all ten places are ours.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.len() < 10 {
        assert!(Instant::now() < deadline, "could not open 10 connections");
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write_frame(&mut s, &Hello::current()).unwrap();
        let reply: HelloReply = read_frame(&mut s).expect("hello reply");
        if reply.accepted {
            held.push(s);
        }
    }

    let mut eleventh = UnixStream::connect(&d.socket).expect("connect");
    eleventh
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write_frame(&mut eleventh, &Hello::current()).unwrap();
    let reply: HelloReply = read_frame(&mut eleventh).expect("a polite refusal");
    assert!(!reply.accepted);
    assert!(reply.message.contains("limit of 10"), "{}", reply.message);
    let out = d.tokenctl(&["token", "up"]);
    assert_code(&out, 1);
    assert!(stderr(&out).contains("limit of 10"), "{}", stderr(&out));

    for s in &mut held {
        assert!(is_the_token(&token_on(s)));
    }

    // A place freed is a place for the next client.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.tokenctl(&["token", "up"]);
        if out.status.success() {
            assert_eq!(stdout(&out), format!("{TOKEN}\n"));
            break;
        }
        assert!(Instant::now() < deadline, "the freed place never came back");
    }
    assert!(d.log_text().contains("connection limit reached"));
}
