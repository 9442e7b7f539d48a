//! The audit trail's queue: the request path pushes an entry and goes on;
//! `app/audit.rs` writes what is queued in batches. A token request never
//! waits on the disk (or the database): the push is a short
//! `std::sync::Mutex` section, and when the queue is full the entry is
//! counted as dropped rather than waited for.

use crate::config::access::Peer;
use crate::store::StoreError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokend_proto::AuditEntry;

/// Entries held before new ones are dropped: about a minute of a busy
/// daemon's writes falling behind (a full disk, a database away), in a
/// few MiB.
pub const QUEUE_CAP: usize = 65_536;

/// A queue this long is written at once rather than at the next tick:
/// large enough that a busy daemon commits (and fsyncs) a few times a
/// second, not hundreds.
pub const BATCH: usize = 4096;

/// How a request ended, as the audit trail says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// The peer may not do it.
    Refused,
    /// No credential of that name.
    NotFound,
    /// Anything else that went wrong.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::NotFound => "not_found",
            Outcome::Failed => "failed",
        }
    }
}

/// What one request asked, of which credential, and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub op: &'static str,
    pub credential: Option<&'a str>,
    pub outcome: Outcome,
    /// Why it was refused or failed: an error's sentence, never a secret
    /// (`tokend_proto::Secret` keeps secrets out of every error).
    pub reason: Option<&'a str>,
}

/// The longest reason kept, in bytes: enough for the sentence, not for a
/// 60 KiB name quoted in it.
const REASON_BYTES: usize = 240;

/// Who asked what, and how it ended: the part of an entry that, with the
/// credential, decides whether two requests fold into one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Asker {
    uid: u32,
    pid: Option<i32>,
    op: &'static str,
    outcome: Outcome,
    /// The request named a credential (its name is the inner key; "" when
    /// this is false).
    named: bool,
}

/// An entry waiting to be written: the first of `count` identical
/// requests.
#[derive(Debug)]
struct Pending {
    at_ms: i64,
    count: u32,
    reason: Option<String>,
    exe: Option<String>,
}

/// What is queued: identical requests of one process (same uid, pid,
/// operation, outcome and credential) since the last write are one entry
/// with a count, so a process asking a thousand times a second costs one
/// row, one `readlink` and no allocation after its first request.
#[derive(Debug, Default)]
struct Queue {
    folded: HashMap<Asker, HashMap<Box<str>, Pending>>,
    /// Entries (not requests) queued.
    len: usize,
    /// Entries a failed write could not store, written first next time.
    retry: Vec<AuditEntry>,
}

/// The entries waiting to be written, and what could not wait.
#[derive(Debug)]
pub struct AuditLog {
    enabled: AtomicBool,
    queue: Mutex<Queue>,
    /// Entries dropped because the queue was full, since the last report.
    dropped: AtomicU64,
    /// Wakes the writer when a batch is ready.
    ready: tokio::sync::Notify,
}

impl AuditLog {
    pub fn new(enabled: bool) -> AuditLog {
        AuditLog {
            enabled: AtomicBool::new(enabled),
            queue: Mutex::new(Queue::default()),
            dropped: AtomicU64::new(0),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// `[audit] enabled`, at start and on reload.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues what `peer` asked and how it ended. The peer's executable is
    /// read now, at its first such request since the last write (the
    /// process may be gone by the time the batch is written); a request
    /// identical to one already queued only counts. The user's name is
    /// looked up by the writer, off the request path.
    pub fn record(&self, peer: &Peer, event: Event<'_>) {
        if !self.is_enabled() {
            return;
        }
        let asker = Asker {
            uid: peer.uid,
            pid: peer.pid,
            op: event.op,
            outcome: event.outcome,
            named: event.credential.is_some(),
        };
        let name = event.credential.unwrap_or("");
        let name = cut(name, tokend_proto::LOGGED_NAME_BYTES);
        if self.count_again(&asker, &name) {
            return;
        }
        let pending = Pending {
            at_ms: now_ms(),
            count: 1,
            reason: event.reason.map(|r| cut(r, REASON_BYTES).into_owned()),
            exe: executable(peer.pid),
        };
        self.insert(asker, name.into(), pending);
    }

    /// Counts one more request like a queued entry, if there is one.
    fn count_again(&self, asker: &Asker, name: &str) -> bool {
        let mut queue = self.lock();
        match queue.folded.get_mut(asker).and_then(|m| m.get_mut(name)) {
            Some(pending) => {
                pending.count = pending.count.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Queues a new entry, or counts it as dropped when the queue is full.
    fn insert(&self, asker: Asker, name: Box<str>, pending: Pending) {
        let len = {
            let mut queue = self.lock();
            if queue.len >= QUEUE_CAP {
                drop(queue);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let by_name = queue.folded.entry(asker).or_default();
            match by_name.entry(name) {
                // Queued by another request meanwhile (the executable is
                // read outside the lock).
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.get_mut().count = e.get().count.saturating_add(1);
                    return;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(pending);
                }
            }
            queue.len += 1;
            queue.len
        };
        if len == BATCH {
            self.ready.notify_one();
        }
    }

    /// Everything queued, oldest first (entries a failed write left
    /// first); the queue is left empty.
    pub fn take(&self) -> Vec<AuditEntry> {
        let queue = std::mem::take(&mut *self.lock());
        let mut entries = queue.retry;
        for (asker, by_name) in queue.folded {
            for (name, p) in by_name {
                entries.push(AuditEntry {
                    at_ms: p.at_ms,
                    credential: asker.named.then(|| name.into_string()),
                    op: asker.op.to_string(),
                    outcome: asker.outcome.as_str().to_string(),
                    reason: p.reason,
                    uid: asker.uid,
                    user: None,
                    pid: asker.pid,
                    exe: p.exe,
                    member: None,
                    count: p.count,
                });
            }
        }
        entries.sort_by_key(|e| e.at_ms);
        entries
    }

    /// Keeps entries a failed write could not store, for the next write,
    /// within the cap (the oldest beyond it are dropped and counted).
    pub fn put_back(&self, mut entries: Vec<AuditEntry>) {
        let mut queue = self.lock();
        let room = QUEUE_CAP.saturating_sub(queue.len);
        let over = entries.len().saturating_sub(room);
        if over > 0 {
            entries.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
        queue.len += entries.len();
        queue.retry = entries;
    }

    /// Writes everything queued to `store` in one transaction, with each
    /// peer's user name looked up now (once per uid per batch, off the
    /// request path). Blocking: call it off the async workers. Entries a
    /// failed write could not store are queued again; how many were
    /// written.
    pub fn write_queued(&self, store: &crate::store::Store) -> Result<usize, StoreError> {
        let mut entries = self.take();
        if entries.is_empty() {
            return Ok(0);
        }
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        for e in &mut entries {
            e.user = names
                .entry(e.uid)
                .or_insert_with(|| crate::store::names::user_name(e.uid))
                .clone();
        }
        match store.append_audit(&entries) {
            Ok(()) => Ok(entries.len()),
            Err(e) => {
                self.put_back(entries);
                Err(e)
            }
        }
    }

    /// How many entries were dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Waits until a batch is ready (see [`BATCH`]).
    pub async fn batch_ready(&self) {
        self.ready.notified().await
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `text` cut to `bytes` at a character boundary, marked with `…` (a
/// refused name was never validated: it may be 60 KiB long); borrowed when
/// it fits.
fn cut(text: &str, bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= bytes {
        return text.into();
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// What `gone` stands for: the peer's process exited before its request
/// was recorded, so its executable cannot be read any more.
pub const GONE: &str = "gone";

/// The peer's executable, read now from `/proc/PID/exe` (one `readlink`):
/// [`GONE`] if the process has exited, `unreadable` if the daemon may not
/// read it; `None` without a pid, or off Linux.
pub fn executable(pid: Option<i32>) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        let pid = pid.filter(|p| *p > 0)?;
        Some(match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(path) => path.to_string_lossy().into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => GONE.to_string(),
            Err(_) => "unreadable".to_string(),
        })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(std::process::id() as i32),
        }
    }

    fn event(credential: &str) -> Event<'_> {
        Event {
            op: "token",
            credential: Some(credential),
            outcome: Outcome::Ok,
            reason: None,
        }
    }

    #[test]
    fn a_record_names_the_peer_and_its_executable_as_it_is_now() {
        let log = AuditLog::new(true);
        log.record(&peer(), event("up"));
        let entries = log.take();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!((e.uid, e.pid), (1000, Some(std::process::id() as i32)));
        assert_eq!((e.op.as_str(), e.outcome.as_str()), ("token", "ok"));
        assert_eq!(e.credential.as_deref(), Some("up"));
        #[cfg(target_os = "linux")]
        assert_eq!(
            e.exe.as_deref(),
            Some(std::env::current_exe().unwrap().to_str().unwrap())
        );
        assert!(log.take().is_empty(), "taken once");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_process_that_exited_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert_eq!(executable(Some(pid)).as_deref(), Some(GONE));
        assert_eq!(executable(None), None);
    }

    #[test]
    fn a_disabled_log_records_nothing() {
        let log = AuditLog::new(false);
        log.record(&peer(), event("up"));
        assert!(log.take().is_empty());
        log.set_enabled(true);
        log.record(&peer(), event("up"));
        assert_eq!(log.take().len(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let log = AuditLog::new(true);
        for i in 0..QUEUE_CAP + 3 {
            log.record(&peer(), event(&format!("c{i}")));
        }
        assert_eq!(log.take_dropped(), 3);
        assert_eq!(log.take_dropped(), 0, "counted once");
        let taken = log.take();
        assert_eq!(taken.len(), QUEUE_CAP);
        log.record(&peer(), event("new"));
        log.put_back(taken);
        let again = log.take();
        assert_eq!(again.len(), QUEUE_CAP, "the cap holds after a put-back");
        assert_eq!(again.last().unwrap().credential.as_deref(), Some("new"));
        assert_eq!(log.take_dropped(), 1, "the oldest went");
    }

    #[test]
    fn identical_requests_of_one_process_fold_into_one_entry_until_written() {
        let log = AuditLog::new(true);
        for _ in 0..1000 {
            log.record(&peer(), event("up"));
        }
        log.record(&peer(), event("other"));
        let refused = Event {
            outcome: Outcome::Refused,
            reason: Some("no"),
            ..event("up")
        };
        log.record(&peer(), refused);
        let nameless = Event {
            credential: None,
            ..event("")
        };
        log.record(&peer(), nameless);
        log.record(&peer(), event(""));
        let another = Peer {
            pid: Some(1),
            ..peer()
        };
        log.record(&another, event("up"));
        let mut seen: Vec<_> = log
            .take()
            .into_iter()
            .map(|e| (e.credential, e.outcome, e.pid == Some(1), e.count))
            .collect();
        seen.sort();
        let name = |n: &str| Some(n.to_string());
        assert_eq!(
            seen,
            [
                (None, "ok".into(), false, 1),
                (name(""), "ok".into(), false, 1),
                (name("other"), "ok".into(), false, 1),
                (name("up"), "ok".into(), false, 1000),
                (name("up"), "ok".into(), true, 1),
                (name("up"), "refused".into(), false, 1),
            ]
        );
        log.record(&peer(), event("up"));
        assert_eq!(log.take()[0].count, 1, "a new entry after the write");
    }

    #[test]
    fn a_long_name_and_reason_are_cut() {
        let log = AuditLog::new(true);
        let name = "n".repeat(60_000);
        let reason = "é".repeat(1000);
        log.record(
            &peer(),
            Event {
                op: "token",
                credential: Some(&name),
                outcome: Outcome::Failed,
                reason: Some(&reason),
            },
        );
        let e = &log.take()[0];
        assert!(e.credential.as_ref().unwrap().len() < 1000);
        assert!(e.reason.as_ref().unwrap().len() <= REASON_BYTES + 3);
    }
}
