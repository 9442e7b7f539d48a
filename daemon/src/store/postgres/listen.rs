//! Change notification: one connection per member `LISTEN`s on
//! `tokend_changes` and passes on the names other members changed; when it
//! is lost, it reconnects with capped backoff. On every (re)connection it
//! asks for a full resync: a notification sent while nobody listened is
//! gone. It also keeps the store's health, shown by `status`.

use super::connect::{Target, listener};
use crate::store::StoreEvent;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// The first and the longest pause between reconnection attempts.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The database connection as `status` shows it.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    connected: bool,
    /// Since when it is connected or reconnecting (Unix seconds).
    since: i64,
    last_error: Option<String>,
}

impl Health {
    /// The connection works (again).
    pub fn mark_connected(&self) {
        let mut s = self.lock();
        s.connected = true;
        s.since = now();
    }

    /// The connection is lost (or could not be made): `error` says why.
    pub fn lost(&self, error: String) {
        let mut s = self.lock();
        if s.connected || s.since == 0 {
            s.since = now();
        }
        s.connected = false;
        s.last_error = Some(error);
    }

    /// A statement failed: its error is the last one shown.
    pub fn note_error(&self, error: &str) {
        self.lock().last_error = Some(error.to_string());
    }

    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// `connected`, or `reconnecting since …: last error …`.
    pub fn describe(&self) -> String {
        let s = self.lock();
        let since = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(s.since).unwrap_or(0)),
        );
        match (&s.connected, &s.last_error) {
            (true, _) => "connected".into(),
            (false, Some(e)) => format!("reconnecting since {since}; last error: {e}"),
            (false, None) => format!("connecting since {since}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Listens until the receiving side is gone; runs on the store's runtime.
pub async fn run(
    target: Target,
    member: String,
    health: std::sync::Arc<Health>,
    events: UnboundedSender<StoreEvent>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listen_once(&target, &member, &health, &events).await {
            Ok(()) => return,
            Err(e) => {
                if health.is_connected() {
                    tracing::warn!(database = %target.shown, error = %e, "lost the database connection; tokens still valid are served, no refresh happens until it is back");
                    // It worked until now: the first retry comes soon.
                    backoff = FIRST_BACKOFF;
                }
                health.lost(e);
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: `Ok` when nobody wants the events any more, else
/// why it ended.
async fn listen_once(
    target: &Target,
    member: &str,
    health: &Health,
    events: &UnboundedSender<StoreEvent>,
) -> Result<(), String> {
    let (client, mut notifications) = listener(target)
        .await
        .map_err(|e| super::error::describe(&e))?;
    client
        .batch_execute("LISTEN tokend_changes")
        .await
        .map_err(|e| super::error::describe(&e))?;
    if !health.is_connected() {
        tracing::info!(database = %target.shown, "the database is back; resyncing");
    }
    health.mark_connected();
    // Whatever changed before LISTEN took effect (since the start-up load,
    // or during an outage) was told to nobody: compare everything.
    if events.send(StoreEvent::Resync).is_err() {
        return Ok(());
    }
    while let Some(n) = notifications.recv().await {
        let Some(name) = changed_by_other(n.payload(), member) else {
            continue;
        };
        if events.send(StoreEvent::Changed(name)).is_err() {
            return Ok(());
        }
    }
    // The channel closed: the connection ended. Find out why, if it says.
    let why = match client.simple_query("SELECT 1").await {
        Err(e) => super::error::describe(&e),
        Ok(_) => "the notification connection closed".into(),
    };
    Err(why)
}

/// The credential a notification names, unless this member made the change.
fn changed_by_other(payload: &str, member: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    if v.get("m").and_then(|m| m.as_str()) == Some(member) {
        return None;
    }
    v.get("n").and_then(|n| n.as_str()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_own_changes_are_not_passed_on() {
        let payload = r#"{"m":"tokend-a","n":"up"}"#;
        assert_eq!(changed_by_other(payload, "tokend-b").as_deref(), Some("up"));
        assert_eq!(changed_by_other(payload, "tokend-a"), None);
        assert_eq!(changed_by_other("garbage", "tokend-b"), None);
    }
}
