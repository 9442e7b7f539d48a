//! `tokend-bench`: measures a real tokend against a bare Unix-socket
//! baseline measured in the same run, so the figures are ratios that mean
//! something even on a shared, noisy machine. See docs/BENCHMARKS.md.
//!
//! Unix only (Unix sockets, /proc, signals): everything is `cfg(unix)`, and
//! on other systems the binary only says so, so that the workspace still
//! builds for Windows.

/// Progress on stderr, stamped with the seconds since the run started.
#[cfg(unix)]
macro_rules! progress {
    ($($arg:tt)*) => {
        $crate::report::progress(&format!($($arg)*))
    };
}

#[cfg(unix)]
mod audit;
#[cfg(unix)]
mod baseline;
#[cfg(unix)]
mod binaries;
#[cfg(unix)]
mod client;
#[cfg(unix)]
mod daemon;
#[cfg(unix)]
mod fake_provider;
#[cfg(unix)]
mod fixtures;
#[cfg(unix)]
mod fleet;
#[cfg(unix)]
mod http;
#[cfg(unix)]
mod ipc;
#[cfg(unix)]
mod measure;
#[cfg(unix)]
mod postgres;
#[cfg(unix)]
mod procfs;
#[cfg(unix)]
mod proxy;
#[cfg(unix)]
mod python;
#[cfg(unix)]
mod report;
#[cfg(unix)]
mod scale;
#[cfg(unix)]
mod spawn;
#[cfg(unix)]
mod upstream;

#[cfg(unix)]
use clap::{Parser, Subcommand};
#[cfg(unix)]
use std::path::PathBuf;
#[cfg(unix)]
use std::process::ExitCode;

/// Benchmarks tokend: token latency and throughput against a bare socket
/// baseline, `tokenctl token` against `/bin/true`, (with --scale) start-up,
/// memory, idle cost and a refresh storm, and (with --fleet) daemons sharing
/// a PostgreSQL store.
#[cfg(unix)]
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "tokend-bench")]
pub struct Args {
    #[command(subcommand)]
    #[serde(skip)]
    mode: Option<Mode>,
    /// Cached credentials in the store for the request benchmarks.
    #[arg(long, default_value_t = 1_000)]
    credentials: usize,
    /// Length of each cached token (a JWT is typically about 1 KB).
    #[arg(long, default_value_t = 1_000)]
    token_bytes: usize,
    /// Timed requests per endpoint on a persistent connection (a quarter of
    /// that with a connection per request).
    #[arg(long, default_value_t = 20_000)]
    latency_iters: usize,
    /// Alternating chunks the latency samples are taken in.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds each throughput shape runs, per endpoint.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Timed `token()` calls of the Python client, per server (in two
    /// alternating halves).
    #[arg(long, default_value_t = 4_000)]
    python_iters: usize,
    /// Runs of `tokenctl token` and of `/bin/true`.
    #[arg(long, default_value_t = 200)]
    spawn_runs: usize,
    /// Run the scale scenarios instead of the request benchmarks.
    #[arg(long)]
    scale: bool,
    /// Run the request benchmarks and the scale scenarios.
    #[arg(long)]
    all: bool,
    /// Which scale scenarios to run.
    #[arg(long, value_delimiter = ',', default_value = "startup,idle,storm")]
    scenarios: Vec<Scenario>,
    /// Credentials for the start-up and memory scenario.
    #[arg(long, default_value_t = 100_000)]
    scale_credentials: usize,
    /// Token length in the start-up and memory scenario (an API key such as
    /// UpPromote's; memory grows by 100 MB per 1 KB of token at 100k).
    #[arg(long, default_value_t = 64)]
    scale_token_bytes: usize,
    /// Scheduled (not due) OAuth2 credentials for the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_credentials: usize,
    /// Seconds the idle daemon is watched.
    #[arg(long, default_value_t = 60.0)]
    idle_secs: f64,
    /// OAuth2 credentials all due at once in the refresh storm.
    #[arg(long, default_value_t = 10_000)]
    storm_credentials: usize,
    /// The fake provider's answer delay.
    #[arg(long, default_value_t = 20)]
    provider_delay_ms: u64,
    /// `[refresh] max_concurrent` for the storm.
    #[arg(long, default_value_t = 32)]
    max_concurrent: usize,
    /// Give up waiting for the storm to finish after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    storm_timeout: f64,
    /// Run the fleet benchmark instead: daemons sharing a PostgreSQL store
    /// in a private cluster (needs the PostgreSQL server binaries). Its
    /// storm and start-up use --storm-credentials and --scale-credentials.
    #[arg(long)]
    fleet: bool,
    /// Members of the fleet (propagation is watched on all but the first).
    #[arg(long, default_value_t = 3)]
    fleet_members: usize,
    /// Changes (an add, then a remove, each) timed from member 1 to the others.
    #[arg(long, default_value_t = 300)]
    fleet_samples: usize,
    /// Which parts of the fleet benchmark to run.
    #[arg(long, value_delimiter = ',', default_value = "requests,storm,startup")]
    fleet_parts: Vec<FleetPart>,
    /// Run only the proxy benchmark (it also runs with the request
    /// benchmarks): an upstream answering 1 KiB, straight and through tokend.
    #[arg(long)]
    proxy: bool,
    /// Run only the audit trail's benchmark (it also runs with the request
    /// benchmarks): token throughput with `[audit]` on and off.
    #[arg(long)]
    audit: bool,
    /// Slow downloads in flight at once for the proxy's memory figure.
    #[arg(long, default_value_t = 1_000)]
    slow_downloads: usize,
    /// A short smoke run of everything with small numbers (for CI); with
    /// --fleet, of the fleet benchmark only.
    #[arg(long)]
    quick: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The scale scenarios.
#[cfg(unix)]
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Start-up time and memory with a large store.
    Startup,
    /// Wake-ups and CPU of an idle daemon with many scheduled credentials.
    Idle,
    /// Every credential due at once against a fake provider.
    Storm,
}

/// The parts of the fleet benchmark.
#[cfg(unix)]
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetPart {
    /// Token latency on a member against SQLite, then change propagation.
    Requests,
    /// Every credential due at once on every member.
    Storm,
    /// Start-up to ready with a large store in PostgreSQL.
    Startup,
}

/// The hidden helper processes; each is a server, and its name is the
/// subcommand the benchmark starts it with.
#[cfg(unix)]
#[derive(Subcommand, Debug)]
#[allow(clippy::enum_variant_names)]
enum Mode {
    /// The baseline server (started by the benchmark itself).
    #[command(hide = true)]
    EchoServer {
        socket: PathBuf,
        hello_reply_len: usize,
        reply_len: usize,
    },
    /// The bare HTTP server (started by the benchmark itself).
    #[command(hide = true)]
    HttpServer { socket: PathBuf, answer: PathBuf },
    /// The proxy benchmark's upstream (started by the benchmark itself).
    #[command(hide = true)]
    UpstreamServer { port_file: PathBuf },
}

#[cfg(unix)]
impl Args {
    /// Small numbers that finish in well under a minute.
    fn make_quick(&mut self) {
        self.credentials = 200;
        self.latency_iters = 2_000;
        self.duration = 0.4;
        self.spawn_runs = 30;
        self.python_iters = 400;
        self.scale_credentials = 5_000;
        self.idle_credentials = 1_000;
        self.idle_secs = 3.0;
        self.storm_credentials = 500;
        self.storm_timeout = 30.0;
        self.fleet_samples = 30;
        self.slow_downloads = 100;
        self.all = true;
    }
}

#[cfg(unix)]
fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Mode::EchoServer {
        socket,
        hello_reply_len,
        reply_len,
    }) = &args.mode
    {
        return match baseline::serve(socket, *hello_reply_len, *reply_len) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Mode::HttpServer { socket, answer }) = &args.mode {
        return match http::serve(socket, answer) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bare HTTP server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Mode::UpstreamServer { port_file }) = &args.mode {
        return match upstream::serve(port_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.quick {
        args.make_quick();
    }
    let mut report = report::Report::new(serde_json::to_value(&args).unwrap_or_default());
    if let Err(e) = run(&args, &mut report) {
        report.errors.push(e);
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(unix)]
fn run(args: &Args, report: &mut report::Report) -> Result<(), String> {
    report::progress("building tokend and tokenctl if needed");
    binaries::ensure_built()?;
    if args.fleet {
        return fleet::run(args, report);
    }
    if args.proxy {
        return proxy::run(args, report);
    }
    if args.audit {
        return audit::run(args, report);
    }
    if !args.scale || args.all {
        ipc::run(args, report)?;
        audit::run(args, report)?;
        proxy::run(args, report)?;
    }
    if args.scale || args.all {
        scale::run(args, report)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn main() -> std::process::ExitCode {
    eprintln!("tokend-bench runs on Unix only");
    std::process::ExitCode::FAILURE
}
