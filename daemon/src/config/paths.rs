//! Where the daemon keeps its socket, store, config and key (docs/DESIGN.md §7).

use std::env;
use std::path::{Path, PathBuf};
#[cfg(not(windows))]
use tokend_proto::paths::{SOCKET_FILE, user_runtime_dir};

/// The HTTP API socket's file name, beside the main socket.
pub use tokend_proto::paths::HTTP_SOCKET_FILE;

/// Resolved locations for one daemon instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub socket: PathBuf,
    /// The HTTP API socket: `--http-socket`, else `[http] socket` (applied
    /// at load), else `http.sock` beside `socket`.
    pub http_socket: PathBuf,
    pub db: PathBuf,
    /// The store in use: SQLite at `db` unless `--store` or the config's
    /// `store` name another (set with the config, see `app::load_config`).
    pub store: super::store::StoreLocation,
    pub config: PathBuf,
    /// The fallback key file, used when no systemd credential is given.
    pub key_file: PathBuf,
    /// The systemd credential holding the key, when `$CREDENTIALS_DIRECTORY` is set.
    pub credential_key: Option<PathBuf>,
    pub system: bool,
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    /// `--store URL`.
    pub store: Option<String>,
    pub http_socket: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[cfg(not(windows))]
fn env_dir(var: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        // systemd may pass several colon-separated directories; the first is ours.
        .map(|v| PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or("")))
}

#[cfg(not(windows))]
fn home_dir(sub: &str) -> PathBuf {
    env_dir("HOME")
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(sub)
}

impl Paths {
    /// Per-user (default) or system-wide paths, with overrides applied.
    /// `key_file_from_config` is the config's `key_file`, if any.
    pub fn resolve(system: bool, o: &Overrides) -> Paths {
        let (default_socket, state, config_dir) = default_locations(system);
        let db = o.db.clone().unwrap_or_else(|| state.join("tokend.db"));
        let key_file = o
            .key_file
            .clone()
            .unwrap_or_else(|| db.parent().unwrap_or(Path::new(".")).join("tokend.key"));
        let socket = o.socket.clone().unwrap_or(default_socket);
        Paths {
            http_socket: o
                .http_socket
                .clone()
                .unwrap_or_else(|| tokend_proto::paths::http_socket_beside(&socket)),
            socket,
            store: super::store::StoreLocation::Sqlite(db.clone()),
            db,
            config: o
                .config
                .clone()
                .unwrap_or_else(|| config_dir.join("config.toml")),
            key_file,
            credential_key: systemd_credential_key(),
            system,
        }
    }
}

/// The socket, state directory and config directory when none is given:
/// systemd's directories (or /run, /var/lib, /etc) for the system daemon,
/// the XDG ones for a user's.
#[cfg(not(windows))]
fn default_locations(system: bool) -> (PathBuf, PathBuf, PathBuf) {
    let (runtime, state, config_dir) = if system {
        (
            env_dir("RUNTIME_DIRECTORY").unwrap_or_else(|| "/run/tokend".into()),
            env_dir("STATE_DIRECTORY").unwrap_or_else(|| "/var/lib/tokend".into()),
            env_dir("CONFIGURATION_DIRECTORY").unwrap_or_else(|| "/etc/tokend".into()),
        )
    } else {
        (
            user_runtime_dir().join("tokend"),
            env_dir("XDG_STATE_HOME")
                .unwrap_or_else(|| home_dir(".local/state"))
                .join("tokend"),
            env_dir("XDG_CONFIG_HOME")
                .unwrap_or_else(|| home_dir(".config"))
                .join("tokend"),
        )
    };
    (runtime.join(SOCKET_FILE), state, config_dir)
}

/// Windows: the named pipe (see `tokend_proto::paths`), and the store and
/// config under `%ProgramData%\tokend` for the system daemon, under
/// `%LOCALAPPDATA%\tokend` and `%APPDATA%\tokend` for a user's.
#[cfg(windows)]
fn default_locations(system: bool) -> (PathBuf, PathBuf, PathBuf) {
    let known = |var: &str, fallback: &str| {
        env::var_os(var)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(fallback), PathBuf::from)
            .join("tokend")
    };
    if system {
        let data = known("ProgramData", r"C:\ProgramData");
        (
            tokend_proto::paths::SYSTEM_SOCKET.into(),
            data.clone(),
            data,
        )
    } else {
        (
            tokend_proto::paths::user_socket(),
            known("LOCALAPPDATA", "."),
            known("APPDATA", "."),
        )
    }
}

/// The key passed as a systemd credential (`$CREDENTIALS_DIRECTORY`).
#[cfg(not(windows))]
fn systemd_credential_key() -> Option<PathBuf> {
    env_dir("CREDENTIALS_DIRECTORY").map(|d| d.join("tokend.key"))
}

#[cfg(windows)]
fn systemd_credential_key() -> Option<PathBuf> {
    None
}

/// Creates `dir` (and parents) and makes it `mode` if this process made it or
/// owns it. Private state must not sit in a directory others can list, nor
/// in one they control (see [`ensure_trusted_dir`]).
pub fn ensure_private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    ensure_trusted_dir(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(dir)?;
        // A shared sticky directory (/tmp, as root) is never narrowed: it
        // serves others, and its sticky bit already keeps them from
        // replacing what is ours.
        let shared_sticky = meta.mode() & 0o1002 == 0o1002;
        if meta.uid() == tokend_proto::paths::current_uid()
            && meta.mode() & 0o7777 != mode
            && !shared_sticky
        {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

/// Creates `dir` (and parents) and refuses it if another user could swap
/// what is inside: it and every directory above it must belong to this
/// user or root, and not writable by all unless sticky (like /tmp, where
/// others cannot rename what is ours). Group-writable directories pass:
/// with per-user groups and umask 002 (a common default) they are the
/// user's own. Otherwise a local user who
/// made `/tmp/tokend-1000` first — the fallback when there is no
/// `XDG_RUNTIME_DIR` — could put their own socket where clients look for
/// tokend, and receive the secrets `tokenctl add` sends. (OpenSSH checks
/// the same before trusting a path.)
pub fn ensure_trusted_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = tokend_proto::paths::current_uid();
        let real = dir.canonicalize()?;
        for d in real.ancestors() {
            let meta = std::fs::metadata(d)?;
            let why = if meta.uid() != me && meta.uid() != 0 {
                format!("it belongs to uid {}", meta.uid())
            } else if meta.mode() & 0o002 != 0 && meta.mode() & 0o1000 == 0 {
                format!("anyone may write to it (mode {:o})", meta.mode() & 0o7777)
            } else {
                continue;
            };
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to keep tokend's files under {}: {why}, so another user could replace them. Remove it, or use a directory only you control (set XDG_RUNTIME_DIR, or pass --socket/--db)",
                    d.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_private_dir_is_narrowed_but_a_shared_sticky_one_is_left_alone() {
        let base = tempfile::tempdir().unwrap();
        let own = base.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&own, 0o700).unwrap();
        assert_eq!(mode(&own), 0o700);
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure_private_dir(&shared, 0o700).unwrap();
        assert_eq!(mode(&shared), 0o1777, "like /tmp: others still need it");
    }
}
