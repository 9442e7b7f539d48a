//! One daemon per pipe on Windows. Two daemons on one store would each
//! refresh and rotate its tokens (SQLite is not locked to one process),
//! and a second one must not merely add instances to the first one's pipe:
//! `FILE_FLAG_FIRST_PIPE_INSTANCE` is meant to refuse that, but Wine
//! ignores it, and one flag is thin ground. So before anything else the
//! daemon takes a named mutex derived from its pipe's name, held for its
//! life; a second daemon finds it taken and stops, saying so
//! (docs/SECURITY.md, "Windows"). On Unix, binding the socket does this.

use std::path::Path;

/// Held while the daemon runs; released when dropped (or when the process
/// ends, however it ends).
#[derive(Debug)]
pub struct Instance {
    #[cfg(windows)]
    handle: windows_sys::Win32::Foundation::HANDLE,
}

// SAFETY: a mutex handle may be used and closed from any thread.
#[cfg(windows)]
unsafe impl Send for Instance {}
#[cfg(windows)]
unsafe impl Sync for Instance {}

/// The mutex's name for the pipe `socket`: in the session's namespace,
/// the pipe's name with its backslashes (which a mutex name may not hold)
/// replaced, in lower case: pipe names are case-insensitive and mutex
/// names are not, so `\\.\pipe\TOKEND-alice` is the same pipe and must be
/// the same mutex.
#[cfg(any(windows, test))]
fn mutex_name(socket: &Path) -> String {
    let pipe = socket
        .display()
        .to_string()
        .replace('\\', "_")
        .to_lowercase();
    format!("Local\\tokend-instance-{pipe}")
}

/// Takes the pipe `socket` for this daemon, or says that another daemon
/// has it.
#[cfg(windows)]
pub fn claim(socket: &Path) -> Result<Instance, String> {
    use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GetLastError};
    use windows_sys::Win32::System::Threading::CreateMutexW;
    let name: Vec<u16> = mutex_name(socket)
        .encode_utf16()
        .chain(std::iter::once(0))
        .collect();
    // SAFETY: `name` is NUL-terminated and outlives the call; no security
    // attributes (the default: the creating user's).
    let handle = unsafe { CreateMutexW(std::ptr::null(), 0, name.as_ptr()) };
    // SAFETY: reads the calling thread's last error, set by CreateMutexW.
    let error = unsafe { GetLastError() };
    if handle.is_null() {
        return Err(format!(
            "cannot claim the pipe {}: {}",
            socket.display(),
            std::io::Error::from_raw_os_error(error as i32)
        ));
    }
    let instance = Instance { handle };
    if error == ERROR_ALREADY_EXISTS {
        return Err(format!(
            "another tokend is already running on {}; stop it first (or start this one with another --socket)",
            socket.display()
        ));
    }
    Ok(instance)
}

/// On Unix the socket's bind tells (`server::bind`).
#[cfg(not(windows))]
pub fn claim(_socket: &Path) -> Result<Instance, String> {
    Ok(Instance {})
}

#[cfg(windows)]
impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the handle came from CreateMutexW and is closed once.
        unsafe { windows_sys::Win32::Foundation::CloseHandle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mutex_is_named_for_the_pipe_without_backslashes() {
        let name = mutex_name(Path::new(r"\\.\pipe\tokend-alice"));
        assert_eq!(name, r"Local\tokend-instance-__._pipe_tokend-alice");
        assert_eq!(name.matches('\\').count(), 1, "only the namespace's");
    }

    #[test]
    fn one_pipe_in_any_case_is_one_mutex() {
        assert_eq!(
            mutex_name(Path::new(r"\\.\PIPE\TOKEND-Alice")),
            mutex_name(Path::new(r"\\.\pipe\tokend-alice")),
        );
    }
}
