//! The audit trail as stored: which entries a reader asks for, and how
//! long they are kept. Both stores keep the same columns (SQLite's
//! `audit`, PostgreSQL's `tokend.audit` with the member's name); an entry
//! is [`tokend_proto::AuditEntry`], which holds no token and no secret.

/// The most entries one read returns, whatever the reader asks: the
/// answer must fit in one frame (an entry is at most ~1 KiB: the
/// credential's name is cut to a loggable length, the reason and the
/// executable too).
pub const MAX_READ: u32 = 10_000;

/// Which entries to read, newest first, at most `limit` (and at most
/// [`MAX_READ`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only the entries about these credentials (`None`: any, including
    /// requests that named none).
    pub credentials: Option<Vec<String>>,
    /// Only entries at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only this user's entries.
    pub user: Option<UserFilter>,
    /// Only the entries of these credentials' incarnations (`None`: any):
    /// what a user who is not an admin reads, the credentials it owns now,
    /// never an earlier credential of the same name nor a `not_found`.
    pub incarnations: Option<Vec<i64>>,
    pub limit: u32,
}

impl AuditFilter {
    /// The limit as the stores apply it: at least 1, at most [`MAX_READ`].
    pub fn bounded_limit(&self) -> i64 {
        i64::from(self.limit.clamp(1, MAX_READ))
    }
}

/// A user as `tokenctl audit --user` names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserFilter {
    Uid(u32),
    /// The user name recorded with the entry (the same on every host of a
    /// fleet, where uids may differ).
    Name(String),
}

impl UserFilter {
    /// `1000` is a uid, anything else a name.
    pub fn parse(text: &str) -> UserFilter {
        match text.parse() {
            Ok(uid) => UserFilter::Uid(uid),
            Err(_) => UserFilter::Name(text.to_string()),
        }
    }

    pub(super) fn uid(&self) -> Option<i64> {
        match self {
            UserFilter::Uid(uid) => Some(i64::from(*uid)),
            UserFilter::Name(_) => None,
        }
    }

    pub(super) fn name(&self) -> Option<String> {
        match self {
            UserFilter::Uid(_) => None,
            UserFilter::Name(name) => Some(name.clone()),
        }
    }
}

/// What is kept: entries no older than `keep_ms`, the newest `max_rows`
/// of them. How old an entry is goes by the store's clock: the host's for
/// SQLite (one host), the database's for PostgreSQL, so that one fleet
/// member with a skewed clock cannot delete the others' entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_ms: i64,
    pub max_rows: u64,
}
