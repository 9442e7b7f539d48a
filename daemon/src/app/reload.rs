//! SIGHUP: re-read the config. A broken file keeps the running config.

use super::service;
use crate::config::Config;
use crate::config::access::Policy;
use crate::state::Shared;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// SIGHUP: re-read the config. A broken file keeps the running config.
pub(super) async fn reload(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            request = requests.recv() => if request.is_none() { return },
            _ = shutdown.changed() => return,
        }
        service::reloading();
        match Config::load(&shared.paths.config)
            .map_err(|e| e.to_string())
            .and_then(|c| Ok((Policy::for_config(&c)?, c)))
        {
            Ok((policy, config)) => {
                let old = shared.config();
                let changed = *old != config;
                let later = old.restart_only_changes(&config);
                shared.replace_config(config, policy);
                tracing::info!(path = %shared.paths.config.display(), changed, "config reloaded");
                if !later.is_empty() {
                    tracing::warn!(
                        "config changes to {} take effect at the next start",
                        later.join(", ")
                    );
                }
            }
            Err(e) => tracing::error!("config not reloaded, keeping the running one: {e}"),
        }
        service::ready(&super::status_line(&shared));
    }
}
