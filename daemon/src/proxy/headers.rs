//! The headers the proxy changes (RFC 9110 §7.6.1): hop-by-hop fields are
//! for one connection and never forwarded, either way; the client's own
//! credentials never reach the upstream; the upstream's host is the one
//! its URL names.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};
use tokend_proto::Secret;

/// The fields that belong to one connection, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Takes out the hop-by-hop fields, those `Connection` names among them,
/// and `Upgrade` (a proxied request is never switched to another protocol).
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The request's headers as the upstream gets them: without hop-by-hop
/// fields, without the client's `Authorization` (the credential's token
/// replaces it) and `Host` (the client sets the upstream's).
pub fn for_upstream(headers: &mut HeaderMap, token: &Secret) -> Result<(), InvalidToken> {
    drop_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| InvalidToken)?;
    value.set_sensitive(true);
    headers.insert(header::AUTHORIZATION, value);
    Ok(())
}

/// The answer's headers as the client gets them: without hop-by-hop
/// fields, and without any `Tokend-*` field, which only tokend sets (an
/// API cannot pass its answer off as tokend's refusal, or as a retry).
pub fn from_upstream(headers: &mut HeaderMap) {
    drop_hop_by_hop(headers);
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("tokend-"))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// The token has characters a header cannot carry.
#[derive(Debug, thiserror::Error)]
#[error(
    "the credential's token cannot be sent in an Authorization header (it holds characters a header may not)"
)]
pub struct InvalidToken;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_credentials_and_hop_by_hop_fields_never_reach_the_upstream() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer mine"),
            ("proxy-authorization", "Basic eA=="),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "127.0.0.1:8181"),
            ("accept", "application/json"),
            ("x-request-id", "42"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        for_upstream(&mut h, &Secret::new("tok-1")).unwrap();
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "authorization", "x-request-id"]);
        assert_eq!(h[header::AUTHORIZATION], "Bearer tok-1");
        assert!(h[header::AUTHORIZATION].is_sensitive());
    }

    #[test]
    fn an_api_cannot_set_tokends_own_fields() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("tokend-error", "not_usable"),
            ("tokend-retried", "1"),
            ("content-type", "application/json"),
            ("connection", "close"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        from_upstream(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn a_token_a_header_cannot_carry_is_refused() {
        let mut h = HeaderMap::new();
        assert!(for_upstream(&mut h, &Secret::new("a\r\nb")).is_err());
    }
}
