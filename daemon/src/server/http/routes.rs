//! Method and path to route: the whole surface of API version 1. Anything
//! else is a 404 (no such path) or a 405 (the path, another method).

use hyper::Method;

/// One route of the API, with the credential name from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Token(&'a str),
    Reject(&'a str),
    Refresh(&'a str),
    Show(&'a str),
    List,
    Status,
    Health,
    Metrics,
    /// `GET /v1/events`: the live event stream (`events.rs`).
    Events,
}

/// Every route as (method, path template), as docs/openapi.yaml lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/credentials/{name}/token"),
    ("POST", "/v1/credentials/{name}/reject"),
    ("POST", "/v1/credentials/{name}/refresh"),
    ("GET", "/v1/credentials/{name}"),
    ("GET", "/v1/credentials"),
    ("GET", "/v1/status"),
    ("GET", "/v1/health"),
    ("GET", "/v1/metrics"),
    ("GET", "/v1/events"),
];

/// Why a request matched no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route has this path.
    NotFound,
    /// The path exists for this method only (the `Allow` header).
    MethodNotAllowed(&'static str),
}

/// The route for `method` and `path` (without the query).
pub fn route<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, Miss> {
    let (allowed, route) = by_path(path).ok_or(Miss::NotFound)?;
    if method.as_str() == allowed {
        Ok(route)
    } else {
        Err(Miss::MethodNotAllowed(allowed))
    }
}

/// The route a path names and the one method it answers.
fn by_path(path: &str) -> Option<(&'static str, Route<'_>)> {
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let found = match segments.as_slice() {
        ["health"] => ("GET", Route::Health),
        ["status"] => ("GET", Route::Status),
        ["metrics"] => ("GET", Route::Metrics),
        ["events"] => ("GET", Route::Events),
        ["credentials"] => ("GET", Route::List),
        ["credentials", name] if !name.is_empty() => ("GET", Route::Show(name)),
        ["credentials", name, action] if !name.is_empty() => match *action {
            "token" => ("GET", Route::Token(name)),
            "reject" => ("POST", Route::Reject(name)),
            "refresh" => ("POST", Route::Refresh(name)),
            _ => return None,
        },
        _ => return None,
    };
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_is_routed_and_answers_its_method_only() {
        for (method, template) in ROUTES {
            let path = template.replace("{name}", "up");
            let name: &'static str = method;
            let method: Method = method.parse().unwrap();
            assert!(route(&method, &path).is_ok(), "{method} {path}");
            let other = if method == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            assert_eq!(
                route(&other, &path),
                Err(Miss::MethodNotAllowed(name)),
                "{other} {path}"
            );
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v2/health",
            "/v1/credentials/",
            "/v1/credentials//token",
            "/v1/credentials/up/token/",
            "/v1/credentials/up/check",
            "/v1/credentials/up/token/x",
        ] {
            assert_eq!(route(&Method::GET, path), Err(Miss::NotFound), "{path}");
        }
        assert_eq!(
            route(&Method::GET, "/v1/credentials/up/token"),
            Ok(Route::Token("up"))
        );
    }
}
