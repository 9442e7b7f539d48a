//! Fair shares of the connection limit (docs/SECURITY.md, "Hostile and slow
//! clients"): another local user holding 1,500 connections, silent or idle
//! after the hello, gets only their share; the daemon's own user (root here,
//! which also runs the daemon) still gets a token at once, the other user is
//! told about the limit, and the places come back when the connections go.
//!
//! Needs root (to run the holder as the second user, `tokend-e2e`).

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokend_proto::{Hello, HelloReply, read_frame, write_frame};
use tokend_tests::users::{Other, other_user};
use tokend_tests::*;

const TOKEN: &str = "fairness-e2e-token";
const HELD: usize = 1500;

/// A process of the second user holding `HELD` connections; killed when
/// dropped, so a failing test does not leave it behind (and it exits by
/// itself when its stdin, our pipe, closes).
struct Holder {
    child: Child,
    /// What it reported once all connections were open.
    report: String,
}

impl Holder {
    fn start(d: &Daemon, who: Other) -> Holder {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hold-connections"));
        cmd.arg(&d.socket)
            .arg(HELD.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        who.run_as(&mut cmd);
        let mut child = cmd.spawn().expect("start hold-connections");
        let mut report = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut holder = Holder {
            child,
            report: String::new(),
        };
        // A thread, so that a holder that hangs fails the test instead.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = BufReader::new(stdout).read_line(&mut report);
            let _ = tx.send(report);
        });
        holder.report = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("hold-connections did not report within 120 s");
        assert!(
            holder.report.starts_with("greeted-accepted="),
            "hold-connections failed: {:?}",
            holder.report
        );
        eprintln!("holder: {}", holder.report.trim());
        holder
    }

    /// A number from the report, e.g. `greeted-accepted`.
    fn count(&self, key: &str) -> usize {
        self.report
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.report))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon whose socket the second user can reach, holding `up`; silent
/// connections keep their place for the whole test (frame timeout 120 s).
fn open_daemon(limits: &str) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some(format!("[limits]\nframe_timeout_secs = 120\n{limits}")),
        log_level: Some("info".into()),
        ..Default::default()
    });
    d.add_bearer("up", TOKEN);
    d.open_to_everyone();
    d
}

/// `tokenctl token up` as the daemon's user, under a generous 10 s limit
/// (success is what is asserted, not a time).
fn owner_gets_the_token(d: &Daemon) {
    let mut cmd = Command::new(bin("tokenctl"));
    cmd.args(["token", "up"]).env("TOKEND_SOCKET", &d.socket);
    let out = run_with_timeout(cmd, None, Duration::from_secs(10));
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
}

/// A new connection of the second user is refused with `expected` in the
/// message (tokenctl exit code 1, the reason on stderr). Right after the
/// holder's burst the daemon may still be delivering that user's earlier
/// refusals, up to its bound, and then just closes further ones (a reset):
/// those are retried, for up to 20 s.
fn other_is_refused(d: &Daemon, who: Other, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.tokenctl_as(who, &["token", "up"], "");
        assert_code(&out, 1);
        if !stderr(&out).contains("lost the connection") {
            assert!(stderr(&out).contains(expected), "{}", stderr(&out));
            return;
        }
        assert!(Instant::now() < deadline, "{}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Log lines containing `needle`.
fn log_lines(d: &Daemon, needle: &str) -> Vec<String> {
    d.log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Once the holder is gone its places come back: the second user reaches
/// the daemon again, which now answers "not allowed" (exit 4) instead of
/// "limit". Refused connections never counted, or this would not happen.
fn places_come_back(d: &Daemon, who: Other, holder: Holder) {
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.tokenctl_as(who, &["token", "up"], "");
        if out.status.code() == Some(4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second user's places never came back: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn another_user_holding_1500_idle_connections_leaves_the_owner_a_token_at_once() {
    let Some(who) = other_user() else { return };
    let d = open_daemon("");
    let holder = Holder::start(&d, who);

    // Connections open in order, alternating greeted and silent: the first
    // 128 (the default per-user share) got places, half of them greeted.
    assert_eq!(holder.count("greeted-accepted"), 64, "{}", holder.report);
    assert_eq!(holder.count("silent"), HELD / 2);
    assert_eq!(
        holder.count("greeted-refused") + holder.count("greeted-closed"),
        HELD / 2 - 64
    );
    assert!(holder.count("greeted-refused") > 0, "{}", holder.report);
    assert!(
        holder.report.contains("limit of 128 connections per user"),
        "{}",
        holder.report
    );

    owner_gets_the_token(&d);
    other_is_refused(&d, who, "limit of 128 connections per user");

    // Only the places given count: the holder's 128 and this status call
    // (and a tokenctl above whose end the daemon has not seen yet), not
    // the hundreds refused.
    let out = d.tokenctl(&["status", "--json"]);
    assert_ok(&out);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("status --json");
    let open = status["connections"].as_u64().expect("connections");
    assert!((129..=131).contains(&open), "{status}");

    // Hundreds of refusals, at most a line per 10 s in the log, with the uid.
    let warned = log_lines(&d, "per-user connection limit reached");
    assert!(
        (1..=5).contains(&warned.len()),
        "{warned:#?}\n{}",
        d.log_text()
    );
    assert!(
        warned[0].contains(&format!("uid={}", who.uid)),
        "{warned:?}"
    );

    places_come_back(&d, who, holder);
}

#[test]
fn other_users_together_cannot_take_the_reserved_connections() {
    let Some(who) = other_user() else { return };
    // A per-user share as large as the whole: only the reserve stands
    // between the second user and every place.
    let d = open_daemon(
        "max_connections = 200\nmax_connections_per_user = 200\nreserved_connections = 20\n",
    );
    let holder = Holder::start(&d, who);
    assert_eq!(holder.count("greeted-accepted"), 90, "{}", holder.report);
    assert!(
        holder
            .report
            .contains("limit of 180 connections for users other than root and its own"),
        "{}",
        holder.report
    );

    owner_gets_the_token(&d);
    other_is_refused(
        &d,
        who,
        "limit of 180 connections for users other than root",
    );

    // The reserve is the owner's: all 20 places, and then the global limit.
    let mut mine: Vec<UnixStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        assert!(Instant::now() < deadline, "the reserve never filled up");
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write_frame(&mut s, &Hello::current()).unwrap();
        let reply: HelloReply = read_frame(&mut s).expect("hello reply");
        if !reply.accepted {
            break reply.message;
        }
        mine.push(s);
    };
    // 20, less any place a tokenctl above still held for a moment.
    assert!((18..=20).contains(&mine.len()), "{}", mine.len());
    assert!(refusal.contains("limit of 200 connections"), "{refusal}");
    assert!(
        !log_lines(&d, "connections left only for root and the daemon's user").is_empty(),
        "{}",
        d.log_text()
    );
    drop(mine);

    places_come_back(&d, who, holder);
}
