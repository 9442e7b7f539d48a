//! Where a proxied request goes: the credential's API URL followed by the
//! rest of the request's path, and its query as it came. A path that would
//! climb out of the API URL (`..`, also percent-encoded) is refused: the
//! token is for that API, not for whatever else its host serves.

use hyper::Uri;

/// Why a path cannot be proxied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "the path has a \".\" or \"..\" segment (also written %2e, or split by \\, %2f or %5c, or followed by ;); the proxy sends requests below the credential's API URL only"
    )]
    DotSegment,
    #[error("the upstream URL {0:?} is not a valid URL")]
    Invalid(String),
}

/// `api_url` + `rest` (the path after `/v1/proxy/NAME/`, as sent, still
/// percent-encoded) + `?query`.
pub fn upstream_uri(api_url: &str, rest: &str, query: Option<&str>) -> Result<Uri, TargetError> {
    if climbs(rest) {
        return Err(TargetError::DotSegment);
    }
    let mut url = String::with_capacity(api_url.len() + rest.len() + 1);
    url.push_str(api_url);
    if !rest.is_empty() {
        if !url.ends_with('/') {
            url.push('/');
        }
        url.push_str(rest);
    }
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url.parse::<Uri>().map_err(|_| TargetError::Invalid(url))
}

/// Whether `rest` has a `.` or `..` segment as any server may read it:
/// dots percent-encoded (`%2e`), segments split at `\` too (WHATWG URL
/// parsers, so Node and browsers, and Windows servers read `\` as `/`)
/// and at an encoded `/` or `\` (`%2f`, `%5c`: some servers decode before
/// they resolve dots), a segment's `;parameters` cut off (`..;` is `..` to
/// Tomcat and Spring).
fn climbs(rest: &str) -> bool {
    let read = rest
        .to_ascii_lowercase()
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    read.split('/').any(|segment| {
        let segment = segment.split(';').next().unwrap_or("");
        segment == "." || segment == ".."
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_the_path_and_the_query_follow_the_api_url() {
        let u = upstream_uri(
            "https://api.example.com/v1/",
            "campaigns/7",
            Some("a=1&b=%20"),
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example.com/v1/campaigns/7?a=1&b=%20"
        );
        let u = upstream_uri("https://api.example.com/v1", "campaigns", None).unwrap();
        assert_eq!(u.to_string(), "https://api.example.com/v1/campaigns");
        let u = upstream_uri("http://127.0.0.1:9000", "", None).unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9000/");
    }

    #[test]
    fn a_path_never_climbs_out_of_the_api_url() {
        for rest in [
            "..",
            "../admin",
            "a/../../b",
            "%2e%2e/admin",
            "%2E./x",
            "./a",
        ] {
            assert_eq!(
                upstream_uri("https://api.example.com/v1/", rest, None),
                Err(TargetError::DotSegment),
                "{rest}"
            );
        }
        for rest in [
            r"..\admin",
            r"a\..\..\b",
            "..%5cadmin",
            "..%2Fadmin",
            "a%2f%2e%2e%2fb",
            "..;/admin",
            ".;x/a",
        ] {
            assert_eq!(
                upstream_uri("https://api.example.com/v1/", rest, None),
                Err(TargetError::DotSegment),
                "{rest}"
            );
        }
        assert!(upstream_uri("https://api.example.com/v1/", "a..b/c.d", None).is_ok());
        assert!(upstream_uri("https://api.example.com/v1/", "g%2Fp/...;v=1", None).is_ok());
    }
}
