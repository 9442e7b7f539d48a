//! One HTTP connection: hyper's HTTP/1.1 server (keep-alive, the 16 KiB
//! head limit answered 431) over the accepted stream, held to the head and
//! idle deadlines of [`super::activity`], and closed gracefully (the
//! request in progress is answered) when the daemon stops.

use super::activity::{Activity, OutQueue, Watched};
use super::api::Surface;
use super::body;
use crate::config::access::Peer;
use crate::proxy::{Held, Proxy};
use crate::state::Shared;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use interprocess::local_socket::tokio::Stream;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

/// hyper's HTTP/1.1 server with the API's limits. Its read buffer is
/// bounded too (hyper's minimum, 8 KiB, is below the head limit): a head
/// that never ends costs at most this much memory.
fn builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_header_size(super::MAX_HEAD)
        .max_buf_size(super::MAX_HEAD + 8 * 1024);
    builder
}

/// Serves one admitted connection to the end. Errors end it only.
pub async fn serve<S>(
    stream: S,
    peer: Peer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    proxy: Arc<Proxy>,
    surface: Surface,
) where
    S: AsyncRead + AsyncWrite + OutQueue + Unpin + Send + 'static,
{
    let _counted = shared.connections.open(surface.listener(), peer.uid);
    let limits = shared.config().limits.clone();
    let head = Duration::from_secs(limits.frame_timeout_secs);
    let idle = Duration::from_secs(limits.idle_timeout_secs);
    let activity = Activity::new();
    let peer = Arc::new(peer);
    let service = {
        let (shared, activity, peer) = (shared.clone(), activity.clone(), peer.clone());
        service_fn(move |request: Request<Incoming>| {
            let busy = activity.busy();
            let (shared, peer, proxy) = (shared.clone(), peer.clone(), proxy.clone());
            let activity = activity.clone();
            async move {
                let response = super::api::answer(&shared, &proxy, &peer, surface, request).await;
                if response
                    .extensions()
                    .get::<super::events::LongLived>()
                    .is_some()
                {
                    activity.streaming();
                }
                // Busy until the answer's last byte: a proxied download
                // streams long after this function returns.
                Ok::<_, Infallible>(response.map(|body| Held::boxed(body, busy)))
            }
        })
    };
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let conn = builder().serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(uid = peer.uid, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                // An event stream never finishes on its own: it ends now.
                if activity.is_streaming() {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
            // A stop that came while a stream's answer was being built
            // (its `current` list) found no stream: it ends it now.
            () = activity.stream_started(), if stopping => {
                if activity.is_streaming() {
                    return;
                }
            }
            () = activity.head_started() => {
                if let Some((deadline, _)) = activity.deadline(head, idle) {
                    timer.as_mut().reset(deadline);
                }
            }
            () = &mut timer => match activity.deadline(head, idle) {
                Some((deadline, why)) if Instant::now() >= deadline => {
                    tracing::debug!(uid = peer.uid, "{why}");
                    return;
                }
                // Busy: look again later; otherwise wait for the deadline.
                Some((deadline, _)) => timer.as_mut().reset(deadline),
                None => timer.as_mut().reset(Instant::now() + head.min(idle)),
            },
        }
    }
}

/// Tells a client that gets no place why (a 503 `busy`), within a second,
/// then closes.
pub async fn refuse(stream: Stream, message: String) {
    let service = service_fn(move |_request: Request<Incoming>| {
        let error = body::Error {
            error: "busy",
            message: message.clone(),
            state: None,
        };
        async move { Ok::<_, Infallible>(body::json(StatusCode::SERVICE_UNAVAILABLE, &error)) }
    });
    let mut builder = builder();
    builder.keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
}
