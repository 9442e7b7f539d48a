//! The accept loop both listeners share: admit each connection through the
//! one gate (its uid read from the kernel), serve it in its own task, refuse
//! politely past a cap, and at shutdown wait for the connections in flight.

use crate::config::access::Peer;
use crate::server::admission::{Refused, SharedGate};
use crate::state::Shared;
use interprocess::local_socket::tokio::{Listener, Stream, prelude::*};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What a listener shares with its connections.
pub struct Accepted {
    pub gate: SharedGate,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
    pub grace: Duration,
}

impl Accepted {
    /// Accepts on `listener` until shutdown, serving each admitted
    /// connection with `serve` and handing each refused one to `refuse`.
    pub async fn run<S, F>(
        mut self,
        name: &'static str,
        listener: Listener,
        serve: S,
        refuse: impl Fn(Stream, Refused),
    ) where
        S: Fn(Stream, Peer, Arc<Shared>, watch::Receiver<bool>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        // Each connection task holds a sender; all dropped means all finished.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        // Bound first: the gate is unlocked before `refuse` locks it.
                        let admitted = self.gate.lock().admit(&stream, &self.shared);
                        match admitted {
                            Ok((peer, place)) => {
                                let done = done_tx.clone();
                                let served = serve(stream, peer, self.shared.clone(), self.shutdown.clone());
                                tokio::spawn(async move {
                                    served.await;
                                    drop((place, done));
                                });
                            }
                            Err(Some(refused)) => refuse(stream, refused),
                            Err(None) => drop(stream),
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = self.shutdown.changed() => break,
            }
        }
        drop(listener);
        drop(done_tx);
        let _ = tokio::time::timeout(self.grace, done_rx.recv()).await;
    }
}
