//! The proxy's opt-in loopback TCP listeners (`[proxy] listen`): `/NAME/PATH`
//! for clients that cannot use a Unix socket (most HTTP clients given a
//! base URL). Each connection's peer is the uid that owns the client's
//! socket in the kernel's table (`tcp_peer.rs`), admitted through the same
//! gate as the sockets' connections, and held to the same rules.

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

/// Binds every `[proxy] listen` address (checked loopback by the config);
/// an address that cannot be bound stops the start, saying which.
pub async fn bind(shared: &Shared) -> Result<Vec<TcpListener>, String> {
    let addresses = shared.config().proxy.addresses()?;
    if !addresses.is_empty() && !cfg!(target_os = "linux") {
        return Err("proxy.listen: on this platform a TCP client cannot be told from another user's (tokend reads the owner of a connection from Linux's socket table); use the proxy on the HTTP API's socket instead".into());
    }
    let mut listeners = Vec::with_capacity(addresses.len());
    for addr in addresses {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for the proxy (proxy.listen): {e}"))?;
        tracing::info!(address = %addr, "proxy listening");
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts on `listener` until shutdown, then waits (up to `grace`) for
/// the connections in flight.
pub async fn run(
    listener: TcpListener,
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
                    tracing::warn!(error = %e, "proxy accept failed");
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
                tracing::debug!(%client, error = %e, "proxy client not identified; closed");
                return;
            }
            Err(_) => return,
        };
        let admitted = self.gate.lock().admit_peer(peer, &self.shared);
        let Ok((peer, place)) = admitted else {
            tracing::debug!(%client, "proxy client over a connection limit; closed");
            return;
        };
        let _ = stream.set_nodelay(true);
        connection::serve(
            stream,
            peer,
            self.shared,
            self.shutdown,
            self.proxy,
            Surface::Proxy(local.port()),
        )
        .await;
        drop(place);
    }
}
