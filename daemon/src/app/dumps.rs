//! No core dumps: the daemon's memory holds every credential's secrets in
//! the clear while it serves them, and a core file (or a debugger attached
//! by the same user) would carry them out of the sealed store.
//!
//! At start the process makes itself non-dumpable (`PR_SET_DUMPABLE` 0 on
//! Linux: no core file, no ptrace by its own user, its /proc files owned
//! by root) and sets its core size limit to 0 (which systemd-coredump and
//! the other Unixes honour). `TOKEND_ALLOW_CORE_DUMPS=1` leaves both as
//! they are, to debug a crash; the daemon then says so at warn.

/// The environment variable that keeps core dumps possible.
pub const ALLOW_VAR: &str = "TOKEND_ALLOW_CORE_DUMPS";

/// What the start-up did about core dumps, to be logged once logging runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dumps {
    /// The process is non-dumpable and its core limit is 0.
    Prevented,
    /// `TOKEND_ALLOW_CORE_DUMPS=1`: nothing was changed.
    Allowed,
}

/// Why the protection could not be set up; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum DumpsError {
    #[error(
        "{ALLOW_VAR} must be 1 (allow core dumps, to debug a crash) or 0 or unset; it is {0:?}"
    )]
    BadValue(String),
    #[error(
        "cannot make the process non-dumpable ({0}); set {ALLOW_VAR}=1 to start without that protection"
    )]
    Failed(String),
}

/// Prevents core dumps unless [`ALLOW_VAR`] says otherwise. Call before
/// the key or any secret is read.
pub fn prevent() -> Result<Dumps, DumpsError> {
    match std::env::var(ALLOW_VAR).as_deref() {
        Ok("1") => return Ok(Dumps::Allowed),
        Ok("0" | "") | Err(std::env::VarError::NotPresent) => {}
        Ok(other) => return Err(DumpsError::BadValue(other.to_string())),
        Err(std::env::VarError::NotUnicode(raw)) => {
            return Err(DumpsError::BadValue(raw.to_string_lossy().into_owned()));
        }
    }
    non_dumpable()?;
    Ok(Dumps::Prevented)
}

/// Logs what [`prevent`] did: a warning when dumps stay allowed.
pub fn log(dumps: &Dumps) {
    match dumps {
        Dumps::Prevented => tracing::debug!("core dumps disabled; the process is not dumpable"),
        Dumps::Allowed => tracing::warn!(
            "{ALLOW_VAR}=1: core dumps are allowed, and a crash may write every secret the daemon holds to a core file; unset it once the crash is debugged"
        ),
    }
}

#[cfg(target_os = "linux")]
fn non_dumpable() -> Result<(), DumpsError> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| DumpsError::Failed(e.to_string()))?;
    no_core_size()
}

#[cfg(all(unix, not(target_os = "linux")))]
fn non_dumpable() -> Result<(), DumpsError> {
    no_core_size()
}

/// Windows writes no core files of its own; crash dumps (WER) are the
/// machine's setting, documented in docs/SECURITY.md.
#[cfg(not(unix))]
fn non_dumpable() -> Result<(), DumpsError> {
    Ok(())
}

#[cfg(unix)]
fn no_core_size() -> Result<(), DumpsError> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| DumpsError::Failed(e.to_string()))
}
