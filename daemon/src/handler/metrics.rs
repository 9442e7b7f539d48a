//! A metrics scrape (`GET /v1/metrics`, or `GET /metrics` on a `[metrics]
//! listen` address): what the scraper may see, written out as a stream of
//! chunks by [`super::exposition`].
//!
//! The HTTP layer calls this directly instead of sending a
//! `tokend_proto::Request`: the text format is an HTTP answer only, and a
//! protocol variant would change the wire protocol, its property tests and
//! the fuzz oracle for no client of the main socket.

use super::exposition::{Exposition, View};
use crate::config::access::Peer;
use crate::error::Error;
use crate::state::Shared;
use hyper::body::Bytes;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The media type of a scrape's text: Prometheus text format 0.0.4.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The size of the chunks a scrape is sent in; with [`CHUNKS_AHEAD`],
/// all the text a scrape holds at once, however many credentials.
const CHUNK_BYTES: usize = 64 * 1024;

/// Chunks written ahead of the reader. A scraper that stops reading
/// stops the writing: it waits, holding its chunks, and the whole scrape
/// must be written within the idle deadline (`limits.idle_timeout_secs`),
/// or it is cut. With at most four scrapes at once, one per uid
/// (`state/metrics.rs`), slow scrapers hold at most four threads, each
/// for that long.
const CHUNKS_AHEAD: usize = 4;

/// A scrape's text, chunk by chunk.
pub struct Scrape {
    rx: mpsc::Receiver<Bytes>,
}

/// The scrape was cut before its end (its reader too slow, the writing
/// failed): the answer must not look complete.
#[derive(Debug, thiserror::Error)]
#[error(
    "the metrics scrape was cut short (the reader stopped reading, or the text could not be written)"
)]
pub struct Cut;

impl Scrape {
    /// The next chunk; `None` after the last one.
    pub async fn next(&mut self) -> Option<Result<Bytes, Cut>> {
        match self.rx.recv().await {
            // The end marker: everything was written.
            Some(chunk) if chunk.is_empty() => None,
            Some(chunk) => Some(Ok(chunk)),
            None => Some(Err(Cut)),
        }
    }
}

/// Where a scrape comes in, which decides what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `http.sock`: the credentials the peer may use (as `list` shows
    /// them; an admin sees all), and for an admin the daemon's own series.
    Socket,
    /// A `[metrics] listen` address: every credential, labelled by name
    /// only if the operator said so (`credential_labels`), and the
    /// daemon's series without anything per user.
    Listener { credential_labels: bool },
}

/// Starts writing the scrape `peer` asked for on `surface`; its text
/// arrives in chunks. Busy when four scrapes are being written, or one of
/// this peer's uid.
pub async fn scrape(shared: &Arc<Shared>, peer: &Peer, surface: Surface) -> Result<Scrape, Error> {
    let slot = shared.metrics.begin_scrape(peer.uid).ok_or_else(|| {
        Error::Busy(
            "a metrics scrape is already being written for this user (or four in all); try again when it ends".into(),
        )
    })?;
    let view = match surface {
        Surface::Socket => {
            let admin = super::is_admin(shared, peer).await;
            View {
                credentials: super::visible(shared, peer).await,
                names: true,
                daemon: admin,
                per_user: admin,
            }
        }
        Surface::Listener { credential_labels } => View {
            credentials: shared.registry.all(),
            names: credential_labels,
            daemon: true,
            per_user: false,
        },
    };
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    let patience = Duration::from_secs(shared.config().limits.idle_timeout_secs);
    let chunks = Chunks {
        text: String::with_capacity(CHUNK_BYTES),
        tx,
        runtime: tokio::runtime::Handle::current(),
        deadline: tokio::time::Instant::now() + patience,
    };
    let exposition = Exposition {
        shared: shared.clone(),
        view,
    };
    // 100,000 credentials take a while to write out: off the async workers.
    tokio::task::spawn_blocking(move || {
        write(exposition, chunks);
        drop(slot);
    });
    Ok(Scrape { rx })
}

/// Writes the whole text, then the end marker. It stops early when the
/// reader has gone or stalled, and the missing marker tells it so.
fn write(exposition: Exposition, mut chunks: Chunks) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(exposition));
    let written = prometheus_client::encoding::prometheus_text::encode(&mut chunks, &registry);
    if written.is_ok() && chunks.send().is_ok() {
        let _ = chunks.deliver(Bytes::new());
    }
}

/// The writer a scrape's text goes to: full chunks are sent as they fill.
struct Chunks {
    text: String,
    tx: mpsc::Sender<Bytes>,
    runtime: tokio::runtime::Handle,
    /// When the whole scrape must have been handed to the reader.
    deadline: tokio::time::Instant,
}

impl Chunks {
    fn send(&mut self) -> std::fmt::Result {
        if self.text.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.text, String::with_capacity(CHUNK_BYTES));
        self.deliver(Bytes::from(full))
    }

    /// Hands one chunk to the reader, waiting for room until the deadline.
    fn deliver(&self, chunk: Bytes) -> std::fmt::Result {
        let sent = self
            .runtime
            .block_on(tokio::time::timeout_at(self.deadline, self.tx.send(chunk)));
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => Err(std::fmt::Error),
        }
    }
}

impl std::fmt::Write for Chunks {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.text.push_str(s);
        if self.text.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    fn chunks(ahead: usize, patience: Duration) -> (Chunks, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(ahead);
        let chunks = Chunks {
            text: String::new(),
            tx,
            runtime: tokio::runtime::Handle::current(),
            deadline: tokio::time::Instant::now() + patience,
        };
        (chunks, rx)
    }

    /// The text goes out in chunks as it is written, and the end marker
    /// tells a whole scrape from a cut one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_text_is_sent_in_chunks_then_marked_complete() {
        let (mut chunks, rx) = chunks(2, Duration::from_secs(10));
        let writer = tokio::task::spawn_blocking(move || {
            let line = "x".repeat(1000) + "\n";
            for _ in 0..200 {
                chunks.write_str(&line).unwrap();
            }
            chunks.send().unwrap();
            chunks.deliver(Bytes::new()).unwrap();
        });
        let mut scrape = Scrape { rx };
        let mut sizes = Vec::new();
        while let Some(chunk) = scrape.next().await {
            sizes.push(chunk.unwrap().len());
        }
        writer.await.unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200 * 1001);
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(sizes.iter().all(|&s| s <= CHUNK_BYTES + 1001), "{sizes:?}");
    }

    /// A reader too slow for the scrape's deadline has it cut: the
    /// writing thread is not held for ever, and the answer does not look
    /// complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_scrape_is_cut_when_the_reader_stalls() {
        let (mut chunks, rx) = chunks(1, Duration::from_millis(100));
        let writer = tokio::task::spawn_blocking(move || {
            let line = "y".repeat(CHUNK_BYTES);
            (0..10)
                .map(|_| chunks.write_str(&line))
                .find(|r| r.is_err())
        });
        let failed = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer gave up")
            .unwrap();
        assert!(failed.is_some(), "a stalled reader stops the writing");
        let mut scrape = Scrape { rx };
        assert!(scrape.next().await.unwrap().is_ok(), "the one chunk held");
        assert!(scrape.next().await.unwrap().is_err(), "then the cut");
    }
}
