//! Loading every credential at start-up, fast and compact: rows read under
//! the connection lock, secrets opened after it on all cores (`rows.rs`).

use super::SqliteStore;
use super::schema::state_from_sql;
use crate::store::rows::{SealedColumns, principal_from_parts};
use crate::store::{StoreError, StoredCredential};
use rusqlite::Connection;
use tokend_proto::Principal;

impl SqliteStore {
    /// Every row, its sealed secrets set aside unopened (opening them is
    /// the slow part, done after the connection lock is released).
    pub(super) fn read_all(&self) -> Result<(Vec<StoredCredential>, SealedColumns), StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, description, owner_uid, settings, client_secret, access_token,
                refresh_token, generation, expires_at, state, reason, created_at, last_refresh_at,
                last_use_at, next_refresh_at, last_error, last_check, refresh_in_flight IS NOT NULL,
                incarnation
             FROM credentials ORDER BY name",
        )?;
        let mut allowed = load_allowed(&conn)?;
        let mut out = Vec::new();
        let mut sealed = SealedColumns::default();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            sealed.push([blob(r, 5)?, blob(r, 6)?, blob(r, 7)?]);
            let settings: String = r.get(4)?;
            let last_check: Option<String> = r.get(17)?;
            out.push(StoredCredential {
                spec: serde_json::from_str(&settings)?,
                client_secret: None,
                access_token: None,
                refresh_token: None,
                allowed: allowed.remove(&r.get::<_, i64>(0)?).unwrap_or_default(),
                name: r.get(1)?,
                description: r.get(2)?,
                owner_uid: r.get(3)?,
                generation: r.get::<_, i64>(8)? as u64,
                expires_at: r.get(9)?,
                state: state_from_sql(&r.get::<_, String>(10)?),
                reason: r.get(11)?,
                created_at: r.get(12)?,
                last_refresh_at: r.get(13)?,
                last_use_at: r.get(14)?,
                next_refresh_at: r.get(15)?,
                last_error: r.get(16)?,
                last_check: last_check.and_then(|j| serde_json::from_str(&j).ok()),
                refresh_interrupted: r.get(18)?,
                change: 0,
                incarnation: r.get(19)?,
            });
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

fn load_allowed(
    conn: &Connection,
) -> Result<std::collections::HashMap<i64, Vec<Principal>>, StoreError> {
    let mut stmt = conn.prepare("SELECT credential_id, kind, id FROM allowed ORDER BY kind, id")?;
    let mut map: std::collections::HashMap<i64, Vec<Principal>> = Default::default();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u32>(2)?,
        ))
    })?;
    for row in rows {
        let (cid, kind, id) = row?;
        map.entry(cid)
            .or_default()
            .push(principal_from_parts(&kind, id));
    }
    Ok(map)
}
