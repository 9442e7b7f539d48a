//! Durable storage: credentials, their sealed secrets and their allow lists,
//! behind the [`Backend`] interface that the lifecycle and the handler use.
//!
//! Two backends: SQLite ([`sqlite`], one host, the default) and PostgreSQL
//! ([`postgres`], a fleet of hosts sharing one database; docs/ARCHITECTURE.md,
//! "The fleet store"). Secrets are sealed before they reach the backend's
//! storage and opened after they leave it; nothing else in the daemon sees a
//! sealed blob.

pub mod postgres;
pub mod rows;
pub mod seal;
pub mod sqlite;

use std::sync::Arc;
use tokend_proto::{CheckReport, CredentialSpec, CredentialState, Principal, Secret};

pub use sqlite::SqliteStore;

/// The store the daemon uses: any backend, shared.
pub type Store = Arc<dyn Backend>;

/// Opens the PostgreSQL store at `url`, shared by a fleet (see
/// [`postgres::PgStore::open`]), tuned by the config's `[fleet]`.
pub fn open_postgres(
    url: &str,
    config: &crate::config::Config,
    sealer: seal::Sealer,
) -> Result<Store, StoreError> {
    let options = postgres::PgOptions {
        lock_wait: std::time::Duration::from_secs(config.fleet.lock_wait_secs),
        // A refresh holds its lock for one provider call (and an
        // introspection before it); a holder idle for longer is stuck.
        hold_limit: std::time::Duration::from_secs(4 * config.refresh.http_timeout_secs + 30),
        lock_connections: config.fleet.lock_connections,
    };
    let password_file = config.store_password_file.as_deref();
    Ok(Arc::new(postgres::PgStore::open(
        url,
        password_file,
        sealer,
        options,
    )?))
}

/// Opens the SQLite store at `path` (see [`SqliteStore::open`]).
pub fn open_sqlite(path: &std::path::Path, sealer: seal::Sealer) -> Result<Store, StoreError> {
    Ok(Arc::new(SqliteStore::open(path, sealer)?))
}

/// What the lifecycle and the handler need from durable storage. Every
/// operation is short and synchronous (run it off the async workers with
/// [`blocking`]) and atomic: it happens whole or not at all.
///
/// Writes about one credential are conditioned on its name *and*
/// incarnation ([`StoreError::Gone`] when neither matches any more), so an
/// operation that started for a credential never lands in its replacement.
///
/// A backend shared by several hosts ([`Backend::is_shared`]) serialises
/// refreshes across them: [`Backend::lock_refresh`] takes the credential's
/// cross-host lock and re-reads it before anything is sent; the journal
/// mark (`mark_refresh_in_flight`) is committed apart from the lock, so
/// that it outlives a holder that dies; `save_tokens`, `save_state` or
/// `save_check` commit the outcome with the lock and release it;
/// [`Backend::unlock_refresh`] releases it when nothing was written. A
/// single-host backend needs no more than the journal: the credential's
/// refresh lock (`state::credential::Credential::refresh_lock`) serialises
/// refreshes within the process.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Verifies that the sealing key is the one this store was created with,
    /// recording it on first use.
    fn verify_key(&self) -> Result<(), StoreError>;

    /// Adds a credential; with `replace`, an existing one of that name goes first.
    fn insert(&self, c: &StoredCredential, replace: bool) -> Result<(), StoreError>;

    /// Adds many credentials in one transaction (one fsync instead of one
    /// per credential): for bulk imports and for benchmarks that need a large
    /// store fast. All or nothing; a duplicate name fails the whole batch.
    fn insert_many(&self, creds: &[StoredCredential]) -> Result<(), StoreError>;

    /// Removes a credential; false when there was none.
    fn remove(&self, name: &str, incarnation: i64) -> Result<bool, StoreError>;

    /// For tests: make every write fail, as a full disk would (SQLite's
    /// `query_only`), or work again.
    fn refuse_writes(&self, refuse: bool) -> Result<(), StoreError>;

    /// Every credential, secrets opened. A value that fails to open (wrong
    /// key) is an error: the daemon must not start on garbage.
    fn load_all(&self) -> Result<Vec<StoredCredential>, StoreError>;

    /// Commits a new token set and marks the credential ready, atomically.
    fn save_tokens(&self, name: &str, incarnation: i64, t: &TokenUpdate) -> Result<(), StoreError>;

    /// Records, durably, that a refresh token is about to be sent. Until the
    /// outcome is saved, the held refresh token is *in doubt*: the provider
    /// may have rotated it. A start that finds the mark set never sends it
    /// blindly (docs/RULES.md, "In-doubt refreshes").
    fn mark_refresh_in_flight(
        &self,
        name: &str,
        incarnation: i64,
        at: i64,
    ) -> Result<(), StoreError>;

    /// Records a state change and what it does to the grant.
    fn save_state(&self, name: &str, incarnation: i64, s: &StateUpdate) -> Result<(), StoreError>;

    /// Records the result of a check, and the state it leads to.
    fn save_check(
        &self,
        name: &str,
        incarnation: i64,
        report: &CheckReport,
        s: &StateUpdate,
    ) -> Result<(), StoreError>;

    /// Replaces the allow list.
    fn save_allowed(&self, name: &str, allowed: &[Principal]) -> Result<(), StoreError>;

    /// Writes last-use times, batched: a token request must not wait on fsync.
    fn save_last_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError>;

    /// Runs a WAL checkpoint, so a clean stop leaves one self-contained file.
    fn checkpoint(&self) -> Result<(), StoreError>;

    /// Whether other hosts share this store (a fleet).
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the credential's cross-host refresh lock and re-reads it. With
    /// `wait`, waits for another host's refresh (bounded); without, answers
    /// [`Claim::Busy`] at once. Also busy: the journal mark is another
    /// host's that is still running (it saves the outcome it holds as soon
    /// as it can; only a mark whose host is gone puts the refresh token in
    /// doubt). [`StoreError::Gone`] when the credential was removed or
    /// replaced.
    fn lock_refresh(
        &self,
        _name: &str,
        _incarnation: i64,
        _wait: bool,
    ) -> Result<Claim, StoreError> {
        Ok(Claim::Local)
    }

    /// Releases a lock taken by [`Backend::lock_refresh`] that no write
    /// released. Never blocks.
    fn unlock_refresh(&self, _name: &str, _incarnation: i64) {}

    /// The named credentials as stored now (those that still exist).
    fn load_named(&self, names: &[String]) -> Result<Vec<StoredCredential>, StoreError> {
        let mut all = self.load_all()?;
        all.retain(|c| names.contains(&c.name));
        Ok(all)
    }

    /// Every credential's name, incarnation and change number, for a
    /// shared store's periodic resync.
    fn versions(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        Ok(Vec::new())
    }

    /// The other hosts' changes, for the one task that applies them (the
    /// first caller gets the receiver; a single-host store has none).
    fn take_events(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }

    /// Where the store is, and for a database its connection's state.
    fn describe(&self) -> String;
}

/// What [`Backend::lock_refresh`] found.
#[derive(Debug)]
pub enum Claim {
    /// A single-host store: the process's own refresh lock is enough.
    Local,
    /// The lock is held; the credential as stored now.
    Held(Box<StoredCredential>),
    /// Another host holds the lock.
    Busy,
}

/// A change made by another host of a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// This credential changed (or was removed): re-read it.
    Changed(String),
    /// Changes may have been missed (the connection was lost): compare everything.
    Resync,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {path} cannot be opened: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "the store was written by a newer tokend (schema {found}, this build knows {known}); upgrade tokend"
    )]
    TooNew { found: i64, known: i64 },
    #[error("a credential named {0:?} already exists (remove it first, or use --replace)")]
    AlreadyExists(String),
    #[error("no credential named {0:?}")]
    NotFound(String),
    /// A write for a credential that was removed or replaced since the
    /// operation started (see [`StoredCredential::incarnation`]).
    #[error("credential {0:?} was removed or replaced meanwhile; the result is discarded")]
    Gone(String),
    #[error("storage error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored settings are unreadable: {0}")]
    Settings(#[from] serde_json::Error),
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    #[error("the store task failed: {0}")]
    Task(String),
    #[error("the store URL is not usable: {0}")]
    BadUrl(String),
    /// A shared database failed or cannot be reached; the text names it.
    #[error("{0}")]
    Database(String),
}

/// Everything stored about one credential, secrets opened.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    pub name: String,
    /// Which credential of this name: a random number chosen at `add`, new
    /// on every replace. Every write is conditioned on it, so a refresh, a
    /// login or a check that started for one credential can never write into
    /// its replacement (docs/RULES.md, "Fencing").
    pub incarnation: i64,
    pub description: String,
    pub spec: CredentialSpec,
    pub owner_uid: u32,
    pub allowed: Vec<Principal>,
    /// The client secret (OAuth2 kinds).
    pub client_secret: Option<Secret>,
    /// The access token (for bearer: the token itself).
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    pub generation: u64,
    pub expires_at: Option<i64>,
    pub state: CredentialState,
    pub reason: Option<String>,
    pub created_at: i64,
    pub last_refresh_at: Option<i64>,
    pub last_use_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_check: Option<CheckReport>,
    /// A refresh was in flight when the daemon last stopped (in a shared
    /// store: when its last holder let go of it).
    pub refresh_interrupted: bool,
    /// A shared store's change number of the row (0 in SQLite): the
    /// periodic resync re-reads the rows whose number moved.
    pub change: i64,
}

/// A new token set, written in one transaction (docs/DESIGN.md §4.3).
#[derive(Debug, Clone)]
pub struct TokenUpdate {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    /// A login starts a new grant: its refresh token (or the lack of one)
    /// replaces the old grant's. A refresh response without a refresh token
    /// keeps the one held (RFC 6749 §6).
    pub new_grant: bool,
    pub generation: u64,
    pub expires_at: Option<i64>,
    pub refreshed_at: i64,
    pub next_refresh_at: Option<i64>,
}

/// A change of lifecycle state and its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub state: CredentialState,
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub next_refresh_at: Option<i64>,
    pub grant: GrantChange,
}

/// What a state change does to the held grant and the refresh journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantChange {
    /// The last refresh's outcome is known: clear the journal, keep the tokens.
    Settled,
    /// The outcome of a refresh is unknown: the journal stays set, so a
    /// restart still treats the held refresh token as in doubt.
    InDoubt,
    /// The refresh token may be spent: forget it (it is never sent again),
    /// keep the access token, which stays usable until it expires.
    DropRefreshToken,
    /// The grant is dead: forget both tokens.
    DropAll,
}

/// Runs a store operation off the async workers: every operation is a
/// short, synchronous SQLite transaction behind the connection's mutex.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
}

/// A random incarnation for a new credential (never 0, the value of rows
/// written before incarnations existed).
pub fn new_incarnation() -> i64 {
    let mut b = [0u8; 8];
    // Without OS randomness the process has bigger problems; the clock
    // still makes a replace differ from what it replaces.
    if getrandom::fill(&mut b).is_err() {
        b = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            .to_le_bytes();
    }
    (i64::from_le_bytes(b) & i64::MAX).max(1)
}
