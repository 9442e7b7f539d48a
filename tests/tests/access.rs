//! Per-peer access control (docs/DESIGN.md §5) with a real second user: the socket
//! is opened to everyone on purpose, so that only the daemon's own check
//! (SO_PEERCRED uid/gid against the admin rule and the allow list) stands
//! between the unprivileged user `tokend-e2e` and the token.
//!
//! Needs root (to run tokenctl as another uid). CI creates the user with
//! `useradd --system --no-create-home --shell /usr/sbin/nologin tokend-e2e`;
//! the tests create it the same way when it is missing.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::{Command, Output};
use std::time::Duration;
use tokend_tests::users::{Other, USER, other_user};
use tokend_tests::*;

const TOKEN: &str = "upp-access-e2e-secret";

/// A daemon (run by root) holding the bearer credential `up` and the oauth2
/// credential `app`, with its socket opened to every local user on purpose.
fn open_daemon() -> Daemon {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let secret = d.dir.path().join("app.secret");
    std::fs::write(&secret, "app-client-secret").unwrap();
    assert_ok(&d.tokenctl(&[
        "add",
        "oauth2",
        "app",
        "--auth-url",
        "http://127.0.0.1:9/auth",
        "--token-url",
        "http://127.0.0.1:9/token",
        "--client-id",
        "cid",
        "--client-secret-file",
        secret.to_str().unwrap(),
    ]));
    d.open_to_everyone();
    d
}

/// `tokenctl ARGS` as the second user, with `stdin`.
fn as_other(d: &Daemon, who: Other, args: &[&str], stdin: &str) -> Output {
    d.tokenctl_as(who, args, stdin)
}

fn listed_names(out: &Output) -> Vec<String> {
    assert_ok(out);
    let list: serde_json::Value = serde_json::from_str(&stdout(out)).expect("list --json");
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect()
}

/// `show NAME --json` as root, less the last-use time (a token read is a use).
fn settings(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.tokenctl(&["show", name, "--json"]);
    assert_ok(&out);
    let mut info: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("show --json");
    info.as_object_mut()
        .expect("an object")
        .remove("last_use_at");
    info
}

#[test]
fn an_unprivileged_user_gets_the_token_only_while_allowed() {
    let Some(who) = other_user() else { return };
    let d = open_daemon();
    let uid = who.uid.to_string();

    // The path is open: the user reaches the daemon, and the daemon says no.
    let out = as_other(&d, who, &["token", "up"], "");
    assert_code(&out, 4);
    assert!(!stdout(&out).contains(TOKEN));
    assert!(stderr(&out).contains("not allowed"), "{}", stderr(&out));
    assert_code(&as_other(&d, who, &["show", "up"], ""), 4);
    assert_code(&as_other(&d, who, &["header", "up"], ""), 4);
    let names = listed_names(&as_other(&d, who, &["list", "--json"], ""));
    assert!(names.is_empty(), "the user sees {names:?}");
    assert!(listed_names(&d.tokenctl(&["list", "--json"])).contains(&"up".to_string()));

    // The refusal is logged with the peer's uid and the credential's name.
    let line = d.wait_for_log("permission denied");
    assert!(line.contains(&format!("uid={uid}")), "{line}");
    assert!(line.contains("\"up\""), "{line}");
    assert!(!d.log_text().contains(TOKEN), "the log holds the token");

    assert_ok(&d.tokenctl(&["allow", "up", "--user", USER]));
    let out = as_other(&d, who, &["token", "up"], "");
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    let names = listed_names(&as_other(&d, who, &["list", "--json"], ""));
    assert_eq!(names, ["up"], "allowed for `up` only, not `app`");

    assert_ok(&d.tokenctl(&["deny", "up", "--user", USER]));
    let out = as_other(&d, who, &["token", "up"], "");
    assert_code(&out, 4);
    assert!(!stdout(&out).contains(TOKEN));
}

#[test]
fn allowing_a_group_admits_its_members() {
    let Some(who) = other_user() else { return };
    let d = open_daemon();
    let gid = who.gid.to_string();
    assert_code(&as_other(&d, who, &["token", "up"], ""), 4);

    assert_ok(&d.tokenctl(&["allow", "up", "--group", &gid]));
    let out = as_other(&d, who, &["token", "up"], "");
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));

    assert_ok(&d.tokenctl(&["deny", "up", "--group", &gid]));
    assert_code(&as_other(&d, who, &["token", "up"], ""), 4);
}

#[test]
fn every_admin_request_from_an_unprivileged_user_is_refused() {
    let Some(who) = other_user() else { return };
    let d = open_daemon();
    // Even with leave to use both credentials: using is not administering.
    assert_ok(&d.tokenctl(&["allow", "up", "--user", USER]));
    assert_ok(&d.tokenctl(&["allow", "app", "--user", USER]));
    let show_before = settings(&d, "up");

    let refused: &[(&[&str], &str)] = &[
        (&["add", "bearer", "mine"], "new-token"),
        (&["add", "bearer", "up", "--replace"], "hijacked-token"),
        (&["rm", "up"], ""),
        (&["allow", "up", "--user", "root"], ""),
        (&["allow", "app", "--group", "0"], ""),
        (&["deny", "up", "--user", USER], ""),
        (&["login", "app", "--no-browser", "--timeout", "5"], ""),
    ];
    for (args, stdin) in refused {
        let out = as_other(&d, who, args, stdin);
        assert_code(&out, 4);
        assert!(
            stderr(&out).contains("may not change credentials"),
            "{args:?}: {}",
            stderr(&out)
        );
    }

    // Nothing changed: same token, same allow list, no new credential.
    assert_eq!(stdout(&d.tokenctl(&["token", "up"])), format!("{TOKEN}\n"));
    assert_eq!(settings(&d, "up"), show_before);
    let mut names = listed_names(&d.tokenctl(&["list", "--json"]));
    names.sort();
    assert_eq!(names, ["app", "up"]);
    let denied = d
        .log_text()
        .lines()
        .filter(|l| l.contains("permission denied") && l.contains(&format!("uid={}", who.uid)))
        .count();
    assert!(denied >= refused.len(), "{}", d.log_text());
}

/// The per-user socket may sit in a shared temp directory (no
/// `XDG_RUNTIME_DIR`), where another user could start a daemon first.
/// tokenctl must not talk to it: `add` would hand that user the secret.
#[test]
fn a_daemon_of_another_user_on_ones_own_socket_is_refused() {
    let Some(other) = other_user() else { return };
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let runtime = dir.path().join("xdg-run");
    std::fs::create_dir(&runtime).unwrap();
    std::os::unix::fs::chown(&runtime, Some(other.uid), Some(other.gid)).unwrap();
    let socket = runtime.join("tokend").join("tokend.sock");
    let mut theirs = Command::new(bin("tokend"));
    theirs
        .arg("--socket")
        .arg(&socket)
        .arg("--db")
        .arg(runtime.join("state").join("tokend.db"))
        .arg("--config")
        .arg(runtime.join("config.toml"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stderr(std::process::Stdio::null());
    other.run_as(&mut theirs);
    let mut theirs = theirs.spawn().expect("start the other user's tokend");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cmd = Command::new(bin("tokenctl"));
    cmd.arg("status")
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("TOKEND_SOCKET");
    let out = run_with_timeout(cmd, None, Duration::from_secs(20));
    let _ = theirs.kill();
    let _ = theirs.wait();
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains(&format!("served by uid {}", other.uid)),
        "{}",
        stderr(&out)
    );
}
