//! One client connection: the hello, then request/response frames until the
//! client leaves, goes idle, misbehaves or the daemon stops.
//!
//! Every read is under a timeout: the next frame must start within the idle
//! timeout and, once started, arrive whole within the frame timeout, so a
//! client trickling bytes loses only its own connection.

use crate::config::access::Peer;
use crate::handler;
use crate::state::Shared;
use crate::state::refusals::Kind;
use interprocess::local_socket::tokio::Stream;
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{
    ErrorCode, FrameError, Hello, HelloReply, MAGIC, PROTOCOL_VERSION, Request, Response,
    read_frame_async, write_frame_async,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

/// Serves one connection to the end. Errors end this connection only.
/// `peer` was read from the stream when it was accepted (`server.rs`).
pub async fn serve(
    stream: Stream,
    peer: Peer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _counted = shared
        .connections
        .open(crate::state::connections::Listener::Socket, peer.uid);
    let limits = shared.config().limits.clone();
    let frame_timeout = Duration::from_secs(limits.frame_timeout_secs);
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    let mut conn = BufReader::new(stream);
    if !hello(&mut conn, &peer, frame_timeout).await {
        return;
    }
    // One shutdown future and one idle timer for the connection's whole
    // life, rather than new ones per request: a request then costs no timer
    // (de)registration and no waiter-list insert/remove (see
    // docs/BENCHMARKS.md). The timer is re-armed only when it fires early.
    let stop = shutdown.changed();
    tokio::pin!(stop);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut last_active = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            ready = conn.fill_buf() => match ready {
                Ok(buf) if !buf.is_empty() => {}
                _ => return,
            },
            () = &mut idle => {
                let deadline = last_active + idle_timeout;
                if Instant::now() >= deadline {
                    tracing::debug!(uid = peer.uid, "idle connection closed");
                    return;
                }
                idle.as_mut().reset(deadline);
                continue;
            }
        }
        let request: Request = match timeout(frame_timeout, read_frame_async(&mut conn)).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                refuse(&mut conn, &shared, &peer, e, frame_timeout).await;
                return;
            }
            Err(_) => {
                tracing::debug!(uid = peer.uid, "client too slow to send a frame; closed");
                return;
            }
        };
        tracing::trace!(uid = peer.uid, request = request.verb(), credential = ?request.credential().map(tokend_proto::logged), "request");
        let response = handler::handle(&shared, &peer, request).await;
        if !answer(&mut conn, &response, frame_timeout).await {
            return;
        }
        last_active = Instant::now();
    }
}

/// Reads and answers the hello; false ends the connection.
async fn hello(conn: &mut BufReader<Stream>, peer: &Peer, frame_timeout: Duration) -> bool {
    let hello: Hello = match timeout(frame_timeout, read_frame_async(conn)).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            tracing::debug!(uid = peer.uid, error = %e, "bad hello; closed");
            return false;
        }
        Err(_) => {
            tracing::debug!(uid = peer.uid, "no hello in time; closed");
            return false;
        }
    };
    if hello.magic != MAGIC {
        tracing::debug!(uid = peer.uid, "not a tokend client; closed");
        return false;
    }
    let accepted = hello.version == PROTOCOL_VERSION;
    let message = if accepted {
        env!("CARGO_PKG_VERSION").to_string()
    } else {
        tracing::info!(
            uid = peer.uid,
            version = hello.version,
            "client speaks another protocol version"
        );
        format!(
            "tokend speaks protocol version {PROTOCOL_VERSION} but this client speaks version {}; use tokenctl and tokend from the same release",
            hello.version
        )
    };
    let reply = HelloReply {
        version: PROTOCOL_VERSION,
        accepted,
        message,
    };
    send(conn, &reply, frame_timeout).await && accepted
}

/// Answers an unreadable frame with an error before closing, when possible.
async fn refuse(
    conn: &mut BufReader<Stream>,
    shared: &Shared,
    peer: &Peer,
    e: FrameError,
    frame_timeout: Duration,
) {
    let message = match &e {
        FrameError::Closed | FrameError::Io(_) => return,
        FrameError::TooLarge(_) | FrameError::Decode(_) | FrameError::Encode(_) => e.to_string(),
    };
    let rate = handler::refusal_rate(shared);
    if shared.refusals.allow(peer.uid, Kind::Failed, rate) {
        tracing::debug!(uid = peer.uid, error = %message, "malformed frame; closing");
    }
    let response = Response::error(
        ErrorCode::BadRequest,
        format!("{message}; closing the connection"),
    );
    send(conn, &response, frame_timeout).await;
}

/// Sends a response; one too large for any frame is replaced by an error
/// that says so, rather than a silently closed connection.
async fn answer(
    conn: &mut BufReader<Stream>,
    response: &Response,
    frame_timeout: Duration,
) -> bool {
    match timeout(frame_timeout, write_frame_async(conn.get_mut(), response)).await {
        Ok(Ok(())) => true,
        Ok(Err(FrameError::TooLarge(len))) => {
            tracing::warn!(bytes = len, "answer too large for one frame");
            let error = Response::error(
                ErrorCode::Busy,
                format!(
                    "the answer is {len} bytes, over the {} byte frame limit; ask for less (e.g. `tokenctl show NAME`)",
                    tokend_proto::MAX_RESPONSE_FRAME
                ),
            );
            send(conn, &error, frame_timeout).await
        }
        _ => false,
    }
}

async fn send<T: serde::Serialize>(
    conn: &mut BufReader<Stream>,
    value: &T,
    frame_timeout: Duration,
) -> bool {
    matches!(
        timeout(frame_timeout, write_frame_async(conn.get_mut(), value)).await,
        Ok(Ok(()))
    )
}
