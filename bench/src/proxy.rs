//! The credential-injecting proxy (docs/HTTP.md, "Proxy") against the API
//! it fronts, in the same run: the upstream of `upstream.rs` answering
//! 1 KiB, asked straight and through tokend (on `http.sock` and on a
//! loopback TCP listener), each on a kept-alive connection by the same
//! minimal client: latency ratios, throughput with 64 clients, and the
//! daemon's memory while many slow downloads stream through it.

use crate::daemon::{Daemon, Setup};
use crate::http::{HttpEndpoint, Stream, Target};
use crate::measure::{Shape, latency_pair, throughput_pair};
use crate::procfs;
use crate::report::{Goal, Report, Row};
use crate::upstream::{BODY_LEN, Upstream, WORK};
use crate::{Args, fixtures};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokend_proto::Upstream as ApiSettings;

/// The credential the proxy is asked for.
const NAME: &str = "api";

pub fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    raise_fd_limit(4 * args.slow_downloads as u64 + 256);
    let upstream = Upstream::start()?;
    let listen = free_port()?;
    progress!(
        "proxy: upstream on 127.0.0.1:{}, proxy listener on {listen}",
        upstream.port
    );
    let daemon = start_daemon(upstream.port, listen, args.slow_downloads)?;
    let direct = HttpEndpoint::get(
        Target::Tcp(SocketAddr::from(([127, 0, 0, 1], upstream.port))),
        "/item",
        BODY_LEN,
    );
    let http_sock = daemon.socket().with_file_name("http.sock");
    let by_socket = HttpEndpoint::get(
        Target::Unix(http_sock),
        &format!("/v1/proxy/{NAME}/item"),
        BODY_LEN,
    );
    let by_tcp = HttpEndpoint::get(Target::Tcp(listen), &format!("/{NAME}/item"), BODY_LEN);
    for (label, proxied) in [("http.sock", &by_socket), ("TCP", &by_tcp)] {
        latency(args, label, proxied, &direct, report)?;
    }
    for (label, proxied) in [("http.sock", &by_socket), ("TCP", &by_tcp)] {
        throughput(args, label, proxied, &direct, report)?;
    }
    // The same against an API that takes 1 ms, as a fast real one does:
    // the proxy's share of a request then shows as it is in use.
    let working = |target: Target, path: &str| HttpEndpoint::get(target, path, BODY_LEN);
    let direct = working(
        Target::Tcp(SocketAddr::from(([127, 0, 0, 1], upstream.port))),
        "/work",
    );
    let proxied = working(
        Target::Unix(daemon.socket().with_file_name("http.sock")),
        &format!("/v1/proxy/{NAME}/work"),
    );
    let label = format!("http.sock, API taking {} ms", WORK.as_millis());
    latency(args, &label, &proxied, &direct, report)?;
    throughput(args, &label, &proxied, &direct, report)?;
    slow_downloads(args, &daemon, listen, report)?;
    let problems = daemon.problems();
    if !problems.is_empty() {
        report.errors.push(format!(
            "tokend logged {} warnings or errors during the proxy benchmark, first: {}",
            problems.len(),
            problems[0]
        ));
    }
    Ok(())
}

/// A daemon with one bearer credential whose API is the upstream, and a
/// proxy listener on `listen`, with room for the slow downloads.
fn start_daemon(upstream_port: u16, listen: SocketAddr, slow: usize) -> Result<Daemon, String> {
    let room = (slow + 256).max(1024);
    let config = format!(
        "[limits]\nmax_connections = {room}\n\n[proxy]\nlisten = [\"{listen}\"]\nmax_concurrent_per_user = {room}\n"
    );
    let setup = Setup::new(&config)?;
    let mut cred = fixtures::bearer(0, 64, fixtures::now());
    cred.name = NAME.into();
    *cred.spec.upstream_mut() = Some(Box::new(ApiSettings {
        api_url: Some(format!("http://127.0.0.1:{upstream_port}/")),
        retry_on: None,
    }));
    setup.populate(&[cred])?;
    let mut daemon = setup.start()?;
    daemon.wait_ready(Duration::from_secs(60))?;
    Ok(daemon)
}

/// Requests per second with 64 clients, each on its own kept-alive
/// connection, through the proxy at `label` and straight.
fn throughput(
    args: &Args,
    label: &str,
    proxied: &HttpEndpoint,
    direct: &HttpEndpoint,
    report: &mut Report,
) -> Result<(), String> {
    progress!("proxy: throughput on {label}, 64 clients");
    let duration = Duration::from_secs_f64(args.duration);
    let (p, d) = throughput_pair(proxied, direct, 64, duration)?;
    report.push(Row::new(
        format!("proxy on {label}, 64 clients, kept alive"),
        "req/s",
        p,
        Some(d),
        Goal::RatioAtLeast(0.7),
    ));
    Ok(())
}

/// p50 and p99 of one request on a kept-alive connection, through the
/// proxy at `label` and straight to the upstream, alternating.
fn latency(
    args: &Args,
    label: &str,
    proxied: &HttpEndpoint,
    direct: &HttpEndpoint,
    report: &mut Report,
) -> Result<(), String> {
    progress!("proxy: latency on {label}, kept-alive connection");
    let (p, d) = latency_pair(
        proxied,
        direct,
        Shape::Persistent,
        args.latency_iters,
        args.rounds,
    )?;
    report.push(Row::new(
        format!("proxy on {label}, kept alive: p50"),
        "us",
        p.p50_us,
        Some(d.p50_us),
        Goal::RatioAtMost(1.3),
    ));
    report.push(Row::new(
        format!("proxy on {label}, kept alive: p99"),
        "us",
        p.p99_us,
        Some(d.p99_us),
        Goal::RatioAtMost(2.0),
    ));
    Ok(())
}

/// The daemon's memory while `args.slow_downloads` clients each download
/// 2 MiB that the upstream sends slowly and the client reads more slowly
/// still: what each stream in flight costs the proxy.
fn slow_downloads(
    args: &Args,
    daemon: &Daemon,
    listen: SocketAddr,
    report: &mut Report,
) -> Result<(), String> {
    let n = args.slow_downloads;
    progress!("proxy: {n} slow downloads at once");
    let pid = daemon.pid();
    let before = procfs::rss_kib(pid)?;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = Stream::connect(&Target::Tcp(listen))?;
        s.write_all(format!("GET /{NAME}/slow HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
            .map_err(|e| format!("slow download: {e}"))?;
        if let Stream::Tcp(t) = &s {
            t.set_read_timeout(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?;
        }
        streams.push(s);
    }
    let mut peak = before;
    let mut received = 0u64;
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs_f64(args.duration.max(1.0) * 2.0);
    while Instant::now() < until {
        for s in &mut streams {
            if let Ok(got) = s.read(&mut buf) {
                received += got as u64;
            }
        }
        peak = peak.max(procfs::rss_kib(pid)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    if received == 0 {
        return Err("the slow downloads received nothing".into());
    }
    drop(streams);
    report.push(Row::new(
        format!("proxy: RSS growth with {n} slow downloads in flight"),
        "MiB",
        (peak.saturating_sub(before)) as f64 / 1024.0,
        None,
        Goal::None,
    ));
    report.notes.push(format!(
        "proxy: {n} slow downloads: RSS {:.1} MiB before, {:.1} MiB at the peak ({:.1} KiB per download in flight); the clients read {:.1} MiB in all",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak.saturating_sub(before) as f64 / n.max(1) as f64,
        received as f64 / (1024.0 * 1024.0)
    ));
    Ok(())
}

/// A free loopback port (bound, then let go).
fn free_port() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

/// The benchmark's own descriptors: one per slow download.
fn raise_fd_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
