//! The listening socket and the accept loop.

pub mod accept;
pub mod admission;
pub mod connection;
pub mod http;
pub mod quota;

use crate::server::admission::SharedGate;
use crate::state::Shared;
use interprocess::local_socket::tokio::{Listener, prelude::*};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another tokend is already running at {0} (stop it first, or pick another --socket)")]
    AlreadyRunning(String),
    /// Windows: the pipe's name is held by another process (see [`bind`]).
    #[cfg(windows)]
    #[error(
        "the pipe {0} is already in use: another tokend, or another program holding the name (stop it first, or pick another --socket)"
    )]
    PipeTaken(String),
    #[error("cannot create the socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Binds the socket at `path` with `mode`. A socket file nobody answers on is
/// a leftover from a crash and is replaced; a live one is left alone.
#[cfg(unix)]
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<Listener, BindError> {
    let io = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        if mode & 0o070 == 0 {
            crate::config::paths::ensure_private_dir(dir, 0o700).map_err(io)?;
        } else {
            crate::config::paths::ensure_trusted_dir(dir).map_err(io)?;
        }
    }
    if path.exists() || path.symlink_metadata().is_ok() {
        if is_live(path) {
            return Err(BindError::AlreadyRunning(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let name = path.to_fs_name::<GenericFilePath>().map_err(io)?;
    let options = ListenerOptions::new().name(name).reclaim_name(true);
    #[cfg(unix)]
    let options = {
        use interprocess::os::unix::local_socket::ListenerOptionsExt;
        options.mode(mode as _)
    };
    let listener = options.create_tokio().map_err(io)?;
    set_socket_access(path, mode, group).map_err(io)?;
    Ok(listener)
}

#[cfg(unix)]
fn is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Sets the mode (and, in system mode, the group) even under a loose umask.
#[cfg(unix)]
fn set_socket_access(path: &Path, mode: u32, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    // Only chown when needed: under systemd the socket usually has the right
    // group already, and the unit may forbid chown altogether.
    let current = std::fs::metadata(path)?.gid();
    if let Some(gid) = group.filter(|&g| g != current) {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(std::io::Error::from)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Creates the named pipe `path` (`\\.\pipe\…`). `mode` and `group` mean
/// nothing for a pipe; its access list is its own: full access for the
/// daemon's user, LocalSystem and Administrators, and none at all for
/// anyone else (`config/acl.rs` `pipe_sddl`). Remote clients are rejected
/// (`PIPE_REJECT_REMOTE_CLIENTS`: interprocess sets it on every instance
/// unless `accept_remote` is asked for, which tokend never does; its
/// `named_pipe/listener/create_instance.rs`, `pipe_mode`). The first
/// instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE` (interprocess
/// does), so a name already held by anyone — a running tokend, or another
/// user who took it first — is refused here rather than shared
/// (docs/SECURITY.md, "Windows").
#[cfg(windows)]
pub fn bind(path: &Path, _mode: u32, _group: Option<u32>) -> Result<Listener, BindError> {
    use interprocess::os::windows::local_socket::ListenerOptionsExt;
    let io = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path.to_fs_name::<GenericFilePath>().map_err(io)?;
    let own = tokend_proto::sid::user_of_this_process().map_err(io)?;
    let access = crate::config::acl::Descriptor::parse(&crate::config::acl::pipe_sddl(&own))
        .and_then(|sd| sd.to_pipe_descriptor())
        .map_err(io)?;
    ListenerOptions::new()
        .name(name)
        .security_descriptor(access)
        .create_tokio()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                BindError::PipeTaken(path.display().to_string())
            }
            _ => io(e),
        })
}

/// Accepts bincode connections until shutdown, then waits (up to `grace`)
/// for them to finish the request they are on. `gate` is shared with the
/// HTTP API's listener.
pub async fn run(
    listener: Listener,
    gate: SharedGate,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let refuser = gate.clone();
    let refuse = move |stream, refused| refuser.lock().refuse(stream, refused);
    let accepted = accept::Accepted {
        gate,
        shared,
        shutdown,
        grace,
    };
    accepted
        .run("bincode", listener, connection::serve, refuse)
        .await;
}
