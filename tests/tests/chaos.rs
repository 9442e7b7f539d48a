//! A seeded storm of faults on a fleet, end to end: three real daemons on
//! one private PostgreSQL cluster (tests/src/postgres.rs), the real OAuth2
//! server (tests/oidc: every refresh rotates the refresh token, a rotated
//! one sent again revokes the grant) with 6-second tokens, and for minutes
//! on end, at random moments: the provider's `hold` and `stall` faults,
//! `kill -9` of members, `SIGSTOP`/`SIGCONT` of members,
//! `pg_terminate_backend` of random tokend sessions, and one PostgreSQL
//! restart, while token requests keep coming to the members that are up.
//!
//! What it checks is the promise of docs/RULES.md ("Fencing": the row
//! decides, not the lock; leases by the store's clock; "In-doubt
//! refreshes"; "Fleets"): a refresh token is never sent twice (zero reuse
//! at the provider, no grant revoked), every login asked for follows a
//! rotation the provider confirms by introspection, and the grant is alive
//! at the end wherever it was not rotated away.
//!
//! The run is seeded: the seed is printed at the start, and
//! `TOKEND_CHAOS_SEED=N` replays the same choices (timing aside).
//! `TOKEND_CHAOS_SECS` sets how long the storm lasts (default 180 s).

#![cfg(unix)] // end-to-end tests of the Unix daemon (tokend_tests is Unix only)

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokend_tests::helpers::{Rng, fleet_logs, tail, write_key};
use tokend_tests::oidc::{OidcServer, curl};
use tokend_tests::postgres::PgCluster;
use tokend_tests::*;

/// Every member's config, as in fleet.rs: due credentials are refreshed at
/// once at start, a token request waits at most 5 s for a refresh, and a
/// provider call takes at most 2 s, so that a journal mark's lease is
/// 1 s + 2 s + 3 s = 6 s (docs/RULES.md, "Fencing").
const MEMBER_CONFIG: &str =
    "[refresh]\nstartup_spread_secs = 0\nwait_secs = 5\nhttp_timeout_secs = 2\n";

/// The credential.
const NAME: &str = "up";

/// The fleet's size.
const MEMBERS: usize = 3;

/// How long a change on one member may take to be served by the others.
const PROPAGATION: Duration = Duration::from_secs(2);

/// One token request about this often.
const REQUEST_EVERY: Duration = Duration::from_millis(300);

/// A member's needs-login counts only once it has been up (and not
/// stopped) this long, and this long after the last login: a member just
/// continued may still hold what it knew before it was stopped.
const SETTLED_FOR: Duration = Duration::from_millis(2500);

/// A needs-login seen this long on one member is acted on even if another
/// live member does not say so (yet).
const LOGIN_AFTER: Duration = Duration::from_secs(4);

/// How long the fleet may take to settle at the end: a lease (6 s), then
/// the 30 s a running daemon waits before it introspects a refresh token
/// whose request timed out (docs/RULES.md, "In-doubt refreshes"), and an
/// introspection.
const SETTLE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------
// Helpers

fn count(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Seconds since the epoch.
fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `tokenctl ARGS` against the daemon listening on `socket`.
fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("tokenctl"));
    cmd.args(args).env("TOKEND_SOCKET", socket);
    run_with_timeout(cmd, None, Duration::from_secs(30))
}

/// One line for a tokenctl run: exit code and stderr.
fn summary(out: &Output) -> String {
    format!(
        "exit {:?}: {}",
        out.status.code(),
        stderr(out).trim().replace('\n', " / ")
    )
}

/// `tokenctl token up --json`: the token and when it expires (seconds since
/// the epoch), or tokenctl's whole output.
fn token_of(socket: &Path) -> Result<(String, Option<i64>), Output> {
    let out = ctl(socket, &["token", NAME, "--json"]);
    if !out.status.success() {
        return Err(out);
    }
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
    match v["token"].as_str() {
        Some(t) if !t.is_empty() => Ok((t.to_string(), v["expires_at"].as_i64())),
        _ => Err(out),
    }
}

/// The credential's state and reason on the daemon at `socket` (empty when
/// it does not answer).
fn state_of(socket: &Path) -> (String, String) {
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&ctl(socket, &["show", NAME, "--json"]))).unwrap_or_default();
    let text = |k: &str| info[k].as_str().unwrap_or_default().to_string();
    (text("state"), text("reason"))
}

/// What a failed token request said, with the numbers and the credential's
/// name taken out, so that failures can be counted by kind.
fn failure_kind(message: &str) -> String {
    let words: Vec<String> = message
        .trim()
        .trim_start_matches("tokenctl: ")
        .replace(&format!("{NAME:?}"), "NAME")
        .split_whitespace()
        .take(16)
        .map(|w| {
            if w.chars().any(|c| c.is_ascii_digit()) {
                "N".to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

/// A complete login of `up` through the daemon at `socket`: `tokenctl
/// login`, the "browser" through the provider's pages, and the redirect to
/// tokenctl's loopback listener. `Err` with what went wrong, never a panic
/// (a member may lose its database meanwhile).
fn login_via(socket: &Path, idp: &OidcServer) -> Result<(), String> {
    let mut child = Command::new(bin("tokenctl"))
        .args(["login", NAME, "--no-browser", "--timeout", "30"])
        .env("TOKEND_SOCKET", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start tokenctl login: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    let _ = out.read_line(&mut line);
    let url = line.trim().to_string();
    let page = if url.starts_with(&idp.issuer) && url.contains("redirect_uri=") {
        let redirect = idp.browse(&url);
        curl(&["-s", &redirect])
    } else {
        String::new()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match status {
        Some(s) if s.success() && page.contains("Logged in") => Ok(()),
        _ => Err(format!(
            "tokenctl login ended {status:?} (first line {url:?}; browser told {:?}): {}",
            tail(&page, 1),
            err.trim().replace('\n', " / ")
        )),
    }
}

// ---------------------------------------------------------------------------
// The fleet

/// Three tokend daemons sharing one PostgreSQL database and one sealing key.
struct Fleet {
    // Dropped first: the daemons stop before their database does.
    members: Vec<Daemon>,
    pg: PgCluster,
    _keys: tempfile::TempDir,
}

impl Fleet {
    /// `n` members, the credential `up` of `idp` (with its introspection
    /// endpoint, so that a refresh cut short is settled by asking the
    /// provider) added on member 1 and logged in through it; returns once
    /// every member serves the login's token.
    fn logged_in(idp: &OidcServer, n: usize) -> Fleet {
        let pg = PgCluster::start();
        let keys = tempfile::tempdir().expect("key dir");
        let key = keys.path().join("fleet.key");
        write_key(&key);
        let members = (0..n)
            .map(|_| {
                Daemon::start_with(Options {
                    config: Some(MEMBER_CONFIG.into()),
                    store: Some(pg.url()),
                    key_file: Some(key.clone()),
                    ..Options::default()
                })
            })
            .collect();
        let fleet = Fleet {
            members,
            pg,
            _keys: keys,
        };
        let introspection = idp.introspection_url();
        assert_ok(&fleet.members[0].add_oauth(idp, NAME, &["--introspection-url", &introspection]));
        fleet.members[0].login(idp, NAME);
        let served = token_of(&fleet.members[0].socket)
            .expect("served after the login")
            .0;
        for (m, d) in fleet.members.iter().enumerate() {
            let deadline = Instant::now() + PROPAGATION + Duration::from_secs(3);
            while token_of(&d.socket).map(|t| t.0).as_ref() != Ok(&served) {
                assert!(
                    Instant::now() < deadline,
                    "member {} does not serve the login's token{}",
                    m + 1,
                    fleet.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        fleet
    }

    /// The end of every member's log and of the database's.
    fn logs(&self) -> String {
        fleet_logs(&self.members, Some(&self.pg), 40)
    }
}

// ---------------------------------------------------------------------------
// What both threads share

/// Which members may be asked for tokens: running and not stopped.
struct Liveness {
    live: [bool; MEMBERS],
    /// When each member last became live (started, or continued).
    since: [Instant; MEMBERS],
    stopped: [bool; MEMBERS],
    /// How many times each member was stopped so far.
    stop_count: [u32; MEMBERS],
    pids: [u32; MEMBERS],
    /// A login runs through this member: it is neither killed nor stopped
    /// meanwhile (a login is a human's act, not the subject here).
    login_through: Option<usize>,
}

/// What the storm and the traffic share.
struct Ctx<'a> {
    seed: u64,
    start: Instant,
    idp: &'a OidcServer,
    sockets: Vec<PathBuf>,
    logs: Vec<PathBuf>,
    liveness: Mutex<Liveness>,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    timeline: Mutex<Vec<String>>,
    /// The test's own introspections of access tokens served, and how many
    /// of them the server said were not active (each is also a violation,
    /// or an access token served while a login is asked for).
    checks: AtomicU32,
    checks_inactive: AtomicU32,
}

impl Ctx<'_> {
    fn t(&self) -> f32 {
        self.start.elapsed().as_secs_f32()
    }

    /// Records (and prints) an event of the run.
    fn note(&self, text: impl AsRef<str>) {
        let line = format!("{:7.1} s: {}", self.t(), text.as_ref());
        eprintln!("chaos {line}");
        self.timeline.lock().unwrap().push(line);
    }

    /// Records a violation, with every member's log as it is now.
    fn violation(&self, text: String) {
        let text = format!("{:.1} s: {text}", self.t());
        eprintln!("chaos VIOLATION (seed {}): {text}", self.seed);
        let mut all = self.violations.lock().unwrap();
        let logs = if all.len() < 3 {
            format!("\n  member logs at that moment:{}", self.member_logs(25))
        } else {
            String::new()
        };
        all.push(format!("{text}{logs}"));
    }

    fn member_logs(&self, lines: usize) -> String {
        let mut text = String::new();
        for (i, log) in self.logs.iter().enumerate() {
            text.push_str(&format!(
                "\n--- member {} log (last lines) ---\n{}",
                i + 1,
                tail(&std::fs::read_to_string(log).unwrap_or_default(), lines)
            ));
        }
        text
    }

    fn live_members(&self) -> Vec<usize> {
        let l = self.liveness.lock().unwrap();
        (0..MEMBERS).filter(|&m| l.live[m]).collect()
    }

    fn pick_live(&self, rng: &mut Rng) -> Option<usize> {
        let live = self.live_members();
        (!live.is_empty()).then(|| live[rng.below(live.len() as u64) as usize])
    }

    /// Asks the server about an access token a member served.
    fn accepted(&self, token: &str) -> bool {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let active = self.idp.introspect(token);
        if !active {
            self.checks_inactive.fetch_add(1, Ordering::SeqCst);
        }
        active
    }
}

/// Sets the stop flag and lets every stopped member go when dropped, so
/// that a panic of the storm never leaves the traffic thread waiting.
struct Release<'a>(&'a Ctx<'a>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        let l = self.0.liveness.lock().unwrap_or_else(|e| e.into_inner());
        for m in 0..MEMBERS {
            if l.stopped[m] {
                signal(l.pids[m], libc::SIGCONT);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Logins: one per rotation the fleet reports

/// Watches for needs-login and logs in once per rotation: when every live
/// member says so, or one has said so for [`LOGIN_AFTER`].
#[derive(Default)]
struct Logins {
    /// When each member was first seen asking for a login (counted only
    /// once it had been up [`SETTLED_FOR`]).
    first_seen: [Option<Instant>; MEMBERS],
    /// Whether that member's reason was something else than a rotation.
    other: [bool; MEMBERS],
    last_login: Option<Instant>,
    next_attempt: Option<Instant>,
    /// A login attempt failed through this member: the rotation it answers
    /// is already counted.
    open: Option<usize>,
    /// Logins after a rotation the fleet reported ("introspection says").
    logins: u32,
    /// Logins for any other reason (each a violation too).
    other_logins: u32,
    attempts: u32,
    failed: Vec<String>,
    other_reasons: HashSet<String>,
}

impl Logins {
    /// Reads member `m`'s state and keeps track of its needs-login.
    fn observe(&mut self, ctx: &Ctx, m: usize) -> (String, String) {
        let (state, reason) = state_of(&ctx.sockets[m]);
        let now = Instant::now();
        let since = ctx.liveness.lock().unwrap().since[m];
        let counting = now.duration_since(since) >= SETTLED_FOR
            && self
                .last_login
                .is_none_or(|l| now.duration_since(l) >= SETTLED_FOR);
        if state == "needs-login" {
            let rotation = reason.contains("introspection says");
            if !rotation {
                let key: String = reason.chars().take(60).collect();
                if self.other_reasons.insert(key) {
                    ctx.violation(format!(
                        "member {} asks for a login for another reason than a rotation the provider confirmed: {reason:?}",
                        m + 1
                    ));
                }
            }
            if counting && self.first_seen[m].is_none() {
                self.first_seen[m] = Some(now);
                self.other[m] = !rotation;
                ctx.note(format!("member {} asks for a login: {reason}", m + 1));
            }
        } else {
            self.first_seen[m] = None;
            if state == "ready"
                && counting
                && self.open == Some(m)
                && self.next_attempt.is_some_and(|t| now >= t)
            {
                ctx.note(format!(
                    "member {} is ready again after a failed login attempt through it: that login landed",
                    m + 1
                ));
                self.open = None;
                self.last_login = Some(now);
                self.first_seen = [None; MEMBERS];
            }
        }
        (state, reason)
    }

    /// Logs in if the fleet asks for it; `rng` picks the member.
    fn maybe_login(&mut self, ctx: &Ctx, rng: &mut Rng) {
        if self.first_seen.iter().all(Option::is_none)
            || self.next_attempt.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let live = ctx.live_members();
        for &m in &live {
            self.observe(ctx, m);
        }
        let now = Instant::now();
        let candidates: Vec<usize> = (0..MEMBERS)
            .filter(|&m| self.first_seen[m].is_some())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let all_agree = live.iter().all(|&m| self.first_seen[m].is_some());
        let long = candidates
            .iter()
            .any(|&m| self.first_seen[m].is_some_and(|t| now.duration_since(t) >= LOGIN_AFTER));
        if !all_agree && !long {
            return;
        }
        let through = {
            let mut l = ctx.liveness.lock().unwrap();
            let live: Vec<usize> = (0..MEMBERS).filter(|&m| l.live[m]).collect();
            if live.is_empty() {
                return;
            }
            let m = live[rng.below(live.len() as u64) as usize];
            l.login_through = Some(m);
            m
        };
        let other = candidates.iter().any(|&m| self.other[m]);
        if self.open.is_none() {
            if other {
                self.other_logins += 1;
            } else {
                self.logins += 1;
            }
        }
        self.attempts += 1;
        ctx.note(format!(
            "logging in through member {} ({}; asking: members {:?})",
            through + 1,
            if all_agree {
                "every live member asks"
            } else {
                "asked for long enough"
            },
            candidates.iter().map(|m| m + 1).collect::<Vec<_>>()
        ));
        let result = login_via(&ctx.sockets[through], ctx.idp);
        ctx.liveness.lock().unwrap().login_through = None;
        match result {
            Ok(()) => {
                ctx.note(format!("logged in through member {}", through + 1));
                self.open = None;
                self.next_attempt = None;
                self.last_login = Some(Instant::now());
                self.first_seen = [None; MEMBERS];
            }
            Err(e) => {
                ctx.note(format!(
                    "the login through member {} failed: {e}",
                    through + 1
                ));
                self.failed.push(e);
                self.open = Some(through);
                self.next_attempt = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The traffic

/// What the token requests saw.
#[derive(Default)]
struct Traffic {
    requests: u32,
    served: u32,
    failures: u32,
    /// Failures by the first words of tokenctl's message.
    failure_kinds: BTreeMap<String, u32>,
    /// One whole message of each kind.
    failure_examples: BTreeMap<String, String>,
    distinct: HashSet<String>,
}

/// A token request to a random live member about every [`REQUEST_EVERY`],
/// each token served checked at the server; a member that fails is asked
/// for its state (and every second a random one anyway), and a login is
/// made when the fleet asks for one. Runs until `ctx.stop`.
fn traffic(ctx: &Ctx, mut rng: Rng) -> (Traffic, Logins) {
    let mut seen = Traffic::default();
    let mut logins = Logins::default();
    let mut next = Instant::now();
    let mut next_look = Instant::now();
    while !ctx.stop.load(Ordering::SeqCst) {
        if let Some(m) = ctx.pick_live(&mut rng) {
            seen.requests += 1;
            let stops_before = ctx.liveness.lock().unwrap().stop_count[m];
            let answer = token_of(&ctx.sockets[m]);
            // A member stopped while it answered may hand out a token that
            // expired meanwhile: it could not know.
            let paused = {
                let l = ctx.liveness.lock().unwrap();
                l.stopped[m] || l.stop_count[m] != stops_before
            };
            match answer {
                Ok((token, expires_at)) => {
                    seen.served += 1;
                    if !ctx.accepted(&token) {
                        let (state, reason) = state_of(&ctx.sockets[m]);
                        let what = format!(
                            "member {} served a token the server does not accept (it expires at {expires_at:?}, now {}; state {state}: {reason})",
                            m + 1,
                            now_epoch()
                        );
                        if state == "needs-login" {
                            ctx.note(format!("{what}: a login is asked for"));
                        } else if paused {
                            ctx.note(format!("{what}: it was stopped while it answered"));
                        } else {
                            ctx.violation(what);
                        }
                    }
                    seen.distinct.insert(token);
                }
                Err(out) => {
                    seen.failures += 1;
                    let message = stderr(&out).trim().to_string();
                    let kind = failure_kind(&message);
                    seen.failure_examples.entry(kind.clone()).or_insert(message);
                    *seen.failure_kinds.entry(kind).or_default() += 1;
                    logins.observe(ctx, m);
                }
            }
        }
        if Instant::now() >= next_look {
            if let Some(m) = ctx.pick_live(&mut rng) {
                logins.observe(ctx, m);
            }
            next_look = Instant::now() + Duration::from_secs(1);
        }
        logins.maybe_login(ctx, &mut rng);
        next += REQUEST_EVERY;
        match next.checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None => next = Instant::now(),
        }
    }
    (seen, logins)
}

// ---------------------------------------------------------------------------
// The storm

/// What the storm did.
#[derive(Default)]
struct Storm {
    kills: u32,
    stops: u32,
    /// Events of `pg_terminate_backend`, and the sessions they ended.
    terminate_events: u32,
    terminated: u32,
    holds: u32,
    stalls: u32,
    pg_restarts: u32,
}

enum Action {
    Restart(usize),
    Continue(usize),
    StartDatabase,
}

/// Runs the storm for `duration`, then lets every stopped member go,
/// starts the database if it is down and restarts the killed members.
fn storm(fleet: &mut Fleet, ctx: &Ctx, duration: Duration, rng: &mut Rng) -> Storm {
    let mut done = Storm::default();
    let start = Instant::now();
    let end = start + duration;
    let mut pending: Vec<(Instant, Action)> = Vec::new();
    let mut next_fault = start + rng.millis(2000, 5000);
    // Exactly one database restart, somewhere in the middle.
    let restart_db_at = start + duration.mul_f64(0.35 + rng.below(31) as f64 / 100.0);
    let mut db_restarted = false;
    let mut db_down = false;
    while Instant::now() < end {
        let now = Instant::now();
        pending.sort_by_key(|(at, _)| *at);
        while let Some(i) = pending
            .iter()
            .position(|(at, a)| *at <= now && !(db_down && matches!(a, Action::Restart(_))))
        {
            let (_, action) = pending.remove(i);
            act(fleet, ctx, action, &mut db_down);
        }
        if !db_restarted && now >= restart_db_at {
            ctx.note("PostgreSQL stops");
            fleet.pg.stop();
            ctx.note("PostgreSQL stopped");
            db_down = true;
            db_restarted = true;
            done.pg_restarts += 1;
            pending.push((
                Instant::now() + rng.millis(2000, 3000),
                Action::StartDatabase,
            ));
        }
        // A member that exited by itself (none should) is reported, and
        // started again so that the storm goes on.
        for m in 0..MEMBERS {
            let killed = pending
                .iter()
                .any(|(_, a)| matches!(a, Action::Restart(k) if *k == m));
            if !killed && !fleet.members[m].is_running() {
                ctx.violation(format!(
                    "member {} exited by itself:\n{}",
                    m + 1,
                    tail(&fleet.members[m].log_text(), 40)
                ));
                let mut l = ctx.liveness.lock().unwrap();
                l.live[m] = false;
                l.stopped[m] = false;
                drop(l);
                pending.push((Instant::now(), Action::Restart(m)));
            }
        }
        if now >= next_fault {
            fault(fleet, ctx, rng, db_down, &mut pending, &mut done);
            next_fault = Instant::now() + rng.millis(2000, 5000);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ctx.note("the storm is over: the provider's fault is cleared, every member is let go");
    ctx.idp.fault(r#"{"mode":"none"}"#);
    // The database first (a member cannot start without it), then the others.
    pending.sort_by_key(|(_, a)| match a {
        Action::StartDatabase => 0,
        Action::Continue(_) => 1,
        Action::Restart(_) => 2,
    });
    for (_, action) in pending {
        act(fleet, ctx, action, &mut db_down);
    }
    done
}

fn act(fleet: &mut Fleet, ctx: &Ctx, action: Action, db_down: &mut bool) {
    match action {
        Action::StartDatabase => {
            fleet.pg.start_again();
            *db_down = false;
            ctx.note("PostgreSQL started again");
        }
        Action::Continue(m) => {
            let mut l = ctx.liveness.lock().unwrap();
            signal(l.pids[m], libc::SIGCONT);
            l.stopped[m] = false;
            l.live[m] = true;
            l.since[m] = Instant::now();
            drop(l);
            ctx.note(format!("SIGCONT to member {}", m + 1));
        }
        Action::Restart(m) => {
            fleet.members[m].restart();
            let mut l = ctx.liveness.lock().unwrap();
            l.pids[m] = fleet.members[m].pid();
            l.live[m] = true;
            l.since[m] = Instant::now();
            drop(l);
            ctx.note(format!("member {} restarted", m + 1));
        }
    }
}

/// One random fault.
fn fault(
    fleet: &mut Fleet,
    ctx: &Ctx,
    rng: &mut Rng,
    db_down: bool,
    pending: &mut Vec<(Instant, Action)>,
    done: &mut Storm,
) {
    let mut kind = rng.below(20);
    // A member taken down: one that is live, not logging in, and never the
    // last live one.
    if (6..=15).contains(&kind) {
        let victim = {
            let mut l = ctx.liveness.lock().unwrap();
            let live: Vec<usize> = (0..MEMBERS).filter(|&m| l.live[m]).collect();
            let choices: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&m| l.login_through != Some(m))
                .collect();
            if live.len() >= 2 && !choices.is_empty() {
                let m = choices[rng.below(choices.len() as u64) as usize];
                l.live[m] = false;
                if kind > 10 {
                    l.stopped[m] = true;
                    l.stop_count[m] += 1;
                }
                Some(m)
            } else {
                None
            }
        };
        match victim {
            Some(m) if kind <= 10 => {
                fleet.members[m].kill9();
                done.kills += 1;
                let back = rng.millis(500, 2000);
                ctx.note(format!(
                    "kill -9 of member {} (restarted in {back:?})",
                    m + 1
                ));
                pending.push((Instant::now() + back, Action::Restart(m)));
                return;
            }
            Some(m) => {
                signal(fleet.members[m].pid(), libc::SIGSTOP);
                done.stops += 1;
                let back = rng.millis(1000, 8000);
                ctx.note(format!("SIGSTOP of member {} for {back:?}", m + 1));
                pending.push((Instant::now() + back, Action::Continue(m)));
                return;
            }
            None => kind = 16,
        }
    }
    if kind >= 16 && !db_down {
        // A random tokend session, of any member (stopped ones too).
        let out = fleet.pg.try_psql(
            "SELECT pid || ' ' || application_name FROM pg_stat_activity \
             WHERE application_name LIKE 'tokend:%' ORDER BY pid",
        );
        let sessions: Vec<(String, String)> = stdout(&out)
            .lines()
            .filter_map(|l| {
                let (pid, app) = l.trim().split_once(' ')?;
                Some((pid.to_string(), app.to_string()))
            })
            .collect();
        if !sessions.is_empty() {
            let (pid, app) = &sessions[rng.below(sessions.len() as u64) as usize];
            let ended = fleet
                .pg
                .try_psql(&format!("SELECT pg_terminate_backend({pid})"));
            let ok = stdout(&ended).trim() == "t";
            done.terminate_events += 1;
            done.terminated += u32::from(ok);
            let pids = ctx.liveness.lock().unwrap().pids;
            let owner = app
                .split(':')
                .nth(2)
                .and_then(|p| p.parse::<u32>().ok())
                .and_then(|p| pids.iter().position(|&q| q == p))
                .map_or("?".to_string(), |m| (m + 1).to_string());
            ctx.note(format!(
                "pg_terminate_backend of session {pid} of member {owner} ({} sessions): {}",
                sessions.len(),
                if ok { "ended" } else { "not ended" }
            ));
            return;
        }
    }
    // The provider: the next refresh request is held or stalled.
    let mode = if rng.below(2) == 0 { "hold" } else { "stall" };
    let delay = 500 + rng.below(2001);
    ctx.idp.fault(&format!(
        r#"{{"mode":"{mode}","delay_ms":{delay},"count":1,"grant_type":"refresh_token"}}"#
    ));
    if mode == "hold" {
        done.holds += 1;
    } else {
        done.stalls += 1;
    }
    ctx.note(format!(
        "provider fault: the next refresh is {mode} {delay} ms"
    ));
}

// ---------------------------------------------------------------------------

#[test]
fn a_seeded_storm_of_faults_never_sends_a_refresh_token_twice() {
    let seed = seed_from_env("TOKEND_CHAOS_SEED");
    let secs: u64 = std::env::var("TOKEND_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(180);
    let replay = format!(
        "TOKEND_CHAOS_SEED={seed} TOKEND_CHAOS_SECS={secs} cargo test -p tokend-tests --test chaos -- --nocapture"
    );
    eprintln!("chaos: seed {seed}, a storm of {secs} s; replay with: {replay}");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed, secs)));
    if let Err(e) = outcome {
        let message = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("chaos seed {seed} (replay: {replay}):\n{message}");
    }
}

/// The whole test: a fleet logged in, the storm for `secs` seconds with
/// the traffic alongside, then the fleet settled and checked.
fn run(seed: u64, secs: u64) {
    let started = Instant::now();
    let idp = OidcServer::start(6);
    let mut fleet = Fleet::logged_in(&idp, MEMBERS);
    let now = Instant::now();
    let pids: Vec<u32> = fleet.members.iter().map(Daemon::pid).collect();
    let ctx = Ctx {
        seed,
        start: now,
        idp: &idp,
        sockets: fleet.members.iter().map(|d| d.socket.clone()).collect(),
        logs: fleet.members.iter().map(|d| d.log.clone()).collect(),
        liveness: Mutex::new(Liveness {
            live: [true; MEMBERS],
            since: [now - SETTLED_FOR; MEMBERS],
            stopped: [false; MEMBERS],
            stop_count: [0; MEMBERS],
            pids: [pids[0], pids[1], pids[2]],
            login_through: None,
        }),
        stop: AtomicBool::new(false),
        violations: Mutex::new(Vec::new()),
        timeline: Mutex::new(Vec::new()),
        checks: AtomicU32::new(0),
        checks_inactive: AtomicU32::new(0),
    };
    let mut rng = Rng(seed);
    let traffic_rng = Rng((seed.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15) | 1);
    let before = idp.stats();

    // The storm, with the traffic alongside.
    let (seen, mut logins, done) = std::thread::scope(|s| {
        let release = Release(&ctx);
        let traffic = s.spawn(|| traffic(&ctx, traffic_rng));
        let done = storm(&mut fleet, &ctx, Duration::from_secs(secs), &mut rng);
        drop(release);
        let (seen, logins) = match traffic.join() {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e),
        };
        (seen, logins, done)
    });

    // Every member is up again: wait for the fleet to settle, with one
    // login if it asks for one.
    let settled = settle(&ctx, &mut logins, &mut rng);

    // The grant is alive everywhere: every member running, ready, serving
    // a token the server accepts.
    for (m, d) in fleet.members.iter_mut().enumerate() {
        if !d.is_running() {
            ctx.violation(format!("member {} is not running at the end", m + 1));
        }
    }
    for m in 0..MEMBERS {
        let (state, reason) = state_of(&ctx.sockets[m]);
        let token = token_of(&ctx.sockets[m]);
        let ok = state == "ready" && token.as_ref().is_ok_and(|(t, _)| ctx.accepted(t));
        if !ok {
            ctx.violation(format!(
                "at the end member {} is {state:?} ({reason}), serving {:?}",
                m + 1,
                token
                    .map(|t| format!("{:.8}…", t.0))
                    .map_err(|o| summary(&o))
            ));
        }
    }
    forced_refresh(&ctx, &mut rng);

    let stats = idp.stats();
    let (checks, checks_inactive) = provider_checks(&ctx, &stats, &logins);

    let daemon_introspections = count(&stats["introspections"])
        .saturating_sub(count(&before["introspections"]))
        .saturating_sub(u64::from(checks));
    let kinds: Vec<String> = {
        let mut k: Vec<(&String, &u32)> = seen.failure_kinds.iter().collect();
        k.sort_by(|a, b| b.1.cmp(a.1));
        k.iter()
            .take(8)
            .map(|(k, n)| format!("{n}× {}", seen.failure_examples[*k]))
            .collect()
    };
    eprintln!(
        "chaos: failed requests by kind (one message of each):\n  {}",
        kinds.join("\n  ")
    );
    eprintln!(
        "chaos summary (seed {seed}, {secs} s storm, {:.0} s in all): {} requests ({} served, {} distinct tokens, {} failed), {} kill -9s, {} SIGSTOPs, {} terminations ({} sessions ended), 1 database restart, {} holds + {} stalls set ({} refreshes held, {} stalled), {} logins after a rotation ({} for another reason, {} attempts), provider: {} refreshes ({} succeeded), {} introspections by the daemons ({} active, {} rotated, {} other) and {} by the test; settled in {settled:?}",
        started.elapsed().as_secs_f32(),
        seen.requests,
        seen.served,
        seen.distinct.len(),
        seen.failures,
        done.kills,
        done.stops,
        done.terminate_events,
        done.terminated,
        done.holds,
        done.stalls,
        count(&stats["held"]),
        count(&stats["faulted_by_grant"]["refresh_token"]),
        logins.logins,
        logins.other_logins,
        logins.attempts,
        stats["token_requests"]["refresh_token"],
        stats["token_success"]["refresh_token"],
        daemon_introspections,
        count(&stats["introspected_active"]).saturating_sub(u64::from(checks - checks_inactive)),
        count(&stats["introspected_inactive_rotated"]),
        count(&stats["introspected_inactive_other"]).saturating_sub(u64::from(checks_inactive)),
        checks,
    );
    assert_eq!(done.pg_restarts, 1, "exactly one database restart");

    let violations = ctx.violations.lock().unwrap().clone();
    if !violations.is_empty() {
        let mut stats = stats.clone();
        if let Some(map) = stats.as_object_mut() {
            map.remove("errors");
        }
        let timeline = ctx.timeline.lock().unwrap();
        panic!(
            "seed {seed}: {} violation(s) of the promise:\n- {}\n\nprovider stats: {stats}\nfailed logins: {:?}\n\n--- the last events ---\n{}\n{}",
            violations.len(),
            violations.join("\n- "),
            logins.failed,
            timeline[timeline.len().saturating_sub(40)..].join("\n"),
            fleet.logs()
        );
    }
}

/// Waits (up to [`SETTLE`]) until every member is ready with the same
/// accepted token, logging in once if the fleet asks for it; how long it
/// took, or `None` (a violation).
fn settle(ctx: &Ctx, logins: &mut Logins, rng: &mut Rng) -> Option<Duration> {
    ctx.note("waiting for the fleet to settle");
    let settle_start = Instant::now();
    let mut settled = None;
    let mut last = String::new();
    while settle_start.elapsed() < SETTLE {
        let mut states = Vec::new();
        for m in 0..MEMBERS {
            states.push(logins.observe(ctx, m));
        }
        let tokens: Vec<Result<String, String>> = ctx
            .sockets
            .iter()
            .map(|s| token_of(s).map(|t| t.0).map_err(|o| summary(&o)))
            .collect();
        last = format!(
            "{:?}",
            states
                .iter()
                .zip(&tokens)
                .map(|((state, reason), t)| format!(
                    "{state} ({reason}) serving {}",
                    match t {
                        Ok(t) => format!("{t:.8}…"),
                        Err(e) => e.clone(),
                    }
                ))
                .collect::<Vec<_>>()
        );
        if states.iter().all(|(s, _)| s == "ready")
            && let Ok(first) = &tokens[0]
            && tokens.iter().all(|t| t.as_ref() == Ok(first))
            && ctx.accepted(first)
        {
            settled = Some(settle_start.elapsed());
            break;
        }
        logins.maybe_login(ctx, rng);
        std::thread::sleep(Duration::from_millis(300));
    }
    ctx.note(format!("settled: {settled:?}; {last}"));
    if settled.is_none() {
        ctx.violation(format!(
            "{SETTLE:?} after the storm the fleet has not settled (all ready with one accepted token): {last}"
        ));
    }
    settled
}

/// A forced refresh through a random member works, and the others serve
/// its token within [`PROPAGATION`].
fn forced_refresh(ctx: &Ctx, rng: &mut Rng) {
    let via = rng.below(MEMBERS as u64) as usize;
    let old = token_of(&ctx.sockets[via]).map(|t| t.0).unwrap_or_default();
    let success_before = count(&ctx.idp.stats()["token_success"]["refresh_token"]);
    let mut forced = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ctl(&ctx.sockets[via], &["refresh", NAME]);
        forced.push(summary(&out));
        if out.status.success() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let refreshed = token_of(&ctx.sockets[via]).map(|t| t.0);
    let success_after = count(&ctx.idp.stats()["token_success"]["refresh_token"]);
    let fresh = match &refreshed {
        Ok(t) if *t != old && success_after > success_before && ctx.accepted(t) => Some(t.clone()),
        _ => None,
    };
    ctx.note(format!(
        "forced refresh through member {}: {forced:?}",
        via + 1
    ));
    match &fresh {
        None => ctx.violation(format!(
            "the final forced refresh through member {} did not give a new accepted token: {forced:?}; then {:?}",
            via + 1,
            refreshed.map_err(|o| summary(&o))
        )),
        Some(fresh) => {
            for m in (0..MEMBERS).filter(|&m| m != via) {
                // The new token, or (if a scheduled refresh followed at
                // once) the one the refreshing member serves by then.
                let deadline = Instant::now() + PROPAGATION;
                let served = loop {
                    let served = token_of(&ctx.sockets[m])
                        .map(|t| t.0)
                        .map_err(|o| summary(&o));
                    let now_via = token_of(&ctx.sockets[via]).map(|t| t.0).ok();
                    let caught_up = served.as_ref().is_ok_and(|t| {
                        t == fresh || (Some(t) == now_via.as_ref() && *t != old)
                    });
                    if caught_up || Instant::now() > deadline {
                        break served;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                let ok = served.as_ref().is_ok_and(|t| *t != old && ctx.accepted(t));
                if !ok {
                    ctx.violation(format!(
                        "member {} does not serve the forced refresh's token through member {} within {PROPAGATION:?}: {:?}",
                        m + 1,
                        via + 1,
                        served.map(|t| format!("{t:.8}…"))
                    ));
                }
            }
        }
    }
}

/// The provider's word: no reuse, no grant revoked, no refresh refused, no
/// refresh token given up that had not rotated, and one rotation confirmed
/// by introspection per login. Returns the test's own introspections (all,
/// and those that said "inactive").
fn provider_checks(ctx: &Ctx, stats: &serde_json::Value, logins: &Logins) -> (u32, u32) {
    let checks = ctx.checks.load(Ordering::SeqCst);
    let checks_inactive = ctx.checks_inactive.load(Ordering::SeqCst);
    if count(&stats["refresh_token_reuse"]) != 0 {
        ctx.violation(format!(
            "a rotated refresh token reached the provider again (refresh_token_reuse = {}): {}",
            stats["refresh_token_reuse"], stats["grant_errors"]
        ));
    }
    if count(&stats["grants_revoked"]) != 0 {
        ctx.violation(format!(
            "the provider revoked a grant (grants_revoked = {}): {}",
            stats["grants_revoked"], stats["grant_errors"]
        ));
    }
    if count(&stats["token_errors"]["refresh_token"]) != 0 {
        ctx.violation(format!(
            "a refresh reached the provider and was refused: {}",
            stats["grant_errors"]
        ));
    }
    // Every introspection of the test's own is of an access token served;
    // every "inactive, other" beyond those is a daemon's.
    let other = count(&stats["introspected_inactive_other"]);
    if other != u64::from(checks_inactive) {
        ctx.violation(format!(
            "introspection gave up {} refresh token(s) that had not rotated (introspected_inactive_other = {other}, of which {checks_inactive} the test's own checks of access tokens)",
            other.saturating_sub(u64::from(checks_inactive))
        ));
    }
    let rotated = count(&stats["introspected_inactive_rotated"]);
    if rotated != u64::from(logins.logins) {
        ctx.violation(format!(
            "{} login(s) were asked for after a rotation, but introspection found {rotated} rotated refresh token(s): every login must follow exactly one rotation the provider confirms",
            logins.logins
        ));
    }
    (checks, checks_inactive)
}
