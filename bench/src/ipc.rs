//! The request-path benchmarks: tokend with N cached tokens against the
//! baseline echo server, shape by shape, then `tokenctl token` against
//! `/bin/true`.

use crate::baseline::{EchoEndpoint, EchoServer, Frames};
use crate::binaries::sibling_binary;
use crate::client::TokendEndpoint;
use crate::daemon::{Daemon, Setup};
use crate::http::{Answer, BareServer, HttpEndpoint};
use crate::measure::{Shape, latency_pair, throughput_pair};
use crate::report::{Goal, Report, Row};
use crate::{Args, fixtures};
use std::time::Duration;

/// Starts a daemon holding `n` bearer credentials with `token_len`-byte tokens.
fn start_daemon(n: usize, token_len: usize) -> Result<Daemon, String> {
    let setup = Setup::new("")?;
    let now = fixtures::now();
    setup.populate(&fixtures::many(n, |i| fixtures::bearer(i, token_len, now)))?;
    let mut daemon = setup.start()?;
    daemon.wait_ready(Duration::from_secs(60))?;
    Ok(daemon)
}

pub fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let n = args.credentials.max(1);
    progress!(
        "ipc: starting tokend with {n} cached tokens of {} bytes",
        args.token_bytes
    );
    let daemon = start_daemon(n, args.token_bytes)?;
    let tokend = TokendEndpoint {
        socket: daemon.socket().to_path_buf(),
        names: (0..n).map(fixtures::name).collect(),
        token_len: args.token_bytes,
    };
    let frames = Frames::of(
        &fixtures::name(0),
        &fixtures::token("tok", 0, args.token_bytes),
    );
    let echo = EchoServer::start(&frames)?;
    let baseline = EchoEndpoint {
        socket: echo.socket.clone(),
        frames,
    };
    latency(args, &tokend, &baseline, report)?;
    throughput(args, &tokend, &baseline, report)?;
    spawn(args, &daemon, report)?;
    drop(echo);
    http(args, &daemon, &tokend.names, report)?;
    let problems = daemon.problems();
    if !problems.is_empty() {
        report.errors.push(format!(
            "tokend logged {} warnings or errors during the request benchmarks, first: {}",
            problems.len(),
            problems[0]
        ));
    }
    Ok(())
}

fn latency(
    args: &Args,
    tokend: &TokendEndpoint,
    baseline: &EchoEndpoint,
    report: &mut Report,
) -> Result<(), String> {
    progress!("ipc: latency, persistent connection");
    let (t, b) = latency_pair(
        tokend,
        baseline,
        Shape::Persistent,
        args.latency_iters,
        args.rounds,
    )?;
    report.push(Row::new(
        "persistent connection: p50",
        "us",
        t.p50_us,
        Some(b.p50_us),
        Goal::RatioAtMost(1.3),
    ));
    report.push(Row::new(
        "persistent connection: p99",
        "us",
        t.p99_us,
        Some(b.p99_us),
        Goal::RatioAtMost(2.0),
    ));
    progress!("ipc: latency, connection per request");
    let iters = (args.latency_iters / 4).max(1);
    let (t, b) = latency_pair(tokend, baseline, Shape::PerConnection, iters, args.rounds)?;
    report.push(Row::new(
        "connect + hello + token: p50",
        "us",
        t.p50_us,
        Some(b.p50_us),
        Goal::RatioAtMost(1.5),
    ));
    report.push(Row::new(
        "connect + hello + token: p99",
        "us",
        t.p99_us,
        Some(b.p99_us),
        Goal::None,
    ));
    Ok(())
}

fn throughput(
    args: &Args,
    tokend: &TokendEndpoint,
    baseline: &EchoEndpoint,
    report: &mut Report,
) -> Result<(), String> {
    let duration = Duration::from_secs_f64(args.duration);
    for clients in [1, 4, 16] {
        progress!("ipc: throughput, {clients} clients");
        let (t, b) = throughput_pair(tokend, baseline, clients, duration)?;
        let goal = if clients == 16 {
            Goal::RatioAtLeast(0.8)
        } else {
            Goal::None
        };
        report.push(Row::new(
            format!("throughput, {clients} clients"),
            "req/s",
            t,
            Some(b),
            goal,
        ));
    }
    Ok(())
}

fn spawn(args: &Args, daemon: &Daemon, report: &mut Report) -> Result<(), String> {
    progress!(
        "spawn: tokenctl token vs /bin/true, {} runs each",
        args.spawn_runs
    );
    let tokenctl = sibling_binary("tokenctl")?;
    let cost = crate::spawn::measure(
        &tokenctl,
        daemon.socket(),
        &fixtures::name(0),
        args.spawn_runs,
    )?;
    report.push(Row::new(
        "tokenctl token (whole process, median)",
        "ms",
        cost.tokenctl_ms,
        Some(cost.true_ms),
        Goal::DiffAtMost(1.0),
    ));
    Ok(())
}

/// The HTTP/JSON API on `http.sock` against the bare hyper server answering
/// the same bytes: latency on a kept-alive connection, 16 clients, and the
/// Python client's `token()` against both.
fn http(args: &Args, daemon: &Daemon, names: &[String], report: &mut Report) -> Result<(), String> {
    let socket = daemon.socket().with_file_name("http.sock");
    let answer = Answer::capture(&socket, &names[0])?;
    if answer.status != 200 {
        return Err(format!(
            "GET /v1/credentials/{}/token on {} answered {}: {}",
            names[0],
            socket.display(),
            answer.status,
            String::from_utf8_lossy(&answer.body)
        ));
    }
    report.notes.push(format!(
        "HTTP: the bare server answers {} with {} and a {}-byte body, as tokend did",
        answer.status,
        answer
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        answer.body.len()
    ));
    let bare = BareServer::start(&answer)?;
    let tokend = HttpEndpoint::new(&socket, names, answer.body.len());
    let baseline = HttpEndpoint::new(&bare.socket, names, answer.body.len());
    progress!(
        "http: latency, kept-alive connection ({} byte answers)",
        answer.body.len()
    );
    let (t, b) = latency_pair(
        &tokend,
        &baseline,
        Shape::Persistent,
        args.latency_iters,
        args.rounds,
    )?;
    report.push(Row::new(
        "HTTP kept-alive connection: p50",
        "us",
        t.p50_us,
        Some(b.p50_us),
        Goal::RatioAtMost(1.5),
    ));
    report.push(Row::new(
        "HTTP kept-alive connection: p99",
        "us",
        t.p99_us,
        Some(b.p99_us),
        Goal::None,
    ));
    progress!("http: throughput, 16 clients");
    let half = Duration::from_secs_f64(args.duration) / 2;
    let (pt, pb) = (daemon.pid(), bare.pid());
    let t1 = throughput_cpu(&tokend, pt, half)?;
    let b1 = throughput_cpu(&baseline, pb, half)?;
    let b2 = throughput_cpu(&baseline, pb, half)?;
    let t2 = throughput_cpu(&tokend, pt, half)?;
    report.push(Row::new(
        "HTTP throughput, 16 clients",
        "req/s",
        (t1.0 + t2.0) / 2.0,
        Some((b1.0 + b2.0) / 2.0),
        Goal::RatioAtLeast(0.7),
    ));
    report.push(Row::new(
        "HTTP server CPU per request, 16 clients",
        "us",
        (t1.1 + t2.1) / 2.0,
        Some((b1.1 + b2.1) / 2.0),
        Goal::None,
    ));
    python(args, &socket, &bare, names.len(), report)
}

/// The Python client's `token()` per call, against tokend and the bare server.
fn python(
    args: &Args,
    socket: &std::path::Path,
    bare: &BareServer,
    n: usize,
    report: &mut Report,
) -> Result<(), String> {
    if let Err(why) = crate::python::available() {
        report
            .notes
            .push(format!("Python client not measured: {why}"));
        return Ok(());
    }
    progress!("http: Python client, {} calls each", args.python_iters);
    let iters = args.python_iters;
    let t1 = crate::python::latency(socket, n, iters / 2, args.token_bytes)?;
    let b1 = crate::python::latency(&bare.socket, n, iters / 2, args.token_bytes)?;
    let b2 = crate::python::latency(&bare.socket, n, iters / 2, args.token_bytes)?;
    let t2 = crate::python::latency(socket, n, iters / 2, args.token_bytes)?;
    let mean = |a: f64, b: f64| (a + b) / 2.0;
    report.push(Row::new(
        "Python client token(): p50",
        "us",
        mean(t1.p50_us, t2.p50_us),
        Some(mean(b1.p50_us, b2.p50_us)),
        Goal::None,
    ));
    report.push(Row::new(
        "Python client token(): p99",
        "us",
        mean(t1.p99_us, t2.p99_us),
        Some(mean(b1.p99_us, b2.p99_us)),
        Goal::None,
    ));
    Ok(())
}

/// Requests per second with 16 clients for `d`, and the server process's
/// CPU time (user + system, all threads, from /proc) per request.
fn throughput_cpu(e: &HttpEndpoint, pid: u32, d: Duration) -> Result<(f64, f64), String> {
    let before = crate::procfs::cpu_secs(pid)?;
    let rate = crate::measure::throughput(e, 16, d)?;
    let cpu = crate::procfs::cpu_secs(pid)? - before;
    Ok((rate, cpu * 1e6 / (rate * d.as_secs_f64()).max(1.0)))
}
