//! tokend as a systemd service (docs/DESIGN.md §7), against the real binary: the
//! readiness and stop notifications, socket activation, SIGHUP reloads and
//! journald-style log lines.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokend_tests::*;

const TOKEN: &str = "svc-Qm4v7-bearer-token";

/// Stands in for systemd's `NOTIFY_SOCKET`: a datagram socket that collects
/// what tokend reports.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        NotifySocket { socket, path }
    }

    /// Waits (up to 20 s) for a message with the line `field` (`READY=1`)
    /// and returns the whole message; earlier messages are consumed.
    fn wait_for(&self, field: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.lines().any(|l| l == field) {
                return message;
            }
            seen.push(message);
        }
        panic!("no {field} within 20 s; received: {seen:?}");
    }
}

/// A daemon whose store already holds the bearer credential `up`, stopped,
/// so that the next start has something to serve from its first moment.
fn stopped_daemon_with_a_credential() -> Daemon {
    let mut d = Daemon::start();
    d.add_bearer("up", TOKEN);
    assert!(d.stop().success(), "{}", d.log_text());
    d
}

#[test]
fn ready_is_sent_when_a_token_can_already_be_fetched_and_stopping_on_sigterm() {
    let mut d = stopped_daemon_with_a_credential();
    let notify = NotifySocket::bind(d.dir.path());
    d.set_env("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path"));
    // No readiness polling: the first connection is made on READY=1.
    d.launch_with(|tokend| tokend);
    let ready = notify.wait_for("READY=1");
    let mut client =
        tokend_client::Client::connect(&d.socket).expect("connect as soon as READY=1 arrives");
    let token = client
        .token("up")
        .expect("a token as soon as READY=1 arrives");
    assert_eq!(token.expose(), TOKEN);
    assert!(
        ready.contains("STATUS=serving 1 credentials"),
        "READY=1 comes with a status line: {ready:?}"
    );
    assert!(d.stop().success(), "{}", d.log_text());
    notify.wait_for("STOPPING=1");
}

/// `systemd-socket-activate` binds the socket, waits for the first client,
/// then execs tokend with the socket as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`):
/// socket activation as systemd does it, without systemd as PID 1.
fn under_socket_activate(tokend: Command, socket: &Path) -> Command {
    let tool = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        tool.exists(),
        "{} is missing: apt-get install systemd",
        tool.display()
    );
    let mut cmd = Command::new(tool);
    cmd.arg("--listen").arg(socket);
    // It passes the program only the environment it is told to (-E).
    for (key, value) in tokend.get_envs() {
        if let Some(value) = value {
            let pair = format!("{}={}", key.to_string_lossy(), value.to_string_lossy());
            cmd.arg("-E").arg(pair);
        }
    }
    cmd.arg(tokend.get_program()).args(tokend.get_args());
    cmd
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn socket_passed_by_systemd_is_served_and_left_in_place_at_stop() {
    let mut d = stopped_daemon_with_a_credential();
    assert!(
        !d.socket.exists(),
        "tokend removes a socket it bound itself"
    );
    let socket = d.socket.clone();
    d.launch_with(|tokend| under_socket_activate(tokend, &socket));
    wait_for_file(&d.socket);
    // This connection is what makes systemd-socket-activate start tokend.
    let out = d.tokenctl(&["token", "up"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    d.wait_for_log("using the socket passed by systemd");
    assert!(d.stop().success(), "{}", d.log_text());
    assert!(
        d.socket.exists(),
        "a passed socket belongs to systemd and stays for the next activation"
    );
}

#[test]
fn listen_fds_meant_for_another_process_is_ignored() {
    // Inherited from a parent that was socket-activated: LISTEN_PID is not ours.
    let mut d = Daemon::prepare(Options {
        env: vec![
            ("LISTEN_FDS".into(), "1".into()),
            ("LISTEN_PID".into(), "1".into()),
        ],
        ..Options::default()
    });
    d.spawn();
    d.add_bearer("up", TOKEN);
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    assert!(!d.log_text().contains("socket passed by systemd"));
    assert!(d.stop().success(), "{}", d.log_text());
    assert!(
        !d.socket.exists(),
        "tokend bound this socket itself, so it removes it at stop"
    );
}

const PRESET: &str = "[presets.site]\n\
    auth_url = \"https://idp.example/auth\"\n\
    token_url = \"https://idp.example/token\"\n";

/// `tokenctl add oauth2 app --preset site`: works only while the running
/// config has that preset.
fn add_with_site_preset(d: &Daemon) -> std::process::Output {
    d.tokenctl_stdin(
        &[
            "add",
            "oauth2",
            "app",
            "--preset",
            "site",
            "--client-id",
            "id",
            "--replace",
        ],
        "client-secret\n",
    )
}

#[test]
fn sighup_applies_a_changed_config_and_an_open_connection_keeps_working() {
    let d = Daemon::start_with(Options {
        config: Some("[refresh]\nmargin_secs = 30\n".into()),
        ..Options::default()
    });
    d.add_bearer("up", TOKEN);
    let mut client = d.client();
    assert_eq!(
        client.token("up").expect("before the reload").expose(),
        TOKEN
    );
    let out = add_with_site_preset(&d);
    assert!(
        !out.status.success() && stderr(&out).contains("unknown preset"),
        "no such preset before the reload: {}",
        stderr(&out)
    );

    let changed = format!("[refresh]\nmargin_secs = 45\n[limits]\nmax_connections = 100\n{PRESET}");
    std::fs::write(&d.config, changed).expect("write config");
    signal(d.pid(), libc::SIGHUP);
    let line = d.wait_for_log("config reloaded");
    assert!(line.contains("changed=true"), "{line}");
    d.wait_for_log("config changes to limits.max_connections take effect at the next start");

    assert_eq!(
        client
            .token("up")
            .expect("after the reload, same connection")
            .expose(),
        TOKEN
    );
    assert_ok(&add_with_site_preset(&d));
    let shown = stdout(&d.tokenctl(&["show", "app", "--json"]));
    assert!(shown.contains("https://idp.example/token"), "{shown}");
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_config_and_keeps_serving() {
    let mut d = Daemon::prepare(Options {
        config: Some(PRESET.into()),
        ..Options::default()
    });
    let notify = NotifySocket::bind(d.dir.path());
    d.set_env("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path"));
    d.spawn();
    notify.wait_for("READY=1");
    d.add_bearer("up", TOKEN);
    let mut client = d.client();

    std::fs::write(&d.config, "[limits]\nmax_logins = 4\nbogus_key = 1\n").expect("write");
    signal(d.pid(), libc::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    // READY=1 even after a failed reload, or `systemctl reload` would hang.
    notify.wait_for("READY=1");
    let line = d.wait_for_log("config not reloaded");
    let path = d.config.display().to_string();
    for part in [path.as_str(), "line 3", "bogus_key"] {
        assert!(line.contains(part), "the error names {part:?}: {line}");
    }

    assert!(d.is_running(), "a broken config never stops the daemon");
    assert_eq!(client.token("up").expect("same connection").expose(), TOKEN);
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    assert_ok(&add_with_site_preset(&d));
}

fn timestamped(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T'
}

/// The `tokend … ready` log line of a daemon started with `env`; `journal`
/// makes `JOURNAL_STREAM` name the log file, as journald names its stream.
fn ready_line(env: &[(&str, &str)], journal: bool) -> String {
    let mut d = Daemon::prepare(Options::default());
    for (key, value) in env {
        d.set_env(key, value);
    }
    if journal {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::File::create(&d.log)
            .and_then(|f| f.metadata())
            .expect("log file");
        d.set_env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    }
    d.spawn();
    d.wait_for_log(" ready")
}

#[test]
fn log_lines_have_no_timestamps_when_stderr_is_the_journal() {
    let line = ready_line(&[], true);
    assert!(line.trim_start().starts_with("INFO "), "{line:?}");
}

#[test]
fn log_lines_have_timestamps_elsewhere_even_with_an_inherited_journal_stream() {
    let line = ready_line(&[], false);
    assert!(timestamped(&line), "{line:?}");
    // JOURNAL_STREAM inherited from a service, stderr somewhere else.
    let line = ready_line(&[("JOURNAL_STREAM", "8:12345")], false);
    assert!(timestamped(&line), "{line:?}");
}
