//! The PostgreSQL backend: one database shared by a fleet of tokend
//! daemons (docs/ARCHITECTURE.md, "The fleet store").
//!
//! The same rows as SQLite, sealed the same way. What a fleet adds:
//! - **Cross-member single flight**: a refresh holds a transaction-scoped
//!   advisory lock on the credential ([`PgStore::lock_refresh`]) from before
//!   it re-reads the row until its outcome is committed in that same
//!   transaction. A dead or stalled holder's lock goes with its session
//!   (`idle_in_transaction_session_timeout` bounds a stall).
//! - **The journal mark outlives its holder**: it is committed on another
//!   connection, outside the locking transaction, so that the death of the
//!   holder (which rolls its transaction back) cannot erase it.
//! - **Change notification** (`listen.rs`): every change to a row notifies
//!   the other members, which re-read it.
//!
//! The interface is synchronous (see [`crate::store::Backend`]); each call
//! runs its queries on the store's own small runtime and waits for them,
//! so the database's connections keep being driven whatever the daemon's
//! workers do.

mod connect;
mod listen;
mod row;
mod schema;

use super::rows::{KEY_CHECK, allowed_to_text, open_all, seal_opt, seal_row, state_to_text};
use super::seal::Sealer;
use super::{
    Backend, Claim, GrantChange, StateUpdate, StoreError, StoreEvent, StoredCredential, TokenUpdate,
};
use connect::Target;
use deadpool_postgres::{Object, Pool};
use listen::Health;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokend_proto::{CheckReport, Principal, Secret};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

/// Tuning of the PostgreSQL store (docs/CONFIG.md, `[store]`).
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// How long an on-demand refresh waits for another member's.
    pub lock_wait: Duration,
    /// How long a refresh may hold its lock idle (the provider call): past
    /// it the database ends the holder's session, and with it the lock.
    pub hold_limit: Duration,
    /// Connections for held refresh locks (one per refresh in flight).
    pub lock_connections: usize,
}

/// A store in PostgreSQL. The connections live on a runtime of their own.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    /// Short autocommit statements and reads.
    work: Pool,
    /// Connections holding a refresh lock's transaction.
    locks: Pool,
    sealer: Arc<Sealer>,
    /// Locks held by this member, by credential and incarnation.
    held: Mutex<HashMap<(String, i64), Object>>,
    health: Arc<Health>,
    events: Mutex<Option<UnboundedReceiver<StoreEvent>>>,
    shown: Arc<str>,
    options: PgOptions,
    refuse: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.shown)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Never blocks (the store may be dropped on an async worker); the
        // database rolls back any lock still held when its session ends.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A statement with owned parameters, to run on the store's runtime.
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    fn new(text: impl Into<String>, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Sql {
        Sql {
            text: text.into(),
            params,
        }
    }

    async fn run(
        &self,
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<u64, tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> = self
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        client.execute(self.text.as_str(), &params).await
    }
}

/// A database error as a sentence: the server's own message when it sent
/// one (tokio-postgres shows only "db error"), else the cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl PgStore {
    /// Connects, brings the schema up to date and starts listening for the
    /// other members' changes. `member` names this daemon in the database
    /// (its `application_name`).
    pub fn open(
        url: &str,
        password_file: Option<&std::path::Path>,
        sealer: Sealer,
        options: PgOptions,
    ) -> Result<PgStore, StoreError> {
        let member = member_name();
        let target = Target::parse(url, password_file, &member)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tokend-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("cannot start the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (work, locks) = {
            let _enter = handle.enter();
            (
                target.pool(4, Duration::from_secs(10))?,
                target.pool(options.lock_connections.max(1), Duration::from_secs(60))?,
            )
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let store = PgStore {
            runtime: Some(runtime),
            handle,
            work,
            locks,
            sealer: Arc::new(sealer),
            held: Mutex::default(),
            health: Arc::default(),
            events: Mutex::new(Some(rx)),
            shown: target.shown.clone().into(),
            options,
            refuse: AtomicBool::new(false),
        };
        store.migrate()?;
        store.health.mark_connected();
        store
            .handle
            .spawn(listen::run(target, member, store.health.clone(), tx));
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it. Works from any
    /// thread, async worker or not.
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(StoreError::Task("the database task stopped".into())));
        if let Err(StoreError::Database(e)) = &result {
            self.health.note_error(e);
        }
        result
    }

    fn db(&self) -> Db {
        Db(self.shown.clone())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let (pool, db) = (self.work.clone(), self.db());
        self.call(async move {
            let mut client = pool.get().await.map_err(|e| db.pool(e))?;
            let tx = client.transaction().await.map_err(|e| db.err(&e))?;
            // First the lock: members starting together would otherwise
            // race on CREATE SCHEMA IF NOT EXISTS.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::MIGRATION_LOCK],
            )
            .await
            .map_err(|e| db.err(&e))?;
            tx.batch_execute(schema::BOOTSTRAP)
                .await
                .map_err(|e| db.err(&e))?;
            let version: i64 = tx
                .query_opt("SELECT version::bigint FROM tokend.schema_version", &[])
                .await
                .map_err(|e| db.err(&e))?
                .map_or(0, |r| r.get(0));
            let known = schema::MIGRATIONS.len() as i64;
            if version > known {
                return Err(StoreError::TooNew {
                    found: version,
                    known,
                });
            }
            for sql in schema::MIGRATIONS.iter().skip(version as usize) {
                tx.batch_execute(sql).await.map_err(|e| db.err(&e))?;
            }
            tx.execute("DELETE FROM tokend.schema_version", &[])
                .await
                .map_err(|e| db.err(&e))?;
            tx.execute(
                "INSERT INTO tokend.schema_version (version) VALUES ($1::bigint::integer)",
                &[&known],
            )
            .await
            .map_err(|e| db.err(&e))?;
            tx.commit().await.map_err(|e| db.err(&e))
        })
    }

    /// Runs one autocommit statement; the number of rows it touched.
    fn execute(&self, sql: Sql) -> Result<u64, StoreError> {
        self.refuse_check()?;
        let (pool, db) = (self.work.clone(), self.db());
        self.call(async move {
            let client = pool.get().await.map_err(|e| db.pool(e))?;
            sql.run(&**client).await.map_err(|e| db.err(&e))
        })
    }

    /// Runs a write about one credential: inside its refresh lock's
    /// transaction when this member holds it (committing it, which releases
    /// the lock), else on its own.
    fn write(&self, name: &str, incarnation: i64, sql: Sql) -> Result<(), StoreError> {
        self.refuse_check()?;
        let held = self.take_held(name, incarnation);
        let Some(client) = held else {
            return written(self.execute(sql)?, name);
        };
        let db = self.db();
        let n = self.call(async move {
            let result = async {
                let n = sql.run(&**client).await?;
                client.batch_execute("COMMIT").await?;
                Ok::<_, tokio_postgres::Error>(n)
            }
            .await;
            match result {
                Ok(n) => Ok(n),
                Err(e) => {
                    discard(client).await;
                    Err(db.err(&e))
                }
            }
        })?;
        written(n, name)
    }

    fn take_held(&self, name: &str, incarnation: i64) -> Option<Object> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.to_string(), incarnation))
    }

    fn refuse_check(&self) -> Result<(), StoreError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(StoreError::Database(format!(
                "{}: writes are refused (test setting)",
                self.shown
            )));
        }
        Ok(())
    }

    /// Reads rows (`filter` after the FROM clause) and opens their secrets.
    fn read(
        &self,
        filter: &'static str,
        names: Option<Vec<String>>,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        let (pool, db) = (self.work.clone(), self.db());
        let (mut creds, sealed) = self.call(async move {
            let client = pool.get().await.map_err(|e| db.pool(e))?;
            let sql = format!("SELECT {} FROM {} {filter}", schema::COLUMNS, schema::FROM);
            let rows = match &names {
                Some(names) => client.query(&sql, &[names]).await,
                None => client.query(&sql, &[]).await,
            }
            .map_err(|e| db.err(&e))?;
            row::convert(&rows)
        })?;
        open_all(&self.sealer, &mut creds, &sealed)?;
        Ok(creds)
    }
}

/// The name this member goes by in the database: host, process and a
/// random part, so that two members never share it.
fn member_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().chars().take(24).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!(
        "tokend:{host}:{}:{:02x}{:02x}{:02x}",
        std::process::id(),
        b[0],
        b[1],
        b[2]
    )
}

/// Ends a lock connection's transaction; a connection that cannot say
/// ROLLBACK is closed rather than returned to the pool mid-transaction.
async fn discard(client: Object) {
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(client));
    }
}

/// Turns database errors into store errors naming the database.
#[derive(Clone)]
struct Db(Arc<str>);

impl Db {
    fn err(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Database(format!("PostgreSQL {}: {}", self.0, describe(e)))
    }

    fn pool(&self, e: deadpool_postgres::PoolError) -> StoreError {
        let detail = match &e {
            deadpool_postgres::PoolError::Backend(e) => describe(e),
            other => other.to_string(),
        };
        StoreError::Database(format!("PostgreSQL {} is unreachable: {detail}", self.0))
    }
}

/// No row matched the name and incarnation: see [`StoreError::Gone`].
fn written(rows: u64, name: &str) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::Gone(name.to_string()));
    }
    Ok(())
}

/// The advisory lock key of a credential's refresh: 64 bits of a hash of
/// its name, so any name maps to one key (two names sharing a key only
/// take turns).
fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("tokend refresh\0{name}"));
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(b)
}

fn boxed<T: ToSql + Sync + Send + 'static>(v: T) -> Box<dyn ToSql + Sync + Send> {
    Box::new(v)
}

impl Backend for PgStore {
    fn verify_key(&self) -> Result<(), StoreError> {
        let sealed = self.sealer.seal("", "key_check", &Secret::new(KEY_CHECK))?;
        let (pool, db) = (self.work.clone(), self.db());
        let stored: Vec<u8> = self.call(async move {
            let client = pool.get().await.map_err(|e| db.pool(e))?;
            client
                .execute(
                    "INSERT INTO tokend.meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
                    &[&sealed],
                )
                .await
                .map_err(|e| db.err(&e))?;
            let row = client
                .query_one("SELECT value FROM tokend.meta WHERE key = 'key_check'", &[])
                .await
                .map_err(|e| db.err(&e))?;
            Ok(row.get(0))
        })?;
        let opened = self.sealer.open("", "key_check", &stored)?;
        if opened.expose() != KEY_CHECK {
            return Err(super::seal::SealError::Open {
                name: String::new(),
                column: "key_check",
            }
            .into());
        }
        Ok(())
    }

    fn insert(&self, c: &StoredCredential, replace: bool) -> Result<(), StoreError> {
        self.insert_rows(std::slice::from_ref(c), replace)
    }

    fn insert_many(&self, creds: &[StoredCredential]) -> Result<(), StoreError> {
        self.insert_rows(creds, false)
    }

    fn remove(&self, name: &str, incarnation: i64) -> Result<bool, StoreError> {
        self.refuse_check()?;
        let (pool, db, owned) = (self.work.clone(), self.db(), name.to_string());
        self.call(async move {
            let mut client = pool.get().await.map_err(|e| db.pool(e))?;
            let tx = client.transaction().await.map_err(|e| db.err(&e))?;
            let n = tx
                .execute(
                    "DELETE FROM tokend.credentials WHERE name = $1 AND incarnation = $2",
                    &[&owned, &incarnation],
                )
                .await
                .map_err(|e| db.err(&e))?;
            tx.execute("DELETE FROM tokend.uses WHERE name = $1", &[&owned])
                .await
                .map_err(|e| db.err(&e))?;
            tx.commit().await.map_err(|e| db.err(&e))?;
            Ok(n > 0)
        })
    }

    fn refuse_writes(&self, refuse: bool) -> Result<(), StoreError> {
        self.refuse.store(refuse, Ordering::Relaxed);
        Ok(())
    }

    fn load_all(&self) -> Result<Vec<StoredCredential>, StoreError> {
        self.read("ORDER BY c.name", None)
    }

    fn load_named(&self, names: &[String]) -> Result<Vec<StoredCredential>, StoreError> {
        self.read("WHERE c.name = ANY($1)", Some(names.to_vec()))
    }

    fn versions(&self) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let (pool, db) = (self.work.clone(), self.db());
        self.call(async move {
            let client = pool.get().await.map_err(|e| db.pool(e))?;
            let rows = client
                .query(
                    "SELECT name, incarnation, change FROM tokend.credentials",
                    &[],
                )
                .await
                .map_err(|e| db.err(&e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn save_tokens(&self, name: &str, incarnation: i64, t: &TokenUpdate) -> Result<(), StoreError> {
        let access = self.sealer.seal(name, "access_token", &t.access_token)?;
        let refresh = seal_opt(
            &self.sealer,
            name,
            "refresh_token",
            t.refresh_token.as_ref(),
        )?;
        let sql = Sql::new(
            "UPDATE tokend.credentials SET access_token = $3,
                refresh_token = CASE WHEN $9 THEN $4 ELSE COALESCE($4, refresh_token) END,
                generation = $5, expires_at = $6, last_refresh_at = $7, next_refresh_at = $8,
                state = 'ready', reason = NULL, last_error = NULL, refresh_in_flight = NULL
             WHERE name = $1 AND incarnation = $2",
            vec![
                boxed(name.to_string()),
                boxed(incarnation),
                boxed(access),
                boxed(refresh),
                boxed(t.generation as i64),
                boxed(t.expires_at),
                boxed(t.refreshed_at),
                boxed(t.next_refresh_at),
                boxed(t.new_grant),
            ],
        );
        self.write(name, incarnation, sql)
    }

    /// Committed on its own connection, outside the lock's transaction:
    /// if this member dies now, the lock goes but the mark stays, and the
    /// next member to take the lock treats the refresh token as in doubt.
    fn mark_refresh_in_flight(
        &self,
        name: &str,
        incarnation: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        let sql = Sql::new(
            "UPDATE tokend.credentials SET refresh_in_flight = $3,
                refresh_by = current_setting('application_name')
             WHERE name = $1 AND incarnation = $2",
            vec![boxed(name.to_string()), boxed(incarnation), boxed(at)],
        );
        written(self.execute(sql)?, name)
    }

    fn save_state(&self, name: &str, incarnation: i64, s: &StateUpdate) -> Result<(), StoreError> {
        let grant = match s.grant {
            GrantChange::Settled => "refresh_in_flight = NULL",
            GrantChange::InDoubt => "refresh_in_flight = refresh_in_flight",
            GrantChange::DropRefreshToken => "refresh_token = NULL, refresh_in_flight = NULL",
            GrantChange::DropAll => {
                "refresh_token = NULL, access_token = NULL, expires_at = NULL, refresh_in_flight = NULL"
            }
        };
        let sql = Sql::new(
            format!(
                "UPDATE tokend.credentials SET state = $3, reason = $4, last_error = $5,
                    next_refresh_at = $6, {grant} WHERE name = $1 AND incarnation = $2"
            ),
            vec![
                boxed(name.to_string()),
                boxed(incarnation),
                boxed(state_to_text(s.state)),
                boxed(s.reason.clone()),
                boxed(s.last_error.clone()),
                boxed(s.next_refresh_at),
            ],
        );
        self.write(name, incarnation, sql)
    }

    fn save_check(
        &self,
        name: &str,
        incarnation: i64,
        report: &CheckReport,
        s: &StateUpdate,
    ) -> Result<(), StoreError> {
        let sql = Sql::new(
            "UPDATE tokend.credentials SET last_check = $3, state = $4, reason = $5, last_error = $6
             WHERE name = $1 AND incarnation = $2",
            vec![
                boxed(name.to_string()),
                boxed(incarnation),
                boxed(serde_json::to_string(report)?),
                boxed(state_to_text(s.state)),
                boxed(s.reason.clone()),
                boxed(s.last_error.clone()),
            ],
        );
        self.write(name, incarnation, sql)
    }

    fn save_allowed(&self, name: &str, allowed: &[Principal]) -> Result<(), StoreError> {
        let n = self.execute(Sql::new(
            "UPDATE tokend.credentials SET allowed = $2 WHERE name = $1",
            vec![boxed(name.to_string()), boxed(allowed_to_text(allowed))],
        ))?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        Ok(())
    }

    fn save_last_use(&self, uses: &[(String, i64)]) -> Result<(), StoreError> {
        let names: Vec<String> = uses.iter().map(|(n, _)| n.clone()).collect();
        let times: Vec<i64> = uses.iter().map(|(_, t)| *t).collect();
        self.execute(Sql::new(
            "INSERT INTO tokend.uses (name, last_use_at)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (name) DO UPDATE SET last_use_at = GREATEST(tokend.uses.last_use_at, EXCLUDED.last_use_at)",
            vec![boxed(names), boxed(times)],
        ))?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn lock_refresh(&self, name: &str, incarnation: i64, wait: bool) -> Result<Claim, StoreError> {
        if !self.health.is_connected() {
            // Known down: answer at once instead of one failed connection
            // attempt per due credential (the listener keeps trying).
            return Err(StoreError::Database(format!(
                "PostgreSQL {} is unreachable ({})",
                self.shown,
                self.health.describe()
            )));
        }
        let (pool, db, owned) = (self.locks.clone(), self.db(), name.to_string());
        let (hold_ms, wait_ms) = (
            self.options.hold_limit.as_millis() as u64,
            self.options.lock_wait.as_millis() as u64,
        );
        let taken = self.call(async move {
            let client = pool.get().await.map_err(|e| db.pool(e))?;
            match take_lock(&client, &owned, wait, hold_ms, wait_ms).await {
                Ok(Some(taken)) => Ok(Some((client, taken))),
                Ok(None) => {
                    discard(client).await;
                    Ok(None)
                }
                Err(e) => {
                    discard(client).await;
                    Err(db.err(&e))
                }
            }
        })?;
        let Some((client, (rows, marker_alive))) = taken else {
            return Ok(Claim::Busy);
        };
        let (mut creds, sealed) = row::convert(&rows)?;
        let current = creds.first().is_some_and(|c| c.incarnation == incarnation);
        if !current {
            self.handle.spawn(discard(client));
            return Err(StoreError::Gone(name.to_string()));
        }
        if marker_alive {
            // Another live member sent the refresh token and has not saved
            // the outcome yet (its database connection broke): it will.
            self.handle.spawn(discard(client));
            return Ok(Claim::Busy);
        }
        if let Err(e) = open_all(&self.sealer, &mut creds, &sealed) {
            self.handle.spawn(discard(client));
            return Err(e);
        }
        let stale = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), incarnation), client);
        if let Some(stale) = stale {
            self.handle.spawn(discard(stale));
        }
        Ok(Claim::Held(Box::new(creds.remove(0))))
    }

    fn unlock_refresh(&self, name: &str, incarnation: i64) {
        if let Some(client) = self.take_held(name, incarnation) {
            self.handle.spawn(discard(client));
        }
    }

    fn take_events(&self) -> Option<UnboundedReceiver<StoreEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.shown, self.health.describe())
    }
}

/// Begins the lock's transaction, takes the lock (or finds it busy: `None`)
/// and re-reads the row under it; with it, whether its journal mark is
/// another live member's ([`schema::MARKER_ALIVE`]).
async fn take_lock(
    client: &Object,
    name: &str,
    wait: bool,
    hold_ms: u64,
    wait_ms: u64,
) -> Result<Option<(Vec<tokio_postgres::Row>, bool)>, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {hold_ms}; SET LOCAL lock_timeout = {wait_ms}"
        ))
        .await?;
    let key = lock_key(name);
    if wait {
        if let Err(e) = client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await
        {
            return match e.code() {
                Some(code) if *code == SqlState::LOCK_NOT_AVAILABLE => Ok(None),
                _ => Err(e),
            };
        }
    } else {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
            .await?
            .get(0);
        if !got {
            return Ok(None);
        }
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE c.name = $1",
        schema::COLUMNS,
        schema::FROM
    );
    let rows = client.query(&sql, &[&name]).await?;
    let marked_by = match rows.first() {
        Some(r) if r.get::<_, bool>(schema::MARKED) => {
            r.get::<_, Option<String>>(schema::MARKED_BY)
        }
        _ => return Ok(Some((rows, false))),
    };
    let alive: bool = client
        .query_one(schema::MARKER_ALIVE, &[&marked_by])
        .await?
        .get(0);
    Ok(Some((rows, alive)))
}

impl PgStore {
    /// Inserts rows in one transaction; `replace` removes a row of the
    /// same name first.
    fn insert_rows(&self, creds: &[StoredCredential], replace: bool) -> Result<(), StoreError> {
        self.refuse_check()?;
        let mut statements = Vec::with_capacity(creds.len() * 2);
        for c in creds {
            let sealed = seal_row(&self.sealer, c)?;
            if replace {
                statements.push(Sql::new(
                    "DELETE FROM tokend.credentials WHERE name = $1",
                    vec![boxed(c.name.clone())],
                ));
            }
            statements.push(row::insert(c, sealed));
        }
        let (pool, db) = (self.work.clone(), self.db());
        let first_name = creds.first().map(|c| c.name.clone()).unwrap_or_default();
        self.call(async move {
            let mut client = pool.get().await.map_err(|e| db.pool(e))?;
            let tx = client.transaction().await.map_err(|e| db.err(&e))?;
            for sql in &statements {
                if let Err(e) = sql.run(&*tx).await {
                    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                        let name = row::duplicate_name(&e).unwrap_or(first_name);
                        return Err(StoreError::AlreadyExists(name));
                    }
                    return Err(db.err(&e));
                }
            }
            tx.commit().await.map_err(|e| db.err(&e))
        })
    }
}
