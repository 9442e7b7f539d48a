//! Being a good systemd citizen: readiness and status notifications, the
//! watchdog, and a listening socket passed by socket activation.
//! Every call is a no-op when not run by systemd, and on Windows, where
//! sd-notify does not build (the no-op counterparts are at the end).

#[cfg(unix)]
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

/// Pings the watchdog at half its period, when `WATCHDOG_USEC` asks for it.
#[cfg(unix)]
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    });
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

/// The listening socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`), if any.
#[cfg(unix)]
pub fn activated_listener() -> std::io::Result<Option<Listener>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = sd_notify::listen_fds()?;
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    if fds.len() > 0 {
        tracing::warn!("systemd passed more than one socket; using the first");
    }
    // SAFETY: systemd hands this fd to us alone; we take ownership once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let uds = interprocess::os::unix::uds_local_socket::tokio::Listener::try_from(owned)?;
    Ok(Some(Listener::from(uds)))
}

/// Windows: no systemd, so nothing to notify, no journal, no activation.
#[cfg(not(unix))]
mod not_systemd {
    use interprocess::local_socket::tokio::Listener;

    pub fn ready(_status: &str) {}
    pub fn status(_status: &str) {}
    pub fn stopping() {}
    pub fn reloading() {}
    pub fn spawn_watchdog() {}
    pub fn stderr_is_journal() -> bool {
        false
    }
    pub fn activated_listener() -> std::io::Result<Option<Listener>> {
        Ok(None)
    }
}

#[cfg(not(unix))]
pub use not_systemd::*;
