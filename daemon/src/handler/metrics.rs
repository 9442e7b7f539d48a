//! A metrics scrape (`GET /v1/metrics`): what the peer may see, gathered
//! at scrape time and rendered by [`super::exposition`].
//!
//! The HTTP layer calls this directly instead of sending a
//! `tokend_proto::Request`: the text format is an HTTP answer only, and a
//! protocol variant would change the wire protocol, its property tests and
//! the fuzz oracle for no client of the main socket.

use super::exposition::{self, Process, Row};
use super::process;
use crate::config::access::Peer;
use crate::state::Shared;
use crate::state::credential::Kind;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use super::exposition::CONTENT_TYPE;

/// Why a scrape has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("the metrics could not be written as text")]
    Encode(#[from] std::fmt::Error),
    #[error("the metrics task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The metrics `peer` may read: the credentials it may use (as `list`
/// shows them; an admin sees all), and for an admin the process's too.
pub async fn scrape(shared: &Arc<Shared>, peer: &Peer) -> Result<String, ScrapeError> {
    let admin = shared
        .policy()
        .is_admin(peer)
        .granted(peer, &shared.groups)
        .await;
    let visible = super::visible(shared, peer).await;
    let shared = shared.clone();
    // 100,000 credentials take a while to write out: off the async workers.
    tokio::task::spawn_blocking(move || {
        let now = shared.clock.now();
        let rows: Vec<Row> = visible
            .iter()
            .map(|cred| {
                let (state, expires_at) = cred.state_and_expiry(now);
                Row {
                    name: cred.name.to_string(),
                    state,
                    expires_at,
                    refreshes: cred.kind != Kind::Bearer,
                    counts: shared.metrics.counts(&cred.name),
                }
            })
            .collect();
        let process = admin.then(|| process_of(&shared));
        Ok(exposition::render(&rows, process.as_ref())?)
    })
    .await?
}

fn process_of(shared: &Shared) -> Process {
    let started = shared.clock.now() - shared.started.elapsed().as_secs() as i64;
    Process {
        start_time_secs: started,
        resident_memory_bytes: process::resident_memory_bytes(),
        open_fds: process::open_fds(),
        connections: shared.connections.load(Ordering::Relaxed),
    }
}
