//! The proxy's one upstream client: hyper-util's pooled client over
//! hyper-rustls (the platform's roots; HTTP/2 where the upstream offers it
//! by ALPN, else HTTP/1.1 kept alive), built on first use. Request bodies
//! are boxed so one client carries held and streamed bodies alike.

use super::body::ProxyBody;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::sync::OnceLock;
use std::time::Duration;

pub type Upstream = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// An upstream connection's read buffer, fixed (hyper's grows to about
/// 400 KiB): every piece of an answer on its way to a slow client keeps
/// the buffer it was read into alive, so this bounds what a download the
/// client reads slowly holds here; the rest waits in the kernel's socket
/// buffers and at the upstream (1,000 slow downloads cost 340 KiB each
/// with hyper's default, 150 KiB with 64 KiB; docs/BENCHMARKS.md).
const READ_BUFFER: usize = 16 * 1024;

/// Idle connections kept per upstream host, and for how long: as many as
/// a busy client keeps in flight, so a burst does not end in a churn of
/// new connections (and sockets in TIME_WAIT) at the next one.
const IDLE_PER_HOST: usize = 256;
const IDLE_FOR: Duration = Duration::from_secs(90);

/// The client could not be built (the platform's certificate store could
/// not be read).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot make HTTPS requests: {0} (install the system's CA certificates, e.g. the ca-certificates package, or point SSL_CERT_FILE at a PEM bundle)"
)]
pub struct ClientError(String);

/// The client, built once and shared by every proxied request.
#[derive(Default)]
pub struct Pool {
    client: OnceLock<Upstream>,
}

impl Pool {
    pub fn client(&self) -> Result<&Upstream, ClientError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let built = build()?;
        Ok(self.client.get_or_init(|| built))
    }
}

fn build() -> Result<Upstream, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| ClientError(e.to_string()))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_FOR)
        .http1_read_buf_exact_size(READ_BUFFER)
        .build(https))
}
