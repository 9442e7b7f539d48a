//! Fencing of the refresh lifecycle, end to end: the real `tokend` and
//! `tokenctl`, the real OAuth2 server (tests/oidc: every refresh rotates the
//! refresh token, a rotated one sent again revokes the grant) and, for the
//! fleet, a private PostgreSQL cluster (tests/src/postgres.rs).
//!
//! Each test provokes exactly one interleaving in which a refresh token's
//! fate is hard to know, and asserts the promise of docs/RULES.md ("A refresh
//! token is never sent twice, and never lost"; "In-doubt refreshes", "Token
//! responses", "Fleets"):
//!
//! - zero refresh-token reuse at the provider (`refresh_token_reuse` and
//!   `grants_revoked` stay 0);
//! - no good token pair overwritten by an older one;
//! - no credential wedged: each ends `ready`, serving a token the server
//!   accepts (introspection), or `needs-login` with a reason.
//!
//! The interleavings: a 2xx answer with a non-Bearer token type and a new
//! refresh token; a 2xx answer with no token at all; a restart that cannot
//! build its HTTP client while a refresh token is in doubt; a fleet member
//! whose lock session is terminated while it waits on the provider; a fleet
//! member stopped (SIGSTOP) after sending, its sessions terminated; and
//! `kill -9` at each step of a refresh.
//!
//! Violations are collected and reported together at the end of a test, so
//! that one run shows everything that went wrong, with the logs.

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokend_tests::helpers::{fleet_logs, tail, write_key};
use tokend_tests::oidc::OidcServer;
use tokend_tests::postgres::PgCluster;
use tokend_tests::relay::PgRelay;
use tokend_tests::*;

/// Every daemon's config: due credentials are refreshed at once at start,
/// a token request waits at most 5 s, and a provider call at most 4 s, so
/// that a journal mark's lease (about 1 s + `http_timeout_secs` + 3 s) is
/// short.
const CONFIG: &str = "[refresh]\nstartup_spread_secs = 0\nwait_secs = 5\nhttp_timeout_secs = 4\n";

/// The credential every test uses.
const NAME: &str = "up";

// ---------------------------------------------------------------------------
// Helpers

/// Violations of the promise, collected so that a test reports all of them.
struct Verdict {
    failures: Vec<String>,
}

impl Verdict {
    fn new() -> Verdict {
        Verdict {
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            let message = message();
            eprintln!("VIOLATION: {message}");
            self.failures.push(message);
        }
    }

    /// Zero reuse at the provider, no grant revoked.
    fn no_reuse(&mut self, idp: &OidcServer) {
        let stats = idp.stats();
        self.check(count(&stats["refresh_token_reuse"]) == 0, || {
            format!(
                "a rotated refresh token reached the provider again (refresh_token_reuse = {}): {}",
                stats["refresh_token_reuse"], stats["grant_errors"]
            )
        });
        self.check(count(&stats["grants_revoked"]) == 0, || {
            format!(
                "the provider revoked the grant (grants_revoked = {}): {}",
                stats["grants_revoked"], stats["grant_errors"]
            )
        });
    }

    /// Panics with every violation, the provider's counters and `logs`.
    fn finish(self, idp: &OidcServer, logs: &str) {
        if self.failures.is_empty() {
            return;
        }
        let mut stats = idp.stats();
        if let Some(map) = stats.as_object_mut() {
            map.remove("errors");
        }
        panic!(
            "{} violation(s) of the promise:\n- {}\n\nprovider stats: {stats}\n{logs}",
            self.failures.len(),
            self.failures.join("\n- ")
        );
    }
}

fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Refresh requests that reached the token endpoint (faulted or not).
fn posts(idp: &OidcServer) -> u64 {
    count(&idp.stats()["token_posts_by_grant"]["refresh_token"])
}

/// `show NAME --json` (null when the daemon does not answer).
fn show(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&stdout(&d.tokenctl(&["show", NAME, "--json"]))).unwrap_or_default()
}

/// The credential's state and reason.
fn state(d: &Daemon) -> (String, String) {
    let info = show(d);
    let text = |k: &str| info[k].as_str().unwrap_or_default().to_string();
    (text("state"), text("reason"))
}

/// `tokenctl token NAME`: the token, or tokenctl's whole output.
fn token(d: &Daemon) -> Result<String, Output> {
    let out = d.tokenctl(&["token", NAME]);
    if out.status.success() {
        Ok(stdout(&out).trim().to_string())
    } else {
        Err(out)
    }
}

/// One line for a tokenctl run: exit code, stdout, stderr.
fn summary(out: &Output) -> String {
    format!(
        "exit {:?}: {} {}",
        out.status.code(),
        stdout(out).trim(),
        stderr(out).trim()
    )
}

/// `tokenctl refresh NAME` against `d` in the background (the provider may
/// hold it); its output is kept for the report.
fn refresh_in_background(d: &Daemon) -> Child {
    Command::new(bin("tokenctl"))
        .args(["refresh", NAME])
        .env("TOKEND_SOCKET", &d.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokenctl refresh")
}

/// Polls `check` every 50 ms for up to `limit`.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A single-host daemon (SQLite) with `up`, an auth-code credential of
/// `idp` with its introspection endpoint, logged in.
fn single_host(idp: &OidcServer) -> Daemon {
    let d = Daemon::start_with(Options {
        config: Some(CONFIG.into()),
        ..Options::default()
    });
    let introspection = idp.introspection_url();
    assert_ok(&d.add_oauth(idp, NAME, &["--introspection-url", &introspection]));
    d.login(idp, NAME);
    d
}

fn daemon_log(d: &Daemon) -> String {
    format!(
        "--- tokend log (last lines) ---\n{}",
        tail(&d.log_text(), 60)
    )
}

/// Which tokens each member served, in order: a member that served a newer
/// token must never go back to an older one (a good pair overwritten by an
/// older one). Tokens are ordered by when the test first saw them.
#[derive(Default)]
struct Served {
    first_seen: Vec<String>,
    latest: Vec<Option<usize>>,
}

impl Served {
    /// Records that member `m` (from 1) served `token`; `Err` if it had
    /// already served a newer one.
    fn saw(&mut self, m: usize, token: &str) -> Result<(), String> {
        let index = match self.first_seen.iter().position(|t| t == token) {
            Some(i) => i,
            None => {
                self.first_seen.push(token.to_string());
                self.first_seen.len() - 1
            }
        };
        if self.latest.len() < m {
            self.latest.resize(m, None);
        }
        let latest = &mut self.latest[m - 1];
        if let Some(newest) = *latest
            && index < newest
        {
            return Err(format!(
                "member {m} served token #{index} after it had served the newer token #{newest}: a good pair was overwritten by an older one"
            ));
        }
        *latest = Some(latest.map_or(index, |n| n.max(index)));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The fleet

/// Daemons sharing one PostgreSQL store and one sealing key.
struct Fleet {
    // Dropped first: the daemons stop before their database does.
    members: Vec<Daemon>,
    /// Member 1's way to the database, if it goes through a relay.
    relay: Option<PgRelay>,
    pg: PgCluster,
    _keys: tempfile::TempDir,
}

impl Fleet {
    /// `n` members, the credential `up` of `idp` (with its introspection
    /// endpoint) added on member 1 and logged in through it; returns once
    /// every member serves the login's token.
    fn logged_in(idp: &OidcServer, n: usize) -> Fleet {
        Fleet::start(idp, n, false)
    }

    /// The same, with member 1 reaching the database through a
    /// [`PgRelay`] (`fleet.relay`).
    fn logged_in_relayed(idp: &OidcServer, n: usize) -> Fleet {
        Fleet::start(idp, n, true)
    }

    fn start(idp: &OidcServer, n: usize, relayed: bool) -> Fleet {
        let pg = PgCluster::start();
        let relay = relayed.then(|| PgRelay::start(pg.socket_dir()));
        let keys = tempfile::tempdir().expect("key dir");
        let key = keys.path().join("fleet.key");
        write_key(&key);
        let members = (0..n)
            .map(|i| {
                let url = match (&relay, i) {
                    (Some(relay), 0) => relay.url(),
                    _ => pg.url(),
                };
                Daemon::start_with(Options {
                    config: Some(CONFIG.into()),
                    store: Some(url),
                    key_file: Some(key.clone()),
                    ..Options::default()
                })
            })
            .collect();
        let fleet = Fleet {
            members,
            relay,
            pg,
            _keys: keys,
        };
        let introspection = idp.introspection_url();
        assert_ok(
            &fleet
                .member(1)
                .add_oauth(idp, NAME, &["--introspection-url", &introspection]),
        );
        fleet.member(1).login(idp, NAME);
        let served = token(fleet.member(1)).expect("served after the login");
        for m in 1..=n {
            assert!(
                wait_until(Duration::from_secs(5), || token(fleet.member(m)).as_deref()
                    == Ok(&served)),
                "member {m} does not serve the login's token:{}",
                fleet.logs()
            );
        }
        fleet
    }

    /// Member `n`, counted from 1.
    fn member(&self, n: usize) -> &Daemon {
        &self.members[n - 1]
    }

    /// Every member's log and the server's, for failure messages.
    fn logs(&self) -> String {
        fleet_logs(&self.members, Some(&self.pg), 50)
    }

    /// Terminates the database sessions of the member whose process is
    /// `pid` (found by its `application_name`, `tokend:<host>:<pid>:<hex>`),
    /// only those idle in a transaction (its refresh lock) if `lock_only`.
    /// Returns how many were terminated.
    fn terminate_sessions(&self, pid: u32, lock_only: bool) -> u64 {
        let filter = if lock_only {
            " AND state = 'idle in transaction'"
        } else {
            ""
        };
        let sql = format!(
            "SELECT count(*) FILTER (WHERE ok) FROM (SELECT pg_terminate_backend(pid) AS ok \
             FROM pg_stat_activity WHERE application_name LIKE 'tokend:%:{pid}:%'{filter}) t"
        );
        self.pg.psql(&sql).parse().unwrap_or(0)
    }

    /// Every tokend session in the database, for messages.
    fn sessions(&self) -> String {
        self.pg.psql(
            "SELECT pid || ' ' || coalesce(state, '?') || ' ' || application_name \
             FROM pg_stat_activity WHERE application_name LIKE 'tokend:%' ORDER BY application_name",
        )
    }

    /// Every member ready and serving one token the server accepts, or
    /// every member asking for a login with a reason; `None` otherwise.
    fn settled(&self, idp: &OidcServer, served: &mut Served, v: &mut Verdict) -> Option<String> {
        let mut tokens = Vec::new();
        let mut logins = 0;
        for m in 1..=self.members.len() {
            let d = self.member(m);
            let (state, reason) = state(d);
            let served_now = token(d).ok();
            if let Some(t) = &served_now
                && let Err(e) = served.saw(m, t)
            {
                v.check(false, || e);
            }
            match state.as_str() {
                "ready" => tokens.push(served_now),
                "needs-login" if !reason.is_empty() => logins += 1,
                _ => {}
            }
        }
        if logins == self.members.len() {
            return Some("every member asks for a login".into());
        }
        let first = tokens.first().cloned().flatten()?;
        if tokens.len() == self.members.len()
            && tokens.iter().all(|t| t.as_deref() == Some(first.as_str()))
            && idp.introspect(&first)
        {
            return Some(format!(
                "every member is ready with the same accepted token {first:.8}…"
            ));
        }
        None
    }
}

/// Samples the provider's counters every 50 ms in the background, to see
/// in which order things happened at the provider.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<serde_json::Value>>,
}

impl Sampler {
    fn start(idp: &OidcServer) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{}/test/stats", idp.issuer);
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopping.load(Ordering::SeqCst) {
                let body = tokend_tests::oidc::curl(&["-s", &url]);
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    samples.push(v);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Vec<serde_json::Value> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("sampler")
    }
}

// ---------------------------------------------------------------------------
// Odd 2xx answers (single host)

#[test]
fn a_dpop_answer_with_a_new_refresh_token_never_resends_the_old_one() {
    let idp = OidcServer::start(60);
    let d = single_host(&idp);
    let mut v = Verdict::new();
    let before = idp.stats();
    // The provider "rotates" (a 200 carrying a new refresh token) but
    // issues a DPoP access token. The fault answers without processing, so
    // the original refresh token is still alive at the server: if tokend
    // ever sends it again, the server accepts it, and that success is the
    // proof that a token the 2xx answer spent was sent twice.
    idp.fault(
        r#"{"mode":"body","count":1,"grant_type":"refresh_token","status":200,
            "body":{"access_token":"x","token_type":"DPoP","refresh_token":"rt-from-the-fault","expires_in":60}}"#,
    );
    let first = d.tokenctl(&["refresh", NAME]);
    let after_fault = idp.stats();
    assert_eq!(
        count(&after_fault["faulted_by_grant"]["refresh_token"]),
        count(&before["faulted_by_grant"]["refresh_token"]) + 1,
        "the DPoP answer was not given to the forced refresh: {after_fault}\n{}",
        daemon_log(&d)
    );
    let (state_now, reason) = state(&d);
    eprintln!(
        "after the DPoP answer: {}; state {state_now}: {reason}",
        summary(&first)
    );
    v.check(
        state_now == "failing" && reason.contains("DPoP"),
        || format!("after a 200 with a DPoP token the credential must be failing with a reason naming the token type; it is {state_now:?}: {reason:?}"),
    );
    v.check(!first.status.success() || state_now == "failing", || {
        format!(
            "the forced refresh answered by a DPoP token succeeded: {}",
            summary(&first)
        )
    });

    // Two more forced refreshes: the new refresh token (the fault's, which
    // the server does not know) may be sent once; the original never.
    let second = d.tokenctl(&["refresh", NAME]);
    let third = d.tokenctl(&["refresh", NAME]);
    eprintln!("second: {}\nthird: {}", summary(&second), summary(&third));
    let stats = idp.stats();
    let delta = |path: [&str; 2]| {
        count(&stats[path[0]][path[1]]).saturating_sub(count(&after_fault[path[0]][path[1]]))
    };
    let accepted = delta(["token_success", "refresh_token"]);
    v.check(accepted == 0, || {
        format!(
            "the provider accepted {accepted} refresh(es) after the DPoP answer: the first can only have carried the original refresh token, which that 2xx answer had spent (the fault's refresh token is unknown to the server)"
        )
    });
    let reached = delta(["token_requests", "refresh_token"]);
    v.check(reached <= 1, || {
        format!(
            "{reached} refresh requests reached the provider after the DPoP answer: at most one (the new refresh token, then never again) may"
        )
    });
    let seen = before["errors"].as_array().map_or(0, Vec::len);
    let new_errors: Vec<String> = stats["errors"]
        .as_array()
        .map(|all| all.iter().skip(seen).map(|e| e.to_string()).collect())
        .unwrap_or_default();
    eprintln!("refresh errors at the provider since the fault: {new_errors:?}");
    v.check(
        new_errors.iter().all(|e| !e.contains("already used")),
        || format!("a rotated refresh token was sent: {new_errors:?}"),
    );
    v.no_reuse(&idp);
    // Not wedged: the new refresh token the server does not know gets
    // invalid_grant, and a login is asked for, saying why.
    let (end_state, end_reason) = state(&d);
    v.check(end_state == "needs-login" && !end_reason.is_empty(), || {
        format!(
            "after the forced refreshes the credential must ask for a login (the fault's refresh token is unknown to the server); it is {end_state:?}: {end_reason:?}"
        )
    });
    v.finish(&idp, &daemon_log(&d));
}

#[test]
fn a_200_without_tokens_needs_a_login_and_sends_nothing_more() {
    let idp = OidcServer::start(60);
    let d = single_host(&idp);
    let mut v = Verdict::new();
    let before = idp.stats();
    idp.fault(r#"{"mode":"body","count":1,"grant_type":"refresh_token","status":200,"body":{}}"#);
    let first = d.tokenctl(&["refresh", NAME]);
    let after_fault = idp.stats();
    assert_eq!(
        count(&after_fault["faulted_by_grant"]["refresh_token"]),
        count(&before["faulted_by_grant"]["refresh_token"]) + 1,
        "the empty answer was not given to the forced refresh: {after_fault}\n{}",
        daemon_log(&d)
    );
    eprintln!("after the empty 200: {}", summary(&first));
    v.check(!first.status.success(), || {
        format!(
            "a forced refresh answered by an empty 200 succeeded: {}",
            summary(&first)
        )
    });
    // The 2xx spent the refresh token and gave nothing back: a login, at once.
    let mut seen = (String::new(), String::new());
    let at_once = wait_until(Duration::from_secs(3), || {
        seen = state(&d);
        seen.0 == "needs-login" && !seen.1.is_empty()
    });
    v.check(at_once, || {
        format!(
            "a 200 with no access token and no refresh token must make the credential needs-login at once, with a reason; 3 s later it is {:?}: {:?}",
            seen.0, seen.1
        )
    });
    let posts_after = posts(&idp);
    let mut outs = Vec::new();
    for _ in 0..2 {
        outs.push(summary(&d.tokenctl(&["refresh", NAME])));
    }
    outs.push(summary(&d.tokenctl(&["token", NAME])));
    std::thread::sleep(Duration::from_secs(2));
    eprintln!("afterwards: {outs:#?}");
    let more = posts(&idp) - posts_after;
    v.check(more == 0, || {
        format!("{more} refresh request(s) were sent after the empty 200 had spent the refresh token: {outs:?}")
    });
    v.no_reuse(&idp);
    let (end_state, end_reason) = state(&d);
    v.check(end_state == "needs-login" && !end_reason.is_empty(), || {
        format!(
            "in the end the credential must ask for a login; it is {end_state:?}: {end_reason:?}"
        )
    });
    v.finish(&idp, &daemon_log(&d));
}

// ---------------------------------------------------------------------------
// A restart that cannot make HTTP requests (single host)

#[test]
fn a_broken_ca_setup_on_restart_keeps_the_doubt() {
    let idp = OidcServer::start(5);
    let mut d = single_host(&idp);
    let mut v = Verdict::new();
    // A refresh now, so that no scheduled one comes due for about 3.7 s.
    assert_ok(&d.tokenctl(&["refresh", NAME]));
    // The provider rotates, then holds its answer; the daemon dies without it.
    idp.fault(r#"{"mode":"hold","delay_ms":4000,"count":1,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(&d);
    assert!(
        wait_until(Duration::from_secs(10), || count(&idp.stats()["held"]) == 1),
        "the refresh never reached the provider: {}\n{}",
        idp.stats(),
        daemon_log(&d)
    );
    d.kill9();
    let _ = child.wait();
    idp.fault(r#"{"mode":"none"}"#);
    let at_kill = idp.stats();

    // Started again without usable CA certificates: no HTTP client can be
    // built, so nothing can be sent, and nothing may be settled.
    d.launch_with(|mut cmd: Command| {
        cmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent");
        cmd
    });
    d.wait_ready();
    let mut outs = Vec::new();
    let broken = Instant::now();
    while broken.elapsed() < Duration::from_secs(3) {
        outs.push(summary(&d.tokenctl(&["token", NAME])));
        outs.push(summary(&d.tokenctl(&["refresh", NAME])));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("without CA certificates: {outs:#?}\nstate {:?}", state(&d));
    let during = idp.stats();
    let broken_log = d.log_text();
    d.kill9();
    v.check(
        count(&during["token_posts"]) == count(&at_kill["token_posts"])
            && count(&during["introspections"]) == count(&at_kill["introspections"]),
        || format!("a daemon without an HTTP client reached the provider: {during}"),
    );

    // A normal start settles the doubt by introspection: rotated, so a
    // login is asked for, and the refresh token is never sent.
    d.spawn();
    let mut seen = (String::new(), String::new());
    let settled = wait_until(Duration::from_secs(10), || {
        seen = state(&d);
        seen.0 == "needs-login"
    });
    // A client asks for a token, as one would.
    let asked = summary(&d.tokenctl(&["token", NAME]));
    eprintln!("after the normal start: state {seen:?}; token: {asked}");
    let stats = idp.stats();
    let sent = count(&stats["token_posts_by_grant"]["refresh_token"])
        - count(&at_kill["token_posts_by_grant"]["refresh_token"]);
    v.check(sent == 0, || {
        format!(
            "the refresh token left in doubt by the kill was sent {sent} time(s) after the restarts"
        )
    });
    v.check(
        settled && seen.1.contains("introspection"),
        || format!(
            "after the normal start the credential must ask for a login because introspection says the refresh token was rotated; it is {:?}: {:?}",
            seen.0, seen.1
        ),
    );
    v.check(count(&stats["introspected_inactive_rotated"]) >= 1, || {
        format!(
            "the doubt was never settled by introspection: introspections {}, rotated {}",
            stats["introspections"], stats["introspected_inactive_rotated"]
        )
    });
    v.no_reuse(&idp);
    v.finish(
        &idp,
        &format!(
            "--- the start without CA certificates (last lines) ---\n{}\n{}",
            tail(&broken_log, 30),
            daemon_log(&d)
        ),
    );
}

// ---------------------------------------------------------------------------
// The fleet

#[test]
fn a_lock_session_terminated_while_its_member_waits_on_the_provider() {
    let idp = OidcServer::start(6);
    let fleet = Fleet::logged_in(&idp, 3);
    let mut v = Verdict::new();
    let mut served = Served::default();
    // A rotation through member 1 now: no scheduled refresh for ~4.5 s.
    assert_ok(&fleet.member(1).tokenctl(&["refresh", NAME]));
    let old = token(fleet.member(1)).expect("served");
    served.saw(1, &old).expect("first");
    let before = idp.stats();
    let posts0 = count(&before["token_posts_by_grant"]["refresh_token"]);
    let delayed0 = count(&before["delayed"]);
    idp.fault(r#"{"mode":"slow","delay_ms":2500,"count":1,"grant_type":"refresh_token"}"#);
    let sampler = Sampler::start(&idp);
    let member1 = refresh_in_background(fleet.member(1));
    assert!(
        wait_until(Duration::from_secs(5), || posts(&idp) == posts0 + 1),
        "member 1's refresh never reached the provider: {}{}",
        idp.stats(),
        fleet.logs()
    );
    // Its lock: the session idle in a transaction while it waits.
    let pid1 = fleet.member(1).pid();
    let mut terminated = 0;
    wait_until(Duration::from_secs(2), || {
        terminated += fleet.terminate_sessions(pid1, true);
        terminated > 0
    });
    let sessions = fleet.sessions();
    assert!(
        terminated > 0,
        "member 1 (pid {pid1}) has no session idle in a transaction to terminate; sessions:\n{sessions}{}",
        fleet.logs()
    );
    eprintln!("terminated {terminated} lock session(s) of member 1; sessions now:\n{sessions}");
    // Member 2 is asked for a refresh at once: member 1's is in flight.
    let second = fleet.member(2).tokenctl(&["refresh", NAME]);
    eprintln!("member 2's refresh: {}", summary(&second));
    assert!(
        wait_until(Duration::from_secs(10), || count(&idp.stats()["delayed"])
            > delayed0),
        "the provider never processed member 1's refresh: {}{}",
        idp.stats(),
        fleet.logs()
    );
    let answered = Instant::now();
    let first = member1.wait_with_output().expect("member 1's tokenctl");
    eprintln!("member 1's refresh: {}", summary(&first));

    // After the provider answered member 1, every member serves its new
    // token, which the server accepts.
    let mut outcome = None;
    let mut last = String::new();
    wait_until(Duration::from_secs(10), || {
        let tokens: Vec<Result<String, Output>> = fleet.members.iter().map(token).collect();
        for (i, t) in tokens.iter().enumerate() {
            if let Ok(t) = t
                && let Err(e) = served.saw(i + 1, t)
            {
                v.check(false, || e);
            }
        }
        last = format!(
            "{:?}",
            tokens
                .iter()
                .map(|t| t.as_ref().map(|t| format!("{t:.8}…")).map_err(summary))
                .collect::<Vec<_>>()
        );
        if let Ok(t0) = &tokens[0]
            && *t0 != old
            && tokens.iter().all(|t| t.as_ref().ok() == Some(t0))
            && idp.introspect(t0)
        {
            outcome = Some(answered.elapsed());
            return true;
        }
        false
    });
    eprintln!("every member serves the new token {outcome:?} after the provider answered member 1");
    v.check(outcome.is_some(), || {
        format!(
            "10 s after the provider answered member 1, the members do not all serve one new token the server accepts: {last}"
        )
    });

    // Nobody else sent a refresh while member 1's was at the provider.
    let samples = sampler.finish();
    let overtaken = samples.iter().find(|s| {
        count(&s["delayed"]) == delayed0
            && count(&s["token_posts_by_grant"]["refresh_token"]) > posts0 + 1
    });
    v.check(overtaken.is_none(), || {
        format!(
            "another member sent a refresh while member 1's was still at the provider: {}",
            overtaken
                .map(|s| s["token_posts_by_grant"].to_string())
                .unwrap_or_default()
        )
    });
    v.no_reuse(&idp);
    let stats = idp.stats();
    v.check(count(&stats["token_errors"]["refresh_token"]) == 0, || {
        format!(
            "a refresh reached the provider and was refused: {}",
            stats["grant_errors"]
        )
    });
    v.finish(&idp, &fleet.logs());
}

#[test]
fn a_member_stopped_after_sending_is_not_overtaken_before_its_lease_ends() {
    let idp = OidcServer::start(6);
    let fleet = Fleet::logged_in(&idp, 3);
    let mut v = Verdict::new();
    let mut served = Served::default();
    assert_ok(&fleet.member(1).tokenctl(&["refresh", NAME]));
    let old = token(fleet.member(1)).expect("served");
    served.saw(1, &old).expect("first");
    let posts0 = posts(&idp);
    idp.fault(r#"{"mode":"slow","delay_ms":3000,"count":1,"grant_type":"refresh_token"}"#);
    let member1 = refresh_in_background(fleet.member(1));
    assert!(
        wait_until(Duration::from_secs(5), || posts(&idp) == posts0 + 1),
        "member 1's refresh never reached the provider: {}{}",
        idp.stats(),
        fleet.logs()
    );
    // Member 1 stops dead after sending; its sessions end. Its mark's
    // lease still runs (about 1 s + 4 s + 3 s from the mark).
    let pid1 = fleet.member(1).pid();
    signal(pid1, libc::SIGSTOP);
    let stopped = Instant::now();
    let terminated = fleet.terminate_sessions(pid1, false);
    if terminated == 0 {
        signal(pid1, libc::SIGCONT);
        panic!(
            "member 1 (pid {pid1}) had no database session to terminate; sessions:\n{}{}",
            fleet.sessions(),
            fleet.logs()
        );
    }
    eprintln!("member 1 stopped, {terminated} session(s) terminated");
    // Members 2 and 3 are asked for a refresh meanwhile.
    let others = [
        refresh_in_background(fleet.member(2)),
        refresh_in_background(fleet.member(3)),
    ];
    // The provider processes member 1's request 3 s after it came.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(stopped.elapsed()));
    let during = posts(&idp) - posts0;
    let processed = count(&idp.stats()["delayed"]);
    signal(pid1, libc::SIGCONT);
    eprintln!(
        "member 1 continued after {:?}; refresh posts meanwhile: {during}; member 1's processed: {processed}",
        stopped.elapsed()
    );
    for (i, child) in others.into_iter().enumerate() {
        let out = child.wait_with_output().expect("tokenctl refresh");
        eprintln!("member {}'s refresh: {}", i + 2, summary(&out));
    }
    let first = member1.wait_with_output().expect("member 1's tokenctl");
    eprintln!("member 1's refresh: {}", summary(&first));
    v.check(during == 1, || {
        format!(
            "{} refresh request(s) besides member 1's reached the provider while member 1 was stopped within its lease",
            during.saturating_sub(1)
        )
    });

    // In the end: all ready with one accepted token, or all asking for a
    // login with a reason. Token requests poke the members meanwhile.
    let mut outcome = None;
    wait_until(Duration::from_secs(30), || {
        outcome = fleet.settled(&idp, &mut served, &mut v);
        outcome.is_some()
    });
    let states: Vec<(String, String)> = fleet.members.iter().map(state).collect();
    eprintln!("settled: {outcome:?}; states {states:?}");
    v.check(outcome.is_some(), || {
        format!("30 s after member 1 continued the fleet has not settled: {states:?}")
    });
    // Not wedged: a forced refresh on member 2 works, or says a login is needed.
    let mut last = String::new();
    let usable = wait_until(Duration::from_secs(15), || {
        let out = fleet.member(2).tokenctl(&["refresh", NAME]);
        last = summary(&out);
        out.status.success() || state(fleet.member(2)).0 == "needs-login"
    });
    v.check(usable, || {
        format!("member 2 is wedged: its forced refresh neither works nor asks for a login: {last}")
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

// ---------------------------------------------------------------------------
// kill -9 at each step (single host)

/// Where a refresh is cut short.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Just after `tokenctl refresh` was started, whatever reached the
    /// provider by then.
    Started,
    /// The request reached the provider's door but was not processed (a
    /// `slow` fault holds it first; a request whose client died is never
    /// processed): nothing rotated.
    BeforeProcessing,
    /// The provider has the request and rotated; its answer is held.
    Arrived,
    /// About when the held answer comes back (`+ms` after it is released):
    /// before or after the commit, whichever it is.
    AnswerDue(u64),
    /// The forced refresh returned: the new pair is committed.
    Committed,
}

/// How long the provider holds its answer after rotating.
const HOLD_MS: u64 = 1500;

/// How long a restarted daemon may take to settle a doubt: the journal
/// mark's lease (1 s + `http_timeout_secs` + 3 s, docs/RULES.md) and an
/// introspection.
const SETTLE: Duration = Duration::from_secs(14);

/// After a restart, once any journal mark's lease has ended: the
/// credential asks for a login (`Err(reason)`), or a forced refresh goes
/// through (`Ok(the token then served)`); `None` if neither within
/// [`SETTLE`].
fn settle(d: &Daemon) -> Option<Result<String, String>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (s, reason) = state(d);
        if s == "needs-login" {
            return Some(Err(reason));
        }
        if s == "ready" && d.tokenctl(&["refresh", NAME]).status.success() {
            return token(d).ok().map(Ok);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn kill_9_at_every_step_of_a_refresh() {
    // 60-second tokens: every refresh in this test is one it starts itself.
    let idp = OidcServer::start(60);
    let mut d = single_host(&idp);
    let mut v = Verdict::new();
    let mut logins = 0u64;
    let steps = [
        Step::Started,
        Step::BeforeProcessing,
        Step::Arrived,
        Step::AnswerDue(0),
        Step::AnswerDue(30),
        Step::AnswerDue(150),
        Step::Committed,
        Step::Started,
    ];
    for (round, step) in steps.into_iter().enumerate() {
        let old = token(&d).unwrap_or_default();
        let before = idp.stats();
        let (posts0, held0, delayed0) = (
            count(&before["token_posts_by_grant"]["refresh_token"]),
            count(&before["held"]),
            count(&before["delayed"]),
        );
        let mode = match step {
            Step::BeforeProcessing => "slow",
            _ => "hold",
        };
        idp.fault(&format!(
            r#"{{"mode":"{mode}","delay_ms":{HOLD_MS},"count":1,"grant_type":"refresh_token"}}"#
        ));
        let mut child = refresh_in_background(&d);
        // Whether the provider processed (and so rotated) this round's refresh.
        let processed = |idp: &OidcServer| {
            let s = idp.stats();
            count(&s["held"]) > held0 || count(&s["delayed"]) > delayed0
        };
        let mut committed = None;
        match step {
            Step::Started => std::thread::sleep(Duration::from_millis(10)),
            Step::BeforeProcessing => {
                assert!(
                    wait_until(Duration::from_secs(10), || posts(&idp) > posts0),
                    "round {round} ({step:?}): the refresh never reached the provider\n{}",
                    daemon_log(&d)
                );
            }
            Step::Arrived => {
                assert!(
                    wait_until(Duration::from_secs(10), || processed(&idp)),
                    "round {round} ({step:?}): the refresh never reached the provider\n{}",
                    daemon_log(&d)
                );
            }
            Step::AnswerDue(extra) => {
                assert!(
                    wait_until(Duration::from_secs(10), || processed(&idp)),
                    "round {round} ({step:?}): the refresh never reached the provider\n{}",
                    daemon_log(&d)
                );
                std::thread::sleep(Duration::from_millis(HOLD_MS + extra));
            }
            Step::Committed => {
                let status = child.wait().expect("tokenctl refresh");
                assert!(
                    status.success(),
                    "round {round}: the refresh failed\n{}",
                    daemon_log(&d)
                );
                committed = Some(token(&d).expect("served after the refresh"));
            }
        }
        d.kill9();
        let _ = child.wait();
        idp.fault(r#"{"mode":"none"}"#);
        if matches!(step, Step::BeforeProcessing) {
            // The held request is dropped once its delay ends (its client is gone).
            std::thread::sleep(Duration::from_millis(HOLD_MS + 200));
        }
        let rotated = processed(&idp);
        d.restart();
        // What the restart serves (60-second tokens: still valid).
        let served = token(&d).ok();
        // A doubt the kill left is settled once its lease is over: a login
        // is asked for, or the refresh token is still good and a forced
        // refresh goes through.
        let outcome = settle(&d);
        eprintln!(
            "round {round} ({step:?}): rotated at the provider: {rotated}; after the restart: {outcome:?}"
        );
        match outcome {
            Some(Ok(t)) => {
                v.check(idp.introspect(&t), || {
                    format!("round {round} ({step:?}): the token of a forced refresh after the restart is not accepted")
                });
                if let Some(new) = &committed {
                    v.check(served.as_ref() == Some(new), || {
                        format!("round {round} ({step:?}): the committed pair was lost: after the restart the token served is not the one the refresh committed (the old one: {})", served.as_ref() == Some(&old))
                    });
                }
                if rotated && matches!(step, Step::Started | Step::Arrived) {
                    v.check(false, || {
                        format!("round {round} ({step:?}): the provider rotated and the answer was lost, yet the credential is ready again")
                    });
                }
                // Ready means usable: a forced refresh works.
                let out = d.tokenctl(&["refresh", NAME]);
                let fresh = token(&d);
                v.check(
                    out.status.success() && fresh.as_ref().is_ok_and(|t| idp.introspect(t)),
                    || format!(
                        "round {round} ({step:?}): ready after the restart, but a forced refresh then gave {} and the state {:?}",
                        summary(&out),
                        state(&d)
                    ),
                );
                if state(&d).0 == "needs-login" {
                    logins += 1;
                    d.login(&idp, NAME);
                }
            }
            Some(Err(reason)) => {
                v.check(rotated && reason.contains("introspection"), || {
                    format!("round {round} ({step:?}): a login is asked for (rotated at the provider: {rotated}): {reason}")
                });
                logins += 1;
                d.login(&idp, NAME);
            }
            None => {
                let (s, reason) = state(&d);
                v.check(false, || {
                    format!("round {round} ({step:?}): wedged after the restart, neither ready nor asking for a login: {s}: {reason}")
                });
                break;
            }
        }
    }
    let stats = idp.stats();
    eprintln!(
        "{logins} login(s) asked for; provider: {} refreshes, {} introspections ({} active, {} rotated, {} other)",
        stats["token_requests"]["refresh_token"],
        stats["introspections"],
        stats["introspected_active"],
        stats["introspected_inactive_rotated"],
        stats["introspected_inactive_other"],
    );
    v.no_reuse(&idp);
    v.check(count(&stats["introspected_inactive_other"]) == 0, || {
        format!("a grant was given up whose refresh token had not rotated: {stats}")
    });
    v.check(
        count(&stats["introspected_inactive_rotated"]) == logins,
        || format!("{logins} login(s) asked for, but introspection found {} rotated refresh token(s): every login must follow a real rotation", stats["introspected_inactive_rotated"]),
    );
    // And the grant is alive at the end.
    let (end_state, end_reason) = state(&d);
    let end = token(&d);
    v.check(
        end_state == "ready" && end.as_ref().is_ok_and(|t| idp.introspect(t)),
        || {
            format!(
                "at the end the credential is {end_state:?} ({end_reason}), serving {:?}",
                end.map_err(|o| summary(&o))
            )
        },
    );
    v.finish(&idp, &daemon_log(&d));
}

/// Case 5 of the issue: a COMMIT that lands on the server but whose answer
/// is lost, while another member refreshes. Member 1 commits RT1→RT2, the
/// answer to its COMMIT never comes and it cannot reach the database for
/// 6 s (it serves its pair from memory, unsaved); member 2 takes RT2 from
/// the row and refreshes RT2→RT3. When member 1 is back, its pending save
/// is fenced by its mark's generation: it finds the row moved on and takes
/// it; RT2 is never written over RT3, so it is never sent again.
#[test]
fn a_commit_whose_answer_is_lost_never_writes_its_pair_over_a_newer_one() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    let before = token(fleet.member(1)).expect("served");
    relay.cut_after_once("COMMIT", Duration::from_secs(6));
    let out = fleet.member(1).tokenctl(&["refresh", NAME]);
    v.check(relay.fired() == 1, || {
        format!(
            "the refresh's COMMIT never went through the relay: {}",
            summary(&out)
        )
    });
    let rt2 = token(fleet.member(1)).unwrap_or_default();
    v.check(rt2 != before && idp.introspect(&rt2), || {
        "member 1 does not serve the pair it received".into()
    });
    // The COMMIT landed: member 2 serves that pair, then rotates it.
    v.check(
        wait_until(Duration::from_secs(5), || {
            token(fleet.member(2)).as_deref() == Ok(&rt2)
        }),
        || "member 2 never took the committed pair".into(),
    );
    assert_ok(&fleet.member(2).tokenctl(&["refresh", NAME]));
    let rt3 = token(fleet.member(2)).expect("served after its refresh");
    v.check(rt3 != rt2, || "member 2 did not refresh".into());
    // Member 1 comes back and must take RT3, not write RT2 over it.
    v.check(
        wait_until(Duration::from_secs(20), || {
            token(fleet.member(1)).as_deref() == Ok(&rt3)
        }),
        || {
            format!(
                "member 1 does not serve the newer pair after the database came back: {:?}",
                state(fleet.member(1))
            )
        },
    );
    // The row holds RT3: a refresh through either member works, once
    // member 1's listener is back (until then it waits for the database).
    refresh_through_each(&fleet, &mut v);
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// The send budget: a member whose journal mark takes longer than the
/// budget to be made (here the statement is held 1.5 s on its way to the
/// database; a `SIGSTOP` or a frozen VM does the same) sends nothing, clears
/// its mark, and refreshes on a later try.
#[test]
fn a_member_held_up_between_its_mark_and_its_request_sends_nothing() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    let posts_before = posts(&idp);
    relay.delay_once("lease_ms = $4", Duration::from_millis(1500));
    let out = fleet.member(1).tokenctl(&["refresh", NAME]);
    v.check(relay.fired() == 1, || {
        "the mark never went through the relay".into()
    });
    v.check(!out.status.success(), || {
        format!("the refresh went on after the budget: {}", summary(&out))
    });
    v.check(summary(&out).contains("nothing was sent"), || {
        format!(
            "the refusal does not say nothing was sent: {}",
            summary(&out)
        )
    });
    // Its mark is cleared: member 2 refreshes at once, without waiting for
    // a lease or introspecting (the credential is due now: member 2 may
    // have started on its own already).
    let out = fleet.member(2).tokenctl(&["refresh", NAME]);
    v.check(out.status.success(), || {
        format!(
            "member 2 could not refresh after member 1's abandoned mark: {}",
            summary(&out)
        )
    });
    v.check(count(&idp.stats()["introspections"]) == 0, || {
        "the abandoned mark was left for a lease".into()
    });
    // Every refresh the provider saw is one member 2 made: member 1 sent
    // nothing.
    let new_tokens = |m: usize| {
        (fleet.member(m).log_text())
            .matches("INFO new token credential=up")
            .count() as u64
    };
    v.check(new_tokens(1) == 1, || {
        "member 1 got a new token after the budget ran out".into()
    });
    v.check(posts(&idp) - posts_before == new_tokens(2), || {
        format!(
            "a refresh token was sent after the budget ran out: {} refreshes, {} of them member 2's",
            posts(&idp) - posts_before,
            new_tokens(2)
        )
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// Case 6 of the issue: the write of a final state fails. Member 1 is
/// told `invalid_grant` (a fault: the grant is in fact alive) and its
/// needs-login write never reaches the database, so the row keeps member
/// 1's journal mark while member 1 stays connected. The fleet is not
/// wedged: once the mark's lease ends, member 2 settles the doubt by
/// introspection (still active) and refreshes, and member 1 takes that.
#[test]
fn a_failed_write_of_a_final_state_does_not_wedge_the_fleet() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    let before = token(fleet.member(2)).expect("served");
    idp.fault(r#"{"mode":"invalid_grant","count":1,"grant_type":"refresh_token"}"#);
    relay.cut_before_once("refresh_token = NULL", Duration::from_secs(2));
    let out = fleet.member(1).tokenctl(&["refresh", NAME]);
    v.check(!out.status.success(), || {
        "invalid_grant was taken as a success".into()
    });
    v.check(relay.fired() == 1, || {
        format!(
            "the needs-login write never went through the relay: {}",
            summary(&out)
        )
    });
    // Member 2 waits out member 1's lease, then introspects and refreshes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refreshed = false;
    while Instant::now() < deadline && !refreshed {
        refreshed = fleet
            .member(2)
            .tokenctl(&["refresh", NAME])
            .status
            .success();
        if !refreshed {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    v.check(refreshed, || {
        format!("member 2 is wedged: {:?}", state(fleet.member(2)))
    });
    let fresh = token(fleet.member(2)).unwrap_or_default();
    v.check(fresh != before && idp.introspect(&fresh), || {
        "member 2 serves no new accepted token".into()
    });
    v.check(
        wait_until(Duration::from_secs(10), || {
            token(fleet.member(1)).as_deref() == Ok(&fresh)
        }),
        || {
            format!(
                "member 1 does not take member 2's refresh: {:?}",
                state(fleet.member(1))
            )
        },
    );
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// Case 7 of the issue: a database that stalls mid-save. Member 1 waits
/// on the provider holding its lock's session; that backend is stopped
/// (`SIGSTOP`) before the answer comes, so the save inside the lock's
/// transaction hangs. Every database call is bounded: the call gives up,
/// the fenced write is made on another connection, and member 1 serves and
/// saves the new pair; the stopped backend, let go, writes nothing over it.
#[test]
fn a_backend_stopped_mid_save_neither_hangs_the_member_nor_loses_the_pair() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in(&idp, 2);
    let mut v = Verdict::new();
    let before = token(fleet.member(1)).expect("served");
    idp.fault(r#"{"mode":"slow","delay_ms":2000,"count":1,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(fleet.member(1));
    let pid = fleet.member(1).pid();
    let mut backend = String::new();
    v.check(
        wait_until(Duration::from_secs(5), || {
            backend = fleet.pg.psql(&format!(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'tokend:%:{pid}:%' \
                 AND state = 'idle in transaction' LIMIT 1"
            ));
            !backend.is_empty()
        }),
        || {
            format!(
                "member 1 never held its lock's session: {}",
                fleet.sessions()
            )
        },
    );
    let stopped = Command::new("kill").args(["-STOP", &backend]).status();
    v.check(stopped.is_ok_and(|s| s.success()), || {
        "could not stop the backend".into()
    });
    let status = child.wait().expect("tokenctl refresh");
    let _ = Command::new("kill").args(["-CONT", &backend]).status();
    v.check(status.success(), || "the refresh failed".into());
    let fresh = token(fleet.member(1)).unwrap_or_default();
    v.check(fresh != before && idp.introspect(&fresh), || {
        "member 1 serves no new accepted token after the stall".into()
    });
    v.check(
        wait_until(Duration::from_secs(5), || {
            token(fleet.member(2)).as_deref() == Ok(&fresh)
        }),
        || "member 2 does not serve the saved pair".into(),
    );
    // The pair is in the row: a refresh through member 2 rotates it once.
    let out = fleet.member(2).tokenctl(&["refresh", NAME]);
    v.check(out.status.success(), || {
        format!("a refresh after the stall failed: {}", summary(&out))
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// Item 6 of the issue: a provider's `Retry-After` holds the whole fleet.
/// Member 1 is told to wait 600 s; member 2, asked to refresh and to
/// reject the token right after, sends nothing either.
#[test]
fn a_retry_after_holds_every_member_of_the_fleet() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in(&idp, 2);
    let mut v = Verdict::new();
    idp.fault(r#"{"mode":"429","retry_after":600,"count":1,"grant_type":"refresh_token"}"#);
    let out = fleet.member(1).tokenctl(&["refresh", NAME]);
    v.check(
        !out.status.success() && summary(&out).contains("slow_down"),
        || format!("the 429 was not reported: {}", summary(&out)),
    );
    let sent = posts(&idp);
    let current = token(fleet.member(2)).expect("served");
    for args in [&["refresh", NAME][..], &["reject", NAME]] {
        let out = fleet.member(2).tokenctl(args);
        v.check(
            !out.status.success() && summary(&out).contains("next attempt"),
            || format!("member 2 `{}` did not wait: {}", args[0], summary(&out)),
        );
    }
    v.check(posts(&idp) == sent, || {
        "member 2 sent a refresh within the provider's Retry-After".into()
    });
    v.check(token(fleet.member(2)).ok() == Some(current), || {
        "member 2 no longer serves the held token".into()
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// A pair received while the database is away outlives the mark's lease:
/// member 1 sends its refresh, then loses the database for 12 s (its
/// mark's lease is 8 s); the provider answers it meanwhile, and member 2,
/// once the lease is over, introspects the old refresh token (rotated) and
/// asks for a login. When member 1 is back, no pair was committed since
/// the one its pair replaces and no refresh is in flight: its pair, the
/// only live one, is written, and the whole fleet serves it.
#[test]
fn a_pair_saved_after_its_lease_ran_out_still_wins_when_it_is_the_newest() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    let sent = posts(&idp);
    idp.fault(r#"{"mode":"slow","delay_ms":2000,"count":1,"grant_type":"refresh_token"}"#);
    let mut child = refresh_in_background(fleet.member(1));
    v.check(
        wait_until(Duration::from_secs(5), || posts(&idp) > sent),
        || "member 1 never sent its refresh".into(),
    );
    relay.cut_now(Duration::from_secs(12));
    let _ = child.wait();
    let fresh = token(fleet.member(1)).unwrap_or_default();
    v.check(idp.introspect(&fresh), || {
        "member 1 does not serve the pair it received".into()
    });
    // Member 2 settles the doubt once the lease is over: rotated.
    v.check(
        wait_until(Duration::from_secs(15), || {
            let _ = fleet.member(2).tokenctl(&["refresh", NAME]);
            state(fleet.member(2)).0 == "needs-login"
        }),
        || {
            format!(
                "member 2 never settled the doubt: {:?}",
                state(fleet.member(2))
            )
        },
    );
    // Member 1 comes back; its pair is written; everyone serves it.
    v.check(
        wait_until(Duration::from_secs(20), || {
            (1..=2).all(|m| {
                state(fleet.member(m)).0 == "ready"
                    && token(fleet.member(m)).as_deref() == Ok(&fresh)
            })
        }),
        || {
            format!(
                "the newest pair was not saved: {:?} / {:?}",
                state(fleet.member(1)),
                state(fleet.member(2))
            )
        },
    );
    let out = fleet.member(2).tokenctl(&["refresh", NAME]);
    v.check(out.status.success(), || {
        format!("the saved pair does not refresh: {}", summary(&out))
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// A journal mark whose answer is lost (the mark is made, the member never
/// learns it) is known to this member as unsent: nothing went out under
/// it, so it is no doubt. Without an introspection endpoint a doubt would
/// cost a login; here the credential stays ready, and the next refresh
/// replaces the mark and goes through.
#[test]
fn a_mark_whose_answer_was_lost_puts_nothing_in_doubt() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    // A second credential of the same provider, with no introspection.
    assert_ok(&fleet.member(2).add_oauth(&idp, "blind", &[]));
    fleet.member(2).login(&idp, "blind");
    v.check(
        wait_until(Duration::from_secs(5), || {
            token_of(fleet.member(1), "blind").is_ok()
        }),
        || "member 1 never took the second credential".into(),
    );
    let sent = posts(&idp);
    relay.cut_after_once("lease_ms = $4", Duration::from_secs(1));
    let out = fleet.member(1).tokenctl(&["refresh", "blind"]);
    v.check(!out.status.success() && relay.fired() == 1, || {
        format!("the mark's answer was not lost: {}", summary(&out))
    });
    v.check(posts(&idp) == sent, || {
        "a refresh was sent without its mark's answer".into()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refreshed = false;
    while !refreshed && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        refreshed = fleet
            .member(1)
            .tokenctl(&["refresh", "blind"])
            .status
            .success();
    }
    let shown = fleet.member(1).tokenctl(&["show", "blind", "--json"]);
    v.check(refreshed, || {
        format!("the credential never refreshed again: {}", stdout(&shown))
    });
    v.check(count(&idp.stats()["introspections"]) == 0, || {
        "the unsent mark was taken for a doubt".into()
    });
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// A token of credential `name` from `d`.
fn token_of(d: &Daemon, name: &str) -> Result<String, Output> {
    let out = d.tokenctl(&["token", name]);
    if out.status.success() {
        Ok(stdout(&out).trim().to_string())
    } else {
        Err(out)
    }
}

/// A login whose COMMIT lands but whose answer is lost, while another
/// member rotates the login's pair: when the first member is back, its
/// pending save finds a newer pair in the row and takes it; the login's
/// (now spent) refresh token is never written back, never sent again.
#[test]
fn a_login_whose_commit_answer_is_lost_never_overwrites_its_rotation() {
    let idp = OidcServer::start(60);
    let fleet = Fleet::logged_in_relayed(&idp, 2);
    let relay = fleet.relay.as_ref().expect("member 1 is relayed");
    let mut v = Verdict::new();
    relay.cut_after_once("COMMIT", Duration::from_secs(6));
    fleet.member(1).login(&idp, NAME);
    v.check(relay.fired() == 1, || {
        "the login's COMMIT never went through the relay".into()
    });
    let login = token(fleet.member(1)).unwrap_or_default();
    v.check(
        wait_until(Duration::from_secs(5), || {
            token(fleet.member(2)).as_deref() == Ok(&login)
        }),
        || "member 2 never took the login's pair".into(),
    );
    assert_ok(&fleet.member(2).tokenctl(&["refresh", NAME]));
    let rotated = token(fleet.member(2)).expect("served after the refresh");
    v.check(
        wait_until(Duration::from_secs(20), || {
            token(fleet.member(1)).as_deref() == Ok(&rotated)
        }),
        || {
            format!(
                "member 1 does not take the rotated pair: {:?}",
                state(fleet.member(1))
            )
        },
    );
    refresh_through_each(&fleet, &mut v);
    v.no_reuse(&idp);
    v.finish(&idp, &fleet.logs());
}

/// A forced refresh through every member works once each, each member
/// given up to 10 s to have its database back (until then a refresh waits
/// for it): the row holds a live refresh token.
fn refresh_through_each(fleet: &Fleet, v: &mut Verdict) {
    for m in 1..=fleet.members.len() {
        let mut out = fleet.member(m).tokenctl(&["refresh", NAME]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.status.success() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            out = fleet.member(m).tokenctl(&["refresh", NAME]);
        }
        v.check(out.status.success(), || {
            format!(
                "member {m}: a refresh after the outage failed: {}",
                summary(&out)
            )
        });
    }
}
