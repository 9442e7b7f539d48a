//! Who serves a named pipe, on Windows: the user SID of the server
//! process's token. The client compares it with its own before it sends
//! anything, as it compares the peer's uid on Unix: while a user's daemon
//! is not running, another local user could create `\\.\pipe\tokend-YOU`
//! first and receive what `tokenctl add` sends (docs/SECURITY.md,
//! "Windows").

use std::io;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE};
use windows_sys::Win32::Security::{
    GetLengthSid, GetTokenInformation, IsWellKnownSid, TOKEN_QUERY, TOKEN_USER, TokenUser,
    WinLocalSystemSid,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// A user's SID, as bytes (SIDs compare equal byte for byte), and whether
/// it is LocalSystem's (the system daemon's user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub sid: Vec<u8>,
    pub system: bool,
}

/// A handle closed when dropped.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle this module opened, closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// The user of the process `pid`.
pub fn of_process(pid: u32) -> io::Result<Owner> {
    // SAFETY: plain call; a null handle is an error, checked.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    let process = Handle(process);
    user_of(process.0)
}

/// The user of this process.
pub fn of_this_process() -> io::Result<Owner> {
    // SAFETY: a pseudo-handle, valid for this process, never closed.
    let process = unsafe { GetCurrentProcess() };
    user_of(process)
}

/// The user SID of `process`'s token.
fn user_of(process: HANDLE) -> io::Result<Owner> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: `token` is a valid out-pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = Handle(token);
    let mut len = 0u32;
    // SAFETY: asks for the size only (null buffer, zero length).
    unsafe { GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(io::Error::last_os_error());
    }
    // u64s, so the buffer is aligned for TOKEN_USER.
    let mut buffer = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: the buffer holds `len` bytes, as the first call asked.
    let filled = unsafe {
        GetTokenInformation(
            token.0,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    };
    if filled == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer now holds a TOKEN_USER whose SID points into it.
    let sid = unsafe { (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid };
    // SAFETY: `sid` is a valid SID inside `buffer`, of GetLengthSid bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(sid.cast::<u8>(), GetLengthSid(sid) as usize).to_vec()
    };
    // SAFETY: `sid` is valid while `buffer` lives.
    let system = unsafe { IsWellKnownSid(sid, WinLocalSystemSid) } != 0;
    Ok(Owner { sid: bytes, system })
}
