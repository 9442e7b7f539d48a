//! Being a good systemd citizen: readiness and status notifications, the
//! watchdog, and a listening socket passed by socket activation.
//! Every call is a no-op when not run by systemd, and on Windows, where
//! sd-notify does not build (the no-op counterparts are at the end).

use interprocess::local_socket::tokio::Listener;
#[cfg(unix)]
use sd_notify::NotifyState;
#[cfg(unix)]
use std::time::Duration;

/// `READY=1` with a one-line status. Call once the socket is bound and the
/// store is open, so a client started after it can already get a token.
#[cfg(unix)]
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

#[cfg(unix)]
pub fn status(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Status(status)]);
}

#[cfg(unix)]
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `RELOADING=1` (with the monotonic time newer systemd requires), then
/// `READY=1` once the reload is done.
#[cfg(unix)]
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    let _ = sd_notify::notify(&states);
}

/// Pings the watchdog at half its period, when `WATCHDOG_USEC` asks for
/// it, until `shutdown` fires.
#[cfg(unix)]
pub fn watchdog(
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let period = sd_notify::watchdog_enabled()?;
    Some(async move {
        let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Whether stderr is connected to the journal, so log lines need no
/// timestamp of their own. `JOURNAL_STREAM` alone is not enough: programs
/// started from a service (a terminal emulator run as a user unit, say)
/// inherit it while their stderr goes elsewhere, so its `DEVICE:INODE` must
/// match stderr's, as systemd.exec(5) prescribes.
#[cfg(unix)]
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    match (
        nix::sys::stat::fstat(std::io::stderr()),
        dev.parse::<nix::libc::dev_t>(),
        ino.parse::<nix::libc::ino_t>(),
    ) {
        (Ok(st), Ok(dev), Ok(ino)) => st.st_dev == dev && st.st_ino == ino,
        _ => false,
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`/`LISTEN_PID`): the
/// main socket and the HTTP API's. The HTTP one is the descriptor named
/// `http` (`FileDescriptorName=http`) or, when the names do not tell them
/// apart (both `ListenStream=` lines of one `tokend.socket`), the one bound
/// to a file named `http.sock`.
#[derive(Default)]
pub struct Activated {
    pub main: Option<Listener>,
    pub http: Option<Listener>,
}

#[cfg(unix)]
pub fn activated_listeners() -> std::io::Result<Activated> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut activated = Activated::default();
    for (fd, name) in sd_notify::listen_fds_with_names()? {
        // SAFETY: systemd hands this fd to us alone; we take ownership once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_listener = std::os::unix::net::UnixListener::from(owned);
        let is_http = name == "http"
            || std_listener.local_addr().ok().is_some_and(|a| {
                a.as_pathname().and_then(|p| p.file_name())
                    == Some(crate::config::paths::HTTP_SOCKET_FILE.as_ref())
            });
        let slot = if is_http {
            &mut activated.http
        } else {
            &mut activated.main
        };
        if slot.is_some() {
            tracing::warn!(
                name,
                "systemd passed two sockets for one listener; using the first"
            );
            continue;
        }
        let uds = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(
            OwnedFd::from(std_listener),
        )?;
        *slot = Some(Listener::from(uds));
    }
    Ok(activated)
}

/// Windows: no systemd, so nothing to notify, no journal, no activation.
#[cfg(not(unix))]
mod not_systemd {
    use super::Activated;

    pub fn ready(_status: &str) {}
    pub fn status(_status: &str) {}
    pub fn stopping() {}
    pub fn reloading() {}
    pub fn watchdog(
        _shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<std::future::Ready<()>> {
        None
    }
    pub fn stderr_is_journal() -> bool {
        false
    }
    pub fn activated_listeners() -> std::io::Result<Activated> {
        Ok(Activated::default())
    }
}

#[cfg(not(unix))]
pub use not_systemd::*;
