//! One proxied request: the peer's right to the credential, its API URL,
//! the token, the upstream's answer streamed back — and when that answer
//! says the token was refused, exactly that token rejected and the request
//! sent once more with the new one (docs/HTTP.md, "Proxy").

use super::Proxy;
use super::body::{Held, ProxyBody, boxed, idle_limited};
use super::client::Upstream;
use super::errors::ProxyError;
use super::headers;
use super::outgoing::Outgoing;
use super::places::Place;
use crate::config::access::Peer;
use crate::handler;
use crate::state::Shared;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokend_proto::{Request as Ask, Response as Answer, Secret, logged};

/// Set on an answer that is the second try, after a refused token.
const RETRIED: HeaderName = HeaderName::from_static("tokend-retried");

/// Proxies `request` for `peer` through credential `name` to its API URL
/// followed by `rest`. Every failure is an answer too.
pub async fn forward(
    shared: &Arc<Shared>,
    proxy: &Proxy,
    peer: &Peer,
    name: &str,
    rest: &str,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let response = match proxied(shared, proxy, peer, name, rest, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let (status, retried) = (
        response.status().as_u16(),
        response.headers().contains_key(RETRIED),
    );
    shared.metrics.proxied(status, retried);
    // Never the query, the headers or the body: they are the client's.
    tracing::debug!(uid = peer.uid, credential = %logged(name), %method, status, retried, "proxied");
    response
}

async fn proxied(
    shared: &Arc<Shared>,
    proxy: &Proxy,
    peer: &Peer,
    name: &str,
    rest: &str,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // CONNECT's target is the API's host and port, not a path below its
    // URL; TRACE has the API echo the request, the token with it.
    if matches!(
        request.method(),
        &hyper::Method::CONNECT | &hyper::Method::TRACE
    ) {
        return Err(ProxyError::Method(request.method().to_string()));
    }
    let cred = handler::usable_by(shared, peer, name)
        .await
        .map_err(ProxyError::Daemon)?;
    // Only the upstream is copied out of the settings, not the whole spec.
    let upstream = cred
        .with_live(|l| l.spec.upstream().cloned())
        .unwrap_or_default();
    let api_url = upstream
        .api_url
        .clone()
        .ok_or_else(|| ProxyError::NoApiUrl(name.to_string()))?;
    let config = shared.config();
    let place = proxy
        .places
        .take(peer.uid, config.proxy.max_concurrent_per_user)
        .ok_or(ProxyError::TooMany(config.proxy.max_concurrent_per_user))?;
    let (parts, body) = request.into_parts();
    let uri = super::target::upstream_uri(&api_url, rest, parts.uri.query())
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    let send = Sender {
        client: proxy
            .pool
            .client()
            .map_err(|e| ProxyError::Client(e.to_string()))?,
        parts: &parts,
        uri: &uri,
        timeout_secs: config.proxy.upstream_timeout_secs,
        max_request_bytes: config.proxy.max_request_bytes,
    };
    let read_for = Duration::from_secs(config.proxy.upstream_timeout_secs);
    let mut outgoing = Outgoing::read(body, &config.proxy, read_for).await?;
    let token = token_for(shared, peer, name).await?;
    let first = send.once(&token, outgoing.first()).await?;
    if !upstream.retry_on().contains(&first.status().as_u16()) {
        return Ok(held(first, place));
    }
    // The API refused the token: whatever happens next, it is rejected,
    // so the next request gets a new one.
    reject(shared, peer, name, &token).await;
    let Some(body) = outgoing.again() else {
        return Ok(held(first, place));
    };
    let Some(fresh) = replaced(shared, peer, name, &token).await else {
        return Ok(held(first, place));
    };
    drop(first);
    let mut second = send.once(&fresh, body).await?;
    second
        .headers_mut()
        .insert(RETRIED, HeaderValue::from_static("1"));
    Ok(held(second, place))
}

/// The answer with the user's place kept until its body has been sent.
fn held(response: Response<ProxyBody>, place: Place) -> Response<ProxyBody> {
    response.map(|body| Held::boxed(body, place))
}

/// Sends the request to the upstream.
struct Sender<'a> {
    client: &'a Upstream,
    parts: &'a Parts,
    uri: &'a Uri,
    timeout_secs: u64,
    max_request_bytes: u64,
}

impl Sender<'_> {
    /// One send with `token`: the upstream's status and headers within
    /// the timeout, its body streamed.
    async fn once(
        &self,
        token: &Secret,
        body: ProxyBody,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.parts.headers.clone();
        headers::for_upstream(request.headers_mut(), token)
            .map_err(|e| ProxyError::Client(e.to_string()))?;
        let host = self.uri.host().unwrap_or("the upstream").to_string();
        let wait = Duration::from_secs(self.timeout_secs);
        let answer = match tokio::time::timeout(wait, self.client.request(request)).await {
            Err(_) => {
                return Err(ProxyError::Timeout {
                    host,
                    secs: self.timeout_secs,
                });
            }
            // A streamed body that grew past max_request_bytes: the
            // request was cut off on its way, the client's fault.
            Ok(Err(e)) if caused_by::<http_body_util::LengthLimitError>(&e) => {
                return Err(ProxyError::TooLarge(self.max_request_bytes));
            }
            Ok(Err(e)) => {
                return Err(ProxyError::Unreachable {
                    host,
                    why: innermost(&e),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let (mut parts, body) = answer.into_parts();
        headers::from_upstream(&mut parts.headers);
        Ok(Response::from_parts(parts, idle_limited(boxed(body), wait)))
    }
}

/// Whether `E` is somewhere in `e`'s chain of causes.
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<E>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The innermost cause: "connection refused", not "client error (Connect)".
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The credential's token for `peer`, as `token` hands it out (the same
/// access decision, the in-memory path, a refresh when it is due).
async fn token_for(shared: &Arc<Shared>, peer: &Peer, name: &str) -> Result<Secret, ProxyError> {
    let request = Ask::Token {
        name: name.to_string(),
        min_valid_secs: 0,
    };
    match handler::handle_via(shared, peer, handler::Via::Proxy, request).await {
        Answer::Token(reply) => Ok(reply.token),
        Answer::Error(e) => Err(ProxyError::Daemon(e)),
        _ => Err(ProxyError::Client(
            "tokend answered a token request with something else".into(),
        )),
    }
}

/// Reports `sent` as refused: tokend refreshes unless it was replaced
/// already (one refresh for every request that saw it).
async fn reject(shared: &Arc<Shared>, peer: &Peer, name: &str, sent: &Secret) {
    let request = Ask::Reject {
        name: name.to_string(),
        token: Some(sent.clone()),
        rejected_by: None,
    };
    if let Answer::Error(e) = handler::handle_via(shared, peer, handler::Via::Proxy, request).await
    {
        tracing::debug!(credential = %logged(name), error = %logged(&e.message), "the refused token could not be replaced");
    }
}

/// The token that replaced `sent`, if there is one. A refresh started by
/// another request may still be in flight (a user's own reject is paced):
/// it is waited for once, within `refresh.wait_secs`.
async fn replaced(shared: &Arc<Shared>, peer: &Peer, name: &str, sent: &Secret) -> Option<Secret> {
    let differs = |t: &Secret| !bool::from(t.expose().as_bytes().ct_eq(sent.expose().as_bytes()));
    let fresh = token_for(shared, peer, name).await.ok()?;
    if differs(&fresh) {
        return Some(fresh);
    }
    if let Some(cred) = shared.registry.get(name) {
        let wait = Duration::from_secs(shared.config().refresh.wait_secs);
        let _ = tokio::time::timeout(wait, cred.refresh_lock.lock()).await;
    }
    let fresh = token_for(shared, peer, name).await.ok()?;
    differs(&fresh).then_some(fresh)
}
