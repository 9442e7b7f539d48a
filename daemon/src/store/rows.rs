//! What both backends do with a credential's row outside their database:
//! sealing its secrets before a write, and opening every row's secrets
//! after a bulk read, spread over the cores.

use super::binding::{Binding, distrust, quarantine};
use super::names::{Named, Names};
use super::seal::{Place, Sealer};
use super::{GrantChange, StoreError, StoredCredential, TokenUpdate};
use std::borrow::Cow;
use tokend_proto::{CredentialSpec, CredentialState, Grantee, Principal, Secret};

/// A known value sealed under the key at first start: a wrong key is caught
/// at start-up even when the store holds no credential yet.
pub const KEY_CHECK: &str = "tokend key check";

/// Whether `sealed` (the store's `key_check`) is [`KEY_CHECK`] sealed
/// under this key.
pub fn check_key(sealer: &Sealer, sealed: &[u8]) -> Result<(), StoreError> {
    if sealer.open(Place::key_check(), sealed)?.expose() != KEY_CHECK {
        return Err(super::seal::SealError::Open {
            name: String::new(),
            column: "key_check",
        }
        .into());
    }
    Ok(())
}

/// Below this many rows per thread, opening secrets in parallel costs more
/// in thread start-up than it saves.
pub const ROWS_PER_THREAD: usize = 2_000;

/// A credential's column values that need work before SQL sees them.
pub struct SealedRow {
    pub settings: String,
    /// The tag over the columns the key vouches for (`binding.rs`).
    pub binding: Vec<u8>,
    /// The owner and the allow list with their names on this host.
    pub named: Named,
    pub client_secret: Option<Vec<u8>>,
    pub access: Option<Vec<u8>>,
    pub refresh: Option<Vec<u8>>,
}

/// Seals one optional secret for its place (credential, incarnation, column).
pub fn seal_opt(
    sealer: &Sealer,
    place: Place<'_>,
    s: Option<&Secret>,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(s.map(|s| sealer.seal(place, s)).transpose()?)
}

/// Opens one optional sealed value of its place.
pub fn open_opt(
    sealer: &Sealer,
    place: Place<'_>,
    b: Option<&[u8]>,
) -> Result<Option<Secret>, StoreError> {
    Ok(b.map(|b| sealer.open(place, b)).transpose()?)
}

/// The sealed columns, in the order they are read and opened.
pub const SEALED_COLUMNS: [&str; 3] = ["client_secret", "access_token", "refresh_token"];

/// A row's sealed values (in [`SEALED_COLUMNS`] order) sealed again for
/// its incarnation, from the format of a store written before sealed
/// values were bound to it (the migration that binds rows). A value that
/// does not open is left as it is: its row will not be used.
pub fn reseal_for_incarnation(
    sealer: &Sealer,
    name: &str,
    incarnation: i64,
    values: [Option<Vec<u8>>; 3],
) -> Result<[Option<Vec<u8>>; 3], StoreError> {
    let mut out: [Option<Vec<u8>>; 3] = Default::default();
    for ((column, value), slot) in SEALED_COLUMNS.into_iter().zip(values).zip(&mut out) {
        let Some(value) = value else { continue };
        let legacy = Place {
            incarnation: None,
            ..Place::of(name, incarnation, column)
        };
        *slot = Some(match sealer.open(legacy, &value) {
            Ok(secret) => sealer.seal(Place::of(name, incarnation, column), &secret)?,
            Err(_) => value,
        });
    }
    Ok(out)
}

/// Seals a credential's secrets and encodes its settings, outside any
/// connection lock (sealing is the slow part of an insert).
/// `names` caches the user and group look-ups of a batch.
pub fn seal_row(
    sealer: &Sealer,
    c: &StoredCredential,
    names: &mut Names,
) -> Result<SealedRow, StoreError> {
    let place = |column| Place::of(&c.name, c.incarnation, column);
    let named = names.named(c.owner_uid, &c.allowed)?;
    let settings = serde_json::to_string(&c.spec)?;
    let binding = Binding {
        named: Cow::Borrowed(&named),
        ..Binding::of(c, Some(&settings))?
    }
    .tag(sealer)?;
    Ok(SealedRow {
        settings,
        binding,
        named,
        client_secret: seal_opt(sealer, place("client_secret"), c.client_secret.as_ref())?,
        access: seal_opt(sealer, place("access_token"), c.access_token.as_ref())?,
        refresh: seal_opt(sealer, place("refresh_token"), c.refresh_token.as_ref())?,
    })
}

/// A sealed value, or none.
pub type Sealed = Option<Vec<u8>>;

/// A row's settings as a spec; settings that cannot be read (a writer
/// without the key, a newer format) make the row untrusted, with why,
/// instead of failing the whole load.
pub fn read_spec(settings: &str) -> (CredentialSpec, Option<String>) {
    match serde_json::from_str(settings) {
        Ok(spec) => (spec, None),
        Err(e) => (
            super::binding::unreadable_spec(),
            Some(format!(
                "its stored settings cannot be read ({e}); add it again with --replace"
            )),
        ),
    }
}

/// A token update's access token and refresh token, sealed for credential
/// `name` of incarnation `incarnation`.
pub fn seal_tokens(
    sealer: &Sealer,
    name: &str,
    incarnation: i64,
    t: &TokenUpdate,
) -> Result<(Sealed, Sealed), StoreError> {
    let place = |column| Place::of(name, incarnation, column);
    let access = seal_opt(sealer, place("access_token"), t.access_token.as_ref())?;
    let refresh = seal_opt(sealer, place("refresh_token"), t.refresh_token.as_ref())?;
    Ok((access, refresh))
}

/// What a state change does to the stored grant and journal, as the SET
/// clause both backends' `save_state` append (same column names in both).
/// Every such write is fenced: it also moves the refresh generation on.
pub fn grant_sql(grant: GrantChange) -> &'static str {
    match grant {
        GrantChange::Settled => {
            "refresh_in_flight = NULL, mark_at_ms = NULL, lease_ms = NULL, refresh_gen = refresh_gen + 1"
        }
        GrantChange::InDoubt => "refresh_gen = refresh_gen + 1",
        GrantChange::DropRefreshToken => {
            "refresh_token = NULL, refresh_in_flight = NULL, mark_at_ms = NULL, lease_ms = NULL, refresh_expires_at = NULL, refresh_warned = FALSE, refresh_gen = refresh_gen + 1"
        }
        GrantChange::DropAll => {
            "refresh_token = NULL, access_token = NULL, expires_at = NULL, refresh_in_flight = NULL, mark_at_ms = NULL, lease_ms = NULL, refresh_expires_at = NULL, refresh_warned = FALSE, refresh_gen = refresh_gen + 1"
        }
    }
}

/// The SET clause of a token commit, after the sealed values (same column
/// names in both backends, parameters named by the caller): the journal
/// mark is cleared and the generation moves on.
pub const TOKENS_SETTLE_SQL: &str = "refresh_in_flight = NULL, mark_at_ms = NULL, lease_ms = NULL, retry_at_ms = NULL, refresh_gen = refresh_gen + 1";

/// The outcome of a fenced write that touched `rows` rows, in both
/// backends: the new generation; or, when it touched none, why: the
/// credential is gone (`exists` finds no row of its name and incarnation),
/// or its row moved past `fence`.
pub fn fence_outcome(
    rows: u64,
    name: &str,
    fence: i64,
    exists: impl FnOnce() -> Result<bool, StoreError>,
) -> Result<i64, StoreError> {
    if rows > 0 {
        return Ok(fence + 1);
    }
    Err(if exists()? {
        StoreError::Moved(name.to_string())
    } else {
        StoreError::Gone(name.to_string())
    })
}

/// The state a token commit leaves: ready, or failing when the answer's
/// access token cannot be served.
pub fn committed_state(t: &TokenUpdate) -> &'static str {
    if t.unusable.is_some() {
        "failing"
    } else {
        "ready"
    }
}

/// How a principal is written in a row: kind and id.
pub fn principal_parts(p: &Principal) -> (&'static str, u32) {
    match p {
        Principal::User(u) => ("user", *u),
        Principal::Group(g) => ("group", *g),
    }
}

/// The principal a row's kind and id stand for.
pub fn principal_from_parts(kind: &str, id: u32) -> Principal {
    if kind == "user" {
        Principal::User(id)
    } else {
        Principal::Group(id)
    }
}

/// Checks every row's binding and opens its secrets, spread over the
/// cores when there are many: at start-up with a large store, opening
/// (XChaCha20-Poly1305) is half of the load time. A row the key does not
/// vouch for is quarantined, its secrets left sealed, and so is one whose
/// sealed value does not open (`binding.rs`): one bad row never keeps the
/// others from being served. (A wrong key is refused before any row is
/// read: `Backend::verify_key`.)
///
/// The owner and the allow list are then resolved on this host (`names.rs`).
pub fn open_all(sealer: &Sealer, creds: &mut [StoredCredential], sealed: &SealedColumns) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = creds.len().div_ceil(cores.min(8)).max(ROWS_PER_THREAD);
    if creds.len() <= chunk {
        return open_rows(sealer, creds, sealed, 0);
    }
    std::thread::scope(|scope| {
        for (i, c) in creds.chunks_mut(chunk).enumerate() {
            scope.spawn(move || open_rows(sealer, c, sealed, i * chunk));
        }
    })
}

/// Leaves out the rows whose name is no credential name `add` accepts
/// (a writer of the store without the key can put any text there, escape
/// sequences and line breaks included): such a name would reach a
/// terminal, a log line and the notify command's environment as it is.
/// Logged, escaped; the row stays in the store for an admin to delete.
pub fn keep_valid_names(creds: &mut Vec<StoredCredential>) {
    creds.retain(|c| {
        let valid = tokend_proto::validate_name(&c.name).is_ok();
        if !valid {
            tracing::warn!(credential = %tokend_proto::logged(&c.name), "a row of the store has a name no credential can have; it is left out (delete it with SQL)");
        }
        valid
    });
}

/// Opens the secrets of `creds`, which are rows `first..` of `sealed`.
fn open_rows(
    sealer: &Sealer,
    creds: &mut [StoredCredential],
    sealed: &SealedColumns,
    first: usize,
) {
    let mut names = Names::default();
    for (i, c) in creds.iter_mut().enumerate() {
        let [binding, settings, cs, at, rt] = sealed.row(first + i);
        let settings = settings.and_then(|b| std::str::from_utf8(b).ok());
        let why = if c.untrusted {
            c.reason.clone()
        } else {
            distrust(sealer, c, settings, binding)
        };
        let why = why.or_else(|| open_secrets(sealer, c, [cs, at, rt]).err());
        resolve(c, &mut names);
        if let Some(why) = why {
            quarantine(c, why);
        }
    }
}

/// Sets the owner and allow list that apply on this host from the names
/// read with the row.
pub fn resolve(c: &mut StoredCredential, names: &mut Names) {
    let Some(named) = c.names.take() else {
        return;
    };
    let named = names.resolved(*named);
    c.owner_uid = named.owner_here();
    c.allowed = named.allowed_here();
    c.names = Some(Box::new(named));
}

/// Opens a vouched-for row's client secret, access token and refresh
/// token; why not, if one of them does not open.
fn open_secrets(
    sealer: &Sealer,
    c: &mut StoredCredential,
    [cs, at, rt]: [Option<&[u8]>; 3],
) -> Result<(), String> {
    let place = |column| Place::of(&c.name, c.incarnation, column);
    let open = |column, b| open_opt(sealer, place(column), b).map_err(|e| e.to_string());
    let opened = (
        open("client_secret", cs)?,
        open("access_token", at)?,
        open("refresh_token", rt)?,
    );
    (c.client_secret, c.access_token, c.refresh_token) = opened;
    Ok(())
}

/// Every row's sealed columns, copied into one buffer as read: a single
/// allocation, handed back to the OS whole once opened, instead of 300,000
/// small ones that would stay behind as heap fragments (about 8 MB of
/// resident memory at 100,000 credentials).
#[derive(Default)]
pub struct SealedColumns {
    bytes: Vec<u8>,
    /// Per row: binding, settings, client secret, access token, refresh
    /// token, as byte ranges.
    rows: Vec<[Option<(usize, usize)>; 5]>,
}

impl SealedColumns {
    /// Adds a row's binding, settings (the text the binding covers),
    /// client secret, access token and refresh token.
    pub fn push(&mut self, columns: [Option<&[u8]>; 5]) {
        let row = columns.map(|column| {
            column.map(|b| {
                let start = self.bytes.len();
                self.bytes.extend_from_slice(b);
                (start, self.bytes.len())
            })
        });
        self.rows.push(row);
    }

    fn row(&self, i: usize) -> [Option<&[u8]>; 5] {
        self.rows[i].map(|range| range.map(|(start, end)| &self.bytes[start..end]))
    }
}

/// How a state is written in a row.
pub fn state_to_text(state: CredentialState) -> &'static str {
    state.as_str()
}

/// The state a row's text stands for.
pub fn state_from_text(text: &str) -> CredentialState {
    match text {
        "ready" => CredentialState::Ready,
        "needs-login" => CredentialState::NeedsLogin,
        // A refresh cannot be in flight across a restart.
        "refreshing" => CredentialState::Ready,
        _ => CredentialState::Failing,
    }
}

/// An allow list as one column, with the names where written:
/// `user:1000:alice,group:5`.
pub fn allowed_to_text(allowed: &[Grantee]) -> String {
    allowed
        .iter()
        .map(|g| {
            let (kind, id) = principal_parts(&g.written);
            match &g.name {
                Some(name) => format!("{kind}:{id}:{name}"),
                None => format!("{kind}:{id}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The allow list of [`allowed_to_text`], names not yet looked up here;
/// entries it cannot read are left out.
pub fn allowed_from_text(text: &str) -> Vec<Grantee> {
    text.split(',')
        .filter_map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (kind, id) = (parts.next()?, parts.next()?.parse().ok()?);
            Some(Grantee {
                written: principal_from_parts(kind, id),
                name: parts.next().map(str::to_string),
                here: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allow_list_survives_its_column() {
        let list = vec![
            Grantee {
                written: Principal::User(1000),
                name: Some("alice".into()),
                here: None,
            },
            Grantee {
                written: Principal::Group(5),
                name: None,
                here: None,
            },
        ];
        assert_eq!(allowed_to_text(&list), "user:1000:alice,group:5");
        assert_eq!(allowed_from_text(&allowed_to_text(&list)), list);
        assert!(allowed_from_text("").is_empty());
    }
}
