//! The bound columns of a SQLite row (its description, settings, owner's
//! name and allow list) and the tag the key puts over them: read, written
//! again with a new tag, and given to rows written before rows were bound
//! (docs/SECURITY.md, "What a writer of the store can do").

use crate::store::StoreError;
use crate::store::binding::Bound;
use crate::store::names::{Named, Names};
use crate::store::rows::{
    check_key, principal_from_parts, principal_parts, reseal_for_incarnation,
};
use crate::store::seal::Sealer;
use rusqlite::{Connection, OptionalExtension, params};
use tokend_proto::Grantee;

/// The sealed known value in `meta`, if the store has one yet.
pub(super) fn key_check(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// The row id and the bound columns of the row of `name` and `incarnation`.
pub(super) fn bound_row(
    tx: &rusqlite::Transaction<'_>,
    name: &str,
    incarnation: i64,
) -> Result<(i64, Bound), StoreError> {
    let row = tx
        .query_row(
            "SELECT id, description, owner_uid, owner_name, settings, binding FROM credentials
             WHERE name = ?1 AND incarnation = ?2",
            params![name, incarnation],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::Gone(name.to_string()))?;
    let (id, description, owner_uid, owner_name, settings, tag) = row;
    let bound = Bound {
        name: name.to_string(),
        incarnation,
        description,
        settings,
        named: Named::as_read(owner_uid, owner_name, allowed_of(tx, id)?),
        tag,
    };
    Ok((id, bound))
}

/// Writes row `id`'s bound columns as `row` says (its description and
/// settings, its owner's name and allow list), and the tag over them.
pub(super) fn write_bound(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    row: &Bound,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let tag = row.binding().tag(sealer)?;
    tx.execute(
        "UPDATE credentials SET description = ?2, settings = ?3, owner_name = ?4, binding = ?5
         WHERE id = ?1",
        params![id, row.description, row.settings, row.named.owner.name, tag],
    )?;
    tx.execute("DELETE FROM allowed WHERE credential_id = ?1", [id])?;
    write_allowed(tx, id, &row.named.allowed)
}

/// Names and tags every row of a store written before rows were bound
/// (the migration that added the columns), and seals its values again for
/// its incarnation: the ids it holds are named as this host knows them,
/// and what it holds now is taken as what the key vouches for. The key is checked first: tagging under a wrong key would
/// make every row look tampered with under the right one. A row whose
/// settings cannot be read is left untagged (so untrusted).
pub(super) fn bind_existing(
    tx: &rusqlite::Transaction<'_>,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let Some(sealed) = key_check(tx)? else {
        return Ok(());
    };
    check_key(sealer, &sealed)?;
    let rows: Vec<(String, i64)> = tx
        .prepare("SELECT name, incarnation FROM credentials")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut names = Names::default();
    for (name, incarnation) in rows {
        let Ok((id, mut row)) = bound_row(tx, &name, incarnation) else {
            continue;
        };
        row.named = names.name_ids(&row.named)?;
        write_bound(tx, id, &row, sealer)?;
        let sealed = tx.query_row(
            "SELECT client_secret, access_token, refresh_token FROM credentials WHERE id = ?1",
            [id],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]),
        )?;
        let [cs, at, rt] = reseal_for_incarnation(sealer, &name, incarnation, sealed)?;
        tx.execute(
            "UPDATE credentials SET client_secret = ?2, access_token = ?3, refresh_token = ?4
             WHERE id = ?1",
            params![id, cs, at, rt],
        )?;
    }
    Ok(())
}

/// A credential's allow list as stored, in order, names not yet looked up.
pub(super) fn allowed_of(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
) -> Result<Vec<Grantee>, StoreError> {
    let mut stmt = tx
        .prepare("SELECT kind, id, name FROM allowed WHERE credential_id = ?1 ORDER BY kind, id")?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut list = Vec::new();
    for row in rows {
        let (kind, pid, name) = row?;
        list.push(Grantee {
            written: principal_from_parts(&kind, pid),
            name,
            here: None,
        });
    }
    Ok(list)
}

pub(super) fn write_allowed(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    allowed: &[Grantee],
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare(
        "INSERT OR IGNORE INTO allowed (credential_id, kind, id, name) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for g in allowed {
        let (kind, pid) = principal_parts(&g.written);
        stmt.execute(params![id, kind, pid, g.name])?;
    }
    Ok(())
}
