//! `GET /v1/events` (issue 21, item 4) end to end: the current state at
//! once, `refreshed` within a second of `tokenctl refresh`, `removed` on
//! `rm`, and nothing of a credential another user may not use.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokend_tests::oidc::OidcServer;
use tokend_tests::users::{self, Other};
use tokend_tests::*;

/// One event as received: its name, its JSON and when it arrived.
#[derive(Debug)]
struct Received {
    event: String,
    data: serde_json::Value,
    at: Instant,
}

/// An event stream read by curl (as `who`, if given), its events passed on
/// as they arrive. Killed when dropped.
struct Stream {
    child: Child,
    events: mpsc::Receiver<Received>,
}

impl Stream {
    fn open(d: &Daemon, query: &str, who: Option<Other>) -> Stream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sN", "--unix-socket"])
            .arg(d.http_socket())
            .arg(format!("http://localhost/v1/events{query}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(who) = who {
            who.run_as(&mut cmd);
        }
        let mut child = cmd.spawn().expect("run curl");
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut event = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(name) = line.strip_prefix("event: ") {
                    event = name.to_string();
                } else if let Some(json) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(json).expect("event data is JSON");
                    let received = Received {
                        event: std::mem::take(&mut event),
                        data,
                        at: Instant::now(),
                    };
                    if tx.send(received).is_err() {
                        return;
                    }
                }
            }
        });
        Stream { child, events }
    }

    /// The next event named `name` within `limit`, skipping others.
    fn next(&self, name: &str, limit: Duration) -> Option<Received> {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(r) if r.event == name => return Some(r),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// Every event received so far.
    fn drain(&self) -> Vec<Received> {
        self.events.try_iter().collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon with credential `up` logged in against `idp`, whose tokens
/// live a minute (no scheduled refresh comes during a test).
fn logged_in(idp: &OidcServer) -> Daemon {
    let d = Daemon::start();
    assert_ok(&d.add_oauth(idp, "up", &[]));
    d.login(idp, "up");
    d
}

#[test]
fn a_stream_starts_with_the_current_state_then_tells_refreshes_and_removals() {
    let idp = OidcServer::start(60);
    let d = logged_in(&idp);
    let stream = Stream::open(&d, "?credential=up", None);
    let current = stream
        .next("current", Duration::from_secs(5))
        .expect("the current state at once");
    assert_eq!(current.data["name"], "up");
    assert_eq!(current.data["state"], "ready");
    let out = d.tokenctl(&["refresh", "up"]);
    let returned = Instant::now();
    assert_ok(&out);
    let refreshed = stream
        .next("refreshed", Duration::from_secs(5))
        .expect("a refreshed event");
    let late = refreshed.at.saturating_duration_since(returned);
    assert!(
        late <= Duration::from_secs(1),
        "refreshed came {late:?} after the refresh"
    );
    assert_eq!(refreshed.data["name"], "up");
    assert!(refreshed.data["expires_at"].as_i64().is_some());
    assert!(
        refreshed.data.get("access_token").is_none(),
        "no token unless asked for"
    );
    assert_ok(&d.tokenctl(&["rm", "up"]));
    let removed = stream
        .next("removed", Duration::from_secs(5))
        .expect("a removed event");
    assert_eq!(removed.data["name"], "up");
}

#[test]
fn include_token_puts_the_new_token_in_refreshed_and_bad_queries_are_400() {
    let idp = OidcServer::start(60);
    let d = logged_in(&idp);
    let stream = Stream::open(&d, "?credential=up&include_token=true", None);
    stream.next("current", Duration::from_secs(5)).unwrap();
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    let refreshed = stream.next("refreshed", Duration::from_secs(5)).unwrap();
    let token = stdout(&d.tokenctl(&["token", "up"])).trim().to_string();
    assert_eq!(refreshed.data["access_token"], token.as_str());
    for (query, status) in [
        ("?include_token=yes", "400"),
        ("?credential=../x", "400"),
        ("?since=1", "400"),
        ("?credential=nope", "404"),
    ] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(d.http_socket())
            .arg(format!("http://localhost/v1/events{query}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), status, "{query}");
    }
}

#[test]
fn another_users_stream_never_shows_a_credential_it_may_not_use() {
    let Some(who) = users::other_user() else {
        return;
    };
    let idp = OidcServer::start(60);
    let d = logged_in(&idp);
    d.open_to_everyone();
    set_mode(&d.http_socket(), 0o666);
    let theirs = Stream::open(&d, "", Some(who));
    let named = Stream::open(&d, "?credential=up", Some(who));
    let mine = Stream::open(&d, "", None);
    mine.next("current", Duration::from_secs(5)).unwrap();
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    mine.next("refreshed", Duration::from_secs(5)).unwrap();
    assert_ok(&d.tokenctl(&["rm", "up"]));
    mine.next("removed", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let seen = theirs.drain();
    assert!(seen.is_empty(), "another user saw {seen:?}");
    let refused = named.drain();
    assert!(
        refused.is_empty(),
        "a named stream of another's credential: {refused:?}"
    );
}

#[test]
fn the_rust_client_watches_with_the_current_state_first() {
    let idp = OidcServer::start(60);
    let d = logged_in(&idp);
    let client = d.client();
    let mut watch = client.watch(Some("up")).expect("a watch");
    let current = watch.next().unwrap().expect("the current state");
    assert_eq!(
        (current.kind.as_str(), current.name()),
        ("current", Some("up"))
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for event in watch {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    let refreshed = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("an event")
        .expect("not an error");
    assert_eq!(refreshed.kind, "refreshed");
    assert!(refreshed.data.get("access_token").is_none());
    // A refusal is an error, not a stream.
    let mut unknown = client.watch(Some("nope")).unwrap();
    assert!(matches!(
        unknown.next(),
        Some(Err(tokend_client::Error::UnknownCredential(_)))
    ));
    assert!(unknown.next().is_none());
}

#[test]
fn a_stream_outlives_the_idle_timeout_of_a_connection() {
    let idp = OidcServer::start(60);
    let d = Daemon::start_with(Options {
        config: Some("[limits]\nidle_timeout_secs = 1\nframe_timeout_secs = 1\n".into()),
        ..Options::default()
    });
    assert_ok(&d.add_oauth(&idp, "up", &[]));
    d.login(&idp, "up");
    let stream = Stream::open(&d, "?credential=up", None);
    stream.next("current", Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    assert!(
        stream.next("refreshed", Duration::from_secs(5)).is_some(),
        "the stream was closed as idle"
    );
}

/// A token an event stream carries (`include_token=true`) is a hand-out
/// like any other: it is in the audit trail, as `events`, with the
/// stream's peer.
#[test]
fn a_token_an_event_stream_carries_is_in_the_audit_trail() {
    let idp = OidcServer::start(60);
    let d = logged_in(&idp);
    let stream = Stream::open(&d, "?credential=up&include_token=true", None);
    stream.next("current", Duration::from_secs(5)).unwrap();
    assert_ok(&d.tokenctl(&["refresh", "up"]));
    let refreshed = stream.next("refreshed", Duration::from_secs(5)).unwrap();
    assert!(refreshed.data["access_token"].is_string());
    let out = d.tokenctl(&["audit", "up", "--json"]);
    assert_ok(&out);
    let entries: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
        .collect();
    let carried: Vec<_> = entries.iter().filter(|e| e["op"] == "events").collect();
    assert_eq!(carried.len(), 1, "{entries:?}");
    assert_eq!(carried[0]["outcome"], "ok");
    let exe = carried[0]["exe"].as_str().unwrap_or("");
    assert!(exe.ends_with("curl"), "the stream's reader: {exe}");
}

/// Review of issue 21, item 8: a client that reads nothing (stopped)
/// while the kernel still takes the heartbeats into the socket's buffer
/// is cut off after 45 s (Linux measures the bytes it has not read), not
/// held for the days the heartbeats take to fill the buffer.
#[cfg(target_os = "linux")]
#[test]
fn a_stream_whose_client_reads_nothing_is_cut_off() {
    use std::io::{Read, Write};
    let d = Daemon::start();
    d.add_bearer("static", "tok");
    let mut socket = std::os::unix::net::UnixStream::connect(d.http_socket()).unwrap();
    socket
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // Three heartbeats (15 s each) are taken by the kernel meanwhile.
    std::thread::sleep(Duration::from_secs(52));
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = Vec::new();
    let read = socket.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(
        read.is_ok(),
        "the stream is still open ({read:?}) after {text}; log:\n{}",
        d.log_text()
    );
    assert!(text.contains("heartbeat"), "{text}");
}
