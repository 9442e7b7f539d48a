//! One HTTP request answered: its route becomes a [`tokend_proto::Request`],
//! [`crate::handler::handle`] answers it as it answers the main socket (the
//! same access decisions, the same lifecycle), and the answer becomes a
//! status and a JSON body. Bodies are never logged.

use super::body::{self, Expiry};
use super::errors::ApiError;
use super::routes::{self, Route};
use crate::config::access::Peer;
use crate::handler;
use crate::handler::metrics::Surface as Scraped;
use crate::proxy::{Proxy, ProxyBody};
use crate::state::Shared;
use crate::state::connections::Listener;
use crate::state::metrics::Refused as Reason;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::{Bytes, Incoming};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Request, Response, StatusCode, header};
use std::sync::Arc;
use std::time::Duration;
use tokend_proto::{Request as Ask, Response as Answer};

/// Where proxied requests go: `/v1/proxy/NAME/PATH` (docs/HTTP.md, "Proxy").
const PROXY: &str = "/v1/proxy/";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `http.sock`: the API, and the proxy under `/v1/proxy/`.
    Api,
    /// A `[proxy] listen` address (its port): the proxy alone, at
    /// `/NAME/PATH`, for programs only (`proxy/browser.rs`).
    Proxy(u16),
    /// A `[metrics] listen` address (its port): `GET /metrics` alone.
    Metrics(u16),
}

impl Surface {
    /// The listener its connections are counted on.
    pub fn listener(self) -> Listener {
        match self {
            Surface::Api => Listener::Http,
            Surface::Proxy(_) => Listener::ProxyTcp,
            Surface::Metrics(_) => Listener::MetricsTcp,
        }
    }
}

/// Answers one request; every failure is an answer too.
pub async fn answer(
    shared: &Arc<Shared>,
    proxy: &Proxy,
    peer: &Peer,
    surface: Surface,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    if let Surface::Proxy(port) | Surface::Metrics(port) = surface
        && let Some(refused) = crate::proxy::refuse_browser(&request, port)
    {
        shared.metrics.refused(Reason::PermissionDenied);
        return refused;
    }
    let path = request.uri().path();
    match surface {
        Surface::Api if routes::route(request.method(), path) == Ok(Route::Metrics) => {
            return scrape(shared, peer, Scraped::Socket).await;
        }
        Surface::Metrics(_) => return on_metrics_listener(shared, peer, &request).await,
        _ => {}
    }
    let proxied = match surface {
        Surface::Api => path.strip_prefix(PROXY),
        Surface::Proxy(_) | Surface::Metrics(_) => Some(path.strip_prefix('/').unwrap_or(path)),
    };
    let Some(rest) = proxied else {
        return answer_api(shared, peer, request).await;
    };
    let rest = rest.to_string();
    match rest.split_once('/').unwrap_or((&rest, "")) {
        ("", _) if surface == Surface::Api => answer_api(shared, peer, request).await,
        ("", _) => refused(
            shared,
            ApiError::NotFound(
                "/ (the proxy's listener serves /NAME/PATH: NAME a credential, PATH below its API URL)"
                    .into(),
            ),
        )
        .map(crate::proxy::boxed),
        (name, rest) => crate::proxy::forward(shared, proxy, peer, name, rest, request).await,
    }
}

/// A `[metrics] listen` address answers `GET /metrics` and nothing else.
async fn on_metrics_listener(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: &Request<Incoming>,
) -> Response<ProxyBody> {
    let path = request.uri().path();
    let error = if path != "/metrics" {
        ApiError::NotFound(format!(
            "{} (this listener serves GET /metrics only)",
            tokend_proto::logged(path)
        ))
    } else if request.method() != hyper::Method::GET {
        ApiError::MethodNotAllowed {
            path: path.to_string(),
            method: request.method().to_string(),
            allow: "GET",
        }
    } else {
        let credential_labels = shared.config().metrics.credential_labels;
        return scrape(shared, peer, Scraped::Listener { credential_labels }).await;
    };
    refused(shared, error).map(crate::proxy::boxed)
}

/// The metrics as Prometheus text, streamed as it is written
/// ([`handler::metrics`]).
async fn scrape(shared: &Arc<Shared>, peer: &Peer, surface: Scraped) -> Response<ProxyBody> {
    let scrape = match handler::metrics::scrape(shared, peer, surface).await {
        Ok(scrape) => scrape,
        Err(e) => {
            shared.metrics.refused(Reason::Busy);
            return ApiError::Daemon(e.to_remote())
                .into_response()
                .map(crate::proxy::boxed);
        }
    };
    let chunks = futures_util::stream::unfold(scrape, |mut scrape| async move {
        let chunk = scrape.next().await?;
        Some((chunk.map(Frame::data), scrape))
    });
    let mut response = Response::new(crate::proxy::boxed(StreamBody::new(chunks)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(handler::metrics::CONTENT_TYPE),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The answer to a request refused before it reached the handler (which
/// counts its own): counted in `tokend_requests_refused_total`.
fn refused(shared: &Shared, error: ApiError) -> Response<Full<Bytes>> {
    let reason = match &error {
        ApiError::Daemon(_) | ApiError::Internal(_) => Reason::Other,
        ApiError::NotFound(_)
        | ApiError::MethodNotAllowed { .. }
        | ApiError::PayloadTooLarge
        | ApiError::BadRequest(_) => Reason::InvalidArgument,
    };
    shared.metrics.refused(reason);
    error.into_response()
}

/// Answers one request of the API itself (all but the proxy's).
async fn answer_api(
    shared: &Arc<Shared>,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let response = if routes::route(&parts.method, parts.uri.path()) == Ok(Route::Events) {
        // A stream, not one JSON answer; it has no body to read.
        match super::events::answer(shared, peer, &parts).await {
            Ok(response) => response,
            Err(e) => refused(shared, e).map(crate::proxy::boxed),
        }
    } else {
        match respond(shared, peer, &parts, body).await {
            Ok(response) => response,
            // The handler counted its refusal.
            Err(e @ ApiError::Daemon(_)) => e.into_response(),
            Err(e) => refused(shared, e),
        }
        .map(crate::proxy::boxed)
    };
    // The path names a credential, never a secret (cut and escaped: it may
    // be 60 KiB long); the query is min_valid. Refusals are logged by the
    // handler, within the peer's share of the log, as on the main socket.
    let path = tokend_proto::logged(parts.uri.path());
    tracing::trace!(uid = peer.uid, method = %parts.method, %path, status = response.status().as_u16(), "HTTP request");
    response
}

async fn respond(
    shared: &Arc<Shared>,
    peer: &Peer,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = parts.uri.path();
    let route = routes::route(&parts.method, path)
        .map_err(|miss| ApiError::missed(miss, &parts.method, path))?;
    let frame_timeout = Duration::from_secs(shared.config().limits.frame_timeout_secs);
    let body = read_body(&parts.headers, body, frame_timeout).await?;
    match route {
        Route::Token(name) => token(shared, peer, name, parts).await,
        Route::Reject(name) => {
            let token = reject_body(&body)?.token;
            let request = Ask::Reject {
                name: name.to_string(),
                token,
                rejected_by: None,
            };
            refreshed(shared, peer, name, request).await
        }
        Route::Refresh(name) => {
            refreshed(
                shared,
                peer,
                name,
                Ask::Refresh {
                    name: name.to_string(),
                },
            )
            .await
        }
        Route::Show(name) => match ask(
            shared,
            peer,
            Ask::Show {
                name: name.to_string(),
            },
        )
        .await?
        {
            Answer::Credential(info) => Ok(body::json(StatusCode::OK, &info)),
            other => Err(unexpected(&other)),
        },
        Route::List => match ask(shared, peer, Ask::List).await? {
            Answer::List(credentials) => {
                Ok(body::json(StatusCode::OK, &body::List { credentials }))
            }
            other => Err(unexpected(&other)),
        },
        Route::Status => match ask(shared, peer, Ask::Status).await? {
            Answer::Status(status) => Ok(body::json(StatusCode::OK, &status)),
            other => Err(unexpected(&other)),
        },
        // Streamed, so answered before the routes that answer in one piece.
        Route::Metrics | Route::Events => Err(ApiError::Internal(
            "a stream was answered as a JSON request; this is a bug in tokend".into(),
        )),
        Route::Health => Ok(body::json(
            StatusCode::OK,
            &body::Health {
                status: "ok",
                version: env!("CARGO_PKG_VERSION"),
            },
        )),
    }
}

/// `GET …/token`: JSON, or the bare token for `Accept: text/plain`.
async fn token(
    shared: &Arc<Shared>,
    peer: &Peer,
    name: &str,
    parts: &Parts,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let min_valid_secs = min_valid(parts.uri.query())?;
    let request = Ask::Token {
        name: name.to_string(),
        min_valid_secs,
    };
    let reply = match ask(shared, peer, request).await? {
        Answer::Token(reply) => reply,
        other => return Err(unexpected(&other)),
    };
    if wants_text(&parts.headers) {
        return Ok(body::with_type(
            StatusCode::OK,
            "text/plain",
            reply.token.expose().as_bytes().to_vec(),
        ));
    }
    let token = body::Token {
        access_token: reply.token.expose(),
        token_type: "Bearer",
        expiry: Expiry::new(reply.expires_at, shared.clock.now()),
    };
    Ok(body::json(StatusCode::OK, &token))
}

/// `POST …/reject` and `…/refresh`: the daemon's sentence, whether a
/// refresh happened, and the expiry after it.
async fn refreshed(
    shared: &Arc<Shared>,
    peer: &Peer,
    name: &str,
    request: Ask,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let message = match ask(shared, peer, request).await? {
        Answer::Message(message) => message,
        other => return Err(unexpected(&other)),
    };
    // lifecycle::reject says "refreshed credential …" only when it refreshed
    // ("that token was already replaced; nothing to do" otherwise).
    let refreshed = message.starts_with("refreshed ");
    let expires_at = match ask(
        shared,
        peer,
        Ask::Show {
            name: name.to_string(),
        },
    )
    .await
    {
        Ok(Answer::Credential(info)) => info.expires_at,
        _ => None,
    };
    let answer = body::Refreshed {
        refreshed,
        message,
        expiry: Expiry::new(expires_at, shared.clock.now()),
    };
    Ok(body::json(StatusCode::OK, &answer))
}

/// The daemon's answer to `request`, its errors as [`ApiError::Daemon`].
async fn ask(shared: &Arc<Shared>, peer: &Peer, request: Ask) -> Result<Answer, ApiError> {
    match handler::handle_via(shared, peer, handler::Via::Http, request).await {
        Answer::Error(e) => Err(ApiError::Daemon(e)),
        answer => Ok(answer),
    }
}

fn unexpected(answer: &Answer) -> ApiError {
    let kind = match answer {
        Answer::Token(_) => "a token",
        _ => "another kind of answer",
    };
    ApiError::Internal(format!(
        "the daemon gave {kind} where it should not; this is a bug in tokend"
    ))
}

/// `min_valid=SECS` from the query (0 when absent); other parameters are ignored.
fn min_valid(query: Option<&str>) -> Result<u32, ApiError> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("min_valid="))
    else {
        return Ok(0);
    };
    value.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "min_valid must be a whole number of seconds from 0 to {}, not {value:?}",
            u32::MAX
        ))
    })
}

/// Whether the client asked for the bare token: `Accept` names
/// `text/plain` and not `application/json`.
fn wants_text(headers: &HeaderMap) -> bool {
    let types: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    types.iter().any(|t| t == "text/plain") && !types.iter().any(|t| t == "application/json")
}

/// The whole body, up to [`super::MAX_BODY`], within `deadline`.
async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > super::MAX_BODY as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    match tokio::time::timeout(deadline, Limited::new(body, super::MAX_BODY).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(ApiError::BadRequest(
            "the request body could not be read".into(),
        )),
        Err(_) => Err(ApiError::BadRequest(format!(
            "the request body did not arrive within {} s",
            deadline.as_secs()
        ))),
    }
}

/// The optional `{"token": "…"}` of a reject. A parse error names only the
/// place: serde's message could quote the (secret) value.
fn reject_body(bytes: &[u8]) -> Result<body::Reject, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(body::Reject::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be empty or a JSON object like {{\"token\": \"…\"}}; it is not (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_valid_comes_from_the_query() {
        assert_eq!(min_valid(None).unwrap(), 0);
        assert_eq!(min_valid(Some("x=1&min_valid=60")).unwrap(), 60);
        assert!(min_valid(Some("min_valid=-1")).is_err());
    }

    #[test]
    fn text_is_chosen_only_when_asked_for_and_json_is_not() {
        let mut headers = HeaderMap::new();
        assert!(!wants_text(&headers));
        headers.insert(header::ACCEPT, "text/plain".parse().unwrap());
        assert!(wants_text(&headers));
        headers.insert(
            header::ACCEPT,
            "application/json, text/plain;q=0.5".parse().unwrap(),
        );
        assert!(!wants_text(&headers));
    }

    #[test]
    fn a_bad_reject_body_never_quotes_it() {
        let e = reject_body(br#""hunter2-secret""#).err().unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(reject_body(b"").unwrap().token.is_none());
        let ok = reject_body(br#"{"token":"abc"}"#).unwrap();
        assert_eq!(ok.token.unwrap().expose(), "abc");
    }
}
