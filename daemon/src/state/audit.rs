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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    pub op: &'a str,
    pub credential: Option<&'a str>,
    pub outcome: Outcome,
    /// Why it was refused or failed: an error's sentence, never a secret
    /// (`tokend_proto::Secret` keeps secrets out of every error).
    pub reason: Option<&'a str>,
}

/// The longest reason kept, in bytes: enough for the sentence, not for a
/// 60 KiB name quoted in it.
const REASON_BYTES: usize = 240;

/// The entries waiting to be written, and what could not wait.
#[derive(Debug)]
pub struct AuditLog {
    enabled: AtomicBool,
    queue: Mutex<Vec<AuditEntry>>,
    /// Entries dropped because the queue was full, since the last report.
    dropped: AtomicU64,
    /// Wakes the writer when a batch is ready.
    ready: tokio::sync::Notify,
}

impl AuditLog {
    pub fn new(enabled: bool) -> AuditLog {
        AuditLog {
            enabled: AtomicBool::new(enabled),
            queue: Mutex::new(Vec::new()),
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

    /// Queues what `peer` asked and how it ended, with the peer's
    /// executable as it is now (the process may be gone by the time the
    /// batch is written). The user's name is looked up by the writer, off
    /// the request path.
    pub fn record(&self, peer: &Peer, event: Event<'_>) {
        if !self.is_enabled() {
            return;
        }
        self.push(AuditEntry {
            at_ms: now_ms(),
            credential: event
                .credential
                .map(|c| cut(c, tokend_proto::LOGGED_NAME_BYTES)),
            op: event.op.to_string(),
            outcome: event.outcome.as_str().to_string(),
            reason: event.reason.map(|r| cut(r, REASON_BYTES)),
            uid: peer.uid,
            user: None,
            pid: peer.pid,
            exe: executable(peer.pid),
            member: None,
        });
    }

    /// Queues `entry`, or counts it as dropped when the queue is full.
    pub fn push(&self, entry: AuditEntry) {
        let len = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() >= QUEUE_CAP {
                drop(queue);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            queue.push(entry);
            queue.len()
        };
        if len == BATCH {
            self.ready.notify_one();
        }
    }

    /// Everything queued, oldest first; the queue is left empty.
    pub fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back entries a failed write could not store, ahead of those
    /// queued meanwhile, within the cap (the oldest beyond it are dropped
    /// and counted).
    pub fn put_back(&self, mut entries: Vec<AuditEntry>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        entries.append(&mut queue);
        let over = entries.len().saturating_sub(QUEUE_CAP);
        if over > 0 {
            entries.drain(..over);
            self.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
        *queue = entries;
    }

    /// How many entries were dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
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

/// `text` cut to `bytes` at a character boundary (a refused name was
/// never validated: it may be 60 KiB long).
fn cut(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_string();
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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
        for _ in 0..QUEUE_CAP + 3 {
            log.record(&peer(), event("up"));
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
