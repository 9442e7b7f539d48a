//! `tokend`: the daemon's command line.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokend::daemon::{self, Options};
use tokend::paths::Overrides;

/// tokend keeps API credentials and their access tokens fresh, and hands
/// valid tokens to local programs over a Unix socket (see `tokenctl`).
#[derive(Parser, Debug)]
#[command(name = "tokend", version, about, long_about = None)]
struct Args {
    /// Run as the system service: /run/tokend, /var/lib/tokend, /etc/tokend
    /// (or systemd's RUNTIME_DIRECTORY, STATE_DIRECTORY, CONFIGURATION_DIRECTORY).
    #[arg(long)]
    system: bool,
    /// The socket to listen on.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The SQLite store.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// The TOML config file (optional; defaults apply when it does not exist).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The sealing key file, used when no systemd credential `tokend.key` is given.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        system: args.system,
        overrides: Overrides {
            socket: args.socket,
            db: args.db,
            config: args.config,
            key_file: args.key_file,
        },
    };
    let (paths, config) = match daemon::load_config(&options) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("tokend: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokend::logging::init(config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokend: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(paths, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tokend: {e}");
            ExitCode::FAILURE
        }
    }
}
