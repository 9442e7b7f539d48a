//! The SQLite backend: one file, WAL with `synchronous=FULL`, so a
//! committed token pair survives `kill -9` and power loss; versioned
//! migrations (`schema.rs`); a bulk loader for start-up (`load.rs`).

mod audit;
mod bound;
mod load;
mod schema;

use bound::{bind_existing, bound_row, key_check, write_allowed, write_bound};

use super::rows::{
    SealedRow, TOKENS_SETTLE_SQL, committed_state, fence_outcome, grant_sql, keep_valid_names,
    open_all, seal_row, seal_tokens,
};
use super::seal::{Place, Sealer};
use super::{Backend, Forecast, NewMark, StateUpdate, StoreError, StoredCredential, TokenUpdate};
use crate::store::binding::Bound;
use crate::store::names::Names;
use crate::store::rows::check_key;
use rusqlite::{Connection, OptionalExtension, params};
use schema::{BINDING_VERSION, KEY_CHECK, MIGRATIONS, state_to_sql};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokend_proto::{CheckReport, Principal, Secret};

/// The SQLite store; cheap to clone. The connection sits behind a
/// `std::sync::Mutex`: every operation is a short, synchronous transaction.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    sealer: Arc<Sealer>,
    /// The file, as `status` shows it.
    path: String,
    /// The file, for connections of its own (`read_audit`).
    file: Arc<Path>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, file mode 0600 in a
    /// 0700 directory, and brings the schema up to date.
    pub fn open(path: &Path, sealer: Sealer) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::config::paths::ensure_private_dir(dir, 0o700).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: rusqlite::Error::InvalidPath(format!("{}: {e}", dir.display()).into()),
            })?;
        }
        create_private_file(path);
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let store = SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            sealer: Arc::new(sealer),
            path: path.display().to_string(),
            file: path.into(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Changes a row's bound columns with `change`, in one transaction,
    /// and tags it again: `allow`, `deny` and `edit`. A row the key does
    /// not vouch for is not changed.
    fn rebind<T>(
        &self,
        name: &str,
        incarnation: i64,
        change: impl FnOnce(&mut Bound) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let (id, mut row) = bound_row(&tx, name, incarnation)?;
        if !row.verified(&self.sealer) {
            return Err(StoreError::Untrusted(name.to_string()));
        }
        let answer = change(&mut row)?;
        write_bound(&tx, id, &row, &self.sealer)?;
        tx.commit()?;
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            if i + 1 == BINDING_VERSION {
                bind_existing(&tx, &self.sealer)?;
            }
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }
}

impl Backend for SqliteStore {
    /// Verifies that the sealing key is the one this store was created with,
    /// recording it on first use.
    fn verify_key(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        match key_check(&conn)? {
            Some(sealed) => check_key(&self.sealer, &sealed)?,
            None => {
                let sealed = self
                    .sealer
                    .seal(Place::key_check(), &Secret::new(KEY_CHECK))?;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                    [sealed],
                )?;
            }
        }
        Ok(())
    }

    /// Adds a credential; with `replace`, an existing one of that name goes first.
    fn insert(&self, c: &StoredCredential, replace: bool) -> Result<(), StoreError> {
        let row = seal_row(&self.sealer, c, &mut Names::default())?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if replace {
            tx.execute("DELETE FROM credentials WHERE name = ?1", [&c.name])?;
        }
        insert_row(&tx, c, &row)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds many credentials in one transaction (one fsync instead of one
    /// per credential): for bulk imports and for benchmarks that need a large
    /// store fast. All or nothing; a duplicate name fails the whole batch.
    fn insert_many(&self, creds: &[StoredCredential]) -> Result<(), StoreError> {
        let mut names = Names::default();
        let rows = creds
            .iter()
            .map(|c| seal_row(&self.sealer, c, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (c, row) in creds.iter().zip(&rows) {
            insert_row(&tx, c, row)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn remove(&self, name: &str, incarnation: i64) -> Result<bool, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM credentials WHERE name = ?1 AND incarnation = ?2",
            params![name, incarnation],
        )? > 0)
    }

    /// For tests: make every write fail, as a full disk would (SQLite's
    /// `query_only`), or work again.
    fn refuse_writes(&self, refuse: bool) -> Result<(), StoreError> {
        self.lock().pragma_update(None, "query_only", refuse)?;
        Ok(())
    }

    /// Every credential, secrets opened. A value that fails to open (wrong
    /// key) is an error: the daemon must not start on garbage.
    fn load_all(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let (mut creds, sealed) = self.read_rows(None)?;
        open_all(&self.sealer, &mut creds, &sealed);
        keep_valid_names(&mut creds);
        // Reading every row filled SQLite's page cache (up to 2 MiB); the
        // daemon serves from memory and writes a row at a time from now on.
        self.lock().execute_batch("PRAGMA shrink_memory;")?;
        Ok(creds)
    }

    fn load_named(&self, names: &[String]) -> Result<Vec<StoredCredential>, StoreError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let (mut creds, sealed) = self.read_rows(Some(name))?;
            open_all(&self.sealer, &mut creds, &sealed);
            out.extend(creds);
        }
        Ok(out)
    }

    fn save_tokens(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        t: &TokenUpdate,
    ) -> Result<i64, StoreError> {
        let (access, refresh) = seal_tokens(&self.sealer, name, incarnation, t)?;
        let conn = self.lock();
        let n = conn.execute(
            &format!(
                "UPDATE credentials SET access_token = ?3,
                    refresh_token = CASE WHEN ?9 THEN ?4 ELSE COALESCE(?4, refresh_token) END,
                    generation = ?5, expires_at = ?6, last_refresh_at = ?7, next_refresh_at = ?8,
                    state = ?11, reason = ?12, last_error = ?12, refresh_expires_at = ?13,
                    refresh_warned = ?14, {TOKENS_SETTLE_SQL}
                 WHERE name = ?1 AND incarnation = ?2 AND refresh_gen = ?10"
            ),
            params![
                name,
                incarnation,
                access,
                refresh,
                t.generation as i64,
                t.expires_at,
                t.refreshed_at,
                t.next_refresh_at,
                t.new_grant,
                fence,
                committed_state(t),
                t.unusable,
                t.forecast.at,
                t.forecast.warned,
            ],
        )?;
        fenced(&conn, n, name, incarnation, fence)
    }

    fn note_warned(&self, name: &str, incarnation: i64, at: i64) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE credentials SET refresh_warned = 1
             WHERE name = ?1 AND incarnation = ?2 AND refresh_expires_at = ?3
                AND refresh_warned = 0",
            params![name, incarnation, at],
        )?;
        Ok(n > 0)
    }

    fn save_forecast(
        &self,
        name: &str,
        incarnation: i64,
        fence: Option<i64>,
        f: Forecast,
    ) -> Result<(), StoreError> {
        let n = self.lock().execute(
            "UPDATE credentials SET refresh_expires_at = ?3, refresh_warned = ?4
             WHERE name = ?1 AND incarnation = ?2 AND (?5 IS NULL OR refresh_gen = ?5)",
            params![name, incarnation, f.at, f.warned, fence],
        )?;
        written(n, name)
    }

    /// On one host the mark's time is this host's clock (`mark.at_ms`).
    fn mark_refresh(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        mark: &NewMark,
    ) -> Result<i64, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "UPDATE credentials SET refresh_in_flight = ?4 / 1000, mark_at_ms = ?4, lease_ms = ?5,
                refresh_gen = refresh_gen + 1
             WHERE name = ?1 AND incarnation = ?2 AND refresh_gen = ?3",
            params![name, incarnation, fence, mark.at_ms, mark.lease_ms],
        )?;
        fenced(&conn, n, name, incarnation, fence)
    }

    fn save_state(
        &self,
        name: &str,
        incarnation: i64,
        fence: i64,
        s: &StateUpdate,
    ) -> Result<i64, StoreError> {
        let grant = grant_sql(s.grant);
        let sql = format!(
            "UPDATE credentials SET state = ?3, reason = ?4, last_error = ?5, next_refresh_at = ?6,
                retry_at_ms = ?8, {grant} WHERE name = ?1 AND incarnation = ?2 AND refresh_gen = ?7"
        );
        let conn = self.lock();
        let n = conn.execute(
            &sql,
            params![
                name,
                incarnation,
                state_to_sql(s.state),
                s.reason,
                s.last_error,
                s.next_refresh_at,
                fence,
                s.retry.map(|r| r.at_ms),
            ],
        )?;
        fenced(&conn, n, name, incarnation, fence)
    }

    /// Records the result of a check, and the state it leads to.
    fn save_check(
        &self,
        name: &str,
        incarnation: i64,
        report: &CheckReport,
        s: &StateUpdate,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(report)?;
        let n = self.lock().execute(
            "UPDATE credentials SET last_check = ?3, state = ?4, reason = ?5, last_error = ?6
             WHERE name = ?1 AND incarnation = ?2",
            params![
                name,
                incarnation,
                json,
                state_to_sql(s.state),
                s.reason,
                s.last_error
            ],
        )?;
        written(n, name)
    }

    fn change_allowed(
        &self,
        name: &str,
        incarnation: i64,
        principal: Principal,
        allow: bool,
    ) -> Result<Vec<Principal>, StoreError> {
        self.rebind(name, incarnation, |row| {
            let mut names = Names::default();
            row.named = names.resolved(row.named.clone());
            row.named.change(names.written(principal)?, allow);
            Ok(row.named.allowed_here())
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
        self.rebind(name, incarnation, |row| {
            row.description = description.to_string();
            row.settings = settings;
            Ok(())
        })
    }

    fn save_last_use(&self, uses: &[(String, i64, i64)]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE credentials SET last_use_at = ?3 WHERE name = ?1 AND incarnation = ?2",
            )?;
            for (name, incarnation, at) in uses {
                stmt.execute(params![name, incarnation, at])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs a WAL checkpoint, so a clean stop leaves one self-contained file.
    fn checkpoint(&self) -> Result<(), StoreError> {
        self.lock()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }

    fn append_audit(&self, entries: &[tokend_proto::AuditEntry]) -> Result<u64, StoreError> {
        audit::append(&mut self.lock(), entries)?;
        Ok(0)
    }

    fn read_audit(
        &self,
        filter: &crate::store::audit::AuditFilter,
    ) -> Result<Vec<tokend_proto::AuditEntry>, StoreError> {
        // A connection of its own, read-only: a long read of a large trail
        // (WAL readers never block the writer) holds up no commit of a
        // refresh, which waits for the shared connection.
        let conn = Connection::open_with_flags(
            &self.file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        audit::read(&conn, filter)
    }

    fn prune_audit(&self, keep: &crate::store::audit::Retention) -> Result<u64, StoreError> {
        audit::prune(|| self.lock(), keep, audit::PRUNE_CHUNK).map(|(gone, _)| gone)
    }

    fn describe(&self) -> String {
        self.path.clone()
    }
}

/// Inserts one credential row and its allow list inside `tx`.
fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    c: &StoredCredential,
    row: &SealedRow,
) -> Result<(), StoreError> {
    let inserted = tx.execute(
        "INSERT INTO credentials (name, kind, description, owner_uid, settings, client_secret,
            access_token, refresh_token, generation, expires_at, state, reason, created_at,
            last_refresh_at, next_refresh_at, incarnation, binding, owner_name)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![
            c.name,
            c.spec.kind(),
            c.description,
            c.owner_uid,
            row.settings,
            row.client_secret,
            row.access,
            row.refresh,
            c.generation as i64,
            c.expires_at,
            state_to_sql(c.state),
            c.reason,
            c.created_at,
            c.last_refresh_at,
            c.next_refresh_at,
            c.incarnation,
            row.binding,
            row.named.owner.name,
        ],
    );
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(StoreError::AlreadyExists(c.name.clone()));
        }
        other => other?,
    };
    write_allowed(tx, tx.last_insert_rowid(), &row.named.allowed)
}

/// No row matched the name and incarnation: the credential is gone or was
/// replaced, and the write belongs to what is gone.
fn written(rows: usize, name: &str) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::Gone(name.to_string()));
    }
    Ok(())
}

/// The outcome of a fenced write that touched `rows` rows: the new
/// generation, or why nothing was written (the credential is gone, or its
/// row moved past `fence`). Runs under the same connection lock as the
/// write, so nothing came between.
fn fenced(
    conn: &Connection,
    rows: usize,
    name: &str,
    incarnation: i64,
    fence: i64,
) -> Result<i64, StoreError> {
    fence_outcome(rows as u64, name, fence, || {
        Ok(conn
            .query_row(
                "SELECT 1 FROM credentials WHERE name = ?1 AND incarnation = ?2",
                params![name, incarnation],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    })
}

/// Creates the database file 0600 before SQLite does, so it is never
/// briefly world-readable under a loose umask. WAL and SHM files inherit
/// the main file's mode.
fn create_private_file(path: &Path) {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // Failure here surfaces as a clearer error from Connection::open.
    let _ = options.open(path);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::binding::TAMPERED;
    use crate::store::rows::ROWS_PER_THREAD;
    use tokend_proto::{CredentialSpec, CredentialState};

    pub(crate) fn bearer(name: &str, token: &str) -> StoredCredential {
        StoredCredential {
            name: name.into(),
            description: "d".into(),
            spec: CredentialSpec::Bearer {
                check_url: None,
                git_hosts: Vec::new(),
                upstream: None,
            },
            owner_uid: 1000,
            allowed: vec![Principal::Group(5)],
            client_secret: None,
            access_token: Some(Secret::new(token)),
            refresh_token: None,
            generation: 1,
            expires_at: None,
            state: CredentialState::Ready,
            reason: None,
            created_at: 100,
            last_refresh_at: None,
            last_use_at: None,
            next_refresh_at: None,
            last_error: None,
            last_check: None,
            fence: Default::default(),
            change: 0,
            untrusted: false,
            forecast: Default::default(),
            names: None,
            incarnation: 7,
        }
    }

    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(&dir.join("t.db"), Sealer::from_key(&[1u8; 32])).unwrap()
    }

    #[test]
    fn credentials_round_trip_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .insert(&bearer("up", "tok-1"), false)
            .unwrap();
        let all = open(dir.path()).load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].access_token.as_ref().unwrap().expose(), "tok-1");
        assert_eq!(all[0].allowed, vec![Principal::Group(5)]);
    }

    #[test]
    fn bulk_insert_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert_many(&[bearer("a", "t-a"), bearer("b", "t-b")])
            .unwrap();
        let err = s
            .insert_many(&[bearer("c", "t-c"), bearer("a", "again")])
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(n) if n == "a"));
        let all = open(dir.path()).load_all().unwrap();
        let names: Vec<_> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(all[1].access_token.as_ref().unwrap().expose(), "t-b");
        assert_eq!(all[0].allowed, vec![Principal::Group(5)]);
    }

    #[test]
    fn a_large_store_loads_every_secret_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let n = ROWS_PER_THREAD * 3 + 7;
        let creds: Vec<_> = (0..n)
            .rev()
            .map(|i| bearer(&format!("c{i:05}"), &format!("t{i}")))
            .collect();
        s.insert_many(&creds).unwrap();
        let all = open(dir.path()).load_all().unwrap();
        assert_eq!(all.len(), n);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.name, format!("c{i:05}"));
            assert_eq!(c.access_token.as_ref().unwrap().expose(), format!("t{i}"));
        }
        let other =
            SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[2u8; 32])).unwrap();
        // Refused by verify_key at start; a load under it serves nothing.
        let under_other = other.load_all().unwrap();
        assert!(
            under_other
                .iter()
                .all(|c| c.untrusted && c.access_token.is_none())
        );
    }

    #[test]
    fn duplicate_name_is_refused_and_store_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(&bearer("up", "tok-1"), false).unwrap();
        let err = s.insert(&bearer("up", "tok-2"), false).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists(_)));
        assert_eq!(
            s.load_all().unwrap()[0]
                .access_token
                .as_ref()
                .unwrap()
                .expose(),
            "tok-1"
        );
    }

    #[test]
    fn token_update_is_atomic_and_keeps_refresh_token_when_absent() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut c = bearer("o", "a0");
        c.refresh_token = Some(Secret::new("r0"));
        s.insert(&c, false).unwrap();
        let update = TokenUpdate {
            access_token: Some(Secret::new("a1")),
            refresh_token: None,
            generation: 2,
            expires_at: Some(500),
            refreshed_at: 400,
            next_refresh_at: Some(475),
            new_grant: false,
            unusable: None,
            forecast: Default::default(),
            ask_introspection: false,
        };
        assert_eq!(s.save_tokens("o", 7, 0, &update).unwrap(), 1);
        let back = &s.load_all().unwrap()[0];
        assert_eq!(back.access_token.as_ref().unwrap().expose(), "a1");
        assert_eq!(back.refresh_token.as_ref().unwrap().expose(), "r0");
        assert_eq!(back.generation, 2);
    }

    /// The forecast is written with its tokens and read back after a
    /// restart; a warning is noted once per forecast (the compare-and-set
    /// that lets one member of a fleet notify); a forecast found later is
    /// written only at the generation it is about, and moves none.
    #[test]
    fn a_forecast_is_kept_with_its_tokens_and_warned_of_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(&bearer("o", "a0"), false).unwrap();
        let update = TokenUpdate {
            access_token: Some(Secret::new("a1")),
            refresh_token: Some(Secret::new("r1")),
            generation: 1,
            expires_at: Some(500),
            refreshed_at: 400,
            next_refresh_at: Some(475),
            new_grant: false,
            unusable: None,
            forecast: Forecast {
                at: Some(9_000),
                warned: false,
            },
            ask_introspection: false,
        };
        let fence = s.save_tokens("o", 7, 0, &update).unwrap();
        assert_eq!(
            open(dir.path()).load_all().unwrap()[0].forecast,
            update.forecast
        );
        assert!(
            !s.note_warned("o", 7, 8_000).unwrap(),
            "not the row's forecast"
        );
        assert!(s.note_warned("o", 7, 9_000).unwrap());
        assert!(!s.note_warned("o", 7, 9_000).unwrap(), "noted once");
        assert!(open(dir.path()).load_all().unwrap()[0].forecast.warned);
        let later = Forecast {
            at: Some(9_500),
            warned: false,
        };
        assert!(s.save_forecast("o", 7, Some(fence + 1), later).is_err());
        s.save_forecast("o", 7, Some(fence), later).unwrap();
        let back = open(dir.path()).load_all().unwrap().remove(0);
        assert_eq!((back.forecast, back.fence.generation), (later, fence));
    }

    #[test]
    fn wrong_key_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.verify_key().unwrap();
        s.insert(&bearer("up", "tok"), false).unwrap();
        let other =
            SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[2u8; 32])).unwrap();
        assert!(matches!(other.verify_key(), Err(StoreError::Seal(_))));
        let row = other.load_all().unwrap().remove(0);
        assert!(row.untrusted && row.access_token.is_none());
        assert_eq!(row.reason.as_deref(), Some(TAMPERED));
        open(dir.path()).verify_key().unwrap();
    }

    #[test]
    fn a_refresh_in_flight_is_remembered_until_its_outcome_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(&bearer("o", "a0"), false).unwrap();
        let mark = NewMark {
            at_ms: 5_000,
            lease_ms: 2_000,
        };
        assert_eq!(s.mark_refresh("o", 7, 0, &mark).unwrap(), 1);
        let marked = open(dir.path()).load_all().unwrap()[0].fence;
        assert_eq!(marked.generation, 1);
        let m = marked.mark.expect("the mark outlives the store's handle");
        assert_eq!((m.at_ms, m.lease_ms), (5_000, 2_000));
        assert_eq!(m.lease_left_ms(6_000), 1_000);
        assert_eq!(m.lease_left_ms(9_000), 0);
        let update = TokenUpdate {
            access_token: Some(Secret::new("a1")),
            refresh_token: Some(Secret::new("r1")),
            generation: 2,
            expires_at: Some(500),
            refreshed_at: 400,
            next_refresh_at: Some(475),
            new_grant: false,
            unusable: None,
            forecast: Default::default(),
            ask_introspection: false,
        };
        assert!(matches!(
            s.save_tokens("o", 7, 0, &update),
            Err(StoreError::Moved(_))
        ));
        assert_eq!(s.save_tokens("o", 7, 1, &update).unwrap(), 2);
        let fence = s.load_all().unwrap()[0].fence;
        assert_eq!((fence.generation, fence.mark), (2, None));
    }

    #[test]
    fn every_fenced_write_is_a_compare_and_set_on_the_generation() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(&bearer("o", "a0"), false).unwrap();
        let mark = NewMark {
            at_ms: 1,
            lease_ms: 1,
        };
        let state = StateUpdate {
            state: tokend_proto::CredentialState::Failing,
            reason: Some("r".into()),
            last_error: None,
            next_refresh_at: None,
            grant: crate::store::GrantChange::Settled,
            retry: None,
        };
        // Two writers read generation 0; the first to mark wins.
        assert_eq!(s.mark_refresh("o", 7, 0, &mark).unwrap(), 1);
        assert!(matches!(
            s.mark_refresh("o", 7, 0, &mark),
            Err(StoreError::Moved(_))
        ));
        assert!(matches!(
            s.save_state("o", 7, 0, &state),
            Err(StoreError::Moved(_))
        ));
        assert!(matches!(
            s.save_state("o", 8, 1, &state),
            Err(StoreError::Gone(_))
        ));
        assert_eq!(s.save_state("o", 7, 1, &state).unwrap(), 2);
        let row = &s.load_all().unwrap()[0];
        assert_eq!(row.state, tokend_proto::CredentialState::Failing);
        assert_eq!(row.fence.mark, None, "a settled state clears the mark");
    }

    /// Runs `sql` on the store's file as a writer without the key would.
    fn tamper(dir: &Path, sql: &str) {
        Connection::open(dir.join("t.db"))
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }

    #[test]
    fn a_row_changed_without_the_key_is_loaded_untrusted_and_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.verify_key().unwrap();
        for name in [
            "url", "owner", "allow", "deny", "kind", "junk", "blob", "typed", "uid", "entry",
            "fine",
        ] {
            s.insert(&bearer(name, "tok"), false).unwrap();
        }
        tamper(
            dir.path(),
            r#"UPDATE credentials SET settings = '{"bearer":{"check_url":"https://attacker.example/"}}' WHERE name = 'url';
               UPDATE credentials SET owner_uid = 1001 WHERE name = 'owner';
               INSERT INTO allowed SELECT id, 'user', 1001, NULL FROM credentials WHERE name = 'allow';
               DELETE FROM allowed WHERE credential_id = (SELECT id FROM credentials WHERE name = 'deny');
               UPDATE credentials SET settings = '{"oauth2":{}}' WHERE name = 'kind';
               UPDATE credentials SET settings = 'not json' WHERE name = 'junk';
               UPDATE credentials SET access_token = X'01020304' WHERE name = 'blob';
               UPDATE credentials SET access_token = 'text', generation = 'x' WHERE name = 'typed';
               UPDATE credentials SET owner_uid = -1 WHERE name = 'uid';
               INSERT INTO allowed SELECT id, 'user', -5, NULL FROM credentials WHERE name = 'entry';"#,
        );
        let all = open(dir.path()).load_all().unwrap();
        for c in &all {
            // An allow-list entry that cannot be read grants nothing; the
            // rest of the row is as tagged.
            if c.name == "fine" || c.name == "entry" {
                assert!(!c.untrusted);
                assert_eq!(c.access_token.as_ref().unwrap().expose(), "tok");
                continue;
            }
            assert!(c.untrusted, "{} is trusted", c.name);
            assert!(c.access_token.is_none(), "{} holds its token", c.name);
            assert_eq!(c.state, CredentialState::Failing);
            let why = c.reason.as_deref().unwrap();
            match c.name.as_str() {
                "url" | "owner" | "allow" | "deny" => assert_eq!(why, TAMPERED),
                "blob" => assert!(why.contains("cannot be opened"), "{why}"),
                "typed" | "uid" => assert!(why.contains("cannot be read"), "{why}"),
                _ => assert!(why.contains("settings cannot be read"), "{why}"),
            }
        }
        assert!(matches!(
            s.change_allowed("url", 7, Principal::User(3), true),
            Err(StoreError::Untrusted(_))
        ));
        // A replace writes a trusted row again.
        s.insert(&bearer("url", "new"), true).unwrap();
        assert!(!s.load_named(&["url".into()]).unwrap()[0].untrusted);
    }

    #[test]
    fn a_store_written_before_rows_were_bound_is_bound_by_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::from_key(&[1u8; 32]);
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        for sql in &MIGRATIONS[..BINDING_VERSION - 1] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", BINDING_VERSION as i64 - 1)
            .unwrap();
        let check = sealer
            .seal(Place::key_check(), &Secret::new(KEY_CHECK))
            .unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
            [check],
        )
        .unwrap();
        let token = sealer
            .seal(
                Place {
                    incarnation: None,
                    ..Place::of("old", 9, "access_token")
                },
                &Secret::new("tok"),
            )
            .unwrap();
        conn.execute_batch(
            "INSERT INTO credentials (name, kind, owner_uid, settings, state, created_at, incarnation)
             VALUES ('old', 'bearer', 1000, '{\"bearer\":{\"check_url\":null}}', 'ready', 1, 9);
             INSERT INTO allowed SELECT id, 'user', 3 FROM credentials;",
        )
        .unwrap();
        conn.execute("UPDATE credentials SET access_token = ?1", [token])
            .unwrap();
        drop(conn);
        // A wrong key binds nothing: the migration refuses and leaves the
        // store as it was, for the right key.
        assert!(SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[2u8; 32])).is_err());
        let row = open(dir.path()).load_all().unwrap().remove(0);
        assert!(!row.untrusted, "{:?}", row.reason);
        assert_eq!(row.access_token.unwrap().expose(), "tok");
        assert_eq!(row.allowed, vec![Principal::User(3)]);
    }

    #[test]
    fn an_old_incarnations_columns_over_a_replacement_open_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let mut old = bearer("up", "old-token");
        old.owner_uid = 1001;
        s.insert(&old, false).unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        let saved: (i64, u32, Option<String>, Vec<u8>) = conn
            .query_row(
                "SELECT incarnation, owner_uid, owner_name, binding FROM credentials",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let mut new = bearer("up", "new-token");
        new.incarnation = 8;
        s.insert(&new, true).unwrap();
        // The replaced credential's bound columns and tag put back over
        // the replacement: the tag verifies, the new token does not open.
        conn.execute(
            "UPDATE credentials SET incarnation = ?1, owner_uid = ?2, owner_name = ?3, binding = ?4",
            rusqlite::params![saved.0, saved.1, saved.2, saved.3],
        )
        .unwrap();
        let row = s.load_all().unwrap().remove(0);
        assert!(row.untrusted, "the splice is trusted");
        assert!(row.access_token.is_none());
        assert!(row.reason.unwrap().contains("cannot be opened"));
    }

    #[test]
    fn the_allow_list_changes_in_place_and_last_uses_follow_the_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        s.insert(&bearer("o", "a0"), false).unwrap();
        let list = s.change_allowed("o", 7, Principal::User(3), true).unwrap();
        assert_eq!(list, vec![Principal::User(3), Principal::Group(5)]);
        let list = s
            .change_allowed("o", 7, Principal::Group(5), false)
            .unwrap();
        assert_eq!(list, vec![Principal::User(3)]);
        let row = s.load_all().unwrap().remove(0);
        assert!(!row.untrusted, "a change by tokend keeps the row bound");
        assert_eq!(row.allowed, vec![Principal::User(3)]);
        assert!(matches!(
            s.change_allowed("o", 8, Principal::User(4), true),
            Err(StoreError::Gone(_))
        ));
        s.save_last_use(&[("o".into(), 8, 99)]).unwrap();
        assert_eq!(s.load_all().unwrap()[0].last_use_at, None);
        s.save_last_use(&[("o".into(), 7, 99)]).unwrap();
        assert_eq!(s.load_all().unwrap()[0].last_use_at, Some(99));
    }

    #[test]
    fn database_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        SqliteStore::open(&sub.join("t.db"), Sealer::from_key(&[1u8; 32])).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&sub.join("t.db")), 0o600);
            assert_eq!(mode(&sub), 0o700);
        }
    }
}
