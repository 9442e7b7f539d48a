//! `GET /v1/events`: a live stream of what happens to the credentials the
//! peer may use, as Server-Sent Events (docs/HTTP.md, "Events").
//!
//! The stream subscribes to the daemon's event bus (`state/events.rs`)
//! first, then sends the current state of each visible credential
//! (`current`), then one event per change: `refreshed`, `state`,
//! `expiring`, `added`, `removed`. Each event is checked against the
//! peer's access *when it is delivered* (an `allow`, `deny` or a new owner
//! in between counts), and carries the credential as it is then. A comment
//! line every [`HEARTBEAT`] keeps proxies and clients from timing out.
//!
//! A stream that falls behind the bus (its peer does not read) ends with a
//! `dropped` event; one whose peer reads nothing at all is cut off by the
//! connection's watchdog (`activity.rs`, `Phase::Streaming`). Either way
//! nothing is buffered for it beyond the bus's shared ring.

use super::errors::ApiError;
use crate::config::access::Peer;
use crate::handler;
use crate::proxy::ProxyBody;
use crate::state::Shared;
use crate::state::events::{Event, Kind};
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode, header};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{Request as Ask, Response as Answer};
use tokio::sync::broadcast::{self, error::RecvError};

/// How often an idle stream sends a comment line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Marks an answer that streams for as long as its peer reads: the
/// connection holds it to a write deadline instead of the idle and head
/// deadlines (`connection.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LongLived;

/// What the query asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    /// Only this credential.
    credential: Option<String>,
    /// Put the new access token in `refreshed` events (for a peer that may
    /// read it).
    include_token: bool,
}

/// `credential=NAME` and `include_token=true|false`; anything else is a 400.
fn query(text: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for pair in text.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "credential" => {
                tokend_proto::validate_name(value)
                    .map_err(|e| ApiError::BadRequest(format!("credential: {e}")))?;
                q.credential = Some(value.to_string());
            }
            "include_token" => {
                q.include_token = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "include_token must be true or false, not {:?}",
                            tokend_proto::logged(value)
                        )));
                    }
                }
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "/v1/events takes credential=NAME and include_token=true|false, not {:?}",
                    tokend_proto::logged(key)
                )));
            }
        }
    }
    Ok(q)
}

/// Answers `GET /v1/events`: checks the query and the named credential
/// (404, 403 as `show` answers), then streams.
pub async fn answer(
    shared: &Arc<Shared>,
    peer: &Peer,
    parts: &Parts,
) -> Result<Response<ProxyBody>, ApiError> {
    let q = query(parts.uri.query())?;
    // Subscribed before the current state is read: nothing that happens
    // in between is missed (at worst it is told twice).
    let events = shared.events.subscribe();
    let current = current(shared, peer, q.credential.as_deref()).await?;
    let mut pending: VecDeque<Bytes> = current.iter().map(|info| frame("current", info)).collect();
    pending.push_front(Bytes::from_static(b": tokend events\n\n"));
    let feed = Feed {
        shared: shared.clone(),
        peer: peer.clone(),
        query: q,
        events,
        pending,
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT),
        done: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let bytes = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(Frame::data(bytes)), feed))
    });
    let mut response = Response::new(crate::proxy::boxed(StreamBody::new(stream)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response.extensions_mut().insert(LongLived);
    Ok(response)
}

/// The credentials to start with: the one named (refused as `show`
/// refuses it), or every one the peer may use.
async fn current(
    shared: &Arc<Shared>,
    peer: &Peer,
    name: Option<&str>,
) -> Result<Vec<tokend_proto::CredentialInfo>, ApiError> {
    let request = match name {
        Some(name) => Ask::Show {
            name: name.to_string(),
        },
        None => Ask::List,
    };
    match handler::handle(shared, peer, request).await {
        Answer::Credential(info) => Ok(vec![*info]),
        Answer::List(infos) => Ok(infos),
        Answer::Error(e) => Err(ApiError::Daemon(e)),
        _ => Err(ApiError::Internal(
            "the daemon gave another kind of answer where it should not; this is a bug in tokend"
                .into(),
        )),
    }
}

/// One stream's state between frames.
struct Feed {
    shared: Arc<Shared>,
    peer: Peer,
    query: Query,
    events: broadcast::Receiver<Event>,
    /// Frames ready to send (the current state, first).
    pending: VecDeque<Bytes>,
    heartbeat: tokio::time::Interval,
    /// The stream ends after the frame in hand.
    done: bool,
}

impl Feed {
    /// The next frame, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(bytes) = self.pending.pop_front() {
            return Some(bytes);
        }
        if self.done {
            return None;
        }
        loop {
            tokio::select! {
                received = self.events.recv() => match received {
                    Ok(event) => {
                        if let Some(bytes) = self.render(&event).await {
                            return Some(bytes);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::info!(uid = self.peer.uid, missed, "an event stream fell behind; dropped");
                        self.done = true;
                        return Some(frame("dropped", &Dropped {
                            reason: format!("the stream fell {missed} events behind (the client does not read fast enough); reconnect for the current state"),
                        }));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(b": heartbeat\n\n")),
            }
        }
    }

    /// `event` as a frame for this peer, or `None` when it is not for it
    /// (another credential, one it may not use, one gone meanwhile).
    async fn render(&self, event: &Event) -> Option<Bytes> {
        if self
            .query
            .credential
            .as_deref()
            .is_some_and(|n| n != &*event.name)
        {
            return None;
        }
        let name = &*event.name;
        if let Kind::Removed { owner_uid, allowed } = &event.kind {
            return handler::could_use(&self.shared, &self.peer, *owner_uid, allowed)
                .await
                .then(|| frame("removed", &Named { name }));
        }
        let info = handler::shown_to(&self.shared, &self.peer, name).await?;
        Some(match &event.kind {
            Kind::Added => frame("added", &info),
            Kind::State => frame(
                "state",
                &StateChange {
                    name,
                    state: info.state.as_str(),
                    reason: info.reason.as_deref(),
                },
            ),
            Kind::Expiring => frame(
                "expiring",
                &Expiring {
                    name,
                    refresh_expires_at: info.refresh_expires_at,
                },
            ),
            Kind::Refreshed => {
                let token = match self.query.include_token {
                    true => self.token(name).await,
                    false => None,
                };
                frame(
                    "refreshed",
                    &Refreshed {
                        name,
                        state: info.state.as_str(),
                        expires_at: info.expires_at,
                        last_refresh_at: info.last_refresh_at,
                        refresh_expires_at: info.refresh_expires_at,
                        access_token: token.as_ref().map(|t| t.expose()),
                    },
                )
            }
            Kind::Removed { .. } => return None,
        })
    }

    /// The access token held, for a peer that may use the credential (the
    /// check `GET …/token` makes), while it is valid; nothing is refreshed
    /// for a stream.
    async fn token(&self, name: &str) -> Option<tokend_proto::Secret> {
        handler::held_token(&self.shared, &self.peer, name).await
    }
}

/// One event as SSE: its name, and its JSON on one `data:` line (JSON has
/// no raw newlines).
fn frame<T: Serialize>(event: &str, data: &T) -> Bytes {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct StateChange<'a> {
    name: &'a str,
    state: &'a str,
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Expiring<'a> {
    name: &'a str,
    refresh_expires_at: Option<i64>,
}

#[derive(Serialize)]
struct Refreshed<'a> {
    name: &'a str,
    state: &'a str,
    expires_at: Option<i64>,
    last_refresh_at: Option<i64>,
    refresh_expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
}

#[derive(Serialize)]
struct Dropped {
    reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_a_credential_and_asks_for_tokens_or_is_refused() {
        assert_eq!(query(None).unwrap(), Query::default());
        let q = query(Some("credential=up&include_token=true")).unwrap();
        assert_eq!(q.credential.as_deref(), Some("up"));
        assert!(q.include_token);
        for bad in [
            "credential=UP%2F..",
            "credential=",
            "include_token=yes",
            "since=5",
        ] {
            assert!(
                matches!(query(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_event_is_one_named_block_of_one_json_line() {
        let bytes = frame("state", &Named { name: "a\nb" });
        assert_eq!(&bytes[..], b"event: state\ndata: {\"name\":\"a\\nb\"}\n\n");
    }
}
