//! Signals (signal-hook): SIGTERM and SIGINT stop the daemon gracefully,
//! SIGHUP reloads the config. On Windows, Ctrl-C, Ctrl-Break, the console
//! closing and system shutdown stop it; there is no reload signal there.

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

/// Listens for the console's control events that stop the daemon: Ctrl-C,
/// Ctrl-Break, the console closing and the system shutting down. `reload`
/// is kept open until then but never sent to: Windows has no SIGHUP.
///
/// For the console closing and shutdown, Windows ends the process when the
/// handler returns (after at most 5 s for a close); tokio's handler does not
/// return, so the drain below runs and the process exits on its own, as on
/// Ctrl-C. Logoff is left alone: only services receive it, and a service's
/// stop comes from the service manager.
#[cfg(windows)]
pub fn listen(
    shutdown: watch::Sender<bool>,
    reload: mpsc::Sender<()>,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::windows;
    let mut ctrl_c = windows::ctrl_c()?;
    let mut ctrl_break = windows::ctrl_break()?;
    let mut ctrl_close = windows::ctrl_close()?;
    let mut ctrl_shutdown = windows::ctrl_shutdown()?;
    Ok(async move {
        let event = tokio::select! {
            _ = ctrl_c.recv() => "Ctrl-C",
            _ = ctrl_break.recv() => "Ctrl-Break",
            _ = ctrl_close.recv() => "console closed",
            _ = ctrl_shutdown.recv() => "system shutdown",
        };
        tracing::info!(event, "stopping");
        crate::app::service::stopping();
        let _ = shutdown.send(true);
        drop(reload);
    })
}
