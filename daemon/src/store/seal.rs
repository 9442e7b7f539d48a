//! Sealing secrets at rest: XChaCha20-Poly1305 under a 256-bit key, with the
//! credential's name, incarnation and the column bound in as associated
//! data, so a sealed value copied to another row, another incarnation of
//! the same name (a replaced credential) or another column fails to open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokend_proto::Secret;
use zeroize::Zeroizing;

/// Values sealed for a name and column only (tokend before incarnations
/// were bound; still the store's key check).
const FORMAT_V1: u8 = 1;
/// Values sealed for a name, an incarnation and a column.
const FORMAT_V2: u8 = 2;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// Why the key could not be had, or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the sealing key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the sealing key {path} is not 32 bytes (raw) or 64 hex characters; restore the right key file"
    )]
    BadKey { path: PathBuf },
    #[error("cannot create the sealing key {path}: {source}")]
    CreateKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sealing key {path} is readable by other users (mode {mode:o}); chmod 600 it")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the sealing key {path} belongs to {owner}, not to this daemon's user, LocalSystem or Administrators: another user may have made it (and know it); remove it or take ownership after checking"
    )]
    KeyNotOurs { path: PathBuf, owner: String },
    #[error(
        "the {column} of credential {name:?} cannot be opened: wrong sealing key, or the store was tampered with"
    )]
    Open { name: String, column: &'static str },
    #[error("cannot get randomness from the OS: {0}")]
    Random(String),
}

/// Where the key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    SystemdCredential(PathBuf),
    File(PathBuf),
    Created(PathBuf),
}

/// The cipher. Holds the key; its `Debug` shows nothing of it.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([key redacted])")
    }
}

/// Where a sealed value belongs, which it opens nowhere else.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub name: &'a str,
    /// The credential's incarnation; none for the store's key check and
    /// for values written before incarnations were bound (format 1, read
    /// only by the migration that seals them again).
    pub incarnation: Option<i64>,
    pub column: &'static str,
}

impl<'a> Place<'a> {
    pub fn of(name: &'a str, incarnation: i64, column: &'static str) -> Place<'a> {
        Place {
            name,
            incarnation: Some(incarnation),
            column,
        }
    }

    /// The store's key check (`meta.key_check`).
    pub fn key_check() -> Place<'static> {
        Place {
            name: "",
            incarnation: None,
            column: "key_check",
        }
    }

    /// The format byte and the associated data.
    fn aad(&self) -> (u8, Vec<u8>) {
        let (name, column) = (self.name, self.column);
        match self.incarnation {
            None => (
                FORMAT_V1,
                format!("tokend/v1\0{name}\0{column}").into_bytes(),
            ),
            Some(i) => (
                FORMAT_V2,
                format!("tokend/v2\0{name}\0{i}\0{column}").into_bytes(),
            ),
        }
    }
}

impl Sealer {
    pub fn from_key(key: &[u8; KEY_LEN]) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Loads the key: the systemd credential if present, else `key_file`,
    /// which is created (0600, OS randomness) when missing and `create` is set.
    pub fn load(
        credential: Option<&Path>,
        key_file: &Path,
        create: bool,
    ) -> Result<(Sealer, KeySource), SealError> {
        if let Some(cred) = credential.filter(|p| p.exists()) {
            let key = read_key(cred)?;
            return Ok((
                Sealer::from_key(&key),
                KeySource::SystemdCredential(cred.into()),
            ));
        }
        if key_file.exists() || !create {
            check_key_mode(key_file)?;
            let key = read_key(key_file)?;
            return Ok((Sealer::from_key(&key), KeySource::File(key_file.into())));
        }
        let key = create_key(key_file)?;
        Ok((Sealer::from_key(&key), KeySource::Created(key_file.into())))
    }

    /// Seals `secret` for `place`.
    pub fn seal(&self, place: Place<'_>, secret: &Secret) -> Result<Vec<u8>, SealError> {
        let (format, aad) = place.aad();
        self.encrypt(format, secret.expose().as_bytes(), &aad)
    }

    /// Opens a value sealed by [`Sealer::seal`] for the same place.
    pub fn open(&self, place: Place<'_>, sealed: &[u8]) -> Result<Secret, SealError> {
        let fail = || SealError::Open {
            name: place.name.to_string(),
            column: place.column,
        };
        let (format, aad) = place.aad();
        let plain = Zeroizing::new(self.decrypt(format, sealed, &aad).ok_or_else(fail)?);
        let text = std::str::from_utf8(&plain).map_err(|_| fail())?;
        Ok(Secret::new(text))
    }

    /// A tag over `data` under the key: XChaCha20-Poly1305 sealing nothing,
    /// with `data` as the associated data (the format of [`Sealer::seal`],
    /// an empty message's 16-byte Poly1305 tag as its body). Whoever lacks
    /// the key cannot make one that [`Sealer::verify_tag`] accepts, and a
    /// tag made for other data fails. `data` must be domain-separated from
    /// the associated data of sealed values (see `store/binding.rs`).
    pub fn tag(&self, data: &[u8]) -> Result<Vec<u8>, SealError> {
        self.encrypt(FORMAT_V1, &[], data)
    }

    /// Whether `tag` was made by [`Sealer::tag`] under this key for `data`.
    pub fn verify_tag(&self, data: &[u8], tag: &[u8]) -> bool {
        self.decrypt(FORMAT_V1, tag, data)
            .is_some_and(|plain| plain.is_empty())
    }

    /// `format`, a fresh random nonce, and `msg` encrypted and
    /// authenticated with `aad`.
    fn encrypt(&self, format: u8, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let body = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
            .map_err(|_| SealError::Random("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(format);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// What [`Sealer::encrypt`] made, if it has `format` and opens with `aad`.
    fn decrypt(&self, format: u8, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != format {
            return None;
        }
        let (nonce, msg) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg, aad })
            .ok()
    }
}

fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    let raw = Zeroizing::new(std::fs::read(path).map_err(|source| SealError::ReadKey {
        path: path.into(),
        source,
    })?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if raw.len() == KEY_LEN {
        key.copy_from_slice(&raw);
        return Ok(key);
    }
    let text = std::str::from_utf8(&raw).unwrap_or("").trim();
    if text.len() == KEY_LEN * 2 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        return Ok(key);
    }
    Err(SealError::BadKey { path: path.into() })
}

fn check_key_mode(path: &Path) -> Result<(), SealError> {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SealError::KeyTooOpen {
                path: path.into(),
                mode,
            });
        }
    }
    #[cfg(windows)]
    if std::fs::metadata(path).is_ok() {
        let err = |source| SealError::ReadKey {
            path: path.into(),
            source,
        };
        let owner = tokend_proto::sid::owner_of_file(path).map_err(err)?;
        let own = tokend_proto::sid::user_of_this_process().map_err(err)?;
        if !trusted_key_owner(&owner, &own) {
            return Err(SealError::KeyNotOurs {
                path: path.into(),
                owner,
            });
        }
    }
    #[cfg(not(any(unix, windows)))]
    let _ = path;
    Ok(())
}

/// Windows: whose key file the daemon uses — its own user's, LocalSystem's
/// or the Administrators group's (an elevated administrator's files may be
/// owned by the group). In a directory other users may write to
/// (`%ProgramData%` lets every local user create files in its
/// subdirectories), another user could make the key file before the
/// daemon first starts, with a key they know; its owner gives it away.
#[cfg(any(windows, test))]
fn trusted_key_owner(owner: &str, own: &str) -> bool {
    owner == own || owner == "S-1-5-18" || owner == "S-1-5-32-544"
}

fn create_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    let err = |source| SealError::CreateKey {
        path: path.into(),
        source,
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(key.as_mut()).map_err(|e| SealError::Random(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    #[cfg(windows)]
    windows_key_options(&mut options);
    let mut file = options.open(path).map_err(err)?;
    #[cfg(windows)]
    restrict_to_user(&file).map_err(err)?;
    file.write_all(key.as_ref()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(key)
}

/// Windows: the key file is created for writing and changing its DACL,
/// and **shared with nobody** while it is open (share mode 0). Between
/// its creation and `restrict_to_user` the file has the access list it
/// inherits from its directory (in `%ProgramData%`, read for every local
/// user); a handle opened then would keep its access after the DACL
/// changes and read the key once written. With no sharing, no one else
/// can open it until it is closed, by which time only its user may.
#[cfg(windows)]
fn windows_key_options(options: &mut std::fs::OpenOptions) {
    use std::os::windows::fs::OpenOptionsExt;
    options
        .access_mode(
            windows_sys::Win32::Foundation::GENERIC_WRITE
                | windows_sys::Win32::Storage::FileSystem::WRITE_DAC,
        )
        .share_mode(0);
}

/// Windows: the new, still empty, key file gets a protected DACL that
/// admits this process's user only (`config/acl.rs` `key_file_sddl`),
/// before the key is written, instead of the access list it would inherit
/// from its directory.
#[cfg(windows)]
fn restrict_to_user(file: &std::fs::File) -> std::io::Result<()> {
    use crate::config::acl;
    let own = tokend_proto::sid::user_of_this_process()?;
    acl::set_file_dacl(file, &acl::Descriptor::parse(&acl::key_file_sddl(&own))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_made_by_another_user_is_not_used() {
        const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
        const BOB: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";
        assert!(trusted_key_owner(ALICE, ALICE));
        assert!(trusted_key_owner("S-1-5-18", ALICE));
        assert!(trusted_key_owner("S-1-5-32-544", ALICE));
        assert!(!trusted_key_owner(BOB, ALICE));
        assert!(!trusted_key_owner("S-1-5-32-545", ALICE), "not Users");
        assert!(!trusted_key_owner("S-1-1-0", ALICE), "not Everyone");
    }

    /// While the daemon writes a new key, nobody else can open the file:
    /// a handle opened in the moment before its DACL is set would keep
    /// reading it after (ERROR_SHARING_VIOLATION is 32).
    #[cfg(windows)]
    #[test]
    fn a_new_key_file_cannot_be_opened_by_anyone_else_while_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        windows_key_options(&mut options);
        let held = options.open(&path).unwrap();
        let other = std::fs::File::open(&path);
        assert_eq!(other.err().and_then(|e| e.raw_os_error()), Some(32));
        drop(held);
    }

    fn sealer() -> Sealer {
        Sealer::from_key(&[7u8; 32])
    }

    #[test]
    fn sealed_value_opens_only_for_its_row_and_column() {
        let s = sealer();
        let sealed = s
            .seal(
                Place::of("uptempo", 1, "refresh_token"),
                &Secret::new("rt-1"),
            )
            .unwrap();
        assert_eq!(
            s.open(Place::of("uptempo", 1, "refresh_token"), &sealed)
                .unwrap()
                .expose(),
            "rt-1"
        );
        assert!(
            s.open(Place::of("other", 1, "refresh_token"), &sealed)
                .is_err()
        );
        assert!(
            s.open(Place::of("uptempo", 1, "access_token"), &sealed)
                .is_err()
        );
        assert!(
            s.open(Place::of("uptempo", 2, "refresh_token"), &sealed)
                .is_err()
        );
        let legacy = Place {
            incarnation: None,
            ..Place::of("uptempo", 1, "refresh_token")
        };
        assert!(s.open(legacy, &sealed).is_err());
    }

    #[test]
    fn sealed_bytes_do_not_contain_the_secret() {
        let sealed = sealer()
            .seal(
                Place::of("a", 1, "access_token"),
                &Secret::new("plain-text-token"),
            )
            .unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"plain-text-token"));
    }

    #[test]
    fn wrong_key_fails_to_open() {
        let sealed = sealer()
            .seal(Place::of("a", 1, "access_token"), &Secret::new("x"))
            .unwrap();
        let other = Sealer::from_key(&[8u8; 32]);
        assert!(matches!(
            other.open(Place::of("a", 1, "access_token"), &sealed),
            Err(SealError::Open { .. })
        ));
    }

    #[test]
    fn a_tag_verifies_only_for_its_data_and_key() {
        let s = sealer();
        let tag = s.tag(b"tokend/row/v1 data").unwrap();
        assert!(s.verify_tag(b"tokend/row/v1 data", &tag));
        assert!(!s.verify_tag(b"tokend/row/v1 datA", &tag));
        assert!(!Sealer::from_key(&[8u8; 32]).verify_tag(b"tokend/row/v1 data", &tag));
        let mut flipped = tag.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(!s.verify_tag(b"tokend/row/v1 data", &flipped));
        assert!(!s.verify_tag(b"tokend/row/v1 data", &tag[..10]));
        // A sealed value is no tag: its body is not empty.
        let place = Place::of("n", 1, "c");
        let sealed = s.seal(place, &Secret::new("x")).unwrap();
        assert!(!s.verify_tag(&place.aad().1, &sealed));
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (a, src) = Sealer::load(None, &path, true).unwrap();
        assert!(matches!(src, KeySource::Created(_)));
        let sealed = a.seal(Place::key_check(), &Secret::new("v")).unwrap();
        let (b, src) = Sealer::load(None, &path, true).unwrap();
        assert!(matches!(src, KeySource::File(_)));
        assert_eq!(b.open(Place::key_check(), &sealed).unwrap().expose(), "v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn hex_key_and_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let hex = dir.path().join("hex");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(read_key(&hex).is_ok());
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "short").unwrap();
        assert!(matches!(read_key(&bad), Err(SealError::BadKey { .. })));
    }
}
