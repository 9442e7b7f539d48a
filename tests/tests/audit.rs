//! The audit trail (docs/SECURITY.md, "The audit trail") end to end: the
//! real daemon, `tokenctl` and `curl` as three local users, the entries
//! read back with `tokenctl audit` and straight from the store's table.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::{Command, Output};
use std::time::Duration;
use tokend_tests::postgres::PgCluster;
use tokend_tests::users::{Other, other_user};
use tokend_tests::*;

const TOKEN: &str = "upp-audit-e2e-5b2e8c41";

/// `curl` GET of `path` on the daemon's `http.sock`, as `who`: the status.
fn curl_as(d: &Daemon, path: &str, who: Other) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.arg("--unix-socket")
        .arg(d.http_socket())
        .args(["-s", "-S", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "30"])
        .arg(format!("http://localhost{path}"));
    who.run_as(&mut cmd);
    let out = run_with_timeout(cmd, None, Duration::from_secs(60));
    assert_ok(&out);
    stdout(&out).trim().parse().expect("curl prints the status")
}

/// `nobody`: a third local user, allowed nothing.
fn nobody() -> Other {
    let out = Command::new("getent")
        .args(["passwd", "nobody"])
        .output()
        .expect("getent");
    let line = String::from_utf8(out.stdout).expect("UTF-8");
    let fields: Vec<&str> = line.trim().split(':').collect();
    Other {
        uid: fields[2].parse().expect("nobody's uid"),
        gid: fields[3].parse().expect("nobody's gid"),
    }
}

/// `tokenctl audit --json ARGS` as root: one JSON object per line.
fn audit_json(d: &Daemon, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json", "audit"];
    all.extend(args);
    let out = d.tokenctl(&all);
    assert_ok(&out);
    lines(&out)
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The entries of `op` (oldest first).
fn of<'a>(entries: &'a [serde_json::Value], op: &str) -> Vec<&'a serde_json::Value> {
    entries.iter().filter(|e| e["op"] == op).collect()
}

/// Every column of every row of the SQLite store's audit table, as text.
fn audit_table(d: &Daemon) -> String {
    let db =
        rusqlite::Connection::open_with_flags(&d.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the store");
    let mut rows = db
        .prepare(
            "SELECT at_ms, credential, op, outcome, reason, uid, user_name, pid, exe FROM audit",
        )
        .unwrap();
    let rows = rows
        .query_map([], |r| {
            let mut line = String::new();
            for i in 0..9 {
                let v: rusqlite::types::Value = r.get(i)?;
                line += &format!("{v:?}|");
            }
            Ok(line)
        })
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_token_by_root_a_curl_by_an_allowed_user_and_a_refusal_are_recorded_with_their_processes() {
    let Some(who) = other_user() else { return };
    let third = nobody();
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    d.open_to_everyone();
    set_mode(&d.http_socket(), 0o666);
    assert_ok(&d.tokenctl(&["allow", "up", "--user", &who.uid.to_string()]));

    let out = d.tokenctl(&["token", "up"]);
    assert_ok(&out);
    assert_eq!(stdout(&out).trim(), TOKEN);
    assert_eq!(curl_as(&d, "/v1/credentials/up/token", who), 200);
    assert_eq!(curl_as(&d, "/v1/credentials/up/token", third), 403);
    assert_eq!(curl_as(&d, "/v1/proxy/up/x", third), 403);

    let entries = audit_json(&d, &["up"]);
    let token = of(&entries, "token");
    assert_eq!(token.len(), 1, "{entries:#?}");
    let t = token[0];
    assert_eq!(t["outcome"], "ok");
    assert_eq!(t["uid"], 0);
    assert_eq!(t["user"], "root");
    assert!(t["pid"].as_i64().unwrap() > 0, "{t}");
    assert!(t["exe"].as_str().unwrap().ends_with("/tokenctl"), "{t}");

    let http = of(&entries, "http");
    assert_eq!(http.len(), 2, "{entries:#?}");
    let (allowed, refused) = (http[0], http[1]);
    assert_eq!(allowed["outcome"], "ok");
    assert_eq!(allowed["uid"], who.uid);
    assert_eq!(allowed["user"], users::USER);
    assert!(allowed["pid"].as_i64().unwrap() > 0, "{allowed}");
    assert!(
        allowed["exe"].as_str().unwrap().ends_with("/curl"),
        "{allowed}"
    );
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["uid"], third.uid);
    assert_eq!(refused["credential"], "up");
    assert!(
        refused["exe"].as_str().unwrap().ends_with("/curl"),
        "{refused}"
    );
    assert_eq!(
        refused["reason"], "permission_denied",
        "a fixed reason, never a sentence"
    );

    let proxy = of(&entries, "proxy");
    assert_eq!(proxy.len(), 1, "{entries:#?}");
    assert_eq!(
        (&proxy[0]["outcome"], &proxy[0]["uid"]),
        (&"refused".into(), &third.uid.into())
    );

    // The administrative changes before them, by root.
    assert_eq!(of(&entries, "add")[0]["outcome"], "ok");
    assert_eq!(of(&entries, "allow")[0]["uid"], 0);

    // The lines a person reads.
    let out = d.tokenctl(&["audit", "up"]);
    assert_ok(&out);
    let text = stdout(&out);
    let line = |op: &str, outcome: &str, uid: u32| {
        text.lines()
            .find(|l| l.contains(&format!(" up {op} {outcome} uid={uid}(")))
            .unwrap_or_else(|| panic!("no {op} {outcome} line of uid {uid} in:\n{text}"))
            .to_string()
    };
    assert!(line("token", "ok", 0).contains("exe=/"));
    assert!(line("http", "ok", who.uid).contains("/curl"));
    assert!(line("http", "refused", third.uid).contains("/curl"));

    // Never the token: not in the output, not in the table, not anywhere
    // in the store's files.
    assert!(!text.contains(TOKEN));
    assert!(!stdout(&d.tokenctl(&["--json", "audit"])).contains(TOKEN));
    let table = audit_table(&d);
    assert!(
        table.contains("curl"),
        "the table holds the entries:\n{table}"
    );
    assert!(!table.contains(TOKEN), "{table}");
    for file in ["tokend.db", "tokend.db-wal"] {
        let path = d.db.with_file_name(file);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "{} holds the token in the clear",
                path.display()
            );
        }
    }
}

#[test]
fn each_way_to_a_token_is_named_and_filters_narrow_the_trail() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    d.add_bearer("other", "upp-other-token");
    assert_ok(&d.tokenctl(&["header", "up"]));
    assert_ok(&d.tokenctl(&["exec", "up", "--", "true"]));
    assert_ok(&d.tokenctl(&["exec-credential", "up"]));
    assert_ok(&d.tokenctl(&["token", "other"]));
    assert_code(&d.tokenctl(&["token", "nope"]), 5);
    // The proxy takes the token before it sends (here to a closed port).
    assert_ok(&d.tokenctl(&["edit", "up", "--api-url", "http://127.0.0.1:9/api"]));
    let mut cmd = Command::new("curl");
    cmd.arg("--unix-socket")
        .arg(d.http_socket())
        .args(["-s", "-o", "/dev/null", "--max-time", "30"])
        .arg("http://localhost/v1/proxy/up/x");
    run_with_timeout(cmd, None, Duration::from_secs(60));
    assert_ok(&d.tokenctl(&["rm", "other"]));
    // One process asking twice: one entry, counted twice.
    let mut cmd = Command::new("curl");
    let url = "http://localhost/v1/credentials/up/token";
    cmd.arg("--unix-socket").arg(d.http_socket()).args([
        "-s",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "--max-time",
        "30",
        url,
        url,
    ]);
    assert_ok(&run_with_timeout(cmd, None, Duration::from_secs(60)));

    let ops: Vec<String> = audit_json(&d, &["up"])
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            "add ok",
            "header ok",
            "exec ok",
            "kube ok",
            "edit ok",
            "proxy ok",
            "http ok"
        ],
        "the credential's own entries, oldest first"
    );
    let entries = audit_json(&d, &["up"]);
    assert_eq!(of(&entries, "http")[0]["count"], 2);
    assert_eq!(of(&entries, "header")[0]["count"], 1);
    let out = d.tokenctl(&["audit", "up"]);
    assert!(
        stdout(&out).contains(" up http ok uid=0(root) "),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains(" count=2"), "{}", stdout(&out));
    let all = audit_json(&d, &[]);
    let nope = all
        .iter()
        .find(|e| e["credential"] == "nope")
        .expect("{all:#?}");
    assert_eq!(
        (&nope["op"], &nope["outcome"]),
        (&"token".into(), &"not_found".into())
    );
    assert_eq!(of(&all, "rm")[0]["credential"], "other");
    assert_eq!(audit_json(&d, &["--limit", "2"]).len(), 2);
    assert!(audit_json(&d, &["--user", "no-such-user"]).is_empty());
    assert_eq!(audit_json(&d, &["--user", "0"]).len(), all.len());
    assert_eq!(
        audit_json(&d, &["--user", "root", "--since", "1h"]).len(),
        all.len()
    );
    assert!(audit_json(&d, &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    let out = d.tokenctl(&["audit", "--since", "yesterday"]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("--since \"yesterday\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_owner_reads_the_entries_of_its_own_credentials_only() {
    let Some(who) = other_user() else { return };
    // `who` is an admin while it adds `mine` (so owns it), then is not.
    let d = Daemon::start_with(Options {
        config: Some(format!("admin_group = \"{}\"\n", who.gid)),
        ..Options::default()
    });
    d.open_to_everyone();
    d.add_bearer("up", TOKEN);
    assert_ok(&d.tokenctl_as(who, &["add", "bearer", "mine"], "upp-mine"));
    std::fs::write(&d.config, "").unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_for_log("config reloaded");
    assert_ok(&d.tokenctl(&["token", "up"]));
    assert_ok(&d.tokenctl(&["allow", "up", "--user", &who.uid.to_string()]));
    assert_ok(&d.tokenctl_as(who, &["token", "mine"], ""));
    assert_ok(&d.tokenctl_as(who, &["token", "up"], ""));

    let out = d.tokenctl_as(who, &["--json", "audit"], "");
    assert_ok(&out);
    let seen = lines(&out);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|e| e["credential"] == "mine"),
        "only its own credential's entries, though it used up too: {seen:#?}"
    );
    assert_eq!(of(&seen, "token").len(), 1);
    let out = d.tokenctl_as(who, &["audit", "up"], "");
    assert_code(&out, 4);
    assert!(
        stderr(&out).contains("may not read the audit trail"),
        "{}",
        stderr(&out)
    );
    // An admin reads both.
    let all = audit_json(&d, &[]);
    assert!(
        all.iter()
            .any(|e| e["credential"] == "up" && e["uid"] == who.uid)
    );
}

#[test]
fn with_the_audit_trail_off_nothing_is_recorded() {
    let d = Daemon::start_with(Options {
        config: Some("[audit]\nenabled = false\n".into()),
        ..Options::default()
    });
    d.add_bearer("up", TOKEN);
    assert_ok(&d.tokenctl(&["token", "up"]));
    assert!(audit_json(&d, &[]).is_empty());
    assert_eq!(audit_table(&d), "");
}

#[test]
fn a_fleets_trail_is_one_table_naming_the_member_that_answered() {
    let pg = PgCluster::start();
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("fleet.key");
    helpers::write_key(&key);
    let members: Vec<Daemon> = (0..2)
        .map(|_| {
            Daemon::start_with(Options {
                store: Some(pg.url()),
                key_file: Some(key.clone()),
                ..Options::default()
            })
        })
        .collect();
    members[0].add_bearer("up", TOKEN);
    // The other member learns of it from the database's notification.
    let out = (0..100)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            members[1].tokenctl(&["token", "up"])
        })
        .find(|o| o.status.success())
        .expect("the second member serves the credential");
    assert_eq!(stdout(&out).trim(), TOKEN);
    assert_ok(&members[0].tokenctl(&["token", "up"]));

    // The other member's entry is written by its own writer, within a
    // second or so.
    let ok_tokens = |entries: &[serde_json::Value]| {
        of(entries, "token")
            .into_iter()
            .filter(|e| e["outcome"] == "ok")
            .cloned()
            .collect::<Vec<_>>()
    };
    let entries = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            audit_json(&members[0], &["up"])
        })
        .find(|entries| ok_tokens(entries).len() >= 2)
        .expect("both members' entries in the table");
    let tokens = ok_tokens(&entries);
    assert_eq!(tokens.len(), 2, "{entries:#?}");
    let names: Vec<&str> = tokens
        .iter()
        .map(|e| e["member"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("tokend:")), "{names:?}");
    assert_ne!(names[0], names[1], "each entry names its own member");
    let table = pg.psql("SELECT string_agg(concat_ws('|', member, credential, op, outcome, uid, user_name, pid, exe, reason), E'\\n') FROM tokend.audit");
    assert!(table.contains("tokenctl"), "{table}");
    assert!(!table.contains(TOKEN), "{table}");
}

/// An entry as the request path would queue it, for the store-level test.
fn entry(at_ms: i64, credential: &str, uid: u32, user: &str) -> tokend_proto::AuditEntry {
    tokend_proto::AuditEntry {
        at_ms,
        credential: Some(credential.into()),
        op: "token".into(),
        outcome: "ok".into(),
        reason: None,
        uid,
        user: Some(user.into()),
        pid: Some(7),
        exe: Some("/usr/bin/tokenctl".into()),
        member: None,
        count: 3,
        incarnation: Some(11),
    }
}

#[test]
fn the_postgresql_table_is_read_filtered_and_pruned_like_sqlites() {
    use tokend::store::Backend;
    use tokend::store::audit::{AuditFilter, Retention, UserFilter};
    use tokend::store::postgres::{PgOptions, PgStore};
    use tokend::store::seal::Sealer;
    let pg = PgCluster::start();
    let open = || {
        let options = PgOptions {
            lock_wait: Duration::from_millis(500),
            hold_limit: Duration::from_secs(30),
            lock_connections: 2,
        };
        PgStore::open(&pg.url(), None, Sealer::from_key(&[7; 32]), options).expect("open")
    };
    let (a, b) = (open(), open());
    a.append_audit(&[entry(1000, "x", 0, "root"), entry(2000, "y", 1001, "alice")])
        .unwrap();
    b.append_audit(&[entry(3000, "x", 1001, "alice")]).unwrap();
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let read = |f: &AuditFilter| a.read_audit(f).unwrap();
    let entries = read(&all);
    assert_eq!(
        entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        [1000, 2000, 3000]
    );
    assert_eq!(entries[0].count, 3);
    assert_eq!(entries[0].exe.as_deref(), Some("/usr/bin/tokenctl"));
    let (ma, mb) = (&entries[0].member, &entries[2].member);
    assert!(ma.as_deref().is_some_and(|m| m.starts_with("tokend:")));
    assert_ne!(ma, mb, "each member's name");
    let only = |f: AuditFilter| read(&f).iter().map(|e| e.at_ms).collect::<Vec<_>>();
    let x = AuditFilter {
        credentials: Some(vec!["x".into()]),
        ..all.clone()
    };
    assert_eq!(only(x), [1000, 3000]);
    let nothing = AuditFilter {
        credentials: Some(vec![]),
        ..all.clone()
    };
    assert!(only(nothing).is_empty());
    let alice = AuditFilter {
        user: Some(UserFilter::parse("alice")),
        since_ms: Some(2500),
        ..all.clone()
    };
    assert_eq!(only(alice), [3000]);
    let root = AuditFilter {
        user: Some(UserFilter::parse("0")),
        ..all.clone()
    };
    assert_eq!(only(root), [1000]);
    assert_eq!(
        only(AuditFilter {
            limit: 1,
            ..all.clone()
        }),
        [3000]
    );
    let owner = AuditFilter {
        credentials: Some(vec!["x".into()]),
        incarnations: Some(vec![12]),
        ..all.clone()
    };
    assert!(only(owner).is_empty(), "another incarnation's entries");
    // How old an entry is goes by the database's clock: these are from
    // 1970, one is from now.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    b.append_audit(&[entry(now, "x", 0, "root"), entry(now + 1, "x", 0, "root")])
        .unwrap();
    let gone = b
        .prune_audit(&Retention {
            keep_ms: 86_400_000,
            max_rows: 100,
        })
        .unwrap();
    assert_eq!(gone, 3);
    let gone = b
        .prune_audit(&Retention {
            keep_ms: 86_400_000,
            max_rows: 1,
        })
        .unwrap();
    assert_eq!(gone, 1);
    assert_eq!(only(all), [now + 1]);
}

#[test]
fn a_postgresql_batch_with_an_entry_the_database_refuses_writes_the_others() {
    use tokend::store::Backend;
    use tokend::store::audit::AuditFilter;
    use tokend::store::postgres::{PgOptions, PgStore};
    use tokend::store::seal::Sealer;
    let pg = PgCluster::start();
    let options = PgOptions {
        lock_wait: Duration::from_millis(500),
        hold_limit: Duration::from_secs(30),
        lock_connections: 2,
    };
    let store = PgStore::open(&pg.url(), None, Sealer::from_key(&[7; 32]), options).expect("open");
    // A NUL is refused by PostgreSQL's text (SQLSTATE 22021); the request
    // path never stores one (it escapes it), but no entry may block the
    // trail for good.
    let bad = entry(2000, "a\0b", 0, "root");
    let dropped = store
        .append_audit(&[
            entry(1000, "x", 0, "root"),
            bad,
            entry(3000, "y", 0, "root"),
        ])
        .expect("the good entries are written");
    assert_eq!(dropped, 1);
    let read = store
        .read_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        read.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
        [1000, 3000]
    );
}

/// Sends `request` on a connection of its own, as a client that validates
/// nothing would.
fn raw_request(d: &Daemon, request: &tokend_proto::Request) -> tokend_proto::Response {
    use tokend_proto::{Hello, HelloReply, read_frame, write_frame};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write_frame(&mut s, &Hello::current()).unwrap();
    let _: HelloReply = read_frame(&mut s).unwrap();
    write_frame(&mut s, request).unwrap();
    read_frame(&mut s).unwrap()
}

#[test]
fn a_name_with_a_nul_and_a_newline_is_stored_escaped_and_blocks_no_fleet_trail() {
    let pg = PgCluster::start();
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("fleet.key");
    helpers::write_key(&key);
    let d = Daemon::start_with(Options {
        store: Some(pg.url()),
        key_file: Some(key),
        ..Options::default()
    });
    d.add_bearer("up", TOKEN);
    let answer = raw_request(
        &d,
        &tokend_proto::Request::Token {
            name: "a\0b\nforged \u{202e}line".into(),
            min_valid_secs: 0,
        },
    );
    assert!(
        matches!(answer, tokend_proto::Response::Error(_)),
        "{answer:?}"
    );
    assert_ok(&d.tokenctl(&["token", "up"]));
    let entries = audit_json(&d, &[]);
    let tokens = of(&entries, "token");
    assert!(
        tokens
            .iter()
            .any(|e| e["credential"] == "up" && e["outcome"] == "ok"),
        "the trail goes on: {entries:#?}"
    );
    assert!(
        tokens
            .iter()
            .any(|e| e["credential"] == "a\\u{0}b\\u{a}forged \\u{202e}line"
                && e["outcome"] == "not_found"),
        "{entries:#?}"
    );
    let table = pg.psql("SELECT string_agg(credential, '|') FROM tokend.audit");
    assert!(table.contains("a\\u{0}b"), "{table}");
    // Nothing was dropped or held back.
    assert!(!d.log_text().contains("could not write the audit trail"));
}

#[test]
fn a_new_owner_of_a_name_never_reads_the_entries_of_the_one_before() {
    let Some(carol) = other_user() else { return };
    // carol is an admin while it adds `future` (so owns it), then is not.
    let d = Daemon::start_with(Options {
        config: Some(format!("admin_group = \"{}\"\n", carol.gid)),
        ..Options::default()
    });
    d.open_to_everyone();
    // root's `future`, used, then removed.
    d.add_bearer("future", "upp-old-future");
    assert_ok(&d.tokenctl(&["token", "future"]));
    assert_ok(&d.tokenctl(&["rm", "future"]));
    // Asked for while there is none: not_found.
    assert_code(&d.tokenctl_as(carol, &["token", "future"], ""), 5);
    assert_code(&d.tokenctl(&["token", "future"]), 5);
    // carol's `future`.
    assert_ok(&d.tokenctl_as(carol, &["add", "bearer", "future"], "upp-new-future"));
    std::fs::write(&d.config, "").unwrap();
    signal(d.pid(), libc::SIGHUP);
    d.wait_for_log("config reloaded");
    assert_ok(&d.tokenctl_as(carol, &["token", "future"], ""));

    for args in [&["--json", "audit"][..], &["--json", "audit", "future"][..]] {
        let out = d.tokenctl_as(carol, args, "");
        assert_ok(&out);
        let seen = lines(&out);
        let ops: Vec<(&str, &str)> = seen
            .iter()
            .map(|e| (e["op"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
            .collect();
        assert_eq!(ops, [("add", "ok"), ("token", "ok")], "{seen:#?}");
        let incarnation = &seen[0]["incarnation"];
        assert!(incarnation.is_i64(), "{seen:#?}");
        assert!(seen.iter().all(|e| &e["incarnation"] == incarnation));
    }
    // An admin reads every incarnation of the name, and the not_found.
    let all = audit_json(&d, &["future"]);
    assert_eq!(of(&all, "token").len(), 4, "{all:#?}");
    assert!(
        all.iter()
            .any(|e| e["outcome"] == "not_found" && e["incarnation"].is_null())
    );
}

#[test]
fn no_secret_in_a_refused_url_reaches_the_trail() {
    let d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let url = "https://u:PW@api.example/x?q=SECRET";
    let outs = [
        d.tokenctl(&["edit", "up", "--api-url", url]),
        d.tokenctl(&["edit", "up", "--api-url", "ftp://u:PW@h/?q=SECRET"]),
        d.tokenctl_stdin(
            &[
                "add",
                "bearer",
                "new",
                "--api-url",
                "ftp://u:PW@h/?q=SECRET",
            ],
            "upp-new",
        ),
    ];
    // The answers quote the URL whole (the user typed it), so the error's
    // sentence would carry the secrets into the trail.
    assert!(outs.iter().all(|o| stderr(o).contains("SECRET")));
    let entries = audit_json(&d, &[]);
    assert!(
        entries
            .iter()
            .any(|e| e["outcome"] == "failed" && e["reason"] == "invalid_argument"),
        "a refused URL is recorded, by its kind: {entries:#?}"
    );
    let text = format!("{entries:?}\n{}", audit_table(&d));
    assert!(!text.contains("PW") && !text.contains("SECRET"), "{text}");
    let out = d.tokenctl(&["audit"]);
    assert_ok(&out);
    assert!(!stdout(&out).contains("PW") && !stdout(&out).contains("SECRET"));
}

#[test]
fn a_proxied_request_answered_while_the_daemon_stops_is_recorded() {
    use std::io::{Read, Write};
    // An API that answers 401 a while after the request came: the proxy
    // then rejects the token, after the daemon was told to stop.
    let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = api.local_addr().unwrap().port();
    let (came_tx, came) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = api.accept().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        came_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let _ = conn.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n");
    });
    let mut d = Daemon::start();
    d.add_bearer("up", TOKEN);
    let api_url = format!("http://127.0.0.1:{port}/");
    assert_ok(&d.tokenctl(&["edit", "up", "--api-url", &api_url]));
    let mut cmd = Command::new("curl");
    cmd.arg("--unix-socket")
        .arg(d.http_socket())
        .args(["-s", "-o", "/dev/null", "--max-time", "30"])
        .arg("http://localhost/v1/proxy/up/x");
    let curl = std::thread::spawn(move || run_with_timeout(cmd, None, Duration::from_secs(60)));
    came.recv_timeout(Duration::from_secs(30))
        .expect("the proxied request reaches the API");
    assert!(d.stop().success());
    curl.join().unwrap();
    let table = audit_table(&d);
    assert!(
        table.lines().any(|l| l.contains("\"reject\"")),
        "the reject made while stopping is in the trail:\n{table}"
    );
}
