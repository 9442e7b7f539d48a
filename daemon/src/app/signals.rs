//! Signals (signal-hook): SIGTERM and SIGINT stop the daemon gracefully,
//! SIGHUP reloads the config. On Windows, Ctrl-C (and Ctrl-Break) stop it;
//! there is no reload signal there.

#[cfg(unix)]
use futures_util::StreamExt;
#[cfg(unix)]
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
#[cfg(unix)]
use signal_hook_tokio::Signals;
use tokio::sync::{mpsc, watch};

/// Listens for signals: reloads go to `reload`; the first stop request goes
/// to `shutdown`, and ends the listening.
#[cfg(unix)]
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

/// Listens for Ctrl-C and Ctrl-Break, which stop the daemon. `reload` is
/// kept open until then but never sent to: Windows has no SIGHUP.
#[cfg(windows)]
pub fn listen(
    shutdown: watch::Sender<bool>,
    reload: mpsc::Sender<()>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut ctrl_break = tokio::signal::windows::ctrl_break()?;
    Ok(async move {
        tokio::select! {
            r = tokio::signal::ctrl_c() => if let Err(e) = r {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                // Keep running; only Ctrl-Break can stop us now.
                ctrl_break.recv().await;
            },
            _ = ctrl_break.recv() => {}
        }
        tracing::info!("stopping");
        crate::app::service::stopping();
        let _ = shutdown.send(true);
        drop(reload);
    })
}
