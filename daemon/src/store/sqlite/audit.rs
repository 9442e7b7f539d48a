//! The audit trail in SQLite: a table of its own, appended to in batches
//! (one transaction, one fsync, per flush), read newest first, pruned by
//! age and by a row cap.

use crate::store::StoreError;
use crate::store::audit::{AuditFilter, Retention};
use rusqlite::{Connection, params};
use std::ops::DerefMut;

/// Rows one pruning transaction deletes at most: the shared connection is
/// released between chunks, so a refresh's commit waits for one chunk,
/// not for a million rows.
pub(super) const PRUNE_CHUNK: usize = 5000;
use tokend_proto::AuditEntry;

/// Appends `entries` in one transaction.
pub(super) fn append(conn: &mut Connection, entries: &[AuditEntry]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, count,
                                incarnation)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                e.count,
                e.incarnation
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
    let incarnations = filter
        .incarnations
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let user = filter.user.as_ref();
    let mut select = conn.prepare_cached(
        "SELECT at_ms, credential, op, outcome, reason, uid, user_name, pid, exe, count, incarnation
         FROM audit
         WHERE (?1 IS NULL OR credential IN (SELECT value FROM json_each(?1)))
           AND (?6 IS NULL OR incarnation IN (SELECT value FROM json_each(?6)))
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
            filter.bounded_limit(),
            incarnations
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
                incarnation: r.get(10)?,
            })
        },
    )?;
    let mut entries = rows.collect::<Result<Vec<_>, _>>()?;
    entries.reverse();
    Ok(entries)
}

/// Deletes what `keep` does not keep, by the host's clock, `chunk` rows a
/// statement (each its own transaction), the connection `lock` gives taken
/// again for each: a refresh's commit waits for one chunk at most. How
/// many entries went, in how many chunks.
pub(super) fn prune<C: DerefMut<Target = Connection>>(
    lock: impl Fn() -> C,
    keep: &Retention,
    chunk: usize,
) -> Result<(u64, u32), StoreError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let since_ms = now_ms.saturating_sub(keep.keep_ms);
    let chunk = i64::try_from(chunk.max(1)).unwrap_or(i64::MAX);
    let (mut gone, mut chunks) = (0u64, 0u32);
    let mut in_chunks = |sql: &str, bound: i64| -> Result<(), StoreError> {
        loop {
            let n = lock().execute(sql, [bound, chunk])?;
            chunks += 1;
            gone += n as u64;
            if (n as i64) < chunk {
                return Ok(());
            }
        }
    };
    in_chunks(
        "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at_ms < ?1 LIMIT ?2)",
        since_ms,
    )?;
    // Ids grow with every insert: the cap keeps the newest `max_rows`.
    let cap = i64::try_from(keep.max_rows).unwrap_or(i64::MAX);
    let last: Option<i64> = {
        use rusqlite::OptionalExtension;
        lock()
            .query_row(
                "SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1",
                [cap],
                |r| r.get(0),
            )
            .optional()?
    };
    if let Some(last) = last {
        in_chunks(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE id <= ?1 LIMIT ?2)",
            last,
        )?;
    }
    Ok((gone, chunks))
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
            incarnation: Some(5),
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

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn pruning_keeps_the_newest_within_the_age_and_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[1u8; 32])).unwrap();
        let mut entries: Vec<_> = (1..=2).map(|i| entry(i * 1000, "a", 0, "root")).collect();
        let now = now_ms();
        entries.extend((3..=10).map(|i| entry(now + i * 1000, "a", 0, "root")));
        store.append_audit(&entries).unwrap();
        let gone = store
            .prune_audit(&Retention {
                keep_ms: 86_400_000,
                max_rows: 100,
            })
            .unwrap();
        assert_eq!(gone, 2);
        assert_eq!(times(&store.read_audit(&all()).unwrap()).len(), 8);
        let gone = store
            .prune_audit(&Retention {
                keep_ms: 86_400_000,
                max_rows: 3,
            })
            .unwrap();
        assert_eq!(gone, 5);
        assert_eq!(
            times(&store.read_audit(&all()).unwrap()),
            [now + 8000, now + 9000, now + 10000]
        );
    }

    #[test]
    fn a_big_prune_deletes_in_chunks_releasing_the_connection_between() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path, Sealer::from_key(&[1u8; 32])).unwrap();
        let old: Vec<_> = (0..12_000).map(|i| entry(i, "a", 0, "root")).collect();
        store.append_audit(&old).unwrap();
        store
            .append_audit(&[entry(now_ms(), "a", 0, "root")])
            .unwrap();
        let conn = std::sync::Mutex::new(rusqlite::Connection::open(&path).unwrap());
        let locked = std::cell::Cell::new(0);
        let keep = Retention {
            keep_ms: 86_400_000,
            max_rows: 100_000,
        };
        let (gone, chunks) = super::prune(
            || {
                locked.set(locked.get() + 1);
                conn.lock().unwrap()
            },
            &keep,
            super::PRUNE_CHUNK,
        )
        .unwrap();
        assert_eq!(gone, 12_000);
        assert!(chunks >= 3, "in chunks of {}: {chunks}", super::PRUNE_CHUNK);
        assert!(locked.get() >= 3, "the lock taken again for each chunk");
        assert_eq!(store.read_audit(&all()).unwrap().len(), 1);
        // The row cap too.
        store.append_audit(&old[..11_000]).unwrap();
        let (gone, chunks) = super::prune(
            || conn.lock().unwrap(),
            &Retention {
                keep_ms: i64::MAX,
                max_rows: 1000,
            },
            super::PRUNE_CHUNK,
        )
        .unwrap();
        assert_eq!(gone, 10_001);
        assert!(chunks >= 3, "{chunks}");
    }

    #[test]
    fn an_owner_filter_reads_only_the_incarnations_it_owns() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("t.db"), Sealer::from_key(&[1u8; 32])).unwrap();
        let mut earlier = entry(1000, "a", 0, "root");
        earlier.incarnation = Some(1);
        let mut missing = entry(2000, "a", 0, "root");
        missing.incarnation = None;
        let mut now = entry(3000, "a", 0, "root");
        now.incarnation = Some(2);
        store.append_audit(&[earlier, missing, now]).unwrap();
        let owner = AuditFilter {
            credentials: Some(vec!["a".into()]),
            incarnations: Some(vec![2]),
            ..all()
        };
        assert_eq!(times(&store.read_audit(&owner).unwrap()), [3000]);
        let admin = AuditFilter {
            credentials: Some(vec!["a".into()]),
            ..all()
        };
        assert_eq!(
            times(&store.read_audit(&admin).unwrap()),
            [1000, 2000, 3000]
        );
    }
}
