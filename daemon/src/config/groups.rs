//! The groups a peer's user belongs to, looked up on a blocking thread and
//! remembered for a short while.
//!
//! `getgrouplist` reads /etc/group, or asks NSS, which may be LDAP or SSSD
//! over the network and take seconds. Run on an async worker, one slow
//! lookup would stall every connection that worker serves, token requests
//! of users who need no lookup at all included. So the lookup runs under
//! `spawn_blocking`, one at a time per user (the others wait for its
//! answer), and its answer is kept for [`GroupCache::TTL`]: long enough
//! that a busy user costs one lookup per half minute, short enough that
//! removing someone from a group takes effect soon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Looks up the groups of (uid, primary gid); blocking is allowed.
pub type Lookup = Arc<dyn Fn(u32, u32) -> Vec<u32> + Send + Sync>;

/// One user's groups: being looked up (empty cell) or known since a time.
type Entry = OnceCell<(Instant, Arc<[u32]>)>;

/// Past this many users, expired entries are swept on the next miss, so
/// the map holds no more than the users seen within [`GroupCache::TTL`].
const SWEEP_ABOVE: usize = 256;

/// The group lookups of all peers, shared by every connection.
pub struct GroupCache {
    lookup: Lookup,
    ttl: Duration,
    entries: Mutex<HashMap<(u32, u32), Arc<Entry>>>,
}

impl std::fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Default for GroupCache {
    fn default() -> Self {
        GroupCache::new(Arc::new(supplementary_groups), GroupCache::TTL)
    }
}

impl GroupCache {
    /// How long an answer is used before the group database is asked again.
    pub const TTL: Duration = Duration::from_secs(30);

    /// A cache over `lookup` (the group database, or a test's stand-in).
    pub fn new(lookup: Lookup, ttl: Duration) -> GroupCache {
        GroupCache {
            lookup,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The supplementary groups of `uid` (primary group `gid`): from the
    /// cache when fresh, else from one lookup on a blocking thread shared
    /// by everyone asking meanwhile. A lookup that fails grants nothing.
    ///
    /// The lookup is filled in by a task of its own: an asker that gives
    /// up (a client that hangs up mid-request) does not abandon it, so the
    /// next asker waits for it instead of starting another, and a slow NSS
    /// costs one blocking thread per user, not one per request.
    pub async fn groups(&self, uid: u32, gid: u32) -> Arc<[u32]> {
        let entry = self.entry(uid, gid);
        if let Some((_, groups)) = entry.get() {
            return groups.clone();
        }
        let lookup = self.lookup.clone();
        let filled = tokio::spawn(async move {
            let (_, groups) = entry
                .get_or_init(|| async move {
                    let groups = tokio::task::spawn_blocking(move || lookup(uid, gid))
                        .await
                        .unwrap_or_default();
                    (Instant::now(), groups.into())
                })
                .await;
            groups.clone()
        });
        filled.await.unwrap_or_else(|_| Arc::from(Vec::new()))
    }

    /// The entry to read or fill: the current one if still fresh (or
    /// still being looked up), else a new, empty one.
    fn entry(&self, uid: u32, gid: u32) -> Arc<Entry> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&(uid, gid))
            && self.is_fresh(entry, now)
        {
            return entry.clone();
        }
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, entry| self.is_fresh(entry, now));
        }
        let entry = Arc::new(Entry::new());
        entries.insert((uid, gid), entry.clone());
        entry
    }

    fn is_fresh(&self, entry: &Entry, now: Instant) -> bool {
        entry.get().is_none_or(|(at, _)| now < *at + self.ttl)
    }
}

/// The groups a user belongs to, from the group database (what `id -G` says).
#[cfg(unix)]
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    use nix::unistd::{Gid, Uid, User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    getgrouplist(&name, Gid::from_raw(gid))
        .map(|groups| groups.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// Off Unix there are no groups (see `Peer::of`).
#[cfg(not(unix))]
fn supplementary_groups(_uid: u32, _gid: u32) -> Vec<u32> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A cache over a fake database in which uid U is in group U + 1000,
    /// and the number of lookups made.
    fn counting() -> (GroupCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookup: Lookup = Arc::new(move |uid, _gid| {
            seen.fetch_add(1, Ordering::SeqCst);
            vec![uid + 1000]
        });
        (GroupCache::new(lookup, GroupCache::TTL), calls)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_until_it_expires() {
        let (cache, calls) = counting();
        assert_eq!(&*cache.groups(7, 7).await, &[1007]);
        tokio::time::advance(GroupCache::TTL - Duration::from_secs(1)).await;
        assert_eq!(&*cache.groups(7, 7).await, &[1007]);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "still fresh: no lookup");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(&*cache.groups(7, 7).await, &[1007]);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "expired: looked up again");
    }

    #[tokio::test(start_paused = true)]
    async fn each_user_and_group_is_looked_up_on_its_own() {
        let (cache, calls) = counting();
        assert_eq!(&*cache.groups(7, 7).await, &[1007]);
        assert_eq!(&*cache.groups(8, 8).await, &[1008]);
        assert_eq!(&*cache.groups(7, 9).await, &[1007]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(&*cache.groups(8, 8).await, &[1008]);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "each key answered once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_lookups_hold_up_no_worker_and_are_made_once_per_user() {
        let calls = Arc::new(AtomicUsize::new(0));
        let released = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (seen, stuck) = (calls.clone(), released.clone());
        let lookup: Lookup = Arc::new(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            // A stuck NSS, until the test lets it go.
            let (flag, wake) = &*stuck;
            let mut go = flag.lock().unwrap();
            while !*go {
                go = wake.wait(go).unwrap();
            }
            vec![42]
        });
        let cache = Arc::new(GroupCache::new(lookup, GroupCache::TTL));
        // Two users, as many as the runtime has workers: were their lookups
        // made on the workers, both would be stuck.
        let askers: Vec<_> = (0..8)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.groups(5 + i % 2, 5).await })
            })
            .collect();
        // Work goes on while the lookups are stuck. Waited for on this
        // (non-worker) thread: the generous limit only turns a stalled
        // runtime into a failure instead of a hang.
        let (done, finished) = std::sync::mpsc::channel();
        tokio::spawn(async move {
            for _ in 0..8 {
                tokio::spawn(async {}).await.unwrap();
            }
            let _ = done.send(());
        });
        let served = finished.recv_timeout(Duration::from_secs(10));
        *released.0.lock().unwrap() = true;
        released.1.notify_all();
        assert!(served.is_ok(), "a stuck group lookup stalled the workers");
        for asker in askers {
            assert_eq!(&*asker.await.unwrap(), &[42]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one lookup per user");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn askers_that_give_up_start_no_more_lookups() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookup: Lookup = Arc::new(move |_, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            // A slow NSS.
            std::thread::sleep(Duration::from_millis(300));
            vec![42]
        });
        let cache = Arc::new(GroupCache::new(lookup, GroupCache::TTL));
        for _ in 0..20 {
            let asked = tokio::time::timeout(Duration::from_millis(1), cache.groups(5, 5)).await;
            assert!(asked.is_err(), "answered before the lookup could end");
        }
        assert_eq!(&*cache.groups(5, 5).await, &[42]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one lookup, whoever gave up"
        );
    }
}
