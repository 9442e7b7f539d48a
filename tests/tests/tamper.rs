//! Rows bound to the key (issue 19, item 1), end to end: a writer of the
//! store without the sealing key changes the plain columns that steer a
//! secret (an endpoint URL, the client id) or decide who reads it (the
//! owner, the allow list) — in a fleet with `psql` while the members run,
//! on one host with SQL on the file while the daemon is stopped. Every
//! member then shows the credential `failing` with the reason, serves
//! nothing for it and sends nothing anywhere for it; `add --replace`
//! heals it.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokend_tests::helpers::{fleet_logs, write_key};
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::postgres::PgCluster;
use tokend_tests::*;

/// The reason every member shows (`store/binding.rs`).
const TAMPERED: &str = "its row in the store was changed without the sealing key";

/// How long a change in the database may take to reach every member.
const PROPAGATION: Duration = Duration::from_secs(2);

/// A listener on 127.0.0.1 that counts the connections made to it: the
/// attacker's endpoint, which must never be reached.
struct Attacker {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Attacker {
    fn start() -> Attacker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/steal", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Attacker { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn show(d: &Daemon, name: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&d.tokenctl(&["show", name, "--json"]))).unwrap_or_default()
}

/// Whether `d` shows `name` failing because its row was tampered with.
fn shown_tampered(d: &Daemon, name: &str) -> bool {
    let shown = show(d, name);
    shown["state"] == "failing" && shown["reason"].as_str() == Some(TAMPERED)
}

/// Whether `d` refuses the token of `name` as not usable (exit 5), saying why.
fn refused(d: &Daemon, name: &str) -> bool {
    let out = d.tokenctl(&["token", name]);
    out.status.code() == Some(5) && stderr(&out).contains(TAMPERED)
}

struct Fleet {
    members: Vec<Daemon>,
    pg: PgCluster,
    _keys: tempfile::TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let pg = PgCluster::start();
        let keys = tempfile::tempdir().expect("key dir");
        let key: PathBuf = keys.path().join("fleet.key");
        write_key(&key);
        let members = (0..2)
            .map(|_| {
                Daemon::start_with(Options {
                    config: Some("[refresh]\nstartup_spread_secs = 0\n".into()),
                    store: Some(pg.url()),
                    key_file: Some(key.clone()),
                    ..Options::default()
                })
            })
            .collect();
        Fleet {
            members,
            pg,
            _keys: keys,
        }
    }

    fn logs(&self) -> String {
        fleet_logs(&self.members, Some(&self.pg), 30)
    }

    /// Waits until every member serves `name`.
    fn served_everywhere(&self, name: &str) {
        for (i, m) in self.members.iter().enumerate() {
            assert!(
                eventually(PROPAGATION, || m
                    .tokenctl(&["token", name])
                    .status
                    .success()),
                "member {} does not serve {name}:{}",
                i + 1,
                self.logs()
            );
        }
    }
}

#[test]
fn fleet_rows_changed_in_psql_without_the_key_are_used_by_no_member_until_replaced() {
    let idp = OidcServer::start(3600);
    let attacker = Attacker::start();
    let fleet = Fleet::start();
    let (one, two) = (&fleet.members[0], &fleet.members[1]);
    assert_ok(&one.add_oauth(&idp, "app", &[]));
    assert_ok(&one.add_oauth(&idp, "client", &[]));
    one.login(&idp, "app");
    one.login(&idp, "client");
    for name in ["owner", "allowed", "check"] {
        one.tokenctl_stdin(
            &["add", "bearer", name, "--check-url", &idp.token_url()],
            "static-token",
        );
    }
    for name in ["app", "client", "owner", "allowed", "check"] {
        fleet.served_everywhere(name);
    }
    let refreshes = idp.refreshes();

    let steal = attacker.url.replace('\'', "");
    fleet.pg.psql(&format!(
        "UPDATE tokend.credentials SET settings = replace(settings, '{}', '{steal}') WHERE name = 'app';
         UPDATE tokend.credentials SET settings = replace(settings, 'tokend-test', 'evil-client') WHERE name = 'client';
         UPDATE tokend.credentials SET owner_uid = 1001 WHERE name = 'owner';
         UPDATE tokend.credentials SET allowed = 'user:1001' WHERE name = 'allowed';
         UPDATE tokend.credentials SET settings = replace(settings, '{}', '{steal}') WHERE name = 'check';",
        idp.token_url(),
        idp.token_url(),
    ));
    for name in ["app", "client", "owner", "allowed", "check"] {
        for (i, m) in fleet.members.iter().enumerate() {
            assert!(
                eventually(PROPAGATION, || shown_tampered(m, name)),
                "member {} does not show {name} tampered with: {}{}",
                i + 1,
                show(m, name),
                fleet.logs()
            );
            assert!(refused(m, name), "member {} still serves {name}", i + 1);
        }
    }
    // Nothing is sent for them, whoever asks and however.
    for m in [one, two] {
        for name in ["app", "client"] {
            assert_code(&m.tokenctl(&["refresh", name]), 5);
            assert_code(&m.tokenctl(&["reject", name]), 5);
        }
        assert_code(&m.tokenctl(&["check", "check"]), 5);
        let login = m.tokenctl(&["login", "app", "--no-browser", "--timeout", "5"]);
        assert_code(&login, 5);
        let allow = m.tokenctl(&["allow", "owner", "--user", "1002"]);
        assert!(
            !allow.status.success() && stderr(&allow).contains(TAMPERED),
            "allow changed a tampered row: {}",
            stderr(&allow)
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(attacker.hits(), 0, "the attacker's URL was reached");
    assert_eq!(
        idp.refreshes(),
        refreshes,
        "the provider was asked for a refresh"
    );
    for m in [one, two] {
        assert!(
            m.log_text().contains(TAMPERED),
            "the log does not say why: {}",
            fleet.logs()
        );
    }

    // An admin heals a credential by adding it again, on any member.
    two.tokenctl_stdin(&["add", "bearer", "owner", "--replace"], "new-token");
    for m in [one, two] {
        assert!(
            eventually(PROPAGATION, || m
                .tokenctl(&["token", "owner"])
                .status
                .success()),
            "the replaced credential is not served:{}",
            fleet.logs()
        );
        assert_eq!(stdout(&m.tokenctl(&["token", "owner"])).trim(), "new-token");
    }
}

#[test]
fn a_sqlite_row_changed_while_the_daemon_was_stopped_is_not_used_and_the_others_are() {
    let attacker = Attacker::start();
    let mut d = Daemon::start();
    for name in ["url", "owner", "fine"] {
        d.tokenctl_stdin(
            &[
                "add",
                "bearer",
                name,
                "--check-url",
                "https://api.example/me",
            ],
            "static-token",
        );
    }
    assert_ok(&d.tokenctl(&["allow", "fine", "--user", "1002"]));
    d.stop();
    let conn = rusqlite::Connection::open(&d.db).expect("open the store");
    conn.execute_batch(&format!(
        "UPDATE credentials SET settings = replace(settings, 'https://api.example/me', '{}') WHERE name = 'url';
         UPDATE credentials SET owner_uid = 1001 WHERE name = 'owner';",
        attacker.url
    ))
    .expect("tamper");
    drop(conn);
    d.restart();
    for name in ["url", "owner"] {
        assert!(shown_tampered(&d, name), "{name}: {}", show(&d, name));
        assert!(refused(&d, name), "{name} is still served");
    }
    assert_code(&d.tokenctl(&["check", "url"]), 5);
    assert_eq!(
        stdout(&d.tokenctl(&["token", "fine"])).trim(),
        "static-token"
    );
    assert!(d.log_text().contains(TAMPERED));
    assert_eq!(attacker.hits(), 0, "the attacker's URL was reached");
    d.tokenctl_stdin(&["add", "bearer", "url", "--replace"], "again");
    assert_eq!(stdout(&d.tokenctl(&["token", "url"])).trim(), "again");
}
