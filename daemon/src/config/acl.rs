//! The access lists of what the daemon creates on Windows: its named pipes
//! and its key file (docs/SECURITY.md, "Windows"). Written as SDDL, the
//! security descriptor string format, which Windows parses
//! (`ConvertStringSecurityDescriptorToSecurityDescriptorW`); the strings
//! are platform-neutral and unit-tested, the parsing and applying are
//! Windows calls.
//!
//! `D:P` is a protected DACL: nothing is inherited from the parent, so
//! the entries below are the whole list. An entry is
//! `(A;;RIGHTS;;;SID)`: allow RIGHTS to SID (`GA` generic all, `FA` all
//! file rights; `SY` LocalSystem, `BA` the Administrators group).

/// The pipes: the daemon's own user (who must also create further
/// instances of the pipe), LocalSystem and Administrators, with full
/// access; nobody else at all — not even the read-only access Windows'
/// default pipe DACL gives Everyone and anonymous.
pub fn pipe_sddl(own_sid: &str) -> String {
    format!("D:P(A;;GA;;;{own_sid})(A;;GA;;;SY)(A;;GA;;;BA)")
}

/// The key file: the daemon's own user only. Administrators are not
/// listed: they can take ownership of any file anyway, but nobody else
/// reads the key by an entry of its list.
pub fn key_file_sddl(own_sid: &str) -> String {
    format!("D:P(A;;FA;;;{own_sid})")
}

#[cfg(windows)]
pub use self::windows::*;

#[cfg(windows)]
mod windows {
    use std::io;
    use windows_sys::Win32::Foundation::{HANDLE, LocalFree};
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SE_FILE_OBJECT,
        SetSecurityInfo,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    };

    /// A security descriptor parsed from SDDL, freed when dropped.
    pub struct Descriptor(PSECURITY_DESCRIPTOR);

    impl Drop for Descriptor {
        fn drop(&mut self) {
            // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW
            // with LocalAlloc, freed once.
            unsafe { LocalFree(self.0) };
        }
    }

    impl Descriptor {
        /// Parses `sddl`.
        pub fn parse(sddl: &str) -> io::Result<Descriptor> {
            let wide: Vec<u16> = sddl.encode_utf16().chain(std::iter::once(0)).collect();
            let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
            // SAFETY: `wide` is NUL-terminated; `sd` a valid out-pointer.
            let ok = unsafe {
                ConvertStringSecurityDescriptorToSecurityDescriptorW(
                    wide.as_ptr(),
                    SDDL_REVISION_1,
                    &mut sd,
                    std::ptr::null_mut(),
                )
            };
            if ok == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Descriptor(sd))
        }

        /// The descriptor, for interprocess's pipe options (which copy it).
        pub fn to_pipe_descriptor(
            &self,
        ) -> io::Result<interprocess::os::windows::security_descriptor::SecurityDescriptor>
        {
            use interprocess::os::windows::security_descriptor::{
                AsSecurityDescriptorExt, BorrowedSecurityDescriptor,
            };
            // SAFETY: a valid descriptor, alive for the borrow; copied.
            unsafe { BorrowedSecurityDescriptor::from_ptr(self.0) }.to_owned_sd()
        }

        fn dacl(&self) -> io::Result<*mut ACL> {
            let (mut present, mut defaulted) = (0, 0);
            let mut dacl: *mut ACL = std::ptr::null_mut();
            // SAFETY: a valid descriptor; valid out-pointers.
            let ok = unsafe {
                GetSecurityDescriptorDacl(self.0, &mut present, &mut dacl, &mut defaulted)
            };
            if ok == 0 || present == 0 || dacl.is_null() {
                return Err(io::Error::other("the security descriptor has no DACL"));
            }
            Ok(dacl)
        }
    }

    /// Replaces the DACL of the open file `file` (opened with `WRITE_DAC`)
    /// with this descriptor's, protected from inheritance.
    pub fn set_file_dacl(file: &std::fs::File, sd: &Descriptor) -> io::Result<()> {
        use std::os::windows::io::AsRawHandle;
        let dacl = sd.dacl()?;
        // SAFETY: a handle of an open file; a valid DACL inside `sd`.
        let error = unsafe {
            SetSecurityInfo(
                file.as_raw_handle() as HANDLE,
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                dacl,
                std::ptr::null(),
            )
        };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error as i32));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";

    #[test]
    fn the_pipe_admits_the_user_local_system_and_administrators_only() {
        assert_eq!(
            pipe_sddl(ALICE),
            format!("D:P(A;;GA;;;{ALICE})(A;;GA;;;SY)(A;;GA;;;BA)")
        );
        assert!(!pipe_sddl(ALICE).contains(";WD)"), "not Everyone");
        assert!(!pipe_sddl(ALICE).contains(";AN)"), "not anonymous");
    }

    #[test]
    fn the_key_file_admits_the_user_only_and_inherits_nothing() {
        assert_eq!(key_file_sddl(ALICE), format!("D:P(A;;FA;;;{ALICE})"));
    }
}
