//! Client library for `tokend`: ask the local daemon for a valid token.
//!
//! ```no_run
//! let mut client = tokend_client::Client::connect_default()?;
//! let token = client.token("uptempo")?;
//! println!("Authorization: Bearer {}", token.expose());
//! # Ok::<(), tokend_client::Error>(())
//! ```
//!
//! [`Client`] is blocking and needs no async runtime (so a one-shot call
//! starts fast); [`AsyncClient`] (feature `async`, on by default) is the
//! same API for tokio programs. Both send the same requests and read the
//! answers through [`ops`], so they cannot drift apart.

mod blocking;
pub mod cli;
mod error;
#[cfg(feature = "async")]
mod nonblocking;
pub mod ops;
mod proxy_url;
mod watch;

pub use blocking::{Client, DEFAULT_TIMEOUT, DEVICE_FINISH_MARGIN, LOGIN_FINISH_TIMEOUT};
pub use error::Error;
#[cfg(feature = "async")]
pub use nonblocking::AsyncClient;
pub use proxy_url::{ProxyUrl, proxy_url};
pub use tokend_proto::validate_name;
pub use tokend_proto::{
    AddCredential, AddKind, CheckReport, ClientAuth, CredentialInfo, CredentialSpec,
    CredentialState, DaemonStatus, DeviceChallenge, EditCredential, EndpointSource, Endpoints,
    Grantee, LoginChallenge, NamedPrincipal, OAuth2Request, Principal, Secret, TokenReply,
    Upstream, endpoint,
};
pub use watch::{Event, WATCH_SILENCE, Watch};

/// The socket used when none is named: `$TOKEND_SOCKET`, the user's daemon,
/// then the system daemon.
pub fn default_socket() -> std::path::PathBuf {
    tokend_proto::paths::default_client_socket()
}
