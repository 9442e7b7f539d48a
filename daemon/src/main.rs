//! `tokend`: the daemon's command line.

use clap::Parser;
use std::process::ExitCode;
use tokend::args::Args;
use tokend::daemon;

fn main() -> ExitCode {
    let options = Args::parse().options();
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
