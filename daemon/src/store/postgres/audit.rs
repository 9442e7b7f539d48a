//! The audit trail in PostgreSQL: `tokend.audit`, shared by the fleet,
//! each entry with the name of the member that answered (its
//! `application_name`); appended to in batches (one statement per flush),
//! read newest first, pruned by age and by a row cap.

use super::error::Failure;
use crate::store::audit::{AuditFilter, Retention};
use tokend_proto::AuditEntry;

/// Appends `entries` in one statement, stamped with this member's name.
pub(super) async fn append(
    client: &impl tokio_postgres::GenericClient,
    entries: &[AuditEntry],
) -> Result<(), Failure> {
    let column = |f: fn(&AuditEntry) -> Option<String>| entries.iter().map(f).collect::<Vec<_>>();
    let at: Vec<i64> = entries.iter().map(|e| e.at_ms).collect();
    let uid: Vec<i64> = entries.iter().map(|e| i64::from(e.uid)).collect();
    let pid: Vec<Option<i32>> = entries.iter().map(|e| e.pid).collect();
    let count: Vec<i64> = entries.iter().map(|e| i64::from(e.count)).collect();
    let op = column(|e| Some(e.op.clone()));
    let outcome = column(|e| Some(e.outcome.clone()));
    client
        .execute(
            "INSERT INTO tokend.audit
                (at_ms, member, credential, op, outcome, reason, uid, user_name, pid, exe, count)
             SELECT a.at, current_setting('application_name'), a.c, a.op, a.o, a.r, a.u, a.n, a.p,
                    a.x, a.k
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::text[], $8::integer[], $9::text[], $10::bigint[])
                  AS a(at, c, op, o, r, u, n, p, x, k)",
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
            "SELECT at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, member, count
             FROM tokend.audit
             WHERE ($1::text[] IS NULL OR credential = ANY($1))
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
        })
        .collect::<Vec<_>>();
    entries.reverse();
    Ok(entries)
}

/// Deletes what `keep` does not keep, for the whole fleet; how many went.
pub(super) async fn prune(
    client: &impl tokio_postgres::GenericClient,
    keep: &Retention,
) -> Result<u64, Failure> {
    let old = client
        .execute(
            "DELETE FROM tokend.audit WHERE at_ms < $1",
            &[&keep.since_ms],
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
