//! Who a Windows process is: the user SID of its token, as its string form
//! (`S-1-5-21-…`). Shared by the daemon, which identifies each client by
//! it (a peer is its SID), and the client, which refuses a pipe served by
//! another user's process before it sends anything (docs/SECURITY.md,
//! "Windows"). Also names to SIDs (`LookupAccountNameW`), for
//! `tokenctl allow NAME --user DOMAIN\user`.
//!
//! The string form is canonical (one SID, one string: what
//! `ConvertSidToStringSidW` writes), so two SIDs are equal exactly when
//! their strings are.

use std::io;
use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, LocalFree};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{
    GetTokenInformation, LookupAccountNameW, PSID, SID_NAME_USE, SidTypeUser, TOKEN_QUERY,
    TOKEN_USER, TokenUser,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// LocalSystem's SID: the system daemon's user, and the one SID tokend
/// treats as root.
pub const LOCAL_SYSTEM: &str = "S-1-5-18";

/// A handle closed when dropped.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a handle this module opened, closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// The user SID of the process `pid`.
pub fn user_of_process(pid: u32) -> io::Result<String> {
    // SAFETY: plain call; a null handle is an error, checked.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    let process = Handle(process);
    user_of(process.0)
}

/// The user SID of this process.
pub fn user_of_this_process() -> io::Result<String> {
    // SAFETY: a pseudo-handle, valid for this process, never closed.
    let process = unsafe { GetCurrentProcess() };
    user_of(process)
}

/// The user SID of `process`'s token.
fn user_of(process: HANDLE) -> io::Result<String> {
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
    string_of(sid)
}

/// The string form of `sid`.
fn string_of(sid: PSID) -> io::Result<String> {
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is a valid SID; `text` a valid out-pointer.
    if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `text` is a NUL-terminated string Windows allocated.
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` u16s before the NUL, all readable.
    let string = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: allocated by ConvertSidToStringSidW with LocalAlloc, freed once.
    unsafe { LocalFree(text.cast()) };
    Ok(string)
}

/// The owner SID of the file or directory `path`.
pub fn owner_of_file(path: &std::path::Path) -> io::Result<String> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Security::Authorization::{GetNamedSecurityInfoW, SE_FILE_OBJECT};
    use windows_sys::Win32::Security::{OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR};
    let wide: Vec<u16> = path
        .as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect();
    let mut owner: PSID = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `wide` is NUL-terminated; valid out-pointers; the others null
    // (not asked for).
    let error = unsafe {
        GetNamedSecurityInfoW(
            wide.as_ptr(),
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error as i32));
    }
    let result = if owner.is_null() {
        Err(io::Error::other("the file has no owner"))
    } else {
        string_of(owner)
    };
    // SAFETY: allocated by GetNamedSecurityInfoW with LocalAlloc (`owner`
    // points into it), freed once, after its last use.
    unsafe { LocalFree(sd) };
    result
}

/// The SID of the user account `name` (`user`, `DOMAIN\user`,
/// `user@domain`), as Windows resolves it on this machine; `None` when no
/// such user exists, or `name` is a group or another kind of account. May
/// ask a domain controller: call it off async workers.
pub fn user_named(name: &str) -> io::Result<Option<String>> {
    let wide: Vec<u16> = name.encode_utf16().chain(std::iter::once(0)).collect();
    let (mut sid_len, mut domain_len, mut kind) = (0u32, 0u32, SID_NAME_USE::default());
    // SAFETY: asks for the sizes only (null buffers, zero lengths).
    unsafe {
        LookupAccountNameW(
            std::ptr::null(),
            wide.as_ptr(),
            std::ptr::null_mut(),
            &mut sid_len,
            std::ptr::null_mut(),
            &mut domain_len,
            &mut kind,
        )
    };
    if sid_len == 0 {
        return match io::Error::last_os_error() {
            // ERROR_NONE_MAPPED: no such account.
            e if e.raw_os_error() == Some(1332) => Ok(None),
            e => Err(e),
        };
    }
    let mut sid = vec![0u64; (sid_len as usize).div_ceil(8)];
    let mut domain = vec![0u16; domain_len as usize];
    // SAFETY: both buffers are as large as the first call asked.
    let found = unsafe {
        LookupAccountNameW(
            std::ptr::null(),
            wide.as_ptr(),
            sid.as_mut_ptr().cast(),
            &mut sid_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if found == 0 {
        return Err(io::Error::last_os_error());
    }
    if kind != SidTypeUser {
        return Ok(None);
    }
    string_of(sid.as_mut_ptr().cast()).map(Some)
}
