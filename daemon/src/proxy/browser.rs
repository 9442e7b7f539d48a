//! The TCP listeners answer programs, never web pages. A browser runs as
//! its user, so the kernel's table names the user as the owner of its
//! sockets: without these checks any page the user opens could send
//! requests through the listener with the user's credentials — a form or
//! `fetch` to `http://127.0.0.1:PORT/NAME/…` (cross-site request forgery,
//! the answer unread but the request made), or, with a host name of its
//! own rebound to 127.0.0.1 (DNS rebinding), reading the answers too.
//!
//! - `Host` (and the authority of an absolute-form target) must name the
//!   listener as it is reached: a loopback address or `localhost`, and the
//!   listener's port. A rebound name is another host: 421.
//! - A request a page made carries `Origin` (every cross-origin request,
//!   and same-origin ones but GET and HEAD) or `Sec-Fetch-Site` other than
//!   `none` (`none`: typed by the user): 403. Programs send neither.

use super::errors::ProxyError;
use hyper::Request;
use hyper::header::{self, HeaderMap};
use hyper::http::uri::Authority;
use std::net::IpAddr;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Why a request to the listener on `port` is not served, if it is not.
pub fn refused<B>(request: &Request<B>, port: u16) -> Option<ProxyError> {
    let headers = request.headers();
    if from_a_page(headers) {
        return Some(ProxyError::CrossOrigin);
    }
    let hosts: Vec<_> = headers.get_all(header::HOST).iter().collect();
    let named = match hosts.as_slice() {
        [one] => one.to_str().ok().and_then(|h| h.parse::<Authority>().ok()),
        _ => None,
    };
    let fits = |a: &Authority| is_this_listener(a, port);
    let target_fits = request.uri().authority().is_none_or(fits);
    if !(named.as_ref().is_some_and(fits) && target_fits) {
        return Some(ProxyError::Misdirected(port));
    }
    None
}

fn from_a_page(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get_all(SEC_FETCH_SITE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"none"))
}

/// `localhost` or a loopback address, with the listener's port.
fn is_this_listener(authority: &Authority, port: u16) -> bool {
    let host = authority.host();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback && authority.port_u16().unwrap_or(80) == port
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For tests: a request with these headers and target.
    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().uri(target.parse::<hyper::Uri>().unwrap());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn only_the_listener_by_its_loopback_name_and_port_is_served() {
        for host in [
            "127.0.0.1:8181",
            "localhost:8181",
            "LocalHost:8181",
            "[::1]:8181",
            "127.0.0.2:8181",
        ] {
            assert!(
                refused(&request("/ut/x", &[("host", host)]), 8181).is_none(),
                "{host}"
            );
        }
        for host in [
            "evil.example:8181",
            "127.0.0.1:8182",
            "127.0.0.1",
            "localhost.evil:8181",
            "[::2]:8181",
        ] {
            let e = refused(&request("/ut/x", &[("host", host)]), 8181);
            assert!(matches!(e, Some(ProxyError::Misdirected(8181))), "{host}");
        }
        assert!(refused(&request("/ut/x", &[]), 8181).is_some(), "no Host");
        let two = [("host", "127.0.0.1:8181"), ("host", "evil.example:8181")];
        assert!(refused(&request("/ut/x", &two), 8181).is_some(), "two");
        let absolute = request(
            "http://evil.example:8181/ut/x",
            &[("host", "127.0.0.1:8181")],
        );
        assert!(
            refused(&absolute, 8181).is_some(),
            "the target's authority counts"
        );
    }

    #[test]
    fn a_request_a_web_page_made_is_refused() {
        let host = ("host", "127.0.0.1:8181");
        for page in [
            ("origin", "null"),
            ("origin", "http://127.0.0.1:8181"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-origin"),
        ] {
            let e = refused(&request("/ut/x", &[host, page]), 8181);
            assert!(matches!(e, Some(ProxyError::CrossOrigin)), "{page:?}");
        }
        assert!(refused(&request("/ut/x", &[host, ("sec-fetch-site", "none")]), 8181).is_none());
    }
}
