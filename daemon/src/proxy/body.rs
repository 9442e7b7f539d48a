//! The bodies the proxy moves: one boxed type for held and streamed
//! bodies both ways, and a body that keeps something alive (the
//! connection's busy mark, the user's place) until its last byte is sent.

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

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
