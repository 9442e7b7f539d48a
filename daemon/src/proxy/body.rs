//! The bodies the proxy moves: one boxed type for held and streamed
//! bodies both ways, and a body that keeps something alive (the
//! connection's busy mark, the user's place) until its last byte is sent.

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body the proxy sends or answers with.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Any other body, its errors boxed.
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// `body`, with `guard` dropped only when the body is done or dropped: a
/// streamed answer keeps its connection busy and its user's place taken
/// for as long as it streams.
pub struct Held<G> {
    body: ProxyBody,
    _guard: G,
}

impl<G: Send + Unpin + 'static> Held<G> {
    pub fn boxed(body: ProxyBody, guard: G) -> ProxyBody {
        Held {
            body,
            _guard: guard,
        }
        .boxed_unsync()
    }
}

impl<G: Unpin> Body for Held<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// `body`, ended with an error when it has been asked for its next piece
/// and nothing came for `limit`: an upstream that stops mid-answer does
/// not hold the connection, the user's place and an upstream connection
/// for ever. (A client that stops reading holds only its own.)
pub fn idle_limited(body: ProxyBody, limit: Duration) -> ProxyBody {
    Idle {
        body,
        limit,
        timer: Box::pin(tokio::time::sleep(limit)),
    }
    .boxed_unsync()
}

struct Idle {
    body: ProxyBody,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// The upstream went quiet in the middle of its answer.
#[derive(Debug, thiserror::Error)]
#[error("the API sent nothing more of its answer for {0} s")]
struct Stalled(u64);

impl Body for Idle {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.limit;
                self.timer.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(self.limit.as_secs()))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
