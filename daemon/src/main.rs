//! `tokend`: the daemon's command line.

use clap::Parser;
use std::process::ExitCode;
use tokend::app;
use tokend::app::args::Args;

fn main() -> ExitCode {
    let options = Args::parse().options();
    // Before the config, the key or any secret is read.
    let dumps = match app::dumps::prevent() {
        Ok(dumps) => dumps,
        Err(e) => {
            eprintln!("tokend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (paths, config) = match app::load_config(&options) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("tokend: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokend::app::logging::init(config.log.format);
    app::dumps::log(&dumps);
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
    match runtime.block_on(app::run(paths, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tokend: {e}");
            ExitCode::FAILURE
        }
    }
}
