//! The columns of a credential's row that its binding covers
//! (`store/binding.rs`): read to check them, and written with a new tag
//! by the migration that binds rows, by `allow` and `deny`, and by `edit`.

use super::error::Failure;
use crate::store::StoreError;
use crate::store::binding::Bound;
use crate::store::names::{NOBODY, Named};
use crate::store::rows::{allowed_from_text, allowed_to_text};
use crate::store::seal::Sealer;

/// The columns [`read`] reads.
pub(super) const BOUND: &str =
    "name, incarnation, description, owner_uid, settings, allowed, binding, owner_name";

/// A uid as stored in a BIGINT column.
pub(super) fn uid(stored: i64) -> u32 {
    u32::try_from(stored).unwrap_or(NOBODY)
}

/// A row's bound columns, read with [`BOUND`].
pub(super) fn read(r: &tokio_postgres::Row) -> Result<Bound, StoreError> {
    let bad = |e: tokio_postgres::Error| StoreError::Database(format!("an unreadable row: {e}"));
    Ok(Bound {
        name: r.try_get(0).map_err(bad)?,
        incarnation: r.try_get(1).map_err(bad)?,
        description: r.try_get(2).map_err(bad)?,
        settings: r.try_get(4).map_err(bad)?,
        named: Named::as_read(
            uid(r.try_get(3).map_err(bad)?),
            r.try_get(7).map_err(bad)?,
            allowed_from_text(r.try_get(5).map_err(bad)?),
        ),
        tag: r.try_get(6).map_err(bad)?,
    })
}

/// Changes a row's bound columns with `change` in one transaction on the
/// row as stored (locked), and tags it again; a row the key does not vouch
/// for is not changed ([`StoreError::Untrusted`]).
pub(super) async fn rebind<T>(
    pool: deadpool_postgres::Pool,
    sealer: std::sync::Arc<Sealer>,
    name: String,
    incarnation: i64,
    change: impl FnOnce(&mut Bound) -> Result<T, StoreError>,
) -> Result<T, Failure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut bound = locked(&tx, &name, incarnation).await?;
    if !bound.verified(&sealer) {
        return Err(StoreError::Untrusted(name).into());
    }
    let answer = change(&mut bound)?;
    write(&tx, &bound, &sealer).await?;
    tx.commit().await?;
    Ok(answer)
}

/// A row's bound columns, read and locked (`FOR UPDATE`) for a change in
/// `tx`; [`StoreError::Gone`] when that credential is no longer stored.
async fn locked(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
    incarnation: i64,
) -> Result<Bound, Failure> {
    let row = tx
        .query_opt(
            &format!(
                "SELECT {BOUND} FROM tokend.credentials
                 WHERE name = $1 AND incarnation = $2 FOR UPDATE"
            ),
            &[&name, &incarnation],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::Gone(name.to_string()).into());
    };
    Ok(read(&row)?)
}

/// Writes a row's bound columns as `bound` says (its description and
/// settings, its owner's name and allow list), and the tag over them.
pub(super) async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    bound: &Bound,
    sealer: &Sealer,
) -> Result<(), Failure> {
    let tag = bound.binding().tag(sealer)?;
    tx.execute(
        "UPDATE tokend.credentials
         SET description = $3, settings = $4, owner_name = $5, allowed = $6, binding = $7
         WHERE name = $1 AND incarnation = $2",
        &[
            &bound.name,
            &bound.incarnation,
            &bound.description,
            &bound.settings,
            &bound.named.owner.name,
            &allowed_to_text(&bound.named.allowed),
            &tag,
        ],
    )
    .await?;
    Ok(())
}
