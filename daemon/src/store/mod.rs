//! Durable storage: credentials, their sealed secrets and their allow lists,
//! behind the [`Backend`] interface that the lifecycle and the handler use.
//!
//! Two backends: SQLite ([`sqlite`], one host, the default) and PostgreSQL
//! ([`postgres`], a fleet of hosts sharing one database; docs/ARCHITECTURE.md,
//! "The fleet store"). Secrets are sealed before they reach the backend's
//! storage and opened after they leave it; nothing else in the daemon sees a
//! sealed blob.

pub mod audit;
pub mod binding;
pub mod names;
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
/// **The row decides** (docs/RULES.md, "Fencing"). Every row carries a
/// refresh generation ([`Fence::generation`]). The journal mark, the
/// outcome of a refresh, a state change and a login's tokens are each a
/// compare-and-set on it: written only if the row still holds the
/// generation the writer last read, and moving it on by one.
/// [`StoreError::Moved`] says that someone else wrote first; the writer
/// re-reads the row and adopts it, it never overwrites. The same code runs
/// on one host and in a fleet: a cross-host lock ([`Backend::lock_refresh`])
/// only makes refreshes single-flight and cheap, safety does not rest on it.
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

    /// Commits a new token set, marks the credential ready and clears the
    /// journal mark, if the row still holds generation `fence`. The new
    /// generation.
    fn save_tokens(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        t: &TokenUpdate,
    ) -> Result<i64, StoreError>;

    /// Records, durably and apart from any lock, that the held refresh
    /// token is about to be sent, if the row still holds generation
    /// `fence` (whatever mark it holds was seen by the caller). Until the
    /// outcome is saved the refresh token is *in doubt*, and until the
    /// mark's lease ends nobody else sends or introspects it
    /// (docs/RULES.md, "In-doubt refreshes"). The new generation.
    fn mark_refresh(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        mark: &NewMark,
    ) -> Result<i64, StoreError>;

    /// Records a state change and what it does to the grant, if the row
    /// still holds generation `fence`. The new generation.
    fn save_state(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        s: &StateUpdate,
    ) -> Result<i64, StoreError>;

    /// Records the result of a check, and the state it leads to.
    fn save_check(
        &self,
        name: &str,
        incarnation: i64,
        report: &CheckReport,
        s: &StateUpdate,
    ) -> Result<(), StoreError>;

    /// Adds `principal` to the allow list (`allow`) or takes it off, in one
    /// transaction on the list as stored (two changes made at once on two
    /// hosts both count). The list as it is now.
    fn change_allowed(
        &self,
        name: &str,
        incarnation: i64,
        principal: Principal,
        allow: bool,
    ) -> Result<Vec<Principal>, StoreError>;

    /// Changes a credential's description and settings (`tokenctl edit`),
    /// with a new tag, in one transaction; its secrets, tokens, allow
    /// list and refresh generation stay as they are. A row the key does
    /// not vouch for is not changed ([`StoreError::Untrusted`]).
    fn change_settings(
        &self,
        name: &str,
        incarnation: i64,
        description: &str,
        spec: &CredentialSpec,
    ) -> Result<(), StoreError>;

    /// Writes a refresh token's forecast found after its commit
    /// (introspection), or that `expiring` was notified for it. With
    /// `fence`, only if the row still holds that generation (the forecast
    /// is about the refresh token committed at it); the generation does not
    /// move: no refresh token or journal mark changes.
    fn save_forecast(
        &self,
        name: &str,
        incarnation: i64,
        fence: Option<i64>,
        forecast: Forecast,
    ) -> Result<(), StoreError>;

    /// Notes that `expiring` was notified for the forecast `at`, if it is
    /// still the row's and no one noted it yet: a compare-and-set, so that
    /// of the members of a fleet whose warnings come due together, one
    /// notifies. True when this call noted it.
    fn note_warned(&self, name: &str, incarnation: i64, at: i64) -> Result<bool, StoreError>;

    /// Writes last-use times (name, incarnation, time), batched: a token
    /// request must not wait on fsync. A credential replaced meanwhile is
    /// left alone.
    fn save_last_use(&self, uses: &[(String, i64, i64)]) -> Result<(), StoreError>;

    /// Runs a WAL checkpoint, so a clean stop leaves one self-contained file.
    fn checkpoint(&self) -> Result<(), StoreError>;

    /// Appends audit entries, in one transaction (`app/audit.rs` batches
    /// them: a token request never waits on this); how many the store
    /// refused and dropped (a PostgreSQL data error: the rest are written
    /// one by one, so that one bad entry never blocks the trail).
    fn append_audit(&self, entries: &[tokend_proto::AuditEntry]) -> Result<u64, StoreError>;

    /// The newest audit entries `filter` matches (at most its limit),
    /// oldest first.
    fn read_audit(
        &self,
        filter: &audit::AuditFilter,
    ) -> Result<Vec<tokend_proto::AuditEntry>, StoreError>;

    /// Deletes the audit entries `keep` does not keep; how many went.
    fn prune_audit(&self, keep: &audit::Retention) -> Result<u64, StoreError>;

    /// Whether other hosts share this store (a fleet).
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the credential's refresh lock across hosts (none on one
    /// host: the process's own refresh lock serialises) and re-reads the
    /// row. With `wait`, waits for another host's refresh (bounded);
    /// without, answers [`Claim::Busy`] at once. [`StoreError::Gone`] when
    /// the credential was removed or replaced.
    fn lock_refresh(&self, name: &str, incarnation: i64, wait: bool) -> Result<Claim, StoreError> {
        let _ = wait;
        match self.load_named(&[name.to_string()])?.pop() {
            Some(row) if row.incarnation == incarnation => Ok(Claim::Held(Box::new(row))),
            _ => Err(StoreError::Gone(name.to_string())),
        }
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

    /// Whether the store is reachable now (`tokend_store_up`): a database
    /// whose connection is lost is not; a file on this host always is.
    fn is_up(&self) -> bool {
        true
    }

    /// How the store is named in its errors, if that names more than a
    /// user should learn (a database's URL: hosts, users, database).
    fn name_in_errors(&self) -> Option<String> {
        None
    }
}

/// What [`Backend::lock_refresh`] found.
#[derive(Debug)]
pub enum Claim {
    /// The lock is held (on one host: there is none to hold); the
    /// credential as stored now.
    Held(Box<StoredCredential>),
    /// Another host holds the lock.
    Busy,
}

/// A row's refresh generation and journal mark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fence {
    /// Moves on with every fenced write (the mark, the outcome of a refresh,
    /// a state change, a login): the compare-and-set's value.
    pub generation: i64,
    /// The journal mark, if the row holds one: a refresh token was sent,
    /// or was about to be, and its outcome is not saved.
    pub mark: Option<Mark>,
    /// No member sends a refresh before this: the provider's backoff or
    /// `Retry-After`, for the whole fleet (docs/RULES.md, "Backoff").
    pub retry: Option<Deadline>,
}

/// A time read from a row, by the store's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Unix ms, by the store's clock.
    pub at_ms: i64,
    /// The store's own clock when the row was read; `None` when the
    /// store's clock is this host's (SQLite).
    pub read_at_ms: Option<i64>,
}

impl Deadline {
    /// How long until it, in ms (0 when past), given this host's wall
    /// clock now (used only for a store without a clock of its own).
    /// At most an hour (the longest `Retry-After` honoured): a clock that
    /// stepped back cannot stretch it further.
    pub fn left_ms(&self, host_now_ms: i64) -> i64 {
        let now = self.read_at_ms.unwrap_or(host_now_ms);
        self.at_ms.saturating_sub(now).clamp(0, 3_600_000)
    }
}

/// A journal mark as read, with its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// When it was made (Unix ms), by the store's clock.
    pub at_ms: i64,
    /// How long its author may still be talking to the provider.
    pub lease_ms: i64,
    /// The store's own clock when the row was read (a database server's);
    /// `None` when the store's clock is this host's (SQLite).
    pub read_at_ms: Option<i64>,
    /// Made by this process (in a fleet: by this member's connection name;
    /// on one host, every mark is).
    pub mine: bool,
}

/// The lease of a journal mark written by a version of tokend that wrote
/// none: as long as the longest lease that version's defaults allowed.
pub const LEGACY_LEASE_MS: i64 = 19_000;

impl Mark {
    /// How much of the lease is left, in ms (0 when it is over), given
    /// this host's wall clock now (used only for a store without a clock
    /// of its own). Never more than the lease itself: a clock that stepped back (this
    /// host's, for SQLite) cannot stretch it.
    pub fn lease_left_ms(&self, host_now_ms: i64) -> i64 {
        let now = self.read_at_ms.unwrap_or(host_now_ms);
        self.at_ms
            .saturating_add(self.lease_ms)
            .saturating_sub(now)
            .clamp(0, self.lease_ms.clamp(0, 3_600_000))
    }
}

/// A journal mark to write: its time (this host's clock, used by a store
/// without a clock of its own; a database uses its own) and its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMark {
    pub at_ms: i64,
    pub lease_ms: i64,
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
    /// A fenced write found a newer row than the one its writer read
    /// (another host, or a write whose reply was lost): nothing was
    /// written; the writer re-reads and adopts the row.
    #[error(
        "credential {0:?} changed in the store meanwhile; nothing was written, the stored one is re-read"
    )]
    Moved(String),
    /// A change to a row whose plain columns the key does not vouch for
    /// (`binding.rs`): refused, the row stays as it is.
    #[error(
        "credential {0:?} cannot be changed: {tampered}; add it again with --replace",
        tampered = binding::TAMPERED
    )]
    Untrusted(String),
    /// The user and group database did not answer while a name was
    /// needed for a write (`names.rs`): nothing was written.
    #[error("{0}; nothing was changed: try again once the user and group database answers")]
    Names(String),
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
    /// The owner's uid on this host ([`names::NOBODY`] when the owner's
    /// name is unknown here). Written with its name (see [`names`]).
    pub owner_uid: u32,
    /// The allow list as it applies on this host (entries whose name is
    /// unknown here left out). Written with names.
    pub allowed: Vec<Principal>,
    /// The owner and the allow list as stored, names and what each
    /// stands for here included; set by a load, not kept in memory after
    /// it (`show` reads it again). Ignored by writes, which write
    /// `owner_uid` and `allowed` with their names on this host.
    pub names: Option<Box<names::Named>>,
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
    /// The refresh generation and the journal mark (see [`Fence`]).
    pub fence: Fence,
    /// A shared store's change number of the row (0 in SQLite): the
    /// periodic resync re-reads the rows whose number moved.
    pub change: i64,
    /// The row is not vouched for by the key, or names an endpoint no
    /// secret may be sent to ([`binding::distrust`]): it was loaded
    /// `failing`, without its secrets, and nothing is sent for it.
    pub untrusted: bool,
    /// When the refresh token is expected to stop working, and whether the
    /// notify command was told (see [`Forecast`]).
    pub forecast: Forecast,
}

/// When a grant will need a human again: the refresh token's expiry as the
/// provider said it (`refresh_expires_in`, else introspection's `exp`),
/// and whether `expiring` was notified for it (kept in the row, so a
/// restart does not notify the same forecast again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forecast {
    /// Unix seconds; `None`: unknown or unlimited.
    pub at: Option<i64>,
    /// The notify command ran with `TOKEND_STATE=expiring` for it.
    pub warned: bool,
}

/// A new token set, written in one transaction (docs/DESIGN.md §4.3).
#[derive(Debug, Clone)]
pub struct TokenUpdate {
    /// None when the provider's answer held no access token tokend can
    /// serve (see `unusable`).
    pub access_token: Option<Secret>,
    pub refresh_token: Option<Secret>,
    /// A login starts a new grant: its refresh token (or the lack of one)
    /// replaces the old grant's. A refresh response without a refresh token
    /// keeps the one held (RFC 6749 §6).
    pub new_grant: bool,
    pub generation: u64,
    pub expires_at: Option<i64>,
    pub refreshed_at: i64,
    pub next_refresh_at: Option<i64>,
    /// Why the answer's access token cannot be served (a 2xx with a
    /// `DPoP` token, or none): its refresh token is committed all the same,
    /// so the grant goes on, and the credential is `failing` with this
    /// reason (docs/RULES.md, "Token responses").
    pub unusable: Option<String>,
    /// The refresh token's forecast, written with the tokens it is about.
    pub forecast: Forecast,
    /// The answer said nothing of its refresh token's lifetime: it is
    /// introspected after the commit (`token/forecast.rs`). Not stored.
    pub ask_introspection: bool,
}

/// A change of lifecycle state and its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateUpdate {
    pub state: CredentialState,
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub next_refresh_at: Option<i64>,
    pub grant: GrantChange,
    /// No refresh before then, fleet-wide (a backoff, `Retry-After`);
    /// none clears it.
    pub retry: Option<RetryAt>,
}

/// A backoff deadline to write: when (this host's clock, used by a store
/// without a clock of its own) and how far from now (a database adds it
/// to its own clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAt {
    pub at_ms: i64,
    pub in_ms: i64,
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
