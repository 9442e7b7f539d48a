//! The credential-injecting proxy (docs/HTTP.md, "Proxy"): any HTTP client
//! that can be given a base URL becomes a correct client of an OAuth2 API.
//! `/v1/proxy/NAME/PATH` on `http.sock` (and `/NAME/PATH` on the opt-in
//! loopback listeners) goes to the credential's API URL + PATH, with the
//! client's own credentials taken out and `Authorization: Bearer <token>`
//! put in; an answer in the credential's `retry_on` set (401, 403) rejects
//! exactly the token that was sent — tokend refreshes once for every
//! request that saw it — and the request is sent once more with the new
//! token, if its body was held.
//!
//! The same access rules as `token`: the request is refused (and the
//! upstream sees nothing) unless the peer may use the credential.
//!
//! - `forward.rs`: one request, its token, the upstream's answer, the retry.
//! - `outgoing.rs`: the request body, held (replayable) or streamed.
//! - `target.rs`: the upstream URL; `headers.rs`: what changes in headers.
//! - `client.rs`: the pooled upstream client; `body.rs`: body types.
//! - `browser.rs`: the TCP listeners refuse what web pages send.
//! - `places.rs`: the per-user cap; `errors.rs`: the proxy's own answers.

mod body;
mod browser;
mod client;
mod errors;
mod forward;
mod headers;
mod outgoing;
mod places;
mod target;

pub use body::{Held, ProxyBody, boxed};
pub use forward::forward;

/// The answer to a request on a TCP listener (on `port`) that a web page
/// made or that names another host, if it is one (`browser.rs`).
pub fn refuse_browser<B>(
    request: &hyper::Request<B>,
    port: u16,
) -> Option<hyper::Response<ProxyBody>> {
    browser::refused(request, port).map(errors::ProxyError::into_response)
}

/// What every proxied request shares: the upstream connections and the
/// count of each user's requests in flight.
#[derive(Default)]
pub struct Proxy {
    pool: client::Pool,
    places: places::Places,
}
