//! Scale: start-up and memory with a large store, the cost of idling with
//! many scheduled credentials, and a refresh storm against a fake provider.

use crate::daemon::{Daemon, Setup};
use crate::fake_provider::{FakeProvider, Stats};
use crate::report::{Goal, Report, Row};
use crate::{Args, Scenario, fixtures, procfs};
use std::time::{Duration, Instant};
use tokend_client::{Client, CredentialState};

const MIB: f64 = 1024.0;

pub fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let wanted = |s| args.scenarios.contains(&s);
    if wanted(Scenario::Startup) {
        startup(args.scale_credentials, args.scale_token_bytes, report)?;
    }
    if wanted(Scenario::Idle) {
        idle(args.idle_credentials, args.idle_secs, report)?;
    }
    if wanted(Scenario::Storm) {
        storm(args, report)?;
    }
    Ok(())
}

/// (a) Time from process start to a socket that answers, and memory, with
/// `n` cached tokens; then memory again once every token has been read.
fn startup(n: usize, token_len: usize, report: &mut Report) -> Result<(), String> {
    progress!("scale: populating a store of {n} credentials ({token_len}-byte tokens)");
    let setup = Setup::new("")?;
    let now = fixtures::now();
    let t = Instant::now();
    setup.populate(&fixtures::many(n, |i| fixtures::bearer(i, token_len, now)))?;
    report.notes.push(format!(
        "populating {n} credentials (one transaction) took {:.2} s",
        t.elapsed().as_secs_f64()
    ));
    let mut daemon = setup.start()?;
    let ready = daemon.wait_ready(Duration::from_secs(120))?;
    let pid = daemon.pid();
    let cpu_start = procfs::cpu_secs(pid)?;
    let rss_start = procfs::rss_kib(pid)? as f64 / MIB;
    let t = Instant::now();
    read_every_token(&daemon, n, token_len)?;
    let read_secs = t.elapsed().as_secs_f64();
    let rss_read = procfs::rss_kib(pid)? as f64 / MIB;
    let peak = procfs::peak_rss_kib(pid)? as f64 / MIB;
    let label = |what: &str| format!("{n} credentials: {what}");
    report.push(Row::new(
        label("ready after start"),
        "ms",
        ready.as_secs_f64() * 1e3,
        None,
        Goal::AtMost(1000.0),
    ));
    // CPU time is less disturbed than wall time by other load on the machine.
    report.push(Row::new(
        label("CPU time to ready (all threads)"),
        "ms",
        cpu_start * 1e3,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("RSS after start"),
        "MiB",
        rss_start,
        None,
        Goal::AtMost(64.0),
    ));
    report.push(Row::new(
        label("RSS after reading all"),
        "MiB",
        rss_read,
        None,
        Goal::AtMost(64.0),
    ));
    report.push(Row::new(
        label("peak RSS (VmHWM)"),
        "MiB",
        peak,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("read every token once"),
        "s",
        read_secs,
        None,
        Goal::None,
    ));
    Ok(())
}

fn read_every_token(daemon: &Daemon, n: usize, token_len: usize) -> Result<(), String> {
    let mut client = Client::connect(daemon.socket()).map_err(|e| e.to_string())?;
    for i in 0..n {
        let token = client
            .token(&fixtures::name(i))
            .map_err(|e| format!("{}: {e}", fixtures::name(i)))?;
        if token.len() != token_len {
            return Err(format!("{}: wrong token", fixtures::name(i)));
        }
    }
    Ok(())
}

/// (b) `n` OAuth2 credentials, none due for an hour: how often does the
/// daemon wake up, and how much CPU does it burn, over `secs`?
fn idle(n: usize, secs: f64, report: &mut Report) -> Result<(), String> {
    progress!("scale: idle with {n} scheduled credentials for {secs} s");
    let setup = Setup::new("")?;
    let now = fixtures::now();
    let url = "http://127.0.0.1:9/token";
    setup.populate(&fixtures::many(n, |i| {
        fixtures::oauth2(i, url, now, now + 7200, now + 3600)
    }))?;
    let mut daemon = setup.start()?;
    daemon.wait_ready(Duration::from_secs(60))?;
    // Let start-up work (and our readiness probe's connection) settle.
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.pid();
    let cpu0 = procfs::cpu_secs(pid)?;
    let (vol0, invol0) = procfs::context_switches(pid)?;
    let wakes = wake_events(pid, Duration::from_secs_f64(secs))?;
    let cpu = procfs::cpu_secs(pid)? - cpu0;
    let (vol1, invol1) = procfs::context_switches(pid)?;
    let label = |what: &str| format!("idle {n} creds, {secs} s: {what}");
    report.push(Row::new(
        label("CPU time"),
        "ms",
        cpu * 1e3,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("voluntary switches"),
        "count",
        vol1.saturating_sub(vol0) as f64,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("involuntary switches"),
        "count",
        invol1.saturating_sub(invol0) as f64,
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("wake-up events (1 s buckets)"),
        "count",
        wakes.events.len() as f64,
        None,
        Goal::None,
    ));
    let bursts = bursts(&wakes.events);
    report.push(Row::new(
        label("bursts of work (wake-ups < 5 s apart)"),
        "count",
        bursts.len() as f64,
        None,
        Goal::None,
    ));
    if let Some(gap) = bursts.windows(2).map(|w| w[1] - w[0]).reduce(f64::min) {
        // One-second buckets: a 30 s period can read as 29 s.
        report.push(Row::new(
            label("shortest gap between bursts"),
            "s",
            gap,
            None,
            Goal::AtLeast(29.0),
        ));
    }
    report.notes.push(format!(
        "idle: the daemon woke at seconds {:?}",
        wakes.events
    ));
    if daemon.problems().iter().any(|l| l.contains("refresh")) {
        report
            .errors
            .push("the idle daemon tried a refresh nobody was due for".into());
    }
    Ok(())
}

struct Wakes {
    /// Seconds (since watching began) in which the daemon woke.
    events: Vec<f64>,
}

/// When each burst of wake-ups ended (the work runs at its last wake-up).
/// One timer firing can take several wake-ups: tokio's timer wheel parks
/// until a slot boundary of a coarse level first, then of finer ones (seen
/// with strace: 27 s, 3 s, 40 ms for one 30 s sleep), so wake-ups under 5 s
/// apart are one piece of work.
fn bursts(events: &[f64]) -> Vec<f64> {
    let mut ends: Vec<f64> = Vec::new();
    for &t in events {
        match ends.last_mut() {
            Some(end) if t - *end < 5.0 => *end = t,
            _ => ends.push(t),
        }
    }
    ends
}

/// Samples each daemon thread's voluntary context switches once a second
/// (reading /proc does not wake it): each second in which any thread slept
/// again is one wake-up event. Per thread, so a thread that exits (tokio's
/// blocking pool) does not look like activity.
fn wake_events(pid: u32, duration: Duration) -> Result<Wakes, String> {
    let start = Instant::now();
    let mut last = procfs::thread_switches(pid)?;
    let mut at = Vec::new();
    let mut tick = 1u32;
    while start.elapsed() < duration {
        let next = Duration::from_secs(u64::from(tick)).min(duration);
        std::thread::sleep(next.saturating_sub(start.elapsed()));
        let now = procfs::thread_switches(pid)?;
        if now
            .iter()
            .any(|(tid, n)| last.get(tid).is_none_or(|old| n > old))
        {
            at.push(start.elapsed().as_secs_f64().round());
        }
        last = now;
        tick += 1;
    }
    Ok(Wakes { events: at })
}

/// (c) Every credential due at once against a fake provider: how long until
/// all hold a fresh token, how many errors, how many requests at once.
fn storm(args: &Args, report: &mut Report) -> Result<(), String> {
    let n = args.storm_credentials;
    let provider = FakeProvider::start(Duration::from_millis(args.provider_delay_ms))?;
    progress!(
        "scale: refresh storm, {n} credentials due at once, provider delay {} ms, max_concurrent {}",
        args.provider_delay_ms,
        args.max_concurrent
    );
    let config = format!(
        "[refresh]\nstartup_spread_secs = 0\nmax_concurrent = {}\n",
        args.max_concurrent
    );
    let setup = Setup::new(&config)?;
    let now = fixtures::now();
    let url = provider.token_url.clone();
    setup.populate(&fixtures::many(n, |i| {
        fixtures::oauth2(i, &url, now, now - 60, now - 60)
    }))?;
    let mut daemon = setup.start()?;
    daemon.wait_ready(Duration::from_secs(60))?;
    let deadline = daemon.started + Duration::from_secs_f64(args.storm_timeout);
    let stats = &provider.stats;
    while Stats::get(&stats.answered_ok) < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = stats
        .last_answer()
        .map(|t| t.duration_since(daemon.started));
    let stale = wait_all_fresh(&daemon, n, now, deadline)?;
    let verified = daemon.started.elapsed();
    push_storm_rows(args, report, &daemon, stats, answered, verified, stale);
    Ok(())
}

/// Checks every credential through `show` (which never triggers a refresh)
/// until all hold a token refreshed in this run, or `deadline`. Returns how
/// many are still stale.
fn wait_all_fresh(
    daemon: &Daemon,
    n: usize,
    before: i64,
    deadline: Instant,
) -> Result<usize, String> {
    let mut client = Client::connect(daemon.socket()).map_err(|e| e.to_string())?;
    let mut pending: Vec<usize> = (0..n).collect();
    loop {
        let mut still = Vec::new();
        for &i in &pending {
            let info = client.show(&fixtures::name(i)).map_err(|e| e.to_string())?;
            let fresh = info.state == CredentialState::Ready
                && info.has_token
                && info.last_refresh_at.is_some_and(|t| t >= before)
                && info.expires_at.is_some_and(|e| e > fixtures::now() + 600);
            if !fresh {
                still.push(i);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            return Ok(pending.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn push_storm_rows(
    args: &Args,
    report: &mut Report,
    daemon: &Daemon,
    stats: &Stats,
    answered: Option<Duration>,
    verified: Duration,
    stale: usize,
) {
    let n = args.storm_credentials;
    let label = |what: &str| format!("storm {n} creds: {what}");
    let protocol_errors =
        Stats::get(&stats.bad_requests) + Stats::get(&stats.reused_refresh_tokens);
    let problems = daemon.problems().len();
    let secs = answered.map_or(f64::NAN, |d| d.as_secs_f64());
    report.push(Row::new(
        label("last token answered, from start"),
        "s",
        secs,
        None,
        Goal::AtMost(30.0),
    ));
    report.push(Row::new(
        label("all verified fresh, from start"),
        "s",
        verified.as_secs_f64(),
        None,
        Goal::None,
    ));
    report.push(Row::new(
        label("credentials not fresh"),
        "count",
        stale as f64,
        None,
        Goal::AtMost(0.0),
    ));
    report.push(Row::new(
        label("errors (provider + daemon log)"),
        "count",
        (protocol_errors as usize + problems) as f64,
        None,
        Goal::AtMost(0.0),
    ));
    report.push(Row::new(
        label("token requests"),
        "count",
        Stats::get(&stats.requests) as f64,
        None,
        Goal::AtMost(n as f64),
    ));
    report.push(Row::new(
        label("peak concurrent requests"),
        "count",
        Stats::get(&stats.peak_in_flight) as f64,
        None,
        Goal::AtMost(args.max_concurrent as f64),
    ));
    if protocol_errors > 0 {
        report.errors.push(format!(
            "the fake provider saw {protocol_errors} bad or replayed refresh requests"
        ));
    }
    if problems > 0 {
        report.notes.push(format!(
            "storm: tokend logged {problems} warnings/errors, first: {}",
            daemon.problems()[0]
        ));
    }
}
