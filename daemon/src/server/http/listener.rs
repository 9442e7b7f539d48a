//! The HTTP API's socket and accept loop: bound beside the main socket with
//! the same checks (or taken from systemd), admitted through the gate both
//! listeners share, and drained on shutdown like the main one.

use super::api::Surface;
use super::connection;
use crate::proxy::Proxy;
use crate::server::BindError;
use crate::server::admission::{Refused, SharedGate};
use crate::state::Shared;
use interprocess::local_socket::tokio::{Listener, Stream};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};

/// Refusals ("over the connection limit", a 503) being delivered at once;
/// past this a refused client is just closed, so a connect flood cannot
/// run the daemon out of descriptors.
const REFUSING: usize = 256;

/// The HTTP listener to serve, if `[http] enabled`: the socket systemd
/// passed for it, or `paths.http_socket` bound with the main socket's mode
/// and group (`group`: the system mode's `socket_group`).
pub fn listener(
    shared: &Shared,
    activated: Option<Listener>,
    group: Option<u32>,
) -> Result<Option<Listener>, BindError> {
    if !shared.config().http.enabled {
        if activated.is_some() {
            tracing::info!("[http] enabled = false: closing the HTTP socket systemd passed");
        }
        return Ok(None);
    }
    let listener = match activated {
        Some(listener) => {
            tracing::info!("using the HTTP API socket passed by systemd");
            listener
        }
        None => {
            let mode = if shared.paths.system { 0o660 } else { 0o600 };
            crate::server::bind(&shared.paths.http_socket, mode, group)?
        }
    };
    tracing::info!(socket = %shared.paths.http_socket.display(), "HTTP API listening");
    Ok(Some(listener))
}

/// Accepts HTTP connections until shutdown, then waits (up to `grace`) for
/// them to finish the request they are on.
pub async fn run(
    listener: Listener,
    gate: SharedGate,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    proxy: Arc<Proxy>,
) {
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let accepted = crate::server::accept::Accepted {
        gate,
        shared,
        shutdown,
        grace,
    };
    let refuse = move |stream, refused| refuse(stream, refused, &refusing);
    let serve = move |stream, peer, shared, shutdown| {
        connection::serve(stream, peer, shared, shutdown, proxy.clone(), Surface::Api)
    };
    accepted.run("HTTP", listener, serve, refuse).await;
}

/// Answers a client that gets no place with a 503 `busy`, unless too many
/// refusals are in flight already.
fn refuse(stream: Stream, refused: Refused, refusing: &Arc<Semaphore>) {
    let Ok(slot) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tracing::debug!(
        uid = refused.uid(),
        "HTTP client refused: over a connection limit"
    );
    let message = refused.message().to_string();
    tokio::spawn(async move {
        connection::refuse(stream, message).await;
        drop(slot);
    });
}
