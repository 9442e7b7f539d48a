//! The PostgreSQL backend: one database shared by a fleet of tokend
//! daemons (docs/ARCHITECTURE.md, "The fleet store").
//!
//! The same rows as SQLite, sealed the same way, with the same fenced
//! writes: every write about a refresh is a compare-and-set on the row's
//! refresh generation (docs/RULES.md, "Fencing"). What a fleet adds:
//! - **Cross-member single flight**: a refresh holds a transaction-scoped
//!   advisory lock on the credential (`lock.rs`) from before
//!   it re-reads the row until its outcome is committed in that same
//!   transaction. The lock only saves work: a holder whose session died
//!   goes on with fenced writes of its own, which need no lock.
//! - **The journal mark outlives its holder**: it is committed on another
//!   connection, outside the locking transaction, so that the death of the
//!   holder (which rolls its transaction back) cannot erase it. Its time
//!   and lease are the database's clock.
//! - **Change notification** (`listen.rs`): every change to a row notifies
//!   the other members, which re-read it.
//!
//! The interface is synchronous (see [`crate::store::Backend`]); each call
//! runs its queries on the store's own thread and runtime and waits for them,
//! so the database's connections keep being driven whatever the daemon's
//! workers do.

mod audit;
mod bound;
mod bulk;
mod connect;
mod error;
mod held;
mod listen;
mod lock;
mod row;
mod schema;
mod statement;
mod thread;
mod tls;

use super::binding::Bound;
use super::names::Names;
use super::rows::{KEY_CHECK, check_key, fence_outcome, seal_tokens, state_to_text};
use super::seal::{Place, Sealer};
use super::{
    Backend, Claim, NewMark, StateUpdate, StoreError, StoreEvent, StoredCredential, TokenUpdate,
};
use connect::Target;
use deadpool_postgres::{Object, Pool};
use error::{Db, Failure};
use listen::Health;
use statement::{Sql, boxed};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thread::{database_thread, member_name};
use tokend_proto::{CheckReport, Principal, Secret};
use tokio::sync::mpsc::UnboundedReceiver;

/// Tuning of the PostgreSQL store (docs/CONFIG.md, `[fleet]`).
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

/// A store in PostgreSQL. The connections live on a thread of their own.
pub struct PgStore {
    /// Ends the database thread's runtime when sent (or dropped).
    _stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::runtime::Handle,
    /// Short autocommit statements and reads.
    work: Pool,
    /// Connections holding a refresh lock's transaction. Apart from `work`,
    /// so that a holder never waits for a connection another holder has.
    locks: Pool,
    sealer: Arc<Sealer>,
    /// Locks held by this member, by credential and incarnation.
    held: Mutex<HashMap<(String, i64), Object>>,
    health: Arc<Health>,
    events: Mutex<Option<UnboundedReceiver<StoreEvent>>>,
    db: Db,
    options: PgOptions,
    refuse: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore({})", self.db.0)
    }
}

/// The longest any database call may take (a lock request: this plus its
/// wait). Past it the call fails as if the database were down; the server
/// gives up on the statement at the same time (`connect.rs`).
const CALL_LIMIT: Duration = Duration::from_millis(connect::STATEMENT_LIMIT_MS);

/// Statements of a bulk insert sent before the first answer is awaited.
const PIPELINE: usize = 256;

impl PgStore {
    /// Connects, brings the schema up to date and starts listening for the
    /// other members' changes. This daemon goes by a member name of its own
    /// in the database (its `application_name`, see [`member_name`]).
    pub fn open(
        url: &str,
        password_file: Option<&std::path::Path>,
        sealer: Sealer,
        options: PgOptions,
    ) -> Result<PgStore, StoreError> {
        let member = member_name();
        let target = Target::parse(url, password_file, &member)?;
        target.log_transport();
        let (handle, stop) = database_thread()?;
        let (work, locks) = {
            let _enter = handle.enter();
            (
                target.pool(4, Duration::from_secs(10))?,
                target.pool(options.lock_connections.max(1), Duration::from_secs(60))?,
            )
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let store = PgStore {
            _stop: stop,
            handle,
            work,
            locks,
            sealer: Arc::new(sealer),
            held: Mutex::default(),
            health: Arc::default(),
            events: Mutex::new(Some(rx)),
            db: Db(target.shown.clone().into()),
            options,
            refuse: AtomicBool::new(false),
        };
        let pool = store.work.clone();
        let sealer = store.sealer.clone();
        store.call(async move { schema::migrate(&mut pool.get().await?, &sealer).await })?;
        store.health.mark_connected();
        store
            .handle
            .spawn(listen::run(target, member, store.health.clone(), tx));
        Ok(store)
    }

    /// Runs `f` on the store's runtime and waits for it, at most
    /// [`CALL_LIMIT`]. Works from any thread, async worker or not.
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, Failure>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_within(CALL_LIMIT, f)
    }

    /// [`PgStore::call`] with a time limit of its own: a database that
    /// stalls (a frozen host, a black-holed network) is a database that is
    /// down, never a caller blocked for good.
    fn call_within<T: Send + 'static>(
        &self,
        limit: Duration,
        f: impl Future<Output = Result<T, Failure>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let db = self.db.clone();
        let pools = [self.work.clone(), self.locks.clone()];
        self.handle.spawn(async move {
            let result = match tokio::time::timeout(limit, f).await {
                Ok(result) => result,
                Err(_) => {
                    // The call's connection went back to its pool with a
                    // statement still out: close every idle connection,
                    // that one among them, rather than hand it out again.
                    for pool in &pools {
                        pool.retain(|_, _| false);
                    }
                    Err(Failure::Stalled(format!(
                        "{} did not answer within {} s",
                        db.0,
                        limit.as_secs()
                    )))
                }
            };
            let _ = tx.send(result);
        });
        let result = match rx.recv() {
            Ok(result) => result.map_err(|f| self.db.error(f)),
            Err(_) => Err(StoreError::Task("the database task stopped".into())),
        };
        if let Err(StoreError::Database(e)) = &result {
            self.health.note_error(e);
        }
        result
    }

    /// Runs one autocommit statement; the number of rows it touched.
    fn execute(&self, sql: Sql) -> Result<u64, StoreError> {
        self.refuse_check()?;
        let pool = self.work.clone();
        self.call(async move { Ok(sql.run(&**pool.get().await?).await?) })
    }

    /// Runs a fenced write about one credential (a compare-and-set on
    /// generation `fence`): inside its refresh lock's transaction when this
    /// member holds it (committing it, which releases the lock), else on
    /// its own. A lock transaction that failed (its session ended, the
    /// COMMIT's answer was lost) is followed by the same write on its own:
    /// the fence, not the lock, keeps it from overwriting a newer row
    /// (and finds a COMMIT that did land: the row moved).
    fn write(&self, name: &str, incarnation: i64, fence: i64, sql: Sql) -> Result<i64, StoreError> {
        self.refuse_check()?;
        if let Some(client) = self.take_held(name, incarnation) {
            let in_lock = sql.clone();
            let held = self.call(async move {
                let result = async {
                    let n = in_lock.run(&**client).await?;
                    lock::commit(&client).await?;
                    Ok(n)
                }
                .await;
                if result.is_err() {
                    lock::discard(client).await;
                }
                result
            });
            match held {
                Ok(n) => return self.fenced(n, name, incarnation, fence),
                Err(e) => {
                    tracing::info!(credential = %tokend_proto::logged(name), error = %e, "the refresh lock's transaction failed; the fenced write is made on its own");
                }
            }
        }
        let n = self.execute(sql)?;
        self.fenced(n, name, incarnation, fence)
    }

    /// The outcome of a fenced write that touched `rows` rows: the new
    /// generation, or why nothing was written (gone, or moved past `fence`).
    fn fenced(
        &self,
        rows: u64,
        name: &str,
        incarnation: i64,
        fence: i64,
    ) -> Result<i64, StoreError> {
        fence_outcome(rows, name, fence, || {
            let (pool, owned) = (self.work.clone(), name.to_string());
            self.call(async move {
                Ok(pool
                    .get()
                    .await?
                    .query_opt(
                        "SELECT 1 FROM tokend.credentials WHERE name = $1 AND incarnation = $2",
                        &[&owned, &incarnation],
                    )
                    .await?
                    .is_some())
            })
        })
    }

    fn refuse_check(&self) -> Result<(), StoreError> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(StoreError::Database(format!(
                "{}: writes are refused (test setting)",
                self.db.0
            )));
        }
        Ok(())
    }

    /// Changes a row's bound columns with `change`, in one transaction on
    /// the row as stored (locked), and tags it again: `allow`, `deny` and
    /// `edit`. A row the key does not vouch for is not changed.
    fn rebind<T: Send + 'static>(
        &self,
        name: &str,
        incarnation: i64,
        change: impl FnOnce(&mut Bound) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.refuse_check()?;
        let (pool, sealer) = (self.work.clone(), self.sealer.clone());
        let name = name.to_string();
        self.call(bound::rebind(pool, sealer, name, incarnation, change))
    }
}

/// No row matched the name and incarnation: see [`StoreError::Gone`].
fn written(rows: u64, name: &str) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::Gone(name.to_string()));
    }
    Ok(())
}

impl Backend for PgStore {
    fn verify_key(&self) -> Result<(), StoreError> {
        let sealed = self
            .sealer
            .seal(Place::key_check(), &Secret::new(KEY_CHECK))?;
        let pool = self.work.clone();
        let stored: Vec<u8> = self.call(async move {
            let client = pool.get().await?;
            client
                .execute(
                    "INSERT INTO tokend.meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
                    &[&sealed],
                )
                .await?;
            let row = client
                .query_one("SELECT value FROM tokend.meta WHERE key = 'key_check'", &[])
                .await?;
            Ok(row.get(0))
        })?;
        check_key(&self.sealer, &stored)
    }

    fn insert(&self, c: &StoredCredential, replace: bool) -> Result<(), StoreError> {
        self.insert_rows(std::slice::from_ref(c), replace)
    }

    fn insert_many(&self, creds: &[StoredCredential]) -> Result<(), StoreError> {
        self.insert_rows(creds, false)
    }

    fn remove(&self, name: &str, incarnation: i64) -> Result<bool, StoreError> {
        self.refuse_check()?;
        let (pool, owned) = (self.work.clone(), name.to_string());
        self.call(async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            let n = tx
                .execute(
                    "DELETE FROM tokend.credentials WHERE name = $1 AND incarnation = $2",
                    &[&owned, &incarnation],
                )
                .await?;
            tx.execute("DELETE FROM tokend.uses WHERE name = $1", &[&owned])
                .await?;
            tx.commit().await?;
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
        let pool = self.work.clone();
        self.call(async move {
            let rows = pool
                .get()
                .await?
                .query(
                    "SELECT name, incarnation, change FROM tokend.credentials",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn save_tokens(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        t: &TokenUpdate,
    ) -> Result<i64, StoreError> {
        let (access, refresh) = seal_tokens(&self.sealer, name, incarnation, t)?;
        let sql = row::tokens_update(name, incarnation, fence, t, access, refresh);
        self.write(name, incarnation, fence, sql)
    }

    /// Committed on its own connection, outside the lock's transaction:
    /// if this member dies now, the lock goes but the mark stays. Its time
    /// is the database's (`mark.at_ms`, this host's clock, is not used).
    fn mark_refresh(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        mark: &NewMark,
    ) -> Result<i64, StoreError> {
        self.refuse_check()?;
        let sql = row::mark_update(name, incarnation, fence, mark);
        let n = self.execute(sql)?;
        self.fenced(n, name, incarnation, fence)
    }

    fn save_state(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        s: &StateUpdate,
    ) -> Result<i64, StoreError> {
        let sql = row::state_update(name, incarnation, fence, s);
        self.write(name, incarnation, fence, sql)
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
        written(self.execute(sql)?, name)
    }

    fn note_warned(&self, name: &str, incarnation: i64, at: i64) -> Result<bool, StoreError> {
        let sql = Sql::new(
            "UPDATE tokend.credentials SET refresh_warned = true
             WHERE name = $1 AND incarnation = $2 AND refresh_expires_at = $3
                AND NOT refresh_warned",
            vec![boxed(name.to_string()), boxed(incarnation), boxed(at)],
        );
        Ok(self.execute(sql)? > 0)
    }

    fn save_forecast(
        &self,
        name: &str,
        incarnation: i64,
        fence: Option<i64>,
        forecast: crate::store::Forecast,
    ) -> Result<(), StoreError> {
        let sql = row::forecast_update(name, incarnation, fence, forecast);
        written(self.execute(sql)?, name)
    }

    fn change_allowed(
        &self,
        name: &str,
        incarnation: i64,
        principal: Principal,
        allow: bool,
    ) -> Result<Vec<Principal>, StoreError> {
        // Names are looked up on the database's thread: one or two
        // look-ups for an admin's allow or deny.
        self.rebind(name, incarnation, move |bound| {
            let mut names = Names::default();
            bound.named = names.resolved(bound.named.clone());
            bound.named.change(names.written(principal)?, allow);
            Ok(bound.named.allowed_here())
        })
    }

    fn change_settings(
        &self,
        name: &str,
        incarnation: i64,
        description: &str,
        spec: &tokend_proto::CredentialSpec,
    ) -> Result<(), StoreError> {
        let settings = serde_json::to_string(spec)?;
        let description = description.to_string();
        self.rebind(name, incarnation, move |bound| {
            bound.description = description;
            bound.settings = settings;
            Ok(())
        })
    }

    fn save_last_use(&self, uses: &[(String, i64, i64)]) -> Result<(), StoreError> {
        let names: Vec<String> = uses.iter().map(|(n, _, _)| n.clone()).collect();
        let incarnations: Vec<i64> = uses.iter().map(|(_, i, _)| *i).collect();
        let times: Vec<i64> = uses.iter().map(|(_, _, t)| *t).collect();
        self.execute(Sql::new(
            "INSERT INTO tokend.uses (name, last_use_at)
             SELECT u.n, u.t FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(n, i, t)
             JOIN tokend.credentials c ON c.name = u.n AND c.incarnation = u.i
             ON CONFLICT (name) DO UPDATE SET last_use_at = GREATEST(tokend.uses.last_use_at, EXCLUDED.last_use_at)",
            vec![boxed(names), boxed(incarnations), boxed(times)],
        ))?;
        Ok(())
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn append_audit(&self, entries: &[tokend_proto::AuditEntry]) -> Result<u64, StoreError> {
        self.refuse_check()?;
        let pool = self.work.clone();
        let entries = entries.to_vec();
        self.call(async move { audit::append(&**pool.get().await?, &entries).await })
    }

    fn read_audit(
        &self,
        filter: &crate::store::audit::AuditFilter,
    ) -> Result<Vec<tokend_proto::AuditEntry>, StoreError> {
        let pool = self.work.clone();
        let filter = filter.clone();
        self.call(async move { audit::read(&**pool.get().await?, &filter).await })
    }

    fn prune_audit(&self, keep: &crate::store::audit::Retention) -> Result<u64, StoreError> {
        self.refuse_check()?;
        let pool = self.work.clone();
        let keep = *keep;
        self.call(async move { audit::prune(&**pool.get().await?, &keep).await })
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
                self.db.0,
                self.health.describe()
            )));
        }
        let (pool, owned) = (self.locks.clone(), name.to_string());
        let (hold_ms, wait_ms) = (
            self.options.hold_limit.as_millis() as u64,
            self.options.lock_wait.as_millis() as u64,
        );
        let limit = self.options.lock_wait + CALL_LIMIT;
        let taken = self.call_within(limit, async move {
            let client = pool.get().await?;
            match lock::take(&client, &owned, wait, hold_ms, wait_ms).await {
                Ok(lock::Taken::Held(rows)) => Ok(Some((client, rows))),
                other => {
                    lock::discard(client).await;
                    other.map(|_| None)
                }
            }
        })?;
        match taken {
            Some((client, rows)) => self.claim(name, incarnation, client, rows),
            None => Ok(Claim::Busy),
        }
    }

    fn unlock_refresh(&self, name: &str, incarnation: i64) {
        if let Some(client) = self.take_held(name, incarnation) {
            self.handle.spawn(lock::discard(client));
        }
    }

    fn take_events(&self) -> Option<UnboundedReceiver<StoreEvent>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.db.0, self.health.describe())
    }

    fn is_up(&self) -> bool {
        self.health.is_connected()
    }

    /// As `Db::error` writes it (`error.rs`).
    fn name_in_errors(&self) -> Option<String> {
        Some(format!("PostgreSQL {}", self.db.0))
    }
}
