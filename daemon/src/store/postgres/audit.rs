//! The audit trail in PostgreSQL: `tokend.audit`, shared by the fleet,
//! each entry with the name of the member that answered (its
//! `application_name`); appended to in batches (one statement per flush),
//! read newest first, pruned by age and by a row cap.

use super::error::Failure;
use crate::store::audit::{AuditFilter, Retention};
use tokend_proto::AuditEntry;

/// Appends `entries` in one statement, stamped with this member's name;
/// how many were dropped. When the database refuses the batch for its
/// data (SQLSTATE class 22 or 23: a value it cannot store), the entries
/// are written one by one and those it still refuses are dropped, so that
/// one bad entry never blocks the trail (a connection error fails the
/// whole, to be retried).
pub(super) async fn append(
    client: &impl tokio_postgres::GenericClient,
    entries: &[AuditEntry],
) -> Result<u64, Failure> {
    match insert(client, entries).await {
        Ok(()) => Ok(0),
        Err(e) if entries.len() > 1 && is_data_error(&e) => {
            let mut dropped = 0;
            for entry in entries {
                match insert(client, std::slice::from_ref(entry)).await {
                    Ok(()) => {}
                    Err(e) if is_data_error(&e) => dropped += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(dropped)
        }
        Err(e) if is_data_error(&e) => Ok(1),
        Err(e) => Err(e.into()),
    }
}

/// Whether the database refused a statement for its data (SQLSTATE class
/// 22, data exception, or 23, integrity constraint violation), not for a
/// connection or the server being away.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

async fn insert(
    client: &impl tokio_postgres::GenericClient,
    entries: &[AuditEntry],
) -> Result<(), tokio_postgres::Error> {
    let column = |f: fn(&AuditEntry) -> Option<String>| entries.iter().map(f).collect::<Vec<_>>();
    let at: Vec<i64> = entries.iter().map(|e| e.at_ms).collect();
    let uid: Vec<i64> = entries.iter().map(|e| i64::from(e.uid)).collect();
    let pid: Vec<Option<i32>> = entries.iter().map(|e| e.pid).collect();
    let count: Vec<i64> = entries.iter().map(|e| i64::from(e.count)).collect();
    let incarnation: Vec<Option<i64>> = entries.iter().map(|e| e.incarnation).collect();
    let op = column(|e| Some(e.op.clone()));
    let outcome = column(|e| Some(e.outcome.clone()));
    client
        .execute(
            "INSERT INTO tokend.audit
                (at_ms, member, credential, op, outcome, reason, uid, user_name, pid, exe, count,
                 incarnation)
             SELECT a.at, current_setting('application_name'), a.c, a.op, a.o, a.r, a.u, a.n, a.p,
                    a.x, a.k, a.i
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::text[], $8::integer[], $9::text[], $10::bigint[],
                         $11::bigint[])
                  AS a(at, c, op, o, r, u, n, p, x, k, i)",
            &[
                &at,
                &column(|e| e.credential.clone()),
                &op,
                &outcome,
                &column(|e| e.reason.clone()),
                &uid,
                &column(|e| e.user.clone()),
                &pid,
                &column(|e| e.exe.clone()),
                &count,
                &incarnation,
            ],
        )
        .await?;
    Ok(())
}

/// The newest entries `filter` matches, oldest first.
pub(super) async fn read(
    client: &impl tokio_postgres::GenericClient,
    filter: &AuditFilter,
) -> Result<Vec<AuditEntry>, Failure> {
    let user = filter.user.as_ref();
    let rows = client
        .query(
            "SELECT at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, member, count,
                    incarnation
             FROM tokend.audit
             WHERE ($1::text[] IS NULL OR credential = ANY($1))
               AND ($6::bigint[] IS NULL OR incarnation = ANY($6))
               AND ($2::bigint IS NULL OR at_ms >= $2)
               AND ($3::bigint IS NULL OR uid = $3)
               AND ($4::text IS NULL OR user_name = $4)
             ORDER BY at_ms DESC, id DESC LIMIT $5",
            &[
                &filter.credentials,
                &filter.since_ms,
                &user.and_then(|u| u.uid()),
                &user.and_then(|u| u.name()),
                &filter.bounded_limit(),
                &filter.incarnations,
            ],
        )
        .await?;
    let mut entries = rows
        .iter()
        .map(|r| AuditEntry {
            at_ms: r.get(0),
            credential: r.get(1),
            op: r.get(2),
            outcome: r.get(3),
            reason: r.get(4),
            uid: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
            user: r.get(6),
            pid: r.get(7),
            exe: r.get(8),
            member: r.get(9),
            count: u32::try_from(r.get::<_, i64>(10)).unwrap_or(u32::MAX),
            incarnation: r.get(11),
        })
        .collect::<Vec<_>>();
    entries.reverse();
    Ok(entries)
}

/// Deletes what `keep` does not keep, for the whole fleet; how many went.
/// How old an entry is goes by the database's clock, not this member's:
/// a member whose clock runs ahead cannot delete the fleet's entries.
pub(super) async fn prune(
    client: &impl tokio_postgres::GenericClient,
    keep: &Retention,
) -> Result<u64, Failure> {
    let old = client
        .execute(
            "DELETE FROM tokend.audit
             WHERE at_ms < extract(epoch from now()) * 1000 - $1::bigint",
            &[&keep.keep_ms],
        )
        .await?;
    let cap = i64::try_from(keep.max_rows).unwrap_or(i64::MAX);
    let over = client
        .execute(
            "DELETE FROM tokend.audit WHERE id <= (
                SELECT id FROM tokend.audit ORDER BY id DESC OFFSET $1 LIMIT 1)",
            &[&cap],
        )
        .await?;
    Ok(old + over)
}
