//! A fleet of tokend daemons on one PostgreSQL store (issue 12), end to end:
//! three real daemons started with `--store postgresql://…` and one shared
//! `--key-file` on a private PostgreSQL cluster (tests/src/postgres.rs), and
//! the real OAuth2 server, which rotates the refresh token on every refresh
//! and revokes the grant when a rotated one comes back. Credentials added,
//! logged in or removed on one member are seen by the others; token traffic
//! spread over the members costs one refresh per rotation and never a reuse,
//! through `kill -9`s of members and a database restart; a `pg_dump` holds
//! no secret; a member with another sealing key refuses to start.
//!
//! Every test has its own cluster, daemons and OAuth2 server, so they run in
//! parallel. A failing run of the randomised tests can be replayed with the
//! seed it prints: `TOKEND_FLEET_SEED=N`.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokend_tests::helpers::{Rng, fleet_logs, tail, write_key};
use tokend_tests::oidc::{OidcServer, eventually};
use tokend_tests::postgres::PgCluster;
use tokend_tests::*;

/// Every member's config: due credentials are refreshed at once at start
/// (no spread), a token request waits at most 5 s for a refresh, and a
/// request to the provider takes at most 2 s, so that a journal mark's
/// lease (1 s + 2 s + 3 s, docs/RULES.md) is shorter than that wait plus
/// what is left of a 6-second token when it is refreshed.
const MEMBER_CONFIG: &str =
    "[refresh]\nstartup_spread_secs = 0\nwait_secs = 5\nhttp_timeout_secs = 2\n";

/// A journal mark's lease with [`MEMBER_CONFIG`]: until it ends no other
/// member sends or introspects the refresh token it marked.
const LEASE: Duration = Duration::from_secs(6);

/// How long a change on one member may take to be served by the others.
const PROPAGATION: Duration = Duration::from_secs(2);

/// Three (or more) tokend daemons sharing one PostgreSQL database and one
/// sealing key. Members are numbered from 1 in messages, as in the issue.
struct Fleet {
    // Dropped first: the daemons stop before their database does.
    members: Vec<Daemon>,
    pg: PgCluster,
    /// Holds the shared key file.
    _keys: tempfile::TempDir,
    key: PathBuf,
}

impl Fleet {
    /// A fresh cluster and `n` members started one after the other.
    fn start(n: usize) -> Fleet {
        let pg = PgCluster::start();
        let keys = tempfile::tempdir().expect("key dir");
        let key = keys.path().join("fleet.key");
        write_key(&key);
        let mut fleet = Fleet {
            members: Vec::new(),
            pg,
            _keys: keys,
            key,
        };
        for _ in 0..n {
            fleet.add_member();
        }
        fleet
    }

    /// How a member of this fleet starts: the store URL, the key, no `--db`.
    fn options(&self, key: &Path) -> Options {
        Options {
            config: Some(MEMBER_CONFIG.into()),
            store: Some(self.pg.url()),
            key_file: Some(key.to_path_buf()),
            ..Options::default()
        }
    }

    /// Starts one more member and waits until it answers.
    fn add_member(&mut self) -> &Daemon {
        let member = Daemon::start_with(self.options(&self.key));
        self.members.push(member);
        self.members.last().expect("just pushed")
    }

    /// Member `n`, counted from 1.
    fn member(&self, n: usize) -> &Daemon {
        &self.members[n - 1]
    }

    /// The end of every member's log and of the server's, for failure messages.
    fn logs(&self) -> String {
        fleet_logs(&self.members, Some(&self.pg), 40)
    }
}

/// The end of each member's log, for failure messages.
fn member_logs(members: &[Daemon]) -> String {
    fleet_logs(members, None, 40)
}

/// `tokenctl token NAME` on `d`: the token, or tokenctl's whole output.
fn token(d: &Daemon, name: &str) -> Result<String, Output> {
    let out = d.tokenctl(&["token", name]);
    if out.status.success() {
        Ok(stdout(&out).trim().to_string())
    } else {
        Err(out)
    }
}

fn show(d: &Daemon, name: &str) -> serde_json::Value {
    serde_json::from_str(&stdout(&d.tokenctl(&["show", name, "--json"]))).unwrap_or_default()
}

/// The line of `tokenctl status` that names the PostgreSQL store (and its
/// state: `(connected)`, `(reconnecting since …)`), or "" if there is none.
fn store_line(d: &Daemon) -> String {
    stdout(&d.tokenctl(&["status"]))
        .lines()
        .find(|l| l.contains("postgresql://") || l.contains("postgres://"))
        .unwrap_or_default()
        .to_string()
}

/// Polls `check` every 50 ms for up to `limit`; how long it took to hold.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds since the epoch, with fractions.
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The traffic's generator, seeded from `TOKEND_FLEET_SEED` (printed).
fn fleet_rng() -> Rng {
    Rng(seed_from_env("TOKEND_FLEET_SEED"))
}

/// A fleet of three with the auth-code credential `up` of `idp` (its
/// introspection endpoint given, so that a refresh cut short is settled as
/// on one host) added on member 1 and logged in through member `login_on`;
/// returns once every member serves the same token.
fn fleet_logged_in(idp: &OidcServer, login_on: usize) -> Fleet {
    let fleet = Fleet::start(3);
    let introspection = idp.introspection_url();
    assert_ok(
        &fleet
            .member(1)
            .add_oauth(idp, "up", &["--introspection-url", &introspection]),
    );
    assert!(
        within(PROPAGATION, || fleet
            .member(login_on)
            .tokenctl(&["show", "up"])
            .status
            .success())
        .is_some(),
        "member {login_on} never learned of the credential added on member 1:{}",
        fleet.logs()
    );
    fleet.member(login_on).login(idp, "up");
    let served = token(fleet.member(login_on), "up").expect("served after the login");
    for n in 1..=3 {
        assert!(
            within(PROPAGATION, || token(fleet.member(n), "up").as_deref()
                == Ok(&served))
            .is_some(),
            "member {n} does not serve the token of the login through member {login_on}:{}",
            fleet.logs()
        );
    }
    fleet
}

/// What a stretch of traffic saw.
#[derive(Default)]
struct Traffic {
    requests: u32,
    distinct_tokens: HashSet<String>,
    kills: u32,
    /// Logins asked for after a kill cut a refresh short *after* the
    /// provider rotated (introspection says so): the documented outcome on
    /// one host as in a fleet, replayed as crash.rs does.
    logins: u32,
}

enum Event {
    /// Token request number i (its member is i mod 3, or the next one up).
    Request(usize),
    Kill(usize),
    Restart(usize),
}

/// `requests` token requests of `up`, evenly over `span`, spread over the
/// three members in turn, each token checked at once with the server's
/// introspection; with `kills` `kill -9`s of random members at random
/// moments, each member restarted 0.5–1.5 s later and asked for a token at
/// once. Panics on any token not served or not accepted.
fn run_traffic(
    fleet: &mut Fleet,
    idp: &OidcServer,
    requests: usize,
    span: Duration,
    kills: usize,
    rng: &mut Rng,
) -> Traffic {
    let mut events: Vec<(Duration, Event)> = (0..requests)
        .map(|i| (span.mul_f64(i as f64 / requests as f64), Event::Request(i)))
        .collect();
    if kills > 0 {
        // One kill in each slice of the span, at a random moment of its
        // first part, the member back before the next slice.
        let slice = span / kills as u32;
        let room = slice.saturating_sub(Duration::from_millis(2500));
        for k in 0..kills {
            let member = rng.below(fleet.members.len() as u64) as usize;
            let at = slice * k as u32
                + Duration::from_millis(500)
                + Duration::from_millis(rng.below(room.as_millis() as u64 + 1));
            let back = at + Duration::from_millis(500 + rng.below(1000));
            events.push((at, Event::Kill(member)));
            events.push((back, Event::Restart(member)));
        }
    }
    events.sort_by_key(|(at, _)| *at);
    let mut seen = Traffic::default();
    let mut down = vec![false; fleet.members.len()];
    let started = Instant::now();
    for (at, event) in events {
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let t = started.elapsed().as_secs_f32();
        match event {
            Event::Kill(m) => {
                fleet.members[m].kill9();
                down[m] = true;
                seen.kills += 1;
                eprintln!("{t:.1} s: kill -9 of member {}", m + 1);
            }
            Event::Restart(m) => {
                fleet.members[m].restart();
                down[m] = false;
                eprintln!("{t:.1} s: member {} restarted", m + 1);
                let what = format!("member {} right after its restart", m + 1);
                served_and_accepted(fleet, idp, m, &what, &mut seen);
            }
            Event::Request(i) => {
                let n = fleet.members.len();
                let m = (0..n)
                    .map(|k| (i + k) % n)
                    .find(|&m| !down[m])
                    .expect("a member is up");
                let what = format!("request {i} at {t:.1} s to member {}", m + 1);
                served_and_accepted(fleet, idp, m, &what, &mut seen);
                seen.requests += 1;
            }
        }
    }
    seen
}

/// Member `m` serves `up`, and the server accepts the token.
fn served_and_accepted(fleet: &Fleet, idp: &OidcServer, m: usize, what: &str, seen: &mut Traffic) {
    let d = &fleet.members[m];
    let token = match token(d, "up") {
        Ok(token) => token,
        Err(out) => {
            // The one documented reason for a login: a kill cut a refresh
            // short after the provider rotated, and introspection said so.
            let info = show(d, "up");
            let reason = info["reason"].as_str().unwrap_or_default();
            assert!(
                info["state"] == "needs-login" && reason.contains("introspection says"),
                "{what}: no token (exit {:?}: {}), state {info}{}",
                out.status.code(),
                stderr(&out),
                fleet.logs()
            );
            eprintln!("{what}: a login is asked for ({reason}); logging in again");
            d.login(idp, "up");
            seen.logins += 1;
            token(d, "up").unwrap_or_else(|out| {
                panic!(
                    "{what}: no token after the login: {}{}",
                    stderr(&out),
                    fleet.logs()
                )
            })
        }
    };
    assert!(
        idp.introspect(&token),
        "{what}: the server does not accept the token served{}",
        fleet.logs()
    );
    seen.distinct_tokens.insert(token);
}

/// The provider's counters that must stay at zero whatever happened: no
/// refresh token sent twice, no grant revoked, no refresh refused.
fn assert_no_reuse(idp: &OidcServer, fleet: &Fleet) {
    let stats = idp.stats();
    let count = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    assert_eq!(
        count(&stats["refresh_token_reuse"]),
        0,
        "a refresh token was sent twice: {stats}{}",
        fleet.logs()
    );
    assert_eq!(
        count(&stats["grants_revoked"]),
        0,
        "a grant was revoked: {stats}"
    );
    assert_eq!(
        count(&stats["token_errors"]["refresh_token"]),
        0,
        "a refresh reached the provider and failed: {stats}"
    );
}

// ---------------------------------------------------------------------------

#[test]
fn the_private_postgresql_cluster_answers_survives_a_restart_and_dumps() {
    let mut pg = PgCluster::start();
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(pg.psql("SHOW listen_addresses"), "", "no TCP port");
    assert_eq!(pg.psql("SELECT current_database()"), "tokend");
    pg.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before-the-restart')");
    assert_eq!(
        pg.url(),
        format!(
            "postgresql://postgres@/tokend?host={}",
            pg.socket_dir().display()
        )
    );
    assert!(pg.socket_dir().join(".s.PGSQL.5432").exists());
    pg.stop();
    assert!(!pg.try_psql("SELECT 1").status.success(), "stopped");
    pg.start_again();
    assert_eq!(pg.psql("SELECT v FROM kept"), "before-the-restart");
    let dump = pg.dump();
    assert!(dump.contains("CREATE TABLE public.kept"), "{dump}");
    assert!(dump.contains("before-the-restart"), "{dump}");
}

#[test]
fn three_members_serve_a_credential_added_on_one_and_a_login_through_another() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::start(3);
    for n in 1..=3 {
        let line = store_line(fleet.member(n));
        assert!(
            line.contains(&fleet.pg.url()) && line.contains("(connected)"),
            "member {n}'s status names its store, connected: {line:?}\n{}",
            stdout(&fleet.member(n).tokenctl(&["status"]))
        );
    }

    // A bearer token added on member 1 is served by member 3 within 2 s.
    fleet
        .member(1)
        .add_bearer("shared", "fleet-shared-bearer-0123456789");
    let took = within(PROPAGATION, || {
        token(fleet.member(3), "shared").as_deref() == Ok("fleet-shared-bearer-0123456789")
    });
    assert!(
        took.is_some(),
        "member 3 does not serve the token added on member 1 after {PROPAGATION:?}:{}",
        fleet.logs()
    );
    eprintln!("added on member 1, served by member 3 after {took:?}");
    assert_eq!(
        token(fleet.member(2), "shared").as_deref(),
        Ok("fleet-shared-bearer-0123456789")
    );

    // An OAuth2 credential logged in through member 2 is served by 1 and 3,
    // the same token, which the server accepts.
    assert_ok(&fleet.member(1).add_oauth(&idp, "app", &[]));
    assert!(
        within(PROPAGATION, || fleet
            .member(2)
            .tokenctl(&["show", "app"])
            .status
            .success())
        .is_some(),
        "member 2 never learned of the credential added on member 1:{}",
        fleet.logs()
    );
    fleet.member(2).login(&idp, "app");
    let logged_in = token(fleet.member(2), "app").expect("member 2 serves its login");
    for n in [1, 3] {
        let took = within(PROPAGATION, || {
            token(fleet.member(n), "app").as_deref() == Ok(&logged_in)
        });
        assert!(
            took.is_some(),
            "member {n} does not serve the login through member 2 after {PROPAGATION:?}: {:?}{}",
            token(fleet.member(n), "app").map_err(|o| stderr(&o)),
            fleet.logs()
        );
        eprintln!("logged in through member 2, served by member {n} after {took:?}");
    }
    assert!(idp.introspect(&logged_in));
    assert_eq!(idp.stats()["token_requests"]["authorization_code"], 1);
    assert_eq!(show(fleet.member(3), "app")["state"], "ready");
}

#[test]
fn a_hundred_and_fifty_requests_over_three_members_are_all_accepted_with_one_refresh_per_rotation()
{
    let idp = OidcServer::start(6);
    let mut fleet = fleet_logged_in(&idp, 1);
    let mut rng = fleet_rng();
    let before = idp.refreshes();
    let seen = run_traffic(&mut fleet, &idp, 150, Duration::from_secs(45), 0, &mut rng);
    let refreshes = idp.refreshes() - before;
    eprintln!(
        "{} requests, {} distinct tokens, {refreshes} refreshes at the provider",
        seen.requests,
        seen.distinct_tokens.len()
    );
    assert_eq!(seen.requests, 150);
    assert_eq!(seen.logins, 0, "no login asked for without a kill");
    // 6-second tokens refreshed at about 4.5 s for 45 s: about 10 rotations,
    // one provider call each however many members hold the credential.
    assert!(
        (6..=16).contains(&refreshes),
        "{refreshes} refresh grants in 45 s (6–16 expected): {}{}",
        idp.stats(),
        fleet.logs()
    );
    assert!(
        seen.distinct_tokens.len() >= 6,
        "the members served {} distinct tokens in 45 s of 6-second tokens",
        seen.distinct_tokens.len()
    );
    assert_no_reuse(&idp, &fleet);
}

#[test]
fn six_kill_9s_of_random_members_during_traffic_cause_no_reuse_and_leave_the_grant_alive_everywhere()
 {
    let idp = OidcServer::start(6);
    let mut fleet = fleet_logged_in(&idp, 1);
    let mut rng = fleet_rng();
    let mut seen = run_traffic(&mut fleet, &idp, 150, Duration::from_secs(45), 6, &mut rng);
    // A kill late in the traffic may have left the grant in doubt: let the
    // fleet settle it (ready, or a login asked for after a real rotation).
    for n in 1..=3 {
        let d = fleet.member(n);
        let mut state = String::new();
        let settled = within(Duration::from_secs(10), || {
            let info = show(d, "up");
            state = info["state"].as_str().unwrap_or_default().to_string();
            state == "ready"
                || (state == "needs-login"
                    && info["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("introspection says")))
        });
        assert!(
            settled.is_some(),
            "member {n} neither ready nor asking for a login after a rotation: {}{}",
            show(d, "up"),
            fleet.logs()
        );
        if state == "needs-login" {
            eprintln!("member {n} asks for a login after the traffic; logging in again");
            d.login(&idp, "up");
            seen.logins += 1;
        }
    }
    let stats = idp.stats();
    eprintln!(
        "{} requests, {} kills, {} logins asked for; provider: {} refreshes, {} reuses, {} introspections ({} still active, {} rotated)",
        seen.requests,
        seen.kills,
        seen.logins,
        stats["token_requests"]["refresh_token"],
        stats["refresh_token_reuse"],
        stats["introspections"],
        stats["introspected_active"],
        stats["introspected_inactive_rotated"],
    );
    assert_eq!(seen.requests, 150);
    assert_eq!(seen.kills, 6);
    assert_no_reuse(&idp, &fleet);
    assert_eq!(
        stats["introspected_inactive_other"], 0,
        "a grant was given up whose refresh token had not rotated: {stats}"
    );
    assert_eq!(
        stats["introspected_inactive_rotated"].as_u64().unwrap_or(0),
        u64::from(seen.logins),
        "every login asked for follows a real rotation: {stats}"
    );

    // The grant is alive everywhere: every member is up and ready with a
    // token the server accepts, and a refresh now rotates it once more.
    for (i, d) in fleet.members.iter_mut().enumerate() {
        assert!(d.is_running(), "member {} died:\n{}", i + 1, d.log_text());
    }
    for n in 1..=3 {
        let info = show(fleet.member(n), "up");
        assert_eq!(info["state"], "ready", "member {n}: {info}{}", fleet.logs());
        let t = token(fleet.member(n), "up").expect("served");
        assert!(idp.introspect(&t), "member {n}'s token is not accepted");
    }
    let before = idp.stats()["token_success"]["refresh_token"]
        .as_u64()
        .unwrap_or(0);
    assert_ok(&fleet.member(2).tokenctl(&["refresh", "up"]));
    let refreshed = token(fleet.member(2), "up").expect("served after the refresh");
    assert!(
        idp.stats()["token_success"]["refresh_token"].as_u64() > Some(before),
        "the refresh reached the provider and succeeded"
    );
    for n in [1, 3] {
        assert!(
            within(PROPAGATION, || token(fleet.member(n), "up")
                .is_ok_and(|t| idp.introspect(&t)))
            .is_some(),
            "member {n} serves no accepted token after the refresh{}",
            fleet.logs()
        );
    }
    assert!(idp.introspect(&refreshed));
    assert_no_reuse(&idp, &fleet);
}

/// Whether a token request's failure names the database as the reason.
fn names_the_database(out: &Output) -> bool {
    let text = stderr(out).to_lowercase();
    text.contains("database") || text.contains("postgres")
}

#[test]
fn a_database_stopped_for_three_seconds_is_ridden_out_and_all_members_then_serve_fresh_tokens() {
    let idp = OidcServer::start(6);
    let mut fleet = fleet_logged_in(&idp, 2);
    // Traffic first, everything up.
    let mut rng = fleet_rng();
    run_traffic(&mut fleet, &idp, 15, Duration::from_secs(4), 0, &mut rng);

    // Stop the database 2 s after a rotation, so that the next refresh
    // (due at about 4.5 s) comes due during the 3 s outage.
    let rotations = idp.refreshes();
    assert!(
        eventually(Duration::from_secs(10), || idp.refreshes() > rotations),
        "no refresh in 10 s{}",
        fleet.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    // Every member holds the new pair by now; the token and when the server
    // says it expires.
    let held: Vec<(String, f64)> = (1..=3)
        .map(|n| {
            let t = token(fleet.member(n), "up").expect("served before the outage");
            let info = idp.introspection(&t);
            assert_eq!(info["active"], true, "member {n}: {info}");
            (t, info["exp"].as_f64().expect("exp"))
        })
        .collect();
    assert!(
        held.iter().all(|(t, _)| *t == held[0].0),
        "the members hold different tokens 2 s after a rotation{}",
        fleet.logs()
    );

    // 0: up, stopping; 1: stopped; 2: started again.
    let phase = AtomicU8::new(0);
    let mut refreshes_while_down = None;
    let mut reconnecting_seen = [false; 3];
    let mut fresh = [false; 3];
    let mut failures = Vec::new();
    std::thread::scope(|s| {
        let pg = &mut fleet.pg;
        let (phase, idp) = (&phase, &idp);
        let refreshes_while_down = &mut refreshes_while_down;
        s.spawn(move || {
            let before = idp.refreshes();
            pg.stop();
            phase.store(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(3));
            *refreshes_while_down = Some(idp.refreshes() - before);
            pg.start_again();
            phase.store(2, Ordering::SeqCst);
        });
        let members = &fleet.members;
        let mut restarted_at = None;
        let looping = Instant::now();
        let mut i = 0;
        while fresh.iter().any(|f| !f) {
            assert!(
                looping.elapsed() < Duration::from_secs(60),
                "the database never came back (phase {})",
                phase.load(Ordering::SeqCst)
            );
            let m = i % 3;
            i += 1;
            let d = &members[m];
            let (held_token, exp) = &held[m];
            let phase_now = phase.load(Ordering::SeqCst);
            if phase_now == 2 {
                let since = *restarted_at.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_secs(20),
                    "20 s after the database came back, members {:?} still serve no fresh token",
                    (0..3)
                        .filter(|&k| !fresh[k])
                        .map(|k| k + 1)
                        .collect::<Vec<_>>()
                );
            }
            if phase_now == 1 && !reconnecting_seen[m] {
                reconnecting_seen[m] = store_line(d).contains("reconnecting");
            }
            let asked = now_secs();
            match token(d, "up") {
                Ok(t) if t == *held_token => {
                    // Still valid 1.2 s on (the daemon's floor is 1 s; the
                    // server counts in whole seconds): the server takes it.
                    if asked + 1.2 < *exp {
                        assert!(
                            idp.introspect(&t),
                            "member {}: the held token is refused at the server {:.1} s before it expires",
                            m + 1,
                            exp - asked
                        );
                    }
                }
                Ok(t) => {
                    assert!(
                        phase.load(Ordering::SeqCst) == 2,
                        "member {} served a new token before the database came back (phase {phase_now}){}",
                        m + 1,
                        member_logs(members)
                    );
                    assert!(
                        idp.introspect(&t),
                        "member {}: the fresh token is refused",
                        m + 1
                    );
                    fresh[m] = true;
                }
                Err(out) => {
                    // Only once the held token has run out, and saying why.
                    assert!(
                        asked + 1.2 >= *exp,
                        "member {} refused a token {:.1} s before the held one expires (phase {phase_now}): {}{}",
                        m + 1,
                        exp - asked,
                        stderr(&out),
                        member_logs(members)
                    );
                    assert!(
                        names_the_database(&out),
                        "member {}: an expired token during the outage is reported without naming the database: {}",
                        m + 1,
                        stderr(&out)
                    );
                    failures.push(format!("member {}: {}", m + 1, stderr(&out).trim()));
                }
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    eprintln!(
        "during and after the outage: {} refusals after the held token expired: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        refreshes_while_down,
        Some(0),
        "no refresh without the database's lock"
    );
    assert_eq!(
        reconnecting_seen, [true; 3],
        "each member's status says its store is reconnecting during the outage"
    );
    for n in 1..=3 {
        assert!(
            within(Duration::from_secs(10), || store_line(fleet.member(n))
                .contains("(connected)"))
            .is_some(),
            "member {n}'s status after the restart: {:?}",
            store_line(fleet.member(n))
        );
    }
    assert_no_reuse(&idp, &fleet);
}

const DUMP_BEARER: &str = "fleet-dump-bearer-token-5f1c2a9e7d";
const DUMP_ACCESS: &str = "fleet-dump-access-token-8b3e6d0f4a";
const DUMP_REFRESH: &str = "fleet-dump-refresh-token-c47a19e2b6";
/// The client secret `Daemon::add_oauth` gives the auth-code client.
const CLIENT_SECRET: &str = "tokend-test-secret";

/// The strings that would betray `secret` in a dump: itself, its hex (a
/// bytea column), and its base64 at the three alignments it could have in
/// a longer value (the inner part only), standard and URL-safe.
fn betrayals(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let mut found = vec![secret.to_string(), hex.clone(), hex.to_uppercase()];
    for pad in 0..3 {
        let mut shifted = vec![0u8; pad];
        shifted.extend_from_slice(secret.as_bytes());
        let encoded = base64(&shifted);
        let inner = &encoded[(pad * 4).div_ceil(3) + 1..encoded.len() - 4];
        found.push(inner.to_string());
        found.push(inner.replace('+', "-").replace('/', "_"));
    }
    found
}

/// How `dump` betrays `secret`, if it does.
fn betrayed(dump: &str, secret: &str) -> Option<String> {
    betrayals(secret)
        .into_iter()
        .find(|needle| dump.contains(needle))
}

fn assert_dump_reveals_none(pg: &PgCluster, secrets: &[&str], when: &str) {
    let dump = pg.dump();
    for secret in secrets {
        if let Some(needle) = betrayed(&dump, secret) {
            panic!("{when}: the pg_dump holds {secret:?} as {needle:?}");
        }
    }
}

#[test]
fn the_dump_search_finds_a_secret_stored_as_text_bytes_or_base64() {
    let pg = PgCluster::start();
    pg.psql("CREATE TABLE leak (t text, b bytea)");
    pg.psql(&format!(
        "INSERT INTO leak VALUES ('{DUMP_BEARER}', convert_to('{DUMP_ACCESS}', 'UTF8')), \
         (encode(convert_to('x{DUMP_REFRESH}', 'UTF8'), 'base64'), NULL)"
    ));
    let dump = pg.dump();
    for secret in [DUMP_BEARER, DUMP_ACCESS, DUMP_REFRESH] {
        assert!(betrayed(&dump, secret).is_some(), "{secret} in {dump}");
    }
    assert_eq!(betrayed(&dump, CLIENT_SECRET), None);
}

#[test]
fn rm_on_one_member_is_unknown_on_the_others_within_two_seconds_and_a_dump_holds_no_secret() {
    let idp = OidcServer::start(6);
    let fleet = Fleet::start(3);
    // Known secrets of every kind: a bearer token; an access and a refresh
    // token (the code exchange answered with them); a client secret; and a
    // live login's access token.
    fleet.member(1).add_bearer("fleet-dump-static", DUMP_BEARER);
    assert_ok(&fleet.member(1).add_oauth(&idp, "fleet-dump-app", &[]));
    assert_ok(&fleet.member(1).add_oauth(&idp, "fleet-dump-live", &[]));
    idp.fault(&format!(
        r#"{{"mode":"body","grant_type":"authorization_code","count":1,
            "body":{{"access_token":"{DUMP_ACCESS}","token_type":"Bearer","expires_in":3600,"refresh_token":"{DUMP_REFRESH}"}}}}"#
    ));
    fleet.member(1).login(&idp, "fleet-dump-app");
    fleet.member(1).login(&idp, "fleet-dump-live");
    let live = token(fleet.member(1), "fleet-dump-live").expect("live token");
    assert!(idp.introspect(&live));
    for n in 1..=3 {
        assert!(
            within(PROPAGATION, || {
                token(fleet.member(n), "fleet-dump-app").as_deref() == Ok(DUMP_ACCESS)
                    && token(fleet.member(n), "fleet-dump-static").as_deref() == Ok(DUMP_BEARER)
            })
            .is_some(),
            "member {n} does not serve the credentials{}",
            fleet.logs()
        );
    }
    // A rotation of the live grant, so a refreshed pair is in the store too.
    assert_ok(&fleet.member(2).tokenctl(&["refresh", "fleet-dump-live"]));
    let refreshed = token(fleet.member(2), "fleet-dump-live").expect("refreshed token");
    assert_ne!(refreshed, live);

    let dump = fleet.pg.dump();
    assert!(
        dump.contains("fleet-dump-app") && dump.contains("fleet-dump-static"),
        "the dump holds the credentials (by name): {}",
        tail(&dump, 80)
    );
    let secrets = [
        DUMP_BEARER,
        DUMP_ACCESS,
        DUMP_REFRESH,
        CLIENT_SECRET,
        &live,
        &refreshed,
    ];
    assert_dump_reveals_none(&fleet.pg, &secrets, "with the credentials stored");

    // rm on member 1: unknown on members 2 and 3 (exit 5) within 2 s.
    assert_ok(&fleet.member(1).tokenctl(&["rm", "fleet-dump-app"]));
    let unknown = |n: usize, name: &str| {
        let out = fleet.member(n).tokenctl(&["token", name]);
        out.status.code() == Some(5)
            && stderr(&out).contains(&format!("no credential named \"{name}\""))
    };
    assert!(unknown(1, "fleet-dump-app"));
    for n in [2, 3] {
        let took = within(PROPAGATION, || unknown(n, "fleet-dump-app"));
        assert!(
            took.is_some(),
            "member {n} after rm on member 1: {:?}{}",
            fleet.member(n).tokenctl(&["token", "fleet-dump-app"]),
            fleet.logs()
        );
        eprintln!("removed on member 1, unknown on member {n} after {took:?}");
    }
    // And the other way round, from member 3.
    assert_ok(&fleet.member(3).tokenctl(&["rm", "fleet-dump-static"]));
    for n in [1, 2] {
        assert!(
            within(PROPAGATION, || unknown(n, "fleet-dump-static")).is_some(),
            "member {n} after rm on member 3{}",
            fleet.logs()
        );
    }
    // The credential left alone is still served everywhere.
    for n in 1..=3 {
        assert!(token(fleet.member(n), "fleet-dump-live").is_ok());
    }
    assert_dump_reveals_none(&fleet.pg, &secrets, "after rm");
}

#[test]
fn a_member_with_another_sealing_key_refuses_to_start_and_says_so() {
    let mut fleet = Fleet::start(2);
    fleet.member(1).add_bearer("up", "fleet-key-bearer-token");
    assert!(
        within(PROPAGATION, || token(fleet.member(2), "up").as_deref()
            == Ok("fleet-key-bearer-token"))
        .is_some(),
        "member 2 does not serve the token{}",
        fleet.logs()
    );

    let other_key = fleet.key.with_file_name("other.key");
    write_key(&other_key);
    let stranger = Daemon::prepare(fleet.options(&other_key));
    let out = stranger.try_start_again(&[]);
    let message = format!("{}{}", stderr(&out), stranger.log_text());
    assert!(
        out.status.code().is_some_and(|code| code != 0),
        "a member with another key must exit non-zero by itself, got {:?}:\n{message}",
        out.status
    );
    assert!(message.contains("sealing key"), "{message}");
    assert!(message.contains("does not match"), "{message}");

    // The store was left alone: the members serve as before, and a third
    // one with the fleet's key starts and serves it too.
    assert_eq!(
        token(fleet.member(1), "up").as_deref(),
        Ok("fleet-key-bearer-token")
    );
    let third = fleet.add_member();
    assert_eq!(token(third, "up").as_deref(), Ok("fleet-key-bearer-token"));
}

/// `tokenctl refresh up` through member `n`, in the background (it waits
/// for the provider, which a fault may hold).
fn refresh_in_background(d: &Daemon) -> std::process::Child {
    let mut cmd = std::process::Command::new(bin("tokenctl"));
    cmd.args(["refresh", "up"])
        .env("TOKEND_SOCKET", &d.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("start tokenctl refresh")
}

/// Member 1 sends the refresh and dies with the answer in flight.
fn kill_member_1_mid_refresh(fleet: &mut Fleet, idp: &OidcServer, fault: &str) {
    idp.fault(fault);
    let mut child = refresh_in_background(fleet.member(1));
    assert!(
        eventually(
            Duration::from_secs(10),
            || idp.stats()["token_posts_by_grant"]["refresh_token"] == 1
        ),
        "member 1 never sent its refresh:{}",
        fleet.logs()
    );
    fleet.members[0].kill9();
    let _ = child.wait();
    idp.fault(r#"{"mode":"none"}"#);
}

#[test]
fn a_member_killed_after_the_provider_rotated_leaves_the_refresh_token_in_doubt_for_the_whole_fleet()
 {
    let idp = OidcServer::start(60);
    let mut fleet = fleet_logged_in(&idp, 2);
    let before = token(fleet.member(2), "up").expect("served");
    // The provider rotates, then holds its answer: member 1 dies without it.
    kill_member_1_mid_refresh(
        &mut fleet,
        &idp,
        r#"{"mode":"hold","delay_ms":8000,"grant_type":"refresh_token"}"#,
    );
    // Member 2 is asked for a fresh token: it must not send the refresh
    // token member 1 may have spent, nor introspect it while member 1's
    // lease runs. After it, introspection says it was rotated.
    let out = fleet.member(2).tokenctl(&["refresh", "up"]);
    assert!(!out.status.success(), "a refresh in doubt went on blindly");
    assert!(stderr(&out).contains("lease"), "{}", stderr(&out));
    assert_eq!(
        idp.stats()["introspections"],
        0,
        "introspected within the lease"
    );
    for n in [2, 3] {
        assert!(
            within(LEASE + Duration::from_secs(5), || show(
                fleet.member(n),
                "up"
            )["state"]
                == "needs-login")
            .is_some(),
            "member {n} never asked for a login:{}",
            fleet.logs()
        );
        let reason = show(fleet.member(n), "up")["reason"].to_string();
        assert!(
            reason.contains("introspection says"),
            "member {n}: {reason}"
        );
        // The token from before is still good until it expires: still served.
        assert_eq!(token(fleet.member(n), "up").as_deref(), Ok(before.as_str()));
    }
    assert!(idp.introspect(&before), "the provider still accepts it");
    fleet.members[0].restart();
    assert_eq!(show(fleet.member(1), "up")["state"], "needs-login");
    let stats = idp.stats();
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(stats["grants_revoked"], 0, "{stats}");
    assert_eq!(
        stats["token_posts_by_grant"]["refresh_token"], 1,
        "the refresh token was sent once, by member 1 only: {stats}"
    );
    assert_eq!(stats["introspected_inactive_rotated"], 1, "{stats}");
    // A login through member 3 brings the whole fleet back.
    fleet.member(3).login(&idp, "up");
    for n in 1..=3 {
        assert!(
            within(PROPAGATION, || show(fleet.member(n), "up")["state"]
                == "ready")
            .is_some(),
            "member {n} is not ready after the login:{}",
            fleet.logs()
        );
    }
}

#[test]
fn a_member_killed_before_the_provider_answered_leaves_a_grant_the_fleet_keeps_using() {
    let idp = OidcServer::start(60);
    let mut fleet = fleet_logged_in(&idp, 2);
    let before = token(fleet.member(2), "up").expect("served");
    // The provider stalls before processing: nothing rotated.
    kill_member_1_mid_refresh(
        &mut fleet,
        &idp,
        r#"{"mode":"stall","delay_ms":8000,"grant_type":"refresh_token"}"#,
    );
    // Member 3 finds member 1's mark: nothing is sent or introspected
    // while its lease runs. Then it introspects (still active), and only
    // then sends the refresh token itself.
    let out = fleet.member(3).tokenctl(&["refresh", "up"]);
    assert!(!out.status.success(), "member 1's lease was not waited for");
    assert!(stderr(&out).contains("lease"), "{}", stderr(&out));
    assert!(
        within(LEASE + Duration::from_secs(5), || token(
            fleet.member(3),
            "up"
        )
        .is_ok_and(|t| t != before))
        .is_some(),
        "member 3 never refreshed after member 1's lease:{}",
        fleet.logs()
    );
    let stats = idp.stats();
    assert_eq!(stats["refresh_token_reuse"], 0, "{stats}");
    assert_eq!(
        stats["introspected_active"], 1,
        "introspected once, before the refresh token was sent again: {stats}"
    );
    assert_eq!(stats["token_success"]["refresh_token"], 1, "{stats}");
    let fresh = token(fleet.member(3), "up").expect("served");
    assert_ne!(fresh, before);
    assert!(idp.introspect(&fresh));
    assert!(
        within(PROPAGATION, || token(fleet.member(2), "up").as_deref()
            == Ok(fresh.as_str()))
        .is_some(),
        "member 2 does not serve member 3's new token:{}",
        fleet.logs()
    );
    fleet.members[0].restart();
    assert_eq!(token(fleet.member(1), "up").as_deref(), Ok(fresh.as_str()));
    assert_eq!(idp.stats()["refresh_token_reuse"], 0);
}
