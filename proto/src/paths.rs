//! Default locations, shared so that the daemon and its clients agree on
//! where the socket is without any configuration.
//!
//! On Windows the "socket" is a named pipe: `\\.\pipe\tokend-USERNAME` for
//! a user's daemon, `\\.\pipe\tokend` for the system one. Both sides name
//! it as a path (interprocess's `GenericFilePath` maps `\\.\pipe\…` paths
//! to pipes), so `--socket` and `TOKEND_SOCKET` take a pipe path there.

use std::env;
use std::path::PathBuf;

/// The socket file's name inside the runtime directory.
pub const SOCKET_FILE: &str = "tokend.sock";

/// The system service's socket (`tokend --system`, systemd `RuntimeDirectory`).
#[cfg(not(windows))]
pub const SYSTEM_SOCKET: &str = "/run/tokend/tokend.sock";

/// The system service's named pipe.
#[cfg(windows)]
pub const SYSTEM_SOCKET: &str = r"\\.\pipe\tokend";

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
#[cfg(not(windows))]
pub fn user_socket() -> PathBuf {
    user_runtime_dir().join("tokend").join(SOCKET_FILE)
}

/// The per-user named pipe: `\\.\pipe\tokend-USERNAME`. Pipe names are
/// machine-wide, so each user's daemon needs its own.
#[cfg(windows)]
pub fn user_socket() -> PathBuf {
    match env::var("USERNAME") {
        Ok(user) if !user.is_empty() && !user.contains(['\\', '/']) => {
            PathBuf::from(format!(r"{SYSTEM_SOCKET}-{user}"))
        }
        _ => PathBuf::from(SYSTEM_SOCKET),
    }
}

/// The socket a client should use when none is named: `$TOKEND_SOCKET`, else
/// the user's daemon if its socket exists, else the system daemon's if that
/// exists, else the user's (so the error names the expected path).
#[cfg(not(windows))]
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

/// `$TOKEND_SOCKET`, else the user's pipe. There is no fallback to the
/// system pipe: probing a pipe for existence opens it (a connection the
/// daemon would have to serve), and its default ACL admits only
/// administrators besides its owner anyway.
#[cfg(windows)]
pub fn default_client_socket() -> PathBuf {
    if let Some(path) = env::var_os("TOKEND_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    user_socket()
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

/// The HTTP API socket's file name beside the main socket (Unix).
pub const HTTP_SOCKET_FILE: &str = "http.sock";

/// The HTTP API's socket when none is given: `http.sock` beside the main
/// socket on Unix (in the daemon's private directory). A named pipe has
/// no directory of its own (`\\.\pipe\` is the whole machine's), so on
/// Windows it is the main pipe's name with `-http`: per user, as the main
/// one is. The daemon binds it there and clients look for it there.
pub fn http_socket_beside(socket: &std::path::Path) -> PathBuf {
    if cfg!(windows) {
        let mut pipe = socket.as_os_str().to_owned();
        pipe.push("-http");
        return pipe.into();
    }
    socket
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(HTTP_SOCKET_FILE)
}
