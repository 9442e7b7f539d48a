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
    /// Why it was refused or failed: a short fixed reason derived from the
    /// error's kind (`handler/audit.rs`), never an error's free text (a
    /// URL quoted whole may carry a password).
    pub reason: Option<&'a str>,
    /// Which credential of that name the request met (`None`: none).
    pub incarnation: Option<i64>,
}

/// The longest reason kept, in bytes.
const REASON_BYTES: usize = 240;

/// The longest executable path kept, in bytes (cut like a name, marked
/// `…`): a queue of [`QUEUE_CAP`] entries stays within a few tens of MiB
/// even when every path is long.
pub const EXE_BYTES: usize = 256;

/// Processes whose executable is cached until the next write; beyond it,
/// a process's executable is read when its request is recorded.
const EXE_CACHE_CAP: usize = QUEUE_CAP;

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
    incarnation: Option<i64>,
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
    /// Each peer process's executable as read before its request was
    /// answered ([`AuditLog::note_peer`]), until the next write: one
    /// `readlink` per process per batch.
    exes: HashMap<i32, Option<Box<str>>>,
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
    /// Held for the whole of a write: the writer task and `tokenctl
    /// audit`'s inline write never overlap (entries one of them took could
    /// otherwise be put back over the other's, or written out of order).
    writing: Mutex<()>,
}

impl AuditLog {
    pub fn new(enabled: bool) -> AuditLog {
        AuditLog {
            enabled: AtomicBool::new(enabled),
            queue: Mutex::new(Queue::default()),
            dropped: AtomicU64::new(0),
            ready: tokio::sync::Notify::new(),
            writing: Mutex::new(()),
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

    /// Reads `peer`'s executable now, before its request is answered (an
    /// answer may take seconds: the client may have exited, its pid been
    /// reused), unless this process's was read since the last write: a
    /// process asking a thousand times a second costs one `readlink` a
    /// batch, and no allocation after the first.
    pub fn note_peer(&self, peer: &Peer) {
        if !self.is_enabled() {
            return;
        }
        let Some(pid) = peer.pid else { return };
        {
            let queue = self.lock();
            if queue.exes.contains_key(&pid) || queue.exes.len() >= EXE_CACHE_CAP {
                return;
            }
        }
        let exe = executable(Some(pid)).map(|e| kept(&e, EXE_BYTES).into());
        self.lock().exes.entry(pid).or_insert(exe);
    }

    /// Queues what `peer` asked and how it ended. The peer's executable is
    /// the one [`note_peer`](Self::note_peer) read before the request was
    /// answered (read now if it was not); a request identical to one
    /// already queued only counts. The user's name is looked up by the
    /// writer, off the request path. The name, executable and reason are
    /// stored escaped ([`tokend_proto::escaped`]: no control or bidi
    /// character reaches a column, `\0` included) and cut.
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
            incarnation: event.incarnation,
        };
        let name = event.credential.unwrap_or("");
        let name = kept(name, tokend_proto::LOGGED_NAME_BYTES);
        if self.count_again(&asker, &name) {
            return;
        }
        let cached = peer.pid.and_then(|pid| self.lock().exes.get(&pid).cloned());
        let exe = match cached {
            Some(exe) => exe.map(String::from),
            None => executable(peer.pid).map(|e| kept(&e, EXE_BYTES).into_owned()),
        };
        let pending = Pending {
            at_ms: now_ms(),
            count: 1,
            reason: event.reason.map(|r| kept(r, REASON_BYTES).into_owned()),
            exe,
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
                    incarnation: asker.incarnation,
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
        // Added to, never replaced: two failed writes keep both.
        queue.retry.extend(entries);
    }

    /// Writes everything queued to `store` in one transaction, with each
    /// peer's user name looked up now (once per uid per batch, off the
    /// request path). Blocking: call it off the async workers. Entries a
    /// failed write could not store are queued again; how many were
    /// written.
    pub fn write_queued(&self, store: &crate::store::Store) -> Result<usize, StoreError> {
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
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
            Ok(dropped) => {
                // Entries the store refused one by one (a PostgreSQL data
                // error): dropped, so that they never block the rest.
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
                Ok(entries.len() - usize::try_from(dropped).unwrap_or(0).min(entries.len()))
            }
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

/// `text` escaped ([`tokend_proto::escaped`]) and cut to `bytes`;
/// borrowed (no allocation) when it needs neither.
fn kept(text: &str, bytes: usize) -> std::borrow::Cow<'_, str> {
    match tokend_proto::escaped(text) {
        std::borrow::Cow::Borrowed(text) => cut(text, bytes),
        std::borrow::Cow::Owned(text) => cut(&text, bytes).into_owned().into(),
    }
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
            incarnation: None,
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
                incarnation: None,
            },
        );
        let e = &log.take()[0];
        assert!(e.credential.as_ref().unwrap().len() < 1000);
        assert!(e.reason.as_ref().unwrap().len() <= REASON_BYTES + 3);
    }

    #[test]
    fn control_and_bidi_characters_are_stored_escaped() {
        let log = AuditLog::new(true);
        let nul = "a\0b\nc\r\u{202e}d\u{2069}";
        log.record(
            &peer(),
            Event {
                reason: Some("why\0\n"),
                ..event(nul)
            },
        );
        let e = &log.take()[0];
        let name = e.credential.as_deref().unwrap();
        assert_eq!(name, "a\\u{0}b\\u{a}c\\u{d}\\u{202e}d\\u{2069}");
        assert_eq!(e.reason.as_deref(), Some("why\\u{0}\\u{a}"));
        // Folding goes by the stored name: the same request counts again.
        log.record(&peer(), event(nul));
        log.record(&peer(), event(nul));
        assert_eq!(log.take()[0].count, 2);
    }

    #[test]
    fn two_put_backs_keep_both() {
        let log = AuditLog::new(true);
        log.record(&peer(), event("first"));
        let first = log.take();
        log.record(&peer(), event("second"));
        let second = log.take();
        log.put_back(first);
        log.put_back(second);
        let names: Vec<_> = log
            .take()
            .into_iter()
            .map(|e| e.credential.unwrap())
            .collect();
        assert_eq!(names, ["first", "second"]);
    }

    #[test]
    fn an_entry_carries_the_incarnation_and_two_incarnations_do_not_fold() {
        let log = AuditLog::new(true);
        for incarnation in [Some(1), Some(2), Some(2), None] {
            log.record(
                &peer(),
                Event {
                    incarnation,
                    ..event("up")
                },
            );
        }
        let mut seen: Vec<_> = log
            .take()
            .into_iter()
            .map(|e| (e.incarnation, e.count))
            .collect();
        seen.sort();
        assert_eq!(seen, [(None, 1), (Some(1), 1), (Some(2), 2)]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_executable_noted_before_the_answer_is_the_one_recorded() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let sleeper = Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(pid),
        };
        let log = AuditLog::new(true);
        log.note_peer(&sleeper);
        child.kill().unwrap();
        child.wait().unwrap();
        log.record(&sleeper, event("up"));
        let exe = log.take()[0].exe.clone().unwrap();
        assert_ne!(exe, GONE);
        assert!(exe.ends_with("sleep"), "{exe}");
        // Noted until the next write only: after it, read again.
        log.record(&sleeper, event("up"));
        assert_eq!(log.take()[0].exe.as_deref(), Some(GONE));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_long_executable_path_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().to_path_buf();
        for _ in 0..3 {
            path.push("d".repeat(120));
        }
        std::fs::create_dir_all(&path).unwrap();
        let sleep = path.join("sleep\u{202e}");
        let which = std::process::Command::new("sh")
            .args(["-c", "command -v sleep"])
            .output()
            .unwrap();
        let real = String::from_utf8(which.stdout).unwrap();
        std::fs::copy(real.trim(), &sleep).unwrap();
        let mut child = std::process::Command::new(&sleep)
            .arg("60")
            .spawn()
            .unwrap();
        let long = Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(child.id() as i32),
        };
        let log = AuditLog::new(true);
        log.note_peer(&long);
        log.record(&long, event("up"));
        child.kill().unwrap();
        child.wait().unwrap();
        let exe = log.take()[0].exe.clone().unwrap();
        assert!(exe.len() <= EXE_BYTES + '…'.len_utf8(), "{}", exe.len());
        assert!(exe.ends_with('…') && exe.starts_with(dir.path().to_str().unwrap()));
    }
}
