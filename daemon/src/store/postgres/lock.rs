//! The fleet's refresh lock: a transaction-scoped advisory lock on its own
//! connection, held from before the row is re-read until the outcome is
//! committed in the same transaction (docs/ARCHITECTURE.md, "The fleet
//! store").

use super::error::Failure;
use super::schema;
use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;

/// What taking the lock found.
pub(super) enum Taken {
    /// Held; the credential's row (none if it is gone), read under it.
    Held(Vec<tokio_postgres::Row>),
    /// Another member holds it (past the wait, if any).
    Busy,
}

/// Begins the lock's transaction with its time limits, takes the lock
/// (waiting at most `wait_ms` if `wait`, else not at all) and re-reads the
/// row under it.
pub(super) async fn take(
    client: &Object,
    name: &str,
    wait: bool,
    hold_ms: u64,
    wait_ms: u64,
) -> Result<Taken, Failure> {
    // Only a lock that is waited for needs the limits of its wait (the
    // session's statement_timeout would cut it short); a refresh storm
    // takes every lock without waiting, and each statement saved counts.
    let begin = if wait {
        format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {hold_ms}; SET LOCAL lock_timeout = {wait_ms}; SET LOCAL statement_timeout = {}",
            wait_ms + super::connect::STATEMENT_LIMIT_MS
        )
    } else {
        format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {hold_ms}")
    };
    client.batch_execute(&begin).await?;
    let key = key(name);
    if wait {
        let locked = client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&key])
            .await;
        match locked {
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => return Ok(Taken::Busy),
            other => other?,
        };
    } else {
        let got: bool = client
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
            .await?
            .get(0);
        if !got {
            return Ok(Taken::Busy);
        }
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE c.name = $1",
        schema::COLUMNS,
        schema::FROM
    );
    Ok(Taken::Held(client.query(&sql, &[&name]).await?))
}

/// Commits the lock's transaction (the writes in it, and the release).
pub(super) async fn commit(client: &Object) -> Result<(), Failure> {
    Ok(client.batch_execute("COMMIT").await?)
}

/// Ends a lock connection's transaction; a connection that cannot say
/// ROLLBACK (in time: its server may be stalled) is closed rather than
/// returned to the pool mid-transaction.
pub(super) async fn discard(client: Object) {
    let rollback = client.batch_execute("ROLLBACK");
    if !matches!(
        tokio::time::timeout(std::time::Duration::from_secs(5), rollback).await,
        Ok(Ok(()))
    ) {
        drop(Object::take(client));
    }
}

/// The advisory lock key of a credential's refresh: 64 bits of a hash of
/// its name, so any name maps to one key (two names sharing a key only
/// take turns).
fn key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("tokend refresh\0{name}"));
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(b)
}
