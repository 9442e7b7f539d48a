//! The event bus behind `GET /v1/events` (issue 21, item 4): what happens
//! to credentials, announced from the one place each thing happens (a
//! token set published, a state change, a forecast's warning, an add or a
//! removal) to every event stream.
//!
//! A `tokio::sync::broadcast` channel: one ring of [`CAPACITY`] events
//! shared by all streams, so a stream that falls behind costs nothing and
//! is told so (`Lagged`) — it is dropped, never buffered for. An event
//! names its credential and what happened, nothing more: no token, no
//! reason. Each stream reads the credential as it is when the event is
//! delivered and checks, then, whether its peer may see it.

use tokend_proto::Principal;
use tokio::sync::broadcast;

/// Events kept for the slowest stream; one that falls further behind is
/// dropped. A refresh storm of thousands of credentials within a second
/// is the worst case the daemon plans for (docs/BENCHMARKS.md).
pub const CAPACITY: usize = 4096;

/// What happened to a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A new token set is served (a refresh, a login, another member's).
    Refreshed,
    /// The lifecycle state changed (`ready`, `needs-login`, `failing`).
    State,
    /// The refresh token's forecast came within the warning.
    Expiring,
    /// Added, or replaced by a new one of the same name.
    Added,
    /// Removed (or replaced): who could use it, as it was, since the
    /// credential itself is no longer there to ask.
    Removed {
        owner_uid: u32,
        allowed: Vec<Principal>,
    },
}

/// One event: the credential's name and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: std::sync::Arc<str>,
    pub kind: Kind,
}

/// The sending side, shared by the whole daemon.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            sender: broadcast::Sender::new(CAPACITY),
        }
    }
}

impl Events {
    /// Announces `kind` for credential `name`. Costs a clone of the name
    /// and nothing else when no stream listens.
    pub fn publish(&self, name: &str, kind: Kind) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let _ = self.sender.send(Event {
            name: name.into(),
            kind,
        });
    }

    /// A new listener, which sees every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_that_falls_behind_is_told_so() {
        let events = Events::default();
        events.publish("a", Kind::Added);
        let mut rx = events.subscribe();
        for _ in 0..=CAPACITY {
            events.publish("a", Kind::Refreshed);
        }
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
