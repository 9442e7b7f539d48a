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
    for clients in [1, 16] {
        progress!("audit: throughput, {clients} clients");
        let (t, b) = throughput_pair(&with, &without, clients, duration)?;
        let goal = if clients == 16 {
            Goal::RatioAtLeast(0.9)
        } else {
            Goal::None
        };
        report.push(Row::new(
            format!("audit on vs off: throughput, {clients} clients"),
            "req/s",
            t,
            Some(b),
            goal,
        ));
    }
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
