//! Malformed, oversized, truncated and foreign traffic on the socket: each
//! costs only its own connection, and a normal client right after still works.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tokend_proto::{Hello, HelloReply, MAGIC, Request, Response, read_frame, write_frame};
use tokend_tests::*;

fn still_serves(d: &Daemon) {
    let out = d.tokenctl(&["token", "up"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "tok\n");
}

fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until EOF or error; true if the daemon closed the connection.
fn closed_by_daemon(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

fn daemon() -> Daemon {
    let d = Daemon::start();
    d.add_bearer("up", "tok");
    d
}

#[test]
fn one_mebibyte_of_random_bytes() {
    let d = daemon();
    let mut s = raw(&d);
    let mut noise = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    let _ = s.write_all(&noise);
    assert!(closed_by_daemon(&mut s));
    still_serves(&d);
}

#[test]
fn a_frame_claiming_four_gibibytes() {
    let d = daemon();
    let mut s = raw(&d);
    write_frame(&mut s, &Hello::current()).unwrap();
    let _: HelloReply = read_frame(&mut s).unwrap();
    // One write: the daemon may answer and close as soon as it has the prefix.
    let mut claim = u32::MAX.to_be_bytes().to_vec();
    claim.extend_from_slice(b"abc");
    s.write_all(&claim).unwrap();
    let answer: Response = read_frame(&mut s).unwrap();
    assert!(
        matches!(answer, Response::Error(ref e) if e.message.contains("larger than")),
        "{answer:?}"
    );
    assert!(closed_by_daemon(&mut s));
    still_serves(&d);
}

#[test]
fn a_truncated_frame() {
    let d = daemon();
    let mut s = raw(&d);
    write_frame(&mut s, &Hello::current()).unwrap();
    let _: HelloReply = read_frame(&mut s).unwrap();
    s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_daemon(&mut s));
    still_serves(&d);
}

#[test]
fn a_malformed_request_body_gets_an_error() {
    let d = daemon();
    let mut s = raw(&d);
    write_frame(&mut s, &Hello::current()).unwrap();
    let _: HelloReply = read_frame(&mut s).unwrap();
    s.write_all(&[0, 0, 0, 4, 250, 250, 250, 250]).unwrap();
    let answer: Response = read_frame(&mut s).unwrap();
    assert!(
        matches!(answer, Response::Error(ref e) if e.message.contains("malformed")),
        "{answer:?}"
    );
    still_serves(&d);
}

#[test]
fn a_wrong_protocol_version_gets_a_clear_refusal() {
    let d = daemon();
    let mut s = raw(&d);
    write_frame(
        &mut s,
        &Hello {
            magic: MAGIC,
            version: 99,
        },
    )
    .unwrap();
    let reply: HelloReply = read_frame(&mut s).unwrap();
    assert!(!reply.accepted);
    assert!(reply.message.contains("version 99"), "{}", reply.message);
    assert!(closed_by_daemon(&mut s));
    still_serves(&d);
}

#[test]
fn requests_on_one_connection_keep_working() {
    let d = daemon();
    let mut s = raw(&d);
    write_frame(&mut s, &Hello::current()).unwrap();
    let _: HelloReply = read_frame(&mut s).unwrap();
    for _ in 0..50 {
        write_frame(
            &mut s,
            &Request::Token {
                name: "up".into(),
                min_valid_secs: 0,
            },
        )
        .unwrap();
        let answer: Response = read_frame(&mut s).unwrap();
        assert!(matches!(answer, Response::Token(ref t) if t.token.expose() == "tok"));
    }
}

/// A second, unprivileged user loops refused requests naming credentials
/// of 60 KiB (each starting with a forged log line) on both sockets for
/// 10 s: the log grows by less than 1 MiB, no line is forged, the counts
/// of the lines held back are logged, and the daemon still serves.
#[test]
fn a_user_looping_refused_requests_with_huge_names_cannot_flood_the_log() {
    let Some(who) = tokend_tests::users::other_user() else {
        return;
    };
    let d = Daemon::start_with(Options {
        // Short intervals, so that 10 s see several counts.
        config: Some("[log]\nrefusal_interval_secs = 3\n".into()),
        ..Options::default()
    });
    d.add_bearer("up", "tok");
    d.open_to_everyone();
    let http = d.http_socket();
    set_mode(&http, 0o666);
    let before = std::fs::metadata(&d.log).unwrap().len();

    let mut cmd = std::process::Command::new(bin("refuse-loop"));
    cmd.arg(&d.socket).arg(&http).arg("10");
    who.run_as(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert_ok(&out);
    let counts = stdout(&out);
    let refused = |what: &str| -> u64 {
        let field = counts.split_whitespace().find_map(|f| f.strip_prefix(what));
        field.and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    assert!(refused("socket=") > 200, "the loop was real: {counts}");
    assert!(refused("http=") > 20, "the loop was real: {counts}");

    let grown = std::fs::metadata(&d.log).unwrap().len() - before;
    assert!(grown < 1 << 20, "the log grew by {grown} bytes ({counts})");
    let count_line = d.wait_for_log("suppressed=");
    assert!(
        count_line.contains(&format!("uid={}", who.uid)),
        "{count_line}"
    );
    let log = d.log_text();
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("credential=")),
        "a forged line:\n{}",
        tail(&log)
    );
    assert!(
        log.lines().all(|l| l.len() < 2048),
        "a line kept a whole name:\n{}",
        tail(&log)
    );
    assert!(log.contains("permission denied"));
    still_serves(&d);
}

fn tail(log: &str) -> String {
    tokend_tests::helpers::tail(log, 20)
}
