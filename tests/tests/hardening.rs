//! What a user who may use a credential, but is not an admin, and a writer
//! of the store without the key cannot do (issue 19; each test is a
//! finding of its adversarial review, which failed before its fix): force
//! provider calls by rejecting the token just served, fail a shared bearer
//! token for everyone, drive a storm of notify commands, learn where the
//! database is from a credential's reason, or reach an admin's terminal
//! with a name written into the store.

#![cfg(unix)]

use std::time::{Duration, Instant};
use tokend_tests::users::{USER, other_user};
use tokend_tests::*;

/// Item 8: a `reject` naming the token just served is paced like
/// `refresh` for a user who is not an admin: token + reject in a loop is
/// not one provider call per turn.
#[test]
fn a_user_forces_provider_calls_by_rejecting_the_token_it_was_just_served() {
    let Some(who) = other_user() else { return };
    let idp = tokend_tests::oidc::OidcServer::start(3600);
    let d = Daemon::start();
    let calls = || {
        idp.stats()["token_posts_by_grant"]["client_credentials"]
            .as_u64()
            .unwrap_or(0)
    };
    let started = Instant::now();
    assert_ok(&d.add_client_credentials(&idp, "cc", "tokend-cc-secret\n"));
    assert_ok(&d.tokenctl(&["allow", "cc", "--user", USER]));
    d.open_to_everyone();
    for _ in 0..10 {
        let out = d.tokenctl_as(who, &["token", "cc"], "");
        assert_ok(&out);
        let token = stdout(&out);
        let out = d.tokenctl_as(who, &["reject", "cc", "--token-stdin"], token.trim());
        assert_ok(&out);
    }
    let allowed = 1 + started.elapsed().as_secs() / 30;
    assert!(
        calls() <= allowed,
        "a non-admin made {} provider calls in {:?} ({allowed} allowed)",
        calls(),
        started.elapsed()
    );
}

/// Item 10: a user on a bearer credential's allow list (not its owner, not
/// an admin) does not mark it `failing` for everyone with git's `erase`:
/// without a check URL to confirm it with, the claim is only noted.
#[test]
fn an_allowed_user_marks_a_shared_bearer_failing_for_everyone() {
    let Some(who) = other_user() else { return };
    let d = Daemon::start();
    let args = ["add", "bearer", "forge", "--git-host", "git.example.test"];
    assert_ok(&d.tokenctl_stdin(&args, "forge-token-123"));
    assert_ok(&d.tokenctl(&["allow", "forge", "--user", USER]));
    d.open_to_everyone();
    let token = stdout(&d.tokenctl_as(who, &["token", "forge"], ""));
    let request = format!(
        "protocol=https\nhost=git.example.test\npassword={}\n\n",
        token.trim()
    );
    assert_ok(&d.tokenctl_as(who, &["git-credential", "forge", "erase"], &request));
    std::thread::sleep(Duration::from_millis(200));
    // The owner (root) still gets its token.
    let out = d.tokenctl(&["token", "forge"]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), "forge-token-123");
}

/// A loopback API that answers 200 to everything; counts requests.
fn ok_api() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
        }
    });
    (port, hits)
}

/// Items 7, 8, 10: a user who is not an admin cannot flip a shared bearer
/// between `failing` (git `erase`) and `ready` (`check`) in a loop: its
/// `erase` asks the API (at the user's pace), and its `check` is paced, so
/// the loop runs no notify command per turn and calls the API once.
#[test]
fn a_user_drives_a_notify_storm_with_erase_and_check() {
    let Some(who) = other_user() else { return };
    let (port, hits) = ok_api();
    let notify = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "notify_command = \"echo $TOKEND_CREDENTIAL $TOKEND_STATE >> {}\"\n",
        notify.path().display()
    );
    let d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    let check_url = format!("http://127.0.0.1:{port}/me");
    let args = ["add", "bearer", "forge", "--check-url", &check_url];
    assert_ok(&d.tokenctl_stdin(&args, "forge-token-123"));
    assert_ok(&d.tokenctl(&["allow", "forge", "--user", USER]));
    d.open_to_everyone();
    let turns = 8;
    for _ in 0..turns {
        let token = stdout(&d.tokenctl_as(who, &["token", "forge"], ""));
        let request = format!(
            "protocol=http\nhost=127.0.0.1:{port}\npassword={}\n\n",
            token.trim()
        );
        assert_ok(&d.tokenctl_as(who, &["git-credential", "forge", "erase"], &request));
        assert_ok(&d.tokenctl_as(who, &["check", "forge"], ""));
    }
    std::thread::sleep(Duration::from_secs(1));
    let notified = std::fs::read_to_string(notify.path()).unwrap();
    let n = notified.lines().count();
    eprintln!(
        "{n} notifications, {} API calls, log:\n{}",
        hits.load(std::sync::atomic::Ordering::SeqCst),
        tokend_tests::helpers::tail(&d.log_text(), 6)
    );
    assert!(
        n <= 2,
        "{n} notifications from a non-admin's loop:\n{notified}"
    );
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "the API was called once per turn"
    );
}

/// A writer of the store (without the key) renames a row to a name with
/// escape sequences and line breaks: the row is left out, so the name
/// reaches neither an admin's terminal (`list`) nor the notify command.
#[test]
fn a_name_written_into_the_store_reaches_the_admins_terminal_raw() {
    let notify = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "notify_command = \"printf '%s' \\\"$TOKEND_CREDENTIAL\\\" >> {}\"\n",
        notify.path().display()
    );
    let mut d = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    d.add_bearer("up", "static-token");
    d.stop();
    let conn = rusqlite::Connection::open(&d.db).expect("open the store");
    conn.execute_batch(
        "UPDATE credentials SET name = 'up' || char(27) || ']0;owned' || char(7) || char(10) || 'prod                     oauth2              ready' WHERE name = 'up';",
    )
    .expect("tamper");
    drop(conn);
    d.restart();
    let list = stdout(&d.tokenctl(&["list"]));
    std::thread::sleep(Duration::from_millis(500));
    let notified = std::fs::read_to_string(notify.path()).unwrap();
    eprintln!("list: {list:?}\nnotify got: {notified:?}");
    assert!(
        !list.contains('\u{1b}'),
        "an escape sequence in list: {list:?}"
    );
    assert!(!notified.contains('\u{1b}'), "and in notify: {notified:?}");
}

/// Item 9: the database's errors (with its URL) do not reach a user who is
/// not an admin through the reason of a credential it may use (`show`);
/// an admin still reads them.
#[test]
fn a_user_reads_the_database_url_and_its_errors_in_show() {
    let Some(who) = other_user() else { return };
    let mut pg = tokend_tests::postgres::PgCluster::start();
    let idp = tokend_tests::oidc::OidcServer::start(3600);
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("fleet.key");
    tokend_tests::helpers::write_key(&key);
    let d = Daemon::start_with(Options {
        store: Some(pg.url()),
        key_file: Some(key.clone()),
        ..Options::default()
    });
    assert_ok(&d.add_client_credentials(&idp, "cc", "tokend-cc-secret\n"));
    assert_ok(&d.tokenctl(&["allow", "cc", "--user", USER]));
    d.open_to_everyone();
    pg.stop();
    let admin = d.tokenctl(&["refresh", "cc"]);
    eprintln!("admin refresh: {}", stderr(&admin));
    std::thread::sleep(Duration::from_secs(2));
    let shown = d.tokenctl_as(who, &["show", "cc", "--json"], "");
    let text = format!("{}{}", stdout(&shown), stderr(&shown));
    eprintln!("user's show: {text}");
    let socket_dir = pg.socket_dir().display().to_string();
    assert!(
        !text.contains(&socket_dir) && !text.contains("PostgreSQL"),
        "the database in a non-admin's show: {text}"
    );
    let shown = stdout(&d.tokenctl(&["show", "cc", "--json"]));
    assert!(shown.contains(&socket_dir), "the admin is told: {shown}");
}
