//! Default locations, shared so that the daemon and its clients agree on
//! where the socket is without any configuration.

use std::env;
use std::path::PathBuf;

/// The socket file's name inside the runtime directory.
pub const SOCKET_FILE: &str = "tokend.sock";

/// The system service's socket (`tokend --system`, systemd `RuntimeDirectory`).
pub const SYSTEM_SOCKET: &str = "/run/tokend/tokend.sock";

/// The per-user runtime directory: `$XDG_RUNTIME_DIR`, else `/run/user/UID`
/// when it exists, else a private directory under the temp dir.
pub fn user_runtime_dir() -> PathBuf {
    if let Some(dir) = env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = current_uid();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user;
    }
    env::temp_dir().join(format!("tokend-{uid}"))
}

/// The per-user socket: `<runtime dir>/tokend/tokend.sock`.
pub fn user_socket() -> PathBuf {
    user_runtime_dir().join("tokend").join(SOCKET_FILE)
}

/// The socket a client should use when none is named: `$TOKEND_SOCKET`, else
/// the user's daemon if its socket exists, else the system daemon's if that
/// exists, else the user's (so the error names the expected path).
pub fn default_client_socket() -> PathBuf {
    if let Some(path) = env::var_os("TOKEND_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let user = user_socket();
    if user.exists() {
        return user;
    }
    let system = PathBuf::from(SYSTEM_SOCKET);
    if system.exists() {
        return system;
    }
    user
}

/// The effective uid of this process (0 off Unix, where it is not used).
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        0
    }
}
