//! The opt-in loopback TCP listeners: the proxy's (`[proxy] listen`),
//! `/NAME/PATH` for clients that cannot use a Unix socket (most HTTP
//! clients given a base URL), and the metrics' (`[metrics] listen`), for a
//! Prometheus server. Each connection's peer is the uid that owns the
//! client's socket in the kernel's table (`tcp_peer.rs`), admitted through
//! the same gate as the sockets' connections, and held to the same rules.

use super::api::Surface;
use super::{connection, tcp_peer};
use crate::proxy::Proxy;
use crate::server::admission::SharedGate;
use crate::state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// What a TCP listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    Proxy,
    Metrics,
}

impl Serves {
    fn surface(self, port: u16) -> Surface {
        match self {
            Serves::Proxy => Surface::Proxy(port),
            Serves::Metrics => Surface::Metrics(port),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Serves::Proxy => "proxy.listen",
            Serves::Metrics => "metrics.listen",
        }
    }
}

/// Binds every `[proxy] listen` and `[metrics] listen` address (checked
/// loopback by the config); an address that cannot be bound stops the
/// start, saying which.
pub async fn bind(shared: &Shared) -> Result<Vec<(TcpListener, Serves)>, String> {
    let config = shared.config();
    let wanted = [
        (Serves::Proxy, config.proxy.addresses()?),
        (Serves::Metrics, config.metrics.addresses()?),
    ];
    let mut listeners = Vec::new();
    for (serves, addresses) in wanted {
        if !addresses.is_empty() && !cfg!(target_os = "linux") {
            return Err(format!(
                "{}: on this platform a TCP client cannot be told from another user's (tokend reads the owner of a connection from Linux's socket table); use the HTTP API's socket instead",
                serves.key()
            ));
        }
        for addr in addresses {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({}): {e}", serves.key()))?;
            tracing::info!(address = %addr, listener = serves.key(), "listening on TCP");
            listeners.push((listener, serves));
        }
    }
    Ok(listeners)
}

/// Accepts on `listener` until shutdown, then waits (up to `grace`) for
/// the connections in flight.
pub async fn run(
    (listener, serves): (TcpListener, Serves),
    gate: SharedGate,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    proxy: Arc<Proxy>,
) {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let connection = Connection {
                        serves,
                        gate: gate.clone(),
                        shared: shared.clone(),
                        shutdown: shutdown.clone(),
                        proxy: proxy.clone(),
                    };
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        connection.serve(stream, client).await;
                        drop(done);
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = serves.key(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(done_tx);
    let _ = tokio::time::timeout(grace, done_rx.recv()).await;
}

/// What one accepted connection needs.
struct Connection {
    serves: Serves,
    gate: SharedGate,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    proxy: Arc<Proxy>,
}

impl Connection {
    /// Identifies the peer, admits it, and serves it; a peer that cannot
    /// be identified or admitted is closed.
    async fn serve(self, stream: TcpStream, client: SocketAddr) {
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let found = tokio::task::spawn_blocking(move || tcp_peer::of(client, local)).await;
        let peer = match found {
            Ok(Ok(peer)) => peer,
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "TCP client not identified; closed");
                return;
            }
            Err(_) => return,
        };
        let admitted = self.gate.lock().admit_peer(peer, &self.shared);
        let Ok((peer, place)) = admitted else {
            tracing::debug!(%client, "TCP client over a connection limit; closed");
            return;
        };
        let _ = stream.set_nodelay(true);
        connection::serve(
            stream,
            peer,
            self.shared,
            self.shutdown,
            self.proxy,
            self.serves.surface(local.port()),
        )
        .await;
        drop(place);
    }
}
