//! The audit trail in SQLite: a table of its own, appended to in batches
//! (one transaction, one fsync, per flush), read newest first, pruned by
//! age and by a row cap.

use crate::store::StoreError;
use crate::store::audit::{AuditFilter, Retention};
use rusqlite::{Connection, params};
use tokend_proto::AuditEntry;

/// Appends `entries` in one transaction.
pub(super) fn append(conn: &mut Connection, entries: &[AuditEntry]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in entries {
            insert.execute(params![
                e.at_ms,
                e.credential,
                e.op,
                e.outcome,
                e.reason,
                e.uid,
                e.user,
                e.pid,
                e.exe,
                e.count
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The newest entries `filter` matches, oldest first.
pub(super) fn read(conn: &Connection, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let credentials = filter
        .credentials
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let user = filter.user.as_ref();
    let mut select = conn.prepare_cached(
        "SELECT at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, count FROM audit
         WHERE (?1 IS NULL OR credential IN (SELECT value FROM json_each(?1)))
           AND (?2 IS NULL OR at_ms >= ?2)
           AND (?3 IS NULL OR uid = ?3)
           AND (?4 IS NULL OR user_name = ?4)
         ORDER BY at_ms DESC, id DESC LIMIT ?5",
    )?;
    let rows = select.query_map(
        params![
            credentials,
            filter.since_ms,
            user.and_then(|u| u.uid()),
            user.and_then(|u| u.name()),
            filter.bounded_limit()
        ],
        |r| {
            Ok(AuditEntry {
                at_ms: r.get(0)?,
                credential: r.get(1)?,
                op: r.get(2)?,
                outcome: r.get(3)?,
                reason: r.get(4)?,
                uid: r.get(5)?,
                user: r.get(6)?,
                pid: r.get(7)?,
                exe: r.get(8)?,
                member: None,
                count: r.get(9)?,
            })
        },
    )?;
    let mut entries = rows.collect::<Result<Vec<_>, _>>()?;
    entries.reverse();
    Ok(entries)
}

/// Deletes what `keep` does not keep; how many entries went.
pub(super) fn prune(conn: &mut Connection, keep: &Retention) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let old = tx.execute("DELETE FROM audit WHERE at_ms < ?1", [keep.since_ms])?;
    // Ids grow with every insert: the cap keeps the newest `max_rows`.
    let over = tx.execute(
        "DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        [i64::try_from(keep.max_rows).unwrap_or(i64::MAX)],
    )?;
    tx.commit()?;
    Ok((old + over) as u64)
}

#[cfg(test)]
mod tests {
    use crate::store::Backend;
    use crate::store::audit::{AuditFilter, Retention, UserFilter};
    use crate::store::seal::Sealer;
    use crate::store::sqlite::SqliteStore;
    use tokend_proto::AuditEntry;

    fn entry(at_ms: i64, credential: &str, uid: u32, user: &str) -> AuditEntry {
        AuditEntry {
            at_ms,
            credential: Some(credential.into()),
            op: "token".into(),
            outcome: "ok".into(),
            reason: None,
            uid,
            user: Some(user.into()),
            pid: Some(7),
            exe: Some("/usr/bin/tokenctl".into()),
            member: None,
            count: 1,
        }
    }

    fn all() -> AuditFilter {
        AuditFilter {
            limit: 100,
            ..Default::default()
        }
    }

    fn times(entries: &[AuditEntry]) -> Vec<i64> {
        entries.iter().map(|e| e.at_ms).collect()
    }

    #[test]
    fn entries_are_read_back_oldest_first_across_a_reopen_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path, Sealer::from_key(&[1u8; 32])).unwrap();
        store
            .append_audit(&[
                entry(1000, "a", 0, "root"),
                entry(2000, "b", 1001, "alice"),
                entry(3000, "a", 1001, "alice"),
            ])
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&path, Sealer::from_key(&[1u8; 32])).unwrap();
        let read = |f: AuditFilter| times(&store.read_audit(&f).unwrap());
        assert_eq!(read(all()), [1000, 2000, 3000]);
        assert_eq!(
            store.read_audit(&all()).unwrap()[0],
            entry(1000, "a", 0, "root")
        );
        let only_a = AuditFilter {
            credentials: Some(vec!["a".into()]),
            ..all()
        };
        assert_eq!(read(only_a), [1000, 3000]);
        let none = AuditFilter {
            credentials: Some(vec![]),
            ..all()
        };
        assert_eq!(
            read(none),
            [] as [i64; 0],
            "an owner of nothing reads nothing"
        );
        let since = AuditFilter {
            since_ms: Some(2000),
            ..all()
        };
        assert_eq!(read(since), [2000, 3000]);
        let by_uid = AuditFilter {
            user: Some(UserFilter::parse("0")),
            ..all()
        };
        assert_eq!(read(by_uid), [1000]);
        let by_name = AuditFilter {
            user: Some(UserFilter::parse("alice")),
            ..all()
        };
        assert_eq!(read(by_name), [2000, 3000]);
        let newest = AuditFilter { limit: 2, ..all() };
        assert_eq!(read(newest), [2000, 3000], "the newest, oldest first");
    }

    #[test]
    fn pruning_keeps_the_newest_within_the_age_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[1u8; 32])).unwrap();
        let entries: Vec<_> = (1..=10).map(|i| entry(i * 1000, "a", 0, "root")).collect();
        store.append_audit(&entries).unwrap();
        let gone = store
            .prune_audit(&Retention {
                since_ms: 3000,
                max_rows: 100,
            })
            .unwrap();
        assert_eq!(gone, 2);
        assert_eq!(times(&store.read_audit(&all()).unwrap()).len(), 8);
        let gone = store
            .prune_audit(&Retention {
                since_ms: 0,
                max_rows: 3,
            })
            .unwrap();
        assert_eq!(gone, 5);
        assert_eq!(
            times(&store.read_audit(&all()).unwrap()),
            [8000, 9000, 10000]
        );
    }
}
