//! Where a program sends its requests to go through tokend's proxy
//! (docs/HTTP.md, "Proxy"): a loopback TCP base URL when the daemon has
//! one (`[proxy] listen`), which any HTTP client can take as its base URL;
//! else the HTTP API's socket and the path under it.

use std::path::{Path, PathBuf};
use tokend_proto::DaemonStatus;

/// The base URL of credential `name` through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Append the API's path to it (it ends with `/`).
    pub url: String,
    /// The socket to connect to instead of the URL's host, when the URL
    /// is the HTTP API socket's (`curl --unix-socket PATH URL`).
    pub unix_socket: Option<PathBuf>,
}

/// The base URL for `name`, from what `status` says: its first TCP
/// address, else the HTTP API's socket (as the daemon says, else
/// `$TOKEND_HTTP_SOCKET`, else beside `main_socket`).
pub fn proxy_url(status: &DaemonStatus, main_socket: &Path, name: &str) -> ProxyUrl {
    if let Some(addr) = status.proxy_listen.first() {
        return ProxyUrl {
            url: format!("http://{addr}/{name}/"),
            unix_socket: None,
        };
    }
    let socket = status
        .http_socket
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("TOKEND_HTTP_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| tokend_proto::paths::http_socket_beside(main_socket));
    ProxyUrl {
        url: format!("http://localhost/v1/proxy/{name}/"),
        unix_socket: Some(socket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(http_socket: Option<&str>, listen: &[&str]) -> DaemonStatus {
        DaemonStatus {
            version: "0".into(),
            pid: None,
            uptime_secs: 0,
            socket: None,
            database: None,
            connections: None,
            credentials: Vec::new(),
            http_socket: http_socket.map(Into::into),
            proxy_listen: listen.iter().map(|s| s.to_string()).collect(),
            connections_by_user: Vec::new(),
        }
    }

    #[test]
    fn tcp_first_then_the_http_socket() {
        let main = Path::new("/run/user/1000/tokend/tokend.sock");
        let tcp = proxy_url(&status(None, &["127.0.0.1:8181", "[::1]:8181"]), main, "ut");
        assert_eq!(tcp.url, "http://127.0.0.1:8181/ut/");
        assert_eq!(tcp.unix_socket, None);
        let unix = proxy_url(&status(Some("/run/tokend/http.sock"), &[]), main, "ut");
        assert_eq!(unix.url, "http://localhost/v1/proxy/ut/");
        assert_eq!(
            unix.unix_socket.as_deref(),
            Some(Path::new("/run/tokend/http.sock"))
        );
    }
}
