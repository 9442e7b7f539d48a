//! Loading every credential at start-up, fast and compact: rows read under
//! the connection lock, secrets opened after it on all cores (`rows.rs`).

use super::SqliteStore;
use super::schema::state_from_sql;
use crate::store::names::Named;
use crate::store::rows::{SealedColumns, principal_from_parts, read_spec};
use crate::store::{Deadline, Fence, Mark, StoreError, StoredCredential};
use rusqlite::Connection;
use tokend_proto::Grantee;

impl SqliteStore {
    /// Every row (or the one named `only`), its sealed secrets set aside
    /// unopened (opening them is the slow part, done after the connection
    /// lock is released).
    pub(super) fn read_rows(
        &self,
        only: Option<&str>,
    ) -> Result<(Vec<StoredCredential>, SealedColumns), StoreError> {
        let conn = self.lock();
        let filter = if only.is_some() {
            "WHERE name = ?1"
        } else {
            ""
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT id, name, description, owner_uid, settings, client_secret, access_token,
                refresh_token, generation, expires_at, state, reason, created_at, last_refresh_at,
                last_use_at, next_refresh_at, last_error, last_check, refresh_in_flight IS NOT NULL,
                incarnation, refresh_gen, COALESCE(mark_at_ms, refresh_in_flight * 1000),
                COALESCE(lease_ms, 19000), retry_at_ms, binding, owner_name,
                refresh_expires_at, refresh_warned
             FROM credentials {filter} ORDER BY name"
        ))?;
        let mut allowed = load_allowed(&conn, only)?;
        let mut out = Vec::new();
        let mut sealed = SealedColumns::default();
        let mut rows = match only {
            Some(name) => stmt.query([name])?,
            None => stmt.query([])?,
        };
        while let Some(r) = rows.next()? {
            // SQLite keeps any value in any column: one row a writer
            // filled with the wrong types is that row's problem only.
            match read_row(r, &mut allowed, &mut sealed) {
                Ok(c) => out.push(c),
                Err(e) => match (r.get::<_, String>(1), r.get::<_, i64>(19)) {
                    (Ok(name), Ok(incarnation)) => {
                        let why = format!("a column of its row cannot be read ({e})");
                        sealed.push([None; 5]);
                        out.push(unreadable_row(name, incarnation, why));
                    }
                    _ => {
                        tracing::warn!(error = %e, "a row of the store names no credential; it is left out")
                    }
                },
            }
        }
        Ok((out, sealed))
    }
}

/// A BLOB column that may be NULL, borrowed from the row (no allocation).
fn blob<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'a [u8]>> {
    match r.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        rusqlite::types::ValueRef::Blob(b) => Ok(Some(b)),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            "sealed value".into(),
            other.data_type(),
        )),
    }
}

/// The allow lists of every credential (or of the one named `only`), by
/// row id, names not yet looked up here.
fn load_allowed(
    conn: &Connection,
    only: Option<&str>,
) -> Result<std::collections::HashMap<i64, Vec<Grantee>>, StoreError> {
    let filter = if only.is_some() {
        "WHERE credential_id IN (SELECT id FROM credentials WHERE name = ?1)"
    } else {
        ""
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT credential_id, kind, id, name FROM allowed {filter} ORDER BY kind, id"
    ))?;
    let mut map: std::collections::HashMap<i64, Vec<Grantee>> = Default::default();
    let read = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, Option<String>>(3)?,
        ))
    };
    let rows: Vec<_> = match only {
        Some(name) => stmt.query_map([name], read)?.collect(),
        None => stmt.query_map([], read)?.collect(),
    };
    for row in rows {
        // An entry that cannot be read (a writer put a value of another
        // type there) grants nothing; the rest of the row is judged by its
        // binding as usual.
        let Ok((cid, kind, id, name)) = row else {
            continue;
        };
        map.entry(cid).or_default().push(Grantee {
            written: principal_from_parts(&kind, id),
            name,
            here: None,
        });
    }
    Ok(map)
}

/// One row as a credential, its sealed columns pushed onto `sealed` (only
/// once every column was read).
fn read_row(
    r: &rusqlite::Row<'_>,
    allowed: &mut std::collections::HashMap<i64, Vec<Grantee>>,
    sealed: &mut SealedColumns,
) -> rusqlite::Result<StoredCredential> {
    let settings: String = r.get(4)?;
    let columns = [blob(r, 24)?, blob(r, 5)?, blob(r, 6)?, blob(r, 7)?];
    let (spec, unreadable) = read_spec(&settings);
    let last_check: Option<String> = r.get(17)?;
    let c = StoredCredential {
        spec,
        client_secret: None,
        access_token: None,
        refresh_token: None,
        allowed: Vec::new(),
        names: Some(Box::new(Named::as_read(
            r.get(3)?,
            r.get(25)?,
            allowed.remove(&r.get::<_, i64>(0)?).unwrap_or_default(),
        ))),
        name: r.get(1)?,
        description: r.get(2)?,
        owner_uid: r.get(3)?,
        generation: r.get::<_, i64>(8)? as u64,
        expires_at: r.get(9)?,
        state: state_from_sql(&r.get::<_, String>(10)?),
        reason: unreadable.clone().or(r.get(11)?),
        created_at: r.get(12)?,
        last_refresh_at: r.get(13)?,
        last_use_at: r.get(14)?,
        next_refresh_at: r.get(15)?,
        last_error: r.get(16)?,
        last_check: last_check.and_then(|j| serde_json::from_str(&j).ok()),
        fence: Fence {
            generation: r.get(20)?,
            mark: if r.get::<_, bool>(18)? {
                Some(Mark {
                    at_ms: r.get::<_, Option<i64>>(21)?.unwrap_or(0),
                    lease_ms: r.get(22)?,
                    read_at_ms: None,
                    mine: true,
                })
            } else {
                None
            },
            retry: r.get::<_, Option<i64>>(23)?.map(|at_ms| Deadline {
                at_ms,
                read_at_ms: None,
            }),
        },
        change: 0,
        untrusted: unreadable.is_some(),
        incarnation: r.get(19)?,
        forecast: crate::store::Forecast {
            at: r.get(26)?,
            warned: r.get(27)?,
        },
    };
    let [binding, cs, at, rt] = columns;
    sealed.push([binding, Some(settings.as_bytes()), cs, at, rt]);
    Ok(c)
}

/// A row whose columns cannot all be read: only its name and incarnation,
/// untrusted with `why` (an admin can see it, remove it or replace it).
fn unreadable_row(name: String, incarnation: i64, why: String) -> StoredCredential {
    StoredCredential {
        name,
        incarnation,
        description: String::new(),
        spec: crate::store::binding::unreadable_spec(),
        owner_uid: crate::store::names::NOBODY,
        allowed: Vec::new(),
        names: None,
        client_secret: None,
        access_token: None,
        refresh_token: None,
        generation: 0,
        expires_at: None,
        state: tokend_proto::CredentialState::Failing,
        reason: Some(why),
        created_at: 0,
        last_refresh_at: None,
        last_use_at: None,
        next_refresh_at: None,
        last_error: None,
        last_check: None,
        fence: Fence::default(),
        change: 0,
        untrusted: true,
        forecast: Default::default(),
    }
}
