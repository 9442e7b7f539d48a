//! The fleet benchmark (issue 12, `--fleet`): tokend daemons sharing one
//! PostgreSQL store, in a private cluster (`postgres.rs`), all in one run:
//!
//! 1. the token request on a fleet member against a SQLite daemon holding
//!    the same credentials (persistent connection, the request-path
//!    benchmark's latency code): the hot path is the same, memory;
//! 2. change propagation: `add`, then `rm`, on member 1 through the client
//!    library, timed until members 2 and 3 serve the new credential (or
//!    answer "unknown credential");
//! 3. a refresh storm: every member schedules every credential, all due at
//!    once, against the fake provider: calls per credential, time until
//!    all members serve fresh tokens, the provider's peak concurrency;
//! 4. start-up to ready of a member with a large store in PostgreSQL.

use crate::client::TokendEndpoint;
use crate::daemon::{Daemon, Setup};
use crate::fake_provider::{FakeProvider, Stats};
use crate::measure::{Latency, Shape, latency_pair};
use crate::postgres::Cluster;
use crate::report::{Goal, Report, Row};
use crate::{Args, FleetPart, fixtures, procfs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokend::store::StoredCredential;
use tokend::store::seal::Sealer;
use tokend_client::{Client, Error as ClientError};
use tokend_proto::{AddCredential, AddKind, CredentialState, Secret};

/// How long one change may take to reach a member before it counts as lost.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// The pause between two polls of a member waiting for a change.
const POLL: Duration = Duration::from_micros(200);

pub fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    progress!("fleet: starting a private PostgreSQL cluster");
    let t = Instant::now();
    let cluster = Cluster::start()?;
    report.notes.push(format!(
        "fleet: PostgreSQL cluster (initdb + start) in {:.1} s, binaries in {}",
        t.elapsed().as_secs_f64(),
        Cluster::binaries()?.display()
    ));
    let keys = tempfile::Builder::new()
        .prefix("tokend-bench-key")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the fleet's key: {e}"))?;
    let key = keys.path().join("fleet.key");
    let fleet = Fleet {
        cluster: &cluster,
        key,
        members: args.fleet_members.max(2),
    };
    let wanted = |p| args.fleet_parts.contains(&p);
    if wanted(FleetPart::Requests) {
        request_path(args, &fleet, report)?;
    }
    if wanted(FleetPart::Storm) {
        storm(args, &fleet, report)?;
    }
    if wanted(FleetPart::Startup) {
        startup(args, &fleet, report)?;
    }
    Ok(())
}

/// The cluster and the key every member shares.
struct Fleet<'a> {
    cluster: &'a Cluster,
    key: PathBuf,
    members: usize,
}

impl Fleet<'_> {
    /// A new database filled with `creds`; its store URL.
    fn database(
        &self,
        name: &str,
        config: &str,
        creds: &[StoredCredential],
    ) -> Result<String, String> {
        let url = self.cluster.create_db(name)?;
        let t = Instant::now();
        populate(&url, &self.key, config, creds)?;
        progress!(
            "fleet: {} credentials written to database {name} in {:.2} s",
            creds.len(),
            t.elapsed().as_secs_f64()
        );
        Ok(url)
    }

    /// `n` members on `url`, all spawned before any is waited for (as a
    /// fleet restarted at once); each ready.
    fn start(&self, n: usize, url: &str, config: &str) -> Result<Vec<Daemon>, String> {
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            members.push(Setup::member(config, url, &self.key)?.start()?);
        }
        for member in &mut members {
            member.wait_ready(Duration::from_secs(120))?;
        }
        Ok(members)
    }
}

/// Writes `creds` into the PostgreSQL store at `url` through the daemon
/// library (one transaction), sealed with `key` (created if missing), the
/// way a member would seal them.
pub fn populate(
    url: &str,
    key: &Path,
    config: &str,
    creds: &[StoredCredential],
) -> Result<(), String> {
    let config = tokend::config::Config::parse(config)?;
    let (sealer, _) = Sealer::load(None, key, true).map_err(|e| e.to_string())?;
    let store = tokend::store::open_postgres(url, &config, sealer).map_err(|e| e.to_string())?;
    store.verify_key().map_err(|e| e.to_string())?;
    store.insert_many(creds).map_err(|e| e.to_string())
}

/// Rows 1 and 2: the token request on a member against a SQLite daemon,
/// then change propagation between the members.
fn request_path(args: &Args, fleet: &Fleet, report: &mut Report) -> Result<(), String> {
    let n = args.credentials.max(1);
    let len = args.token_bytes;
    let now = fixtures::now();
    let creds = fixtures::many(n, |i| fixtures::bearer(i, len, now));
    progress!(
        "fleet: {} members and a SQLite daemon, {n} cached tokens of {len} bytes",
        fleet.members
    );
    let url = fleet.database("requests", "", &creds)?;
    let members = fleet.start(fleet.members, &url, "")?;
    let sqlite = Setup::new("")?;
    sqlite.populate(&creds)?;
    let mut sqlite = sqlite.start()?;
    sqlite.wait_ready(Duration::from_secs(60))?;
    let endpoint = |d: &Daemon| TokendEndpoint {
        socket: d.socket().to_path_buf(),
        names: (0..n).map(fixtures::name).collect(),
        token_len: len,
    };
    let load = procfs::load_average();
    progress!("fleet: token latency, persistent connection, member 1 against SQLite");
    let (f, s) = latency_pair(
        &endpoint(&members[0]),
        &endpoint(&sqlite),
        Shape::Persistent,
        args.latency_iters,
        args.rounds,
    )?;
    report.push(Row::new(
        "fleet member vs SQLite daemon: token p50",
        "us",
        f.p50_us,
        Some(s.p50_us),
        Goal::RatioAtMost(1.1),
    ));
    report.push(Row::new(
        "fleet member vs SQLite daemon: token p99",
        "us",
        f.p99_us,
        Some(s.p99_us),
        Goal::None,
    ));
    check_logs("the SQLite daemon", &sqlite, report);
    drop(sqlite);
    propagation(args, &members, report)?;
    report.notes.push(format!(
        "fleet requests and propagation: load average {load:.1} at start, {:.1} at the end",
        procfs::load_average()
    ));
    for (i, m) in members.iter().enumerate() {
        check_logs(&format!("member {}", i + 1), m, report);
    }
    Ok(())
}

/// Row 2: `add` on member 1, time until every other member serves the new
/// token; then `rm`, time until every other member answers "unknown
/// credential". Timed from the moment the request is sent, so each sample
/// includes member 1's commit. Members are polled every [`POLL`].
fn propagation(args: &Args, members: &[Daemon], report: &mut Report) -> Result<(), String> {
    let samples = args.fleet_samples.max(1);
    let others = members.len() - 1;
    progress!(
        "fleet: change propagation, {samples} adds and removes on member 1, watched on {others} members"
    );
    let connect = |d: &Daemon| Client::connect(d.socket()).map_err(|e| e.to_string());
    let mut writer = connect(&members[0])?;
    let mut readers = members[1..]
        .iter()
        .map(connect)
        .collect::<Result<Vec<_>, _>>()?;
    let (mut add, mut rm) = (Vec::new(), Vec::new());
    let (mut add_call, mut rm_call) = (Vec::new(), Vec::new());
    let mut lost = 0usize;
    for i in 0..samples {
        let name = format!("prop-{i:06}");
        let token = fixtures::token("prop", i, 64);
        let t0 = Instant::now();
        writer
            .add(AddCredential {
                name: name.clone(),
                description: "propagation".into(),
                kind: AddKind::Bearer {
                    check_url: None,
                    preset: None,
                },
                secret: Secret::new(token.clone()),
                replace: false,
                git_hosts: Vec::new(),
                upstream: Default::default(),
            })
            .map_err(|e| format!("add {name} on member 1: {e}"))?;
        add_call.push(t0.elapsed());
        let seen = wait_for(&mut readers, t0, |c| {
            c.token(&name).is_ok_and(|t| t.expose() == token)
        });
        lost += record(seen, &mut add);
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        writer
            .remove(&name)
            .map_err(|e| format!("rm {name} on member 1: {e}"))?;
        rm_call.push(t0.elapsed());
        let seen = wait_for(&mut readers, t0, |c| {
            matches!(c.token(&name), Err(ClientError::UnknownCredential(_)))
        });
        lost += record(seen, &mut rm);
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = |l: &Latency| (l.p50_us / 1e3, l.p99_us / 1e3);
    let label = |what: &str| format!("fleet: {what}");
    for (kind, samples, call) in [("add", add, add_call), ("rm", rm, rm_call)] {
        if samples.is_empty() {
            continue;
        }
        let (p50, p99) = ms(&Latency::of(samples));
        let call = Latency::of(call).p50_us / 1e3;
        let seen = |p: &str| label(&format!("{kind} on member 1 seen by the others: {p}"));
        report.push(Row::new(seen("p50"), "ms", p50, None, Goal::None));
        report.push(Row::new(seen("p99"), "ms", p99, None, Goal::AtMost(1000.0)));
        report.push(Row::new(
            label(&format!("{kind} request on member 1 itself: p50")),
            "ms",
            call,
            None,
            Goal::None,
        ));
    }
    report.push(Row::new(
        label(&format!(
            "changes not seen within {} s",
            PROPAGATION_LIMIT.as_secs()
        )),
        "count",
        lost as f64,
        None,
        Goal::AtMost(0.0),
    ));
    Ok(())
}

/// Polls each reader until `seen` holds for it (or [`PROPAGATION_LIMIT`]);
/// the time from `t0` at which each first did.
fn wait_for(
    readers: &mut [Client],
    t0: Instant,
    mut seen: impl FnMut(&mut Client) -> bool,
) -> Vec<Option<Duration>> {
    let mut when: Vec<Option<Duration>> = vec![None; readers.len()];
    while t0.elapsed() < PROPAGATION_LIMIT {
        for (r, w) in readers.iter_mut().zip(when.iter_mut()) {
            if w.is_none() && seen(r) {
                *w = Some(t0.elapsed());
            }
        }
        if when.iter().all(Option::is_some) {
            break;
        }
        std::thread::sleep(POLL);
    }
    when
}

/// Adds the times seen to `into`; the number of members that never saw it.
fn record(seen: Vec<Option<Duration>>, into: &mut Vec<Duration>) -> usize {
    let lost = seen.iter().filter(|s| s.is_none()).count();
    into.extend(seen.into_iter().flatten());
    lost
}

/// Row 3: every member on one database, every credential due at once.
fn storm(args: &Args, fleet: &Fleet, report: &mut Report) -> Result<(), String> {
    let n = args.storm_credentials;
    let provider = FakeProvider::start(Duration::from_millis(args.provider_delay_ms))?;
    let config = format!(
        "[refresh]\nstartup_spread_secs = 0\nmax_concurrent = {}\n",
        args.max_concurrent
    );
    let now = fixtures::now();
    let url = provider.token_url.clone();
    let creds = fixtures::many(n, |i| fixtures::oauth2(i, &url, now, now - 60, now - 60));
    let db = fleet.database("storm", &config, &creds)?;
    drop(creds);
    progress!(
        "fleet: refresh storm, {} members, {n} credentials due at once, provider delay {} ms, max_concurrent {}",
        fleet.members,
        args.provider_delay_ms,
        args.max_concurrent
    );
    let load = procfs::load_average();
    let pg_cpu = fleet.cluster.cpu_secs()?;
    let members = fleet.start(fleet.members, &db, &config)?;
    let started = members[0].started;
    let deadline = started + Duration::from_secs_f64(args.storm_timeout);
    let stats = &provider.stats;
    while Stats::get(&stats.answered_ok) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (fresh, stale) = wait_all_fresh(&members, n, now, started, deadline)?;
    let pg_cpu = fleet.cluster.cpu_secs()? - pg_cpu;
    let mut members_cpu = 0.0;
    for m in &members {
        members_cpu += procfs::cpu_secs(m.pid())?;
    }
    // A late second call (a member that looked again after a busy lock)
    // would come within seconds: wait for it before counting.
    std::thread::sleep(Duration::from_secs(3));
    let answered = stats.last_answer().map(|t| t.duration_since(started));
    let config = tokend::config::Config::parse(&config)?;
    let bound = fleet.members * args.max_concurrent.min(config.fleet.lock_connections);
    let label = |what: &str| format!("fleet storm {n} x{}: {what}", fleet.members);
    let requests = Stats::get(&stats.requests);
    let (clients, most, repeated, examples) = stats.per_client();
    report.push(Row::new(
        label("provider calls per credential"),
        "calls",
        requests as f64 / n.max(1) as f64,
        None,
        Goal::AtMost(1.0),
    ));
    report.push(Row::new(
        label("credentials refreshed twice or more"),
        "count",
        repeated as f64,
        None,
        Goal::AtMost(0.0),
    ));
    report.push(Row::new(
        label("all fresh on every member"),
        "s",
        fresh.map_or(f64::NAN, |d| d.as_secs_f64()),
        None,
        Goal::AtMost(30.0),
    ));
    report.push(Row::new(
        label("CPU time of the members until then"),
        "s",
        members_cpu,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("CPU time of PostgreSQL until then"),
        "s",
        pg_cpu,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("last provider answer"),
        "s",
        answered.map_or(f64::NAN, |d| d.as_secs_f64()),
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("not fresh on some member"),
        "count",
        stale as f64,
        None,
        Goal::AtMost(0.0),
    ));
    report.push(Row::new(
        label("peak requests in flight at provider"),
        "count",
        Stats::get(&stats.peak_in_flight) as f64,
        None,
        Goal::AtMost(bound as f64),
    ));
    report.notes.push(format!(
        "fleet storm: {requests} provider requests from {clients} clients, at most {most} from one; the concurrency bound is {} members x min(max_concurrent {}, [fleet] lock_connections {}); load average {load:.1} before, {:.1} after",
        fleet.members,
        args.max_concurrent,
        config.fleet.lock_connections,
        procfs::load_average()
    ));
    if repeated > 0 {
        report.notes.push(format!(
            "fleet storm: refreshed more than once (calls): {}",
            examples.join(", ")
        ));
    }
    let protocol_errors =
        Stats::get(&stats.bad_requests) + Stats::get(&stats.reused_refresh_tokens);
    if protocol_errors > 0 {
        report.errors.push(format!(
            "fleet storm: the fake provider saw {protocol_errors} bad or replayed refresh requests"
        ));
    }
    for (i, m) in members.iter().enumerate() {
        check_logs(&format!("storm member {}", i + 1), m, report);
    }
    Ok(())
}

/// Lists every member's credentials (one `list` request each, so that
/// watching costs the members little CPU) until each has shown all `n`
/// refreshed since `before` (Unix s) and valid for 10 more minutes, or
/// `deadline`. Returns when the last member first did (from `started`),
/// and the most credentials one member still had stale.
fn wait_all_fresh(
    members: &[Daemon],
    n: usize,
    before: i64,
    started: Instant,
    deadline: Instant,
) -> Result<(Option<Duration>, usize), String> {
    let mut clients = members
        .iter()
        .map(|m| Client::connect(m.socket()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut done: Vec<Option<Duration>> = vec![None; members.len()];
    let mut stale = vec![n; members.len()];
    loop {
        for (i, client) in clients.iter_mut().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let list = client.list().map_err(|e| e.to_string())?;
            let horizon = fixtures::now() + 600;
            let fresh = list
                .iter()
                .filter(|c| {
                    c.state == CredentialState::Ready
                        && c.has_token
                        && c.last_refresh_at.is_some_and(|t| t >= before)
                        && c.expires_at.is_some_and(|e| e > horizon)
                })
                .count();
            stale[i] = n.saturating_sub(fresh);
            if stale[i] == 0 {
                done[i] = Some(started.elapsed());
            }
        }
        if done.iter().all(Option::is_some) || Instant::now() >= deadline {
            let last = done.iter().copied().collect::<Option<Vec<_>>>();
            let last = last.and_then(|d| d.into_iter().max());
            return Ok((last, stale.into_iter().max().unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Row 4: one member starting on a database holding many credentials.
fn startup(args: &Args, fleet: &Fleet, report: &mut Report) -> Result<(), String> {
    let n = args.scale_credentials.max(1);
    let len = args.scale_token_bytes;
    let now = fixtures::now();
    progress!("fleet: start-up with {n} credentials ({len}-byte tokens) in PostgreSQL");
    let creds = fixtures::many(n, |i| fixtures::bearer(i, len, now));
    let t = Instant::now();
    let url = fleet.database("startup", "", &creds)?;
    report.notes.push(format!(
        "fleet: writing {n} credentials to PostgreSQL (insert_many, one transaction) took {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    drop(creds);
    let load = procfs::load_average();
    let mut member = Setup::member("", &url, &fleet.key)?.start()?;
    let ready = member.wait_ready(Duration::from_secs(120))?;
    let pid = member.pid();
    let cpu = procfs::cpu_secs(pid)?;
    let rss = procfs::rss_kib(pid)? as f64 / 1024.0;
    let peak = procfs::peak_rss_kib(pid)? as f64 / 1024.0;
    let label = |what: &str| format!("fleet {n} creds in PostgreSQL: {what}");
    report.push(Row::new(
        label("ready after start"),
        "ms",
        ready.as_secs_f64() * 1e3,
        None,
        Goal::AtMost(2000.0),
    ));
    report.push(Row::new(
        label("CPU time to ready"),
        "ms",
        cpu * 1e3,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("RSS after start"),
        "MiB",
        rss,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("peak RSS (VmHWM)"),
        "MiB",
        peak,
        None,
        Goal::None,
    ));
    let mut client = Client::connect(member.socket()).map_err(|e| e.to_string())?;
    let last = fixtures::name(n - 1);
    let token = client.token(&last).map_err(|e| format!("{last}: {e}"))?;
    if token.len() != len {
        return Err(format!("{last}: a token of {} bytes", token.len()));
    }
    report
        .notes
        .push(format!("fleet start-up: load average {load:.1} at start"));
    check_logs("the start-up member", &member, report);
    Ok(())
}

/// A daemon's warnings and errors are reported as notes (a fleet member
/// may warn about a lock it waited for: worth reading, not a failure).
fn check_logs(who: &str, daemon: &Daemon, report: &mut Report) {
    let problems = daemon.problems();
    if let Some(first) = problems.first() {
        report.notes.push(format!(
            "{who} logged {} warnings or errors, first: {first}",
            problems.len()
        ));
    }
}
