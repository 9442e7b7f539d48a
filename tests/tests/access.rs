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
        (&["edit", "up", "--api-url", "http://127.0.0.1:9/"], ""),
        (&["edit", "up", "--description", "mine now"], ""),
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

/// Rewrites the owner and allow list of credential `name` in the stopped
/// daemon's store as `edit` says, tagged with the store's key: what
/// another member of a fleet, where ids have other names, would write.
fn written_elsewhere(d: &Daemon, name: &str, edit: impl Fn(&mut tokend::store::names::Named)) {
    use tokend::store::Backend;
    use tokend::store::binding::Binding;
    let key = d.db.with_file_name("tokend.key");
    let sealer = || {
        tokend::store::seal::Sealer::load(None, &key, false)
            .expect("the key")
            .0
    };
    let store = tokend::store::SqliteStore::open(&d.db, sealer()).expect("the store");
    let mut c = store.load_named(&[name.to_string()]).unwrap().remove(0);
    drop(store);
    let named = c.names.as_mut().expect("names as stored");
    edit(named);
    let conn = rusqlite::Connection::open(&d.db).expect("open the store");
    let (id, settings): (i64, String) = conn
        .query_row(
            "SELECT id, settings FROM credentials WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let tag = Binding::of(&c, Some(&settings))
        .and_then(|b| b.tag(&sealer()))
        .expect("tag");
    let named = c.names.as_ref().unwrap();
    let uid = |p: &tokend_proto::Principal| match p {
        tokend_proto::Principal::User(u) | tokend_proto::Principal::Group(u) => *u,
    };
    conn.execute(
        "UPDATE credentials SET owner_uid = ?2, owner_name = ?3, binding = ?4 WHERE id = ?1",
        rusqlite::params![id, uid(&named.owner.written), named.owner.name, tag],
    )
    .unwrap();
    conn.execute("DELETE FROM allowed WHERE credential_id = ?1", [id])
        .unwrap();
    for g in &named.allowed {
        let kind = match g.written {
            tokend_proto::Principal::User(_) => "user",
            tokend_proto::Principal::Group(_) => "group",
        };
        conn.execute(
            "INSERT INTO allowed (credential_id, kind, id, name) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, kind, uid(&g.written), g.name],
        )
        .unwrap();
    }
}

/// `who`, written by a host where its uid is called `name`.
fn as_named(who: Other, name: &str) -> tokend_proto::Grantee {
    tokend_proto::Grantee {
        written: tokend_proto::Principal::User(who.uid),
        name: Some(name.to_string()),
        here: None,
    }
}

#[test]
fn an_owner_whose_name_is_unknown_here_owns_nothing_here() {
    let Some(who) = other_user() else { return };
    let mut d = open_daemon();
    d.stop();
    // Added on another host by the second user, known there by its name.
    written_elsewhere(&d, "up", |named| named.owner = as_named(who, USER));
    d.restart();
    d.open_to_everyone();
    let out = as_other(&d, who, &["token", "up"], "");
    assert_ok(&out);
    assert_eq!(stdout(&out), format!("{TOKEN}\n"));
    d.stop();
    // Added on a host where that uid is someone else.
    written_elsewhere(&d, "up", |named| {
        named.owner = as_named(who, "ghost-of-another-host")
    });
    d.restart();
    d.open_to_everyone();
    assert_code(&as_other(&d, who, &["token", "up"], ""), 4);
    let shown = settings(&d, "up");
    assert_eq!(shown["owner"]["name"], "ghost-of-another-host", "{shown}");
    assert!(shown["owner"]["here"].is_null(), "{shown}");
    let text = stdout(&d.tokenctl(&["show", "up"]));
    assert!(
        text.contains("ghost-of-another-host (unknown on this host: grants nothing here"),
        "{text}"
    );
}

#[test]
fn a_uid_stored_under_a_name_unknown_here_is_granted_nothing_and_show_says_so() {
    let Some(who) = other_user() else { return };
    let mut d = open_daemon();
    assert_ok(&d.tokenctl(&["allow", "up", "--user", USER]));
    assert_ok(&as_other(&d, who, &["token", "up"], ""));
    let shown = settings(&d, "up");
    assert_eq!(
        shown["grantees"][0]["name"], USER,
        "stored by name: {shown}"
    );
    d.stop();
    // Another host wrote the entry: there, this uid is someone else.
    written_elsewhere(&d, "up", |named| {
        for g in &mut named.allowed {
            if g.written == tokend_proto::Principal::User(who.uid) {
                g.name = Some("ghost-of-another-host".into());
            }
        }
    });
    d.restart();
    d.open_to_everyone();
    let out = as_other(&d, who, &["token", "up"], "");
    assert_code(&out, 4);
    assert!(!stdout(&out).contains(TOKEN));
    let shown = settings(&d, "up");
    assert_eq!(shown["grantees"][0]["name"], "ghost-of-another-host");
    assert!(shown["grantees"][0]["here"].is_null(), "{shown}");
    assert_eq!(shown["allowed"], serde_json::json!([]), "{shown}");
    let text = stdout(&d.tokenctl(&["show", "up"]));
    assert!(
        text.contains("ghost-of-another-host (unknown on this host: grants nothing here"),
        "{text}"
    );
    // The entry is by name: allowing the user here adds it again.
    assert_ok(&d.tokenctl(&["allow", "up", "--user", USER]));
    assert_ok(&as_other(&d, who, &["token", "up"], ""));
}

/// `tokenctl refresh NAME` 20 times by an allowed user who is not an admin,
/// on a credential whose provider refuses every request (a wrong client
/// secret: `invalid_client`, so `failing`): the provider is called at most
/// once per `refresh.min_forced_interval_secs` (30 s by default), every
/// answer is the current state with exit status 0, and the notify command
/// ran once, for the one change of state. An admin is not held back, and
/// failing again the same way notifies nobody.
#[test]
fn forced_refreshes_by_a_user_reach_the_provider_once_per_interval_and_notify_once() {
    let Some(who) = other_user() else { return };
    let idp = tokend_tests::oidc::OidcServer::start(60);
    let notify = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "notify_command = \"echo $TOKEND_CREDENTIAL $TOKEND_STATE >> {}\"\n",
        notify.path().display()
    );
    let d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    let calls = || {
        idp.stats()["token_posts_by_grant"]["client_credentials"]
            .as_u64()
            .unwrap_or(0)
    };
    let notified = || std::fs::read_to_string(notify.path()).unwrap();
    let started = std::time::Instant::now();
    assert_ok(&d.add_client_credentials(&idp, "cc", "not-the-client-secret"));
    assert_ok(&d.tokenctl(&["allow", "cc", "--user", USER]));
    d.open_to_everyone();
    // The first token is fetched at once, and refused: `failing`, notified.
    assert!(
        tokend_tests::oidc::eventually(Duration::from_secs(20), || notified() == "cc failing\n"),
        "notified: {:?}\n{}",
        notified(),
        d.log_text()
    );
    assert_eq!(calls(), 1);

    for _ in 0..20 {
        let out = as_other(&d, who, &["refresh", "cc"], "");
        assert_ok(&out);
        let answer = stderr(&out);
        assert!(answer.contains("not refreshing"), "{answer}");
        assert!(answer.contains("it is failing"), "{answer}");
        assert!(answer.contains("invalid_client"), "{answer}");
    }
    let out = as_other(&d, who, &["reject", "cc"], "");
    assert_ok(&out);
    assert!(stderr(&out).contains("not refreshing"), "{}", stderr(&out));
    // At most one call per 30 s started, counting the schedule's first.
    let allowed = 1 + started.elapsed().as_secs() / 30;
    assert!(calls() <= allowed, "{} calls, {allowed} allowed", calls());

    // Admins are not held back: each of their refreshes is a call, and
    // failing the same way again is no new state.
    for n in 1..=3 {
        let before = calls();
        let out = d.tokenctl(&["refresh", "cc"]);
        assert_code(&out, 5);
        assert!(stderr(&out).contains("invalid_client"), "{}", stderr(&out));
        assert_eq!(calls(), before + 1, "admin refresh {n}");
    }
    // The notify command is spawned before a refresh answers; give a
    // stray one time to show.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(notified(), "cc failing\n", "one change, one notification");
}

/// `status` for a user who is not an admin: the credentials it may use,
/// and nothing of the daemon's set-up (pid, socket paths, the store and
/// its errors, connections); on the main socket and the HTTP API alike.
/// An admin still sees everything.
#[test]
fn status_tells_a_user_only_about_its_credentials() {
    let Some(who) = other_user() else { return };
    let d = open_daemon();
    assert_ok(&d.tokenctl(&["allow", "up", "--user", USER]));
    let db = d.db.display().to_string();
    let socket = d.socket.display().to_string();

    let out = as_other(&d, who, &["status", "--json"], "");
    assert_ok(&out);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    for key in ["pid", "socket", "database", "connections"] {
        assert!(status[key].is_null(), "{key}: {status}");
    }
    let names: Vec<&str> = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["up"], "only the credential it may use");
    let text = stdout(&as_other(&d, who, &["status"], ""));
    for hidden in [&db, &socket, &d.pid().to_string()] {
        assert!(!text.contains(hidden.as_str()), "{hidden} in {text}");
    }
    assert!(text.contains("admins only"), "{text}");

    // The HTTP API's /v1/status answers the same.
    let http = d.http_socket();
    set_mode(&http, 0o666);
    let mut curl = Command::new("curl");
    curl.args(["-s", "--max-time", "20", "--unix-socket"])
        .arg(&http)
        .arg("http://localhost/v1/status");
    who.run_as(&mut curl);
    let out = run_with_timeout(curl, None, Duration::from_secs(30));
    let body: serde_json::Value =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    for key in ["pid", "socket", "database", "connections"] {
        assert!(body[key].is_null(), "{key}: {body}");
    }
    assert_eq!(body["credentials"].as_array().unwrap().len(), 1, "{body}");
    assert!(!stdout(&out).contains(&db), "{body}");

    // An admin sees everything, as before.
    let out = d.tokenctl(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["pid"], d.pid());
    assert_eq!(status["database"].as_str(), Some(db.as_str()));
    assert_eq!(status["socket"].as_str(), Some(socket.as_str()));
    assert_eq!(status["credentials"].as_array().unwrap().len(), 2);
}
