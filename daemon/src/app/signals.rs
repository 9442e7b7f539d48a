//! Signals (signal-hook): SIGTERM and SIGINT stop the daemon gracefully,
//! SIGHUP reloads the config.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, watch};

/// Listens for signals: reloads go to `reload`; the first stop request goes
/// to `shutdown`, and ends the listening.
pub fn listen(
    shutdown: watch::Sender<bool>,
    reload: mpsc::Sender<()>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    Ok(async move {
        while let Some(signal) = signals.next().await {
            if signal == SIGHUP {
                let _ = reload.try_send(());
                continue;
            }
            tracing::info!(signal, "stopping");
            // Told now, not after the connections drain: systemd shows
            // the unit as deactivating for the whole grace period.
            crate::app::service::stopping();
            let _ = shutdown.send(true);
            return;
        }
    })
}
