//! The audit trail's cost on the token path: token throughput with 16
//! clients against a daemon recording every hand-out (the default) and
//! against the same store with `[audit] enabled = false`, in alternating
//! halves (docs/BENCHMARKS.md, "The audit trail").

use crate::client::TokendEndpoint;
use crate::daemon::{Daemon, Setup};
use crate::measure::{Shape, latency_pair, throughput_pair};
use crate::report::{Goal, Report, Row};
use crate::{Args, fixtures};
use std::time::Duration;

/// Requests per second with 16 clients against `e`, and the daemon's CPU
/// time (user + system, all threads, the audit writer's included) per
/// request: a figure the machine's other load moves far less than the rate.
fn throughput_cpu(e: &TokendEndpoint, pid: u32, d: Duration) -> Result<(f64, f64), String> {
    let before = crate::procfs::cpu_secs(pid)?;
    let rate = crate::measure::throughput(e, 16, d)?;
    let cpu = crate::procfs::cpu_secs(pid)? - before;
    Ok((rate, cpu * 1e6 / (rate * d.as_secs_f64()).max(1.0)))
}

/// Starts a daemon with `config` holding `n` cached bearer tokens.
fn start(config: &str, n: usize, token_len: usize) -> Result<Daemon, String> {
    let setup = Setup::new(config)?;
    let now = fixtures::now();
    setup.populate(&fixtures::many(n, |i| fixtures::bearer(i, token_len, now)))?;
    let mut daemon = setup.start()?;
    daemon.wait_ready(Duration::from_secs(60))?;
    Ok(daemon)
}

pub fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let n = args.credentials.max(1);
    progress!("audit: two daemons with {n} cached tokens, the audit trail on and off");
    let on = start("", n, args.token_bytes)?;
    let off = start("[audit]\nenabled = false\n", n, args.token_bytes)?;
    let endpoint = |d: &Daemon| TokendEndpoint {
        socket: d.socket().to_path_buf(),
        names: (0..n).map(fixtures::name).collect(),
        token_len: args.token_bytes,
    };
    let (with, without) = (endpoint(&on), endpoint(&off));
    progress!("audit: latency, persistent connection");
    let (t, b) = latency_pair(
        &with,
        &without,
        Shape::Persistent,
        args.latency_iters,
        args.rounds,
    )?;
    report.push(Row::new(
        "audit on vs off: persistent p50",
        "us",
        t.p50_us,
        Some(b.p50_us),
        Goal::None,
    ));
    let duration = Duration::from_secs_f64(args.duration);
    progress!("audit: throughput, 1 client");
    let (t, b) = throughput_pair(&with, &without, 1, duration)?;
    report.push(Row::new(
        "audit on vs off: throughput, 1 client",
        "req/s",
        t,
        Some(b),
        Goal::None,
    ));
    progress!("audit: throughput and daemon CPU, 16 clients");
    let half = duration / 2;
    let t1 = throughput_cpu(&with, on.pid(), half)?;
    let b1 = throughput_cpu(&without, off.pid(), half)?;
    let b2 = throughput_cpu(&without, off.pid(), half)?;
    let t2 = throughput_cpu(&with, on.pid(), half)?;
    report.push(Row::new(
        "audit on vs off: throughput, 16 clients",
        "req/s",
        (t1.0 + t2.0) / 2.0,
        Some((b1.0 + b2.0) / 2.0),
        Goal::RatioAtLeast(0.9),
    ));
    report.push(Row::new(
        "audit on vs off: daemon CPU per request, 16 clients",
        "us",
        (t1.1 + t2.1) / 2.0,
        Some((b1.1 + b2.1) / 2.0),
        Goal::None,
    ));
    // Let the writer catch up, then see whether it ever fell behind.
    std::thread::sleep(Duration::from_secs(2));
    let dropped: Vec<String> = on
        .problems()
        .into_iter()
        .filter(|l| l.contains("audit"))
        .collect();
    match dropped.first() {
        Some(first) => report.notes.push(format!(
            "audit: the writer fell behind {} times, first: {first}",
            dropped.len()
        )),
        None => report
            .notes
            .push("audit: every hand-out was written (no entry dropped)".into()),
    }
    let others: Vec<String> = on
        .problems()
        .into_iter()
        .chain(off.problems())
        .filter(|l| !l.contains("audit"))
        .collect();
    if let Some(first) = others.first() {
        report.errors.push(format!(
            "tokend logged {} warnings or errors during the audit benchmark, first: {first}",
            others.len()
        ));
    }
    Ok(())
}
