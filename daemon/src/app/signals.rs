//! Signals (signal-hook): SIGTERM and SIGINT stop the daemon gracefully,
//! SIGHUP reloads the config.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, watch};

/// Listens for signals: stop requests go to `shutdown`, reloads to `reload`.
pub fn spawn(shutdown: watch::Sender<bool>, reload: mpsc::Sender<()>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            if signal == SIGHUP {
                let _ = reload.try_send(());
            } else {
                tracing::info!(signal, "stopping");
                // Told now, not after the connections drain: systemd shows
                // the unit as deactivating for the whole grace period.
                crate::app::service::stopping();
                let _ = shutdown.send(true);
            }
        }
    });
    Ok(())
}
