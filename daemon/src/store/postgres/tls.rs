//! TLS to the fleet's database: what the store URL's `sslmode` and
//! `sslrootcert` mean to tokend, which certificates it trusts, and why a
//! handshake failed, in words (docs/CONFIG.md, `store`).
//!
//! The rule: a database reached over TCP is reached over TLS, its
//! certificate checked to a trusted root *and* for the host's name or
//! address (libpq's `verify-full`), unless the URL says `sslmode=disable`.
//! Nothing falls back to cleartext by itself. A Unix socket is local, its
//! file's permissions guard it, and PostgreSQL offers no TLS on it: plain.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::error::Error as _;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::Host;

/// The URL's TLS parameters, taken out of it before tokio-postgres reads
/// the rest (it knows neither `verify-full` nor `sslrootcert`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TlsParams {
    /// `sslmode`, as written (the last one wins, as in libpq).
    pub mode: Option<String>,
    /// `sslrootcert`: a PEM file, or `system`; empty means unset.
    pub root_cert: Option<String>,
}

/// How a member talks to its database, decided once, from the URL.
#[derive(Debug, PartialEq, Eq)]
pub enum Transport {
    /// Unix sockets only: plain, whatever `sslmode` says.
    Local,
    /// TCP in the clear: only with an explicit `sslmode=disable`, which the
    /// member logs as a warning at start.
    Cleartext,
    /// TCP with TLS, the certificate checked to these roots and for the
    /// host's name (`verify-full`).
    Verified(Roots),
}

/// The certificates a database's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's trusted roots (`rustls-native-certs`).
    System,
    /// Only the certificates in this PEM file.
    File {
        path: PathBuf,
        /// What named it: `sslrootcert` (the URL) or `PGSSLROOTCERT`.
        named_by: &'static str,
    },
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::System => write!(f, "the system's trusted roots"),
            Roots::File { path, named_by } => write!(f, "{named_by} {}", path.display()),
        }
    }
}

/// Why the URL's TLS settings cannot be used; each says what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum TlsUrlError {
    #[error(
        "sslmode={0} would fall back to an unencrypted connection when the server offers no TLS, which tokend never does by itself: leave sslmode out (TLS, certificate and host name verified) or write sslmode=disable to connect in the clear on purpose"
    )]
    Fallback(String),
    #[error(
        "sslmode={0} is not a mode tokend knows: leave it out (TLS, certificate and host name verified; require, verify-ca and verify-full mean the same) or write sslmode=disable to connect in the clear on purpose"
    )]
    UnknownMode(String),
    #[error(
        "the URL lists both Unix sockets and TCP hosts, and tokend reaches the one kind without TLS and the other with it: list one kind only"
    )]
    MixedHosts,
    #[error(
        "hostaddr={0} comes with no host name to check the database's certificate against: add host=NAME (the name in its certificate; hostaddr stays the address dialled), or write sslmode=disable to connect in the clear on purpose"
    )]
    Nameless(String),
    #[error("cannot read the database's CA file ({roots}): {error}")]
    Unreadable { roots: Roots, error: std::io::Error },
    #[error(
        "the database's CA file ({roots}) holds no usable PEM certificate{why}: name a file of PEM certificates (-----BEGIN CERTIFICATE-----)"
    )]
    NoCertificate { roots: Roots, why: String },
    #[error(
        "this system has no trusted root certificates to check the database's certificate with ({0}): install them (ca-certificates), or set sslrootcert= in the URL or PGSSLROOTCERT to the CA file that signed it"
    )]
    NoSystemRoots(String),
    #[error("cannot set up TLS: {0}")]
    Setup(rustls::Error),
}

/// Takes `sslmode` and `sslrootcert` out of the URL's query; returns the
/// URL without them and their (percent-decoded) values.
pub fn split_params(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), params);
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        };
        match &*percent_encoding::percent_decode_str(key).decode_utf8_lossy() {
            "sslmode" => params.mode = Some(decoded()),
            "sslrootcert" => params.root_cert = Some(decoded()).filter(|v| !v.is_empty()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, params)
}

/// The hosts of a URL, as far as TLS is concerned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostKinds {
    pub unix: bool,
    pub tcp: bool,
    /// A TCP address (`hostaddr`) with no host name beside it: a
    /// certificate cannot be checked for it.
    pub nameless: Option<String>,
}

/// Sorts the hosts of a parsed URL as tokio-postgres dials them: `hostaddr`
/// (TCP) when given, else `host`, whose name is the one TLS checks.
pub fn host_kinds(config: &tokio_postgres::Config) -> HostKinds {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let mut kinds = HostKinds::default();
    for i in 0..hosts.len().max(addrs.len()) {
        let named = matches!(hosts.get(i), Some(Host::Tcp(_)));
        match addrs.get(i) {
            Some(addr) => {
                kinds.tcp = true;
                if !named && kinds.nameless.is_none() {
                    kinds.nameless = Some(addr.to_string());
                }
            }
            None if named => kinds.tcp = true,
            None => kinds.unix = true,
        }
    }
    kinds
}

/// Whether `sslmode` asks for TLS: `true` unless it says `disable`.
/// `prefer` and `allow` are refused (they would fall back to cleartext).
pub fn wants_tls(mode: Option<&str>) -> Result<bool, TlsUrlError> {
    match mode {
        None | Some("require" | "verify-ca" | "verify-full") => Ok(true),
        Some("disable") => Ok(false),
        Some(fallback @ ("prefer" | "allow")) => Err(TlsUrlError::Fallback(fallback.into())),
        Some(other) => Err(TlsUrlError::UnknownMode(other.into())),
    }
}

/// The transport for a URL's TLS parameters and hosts; `env_root_cert` is
/// `PGSSLROOTCERT`, used when the URL names no `sslrootcert`.
pub fn decide(
    params: &TlsParams,
    hosts: &HostKinds,
    env_root_cert: Option<OsString>,
) -> Result<Transport, TlsUrlError> {
    let tls = wants_tls(params.mode.as_deref())?;
    if !hosts.tcp {
        return Ok(Transport::Local);
    }
    if !tls {
        return Ok(Transport::Cleartext);
    }
    if hosts.unix {
        return Err(TlsUrlError::MixedHosts);
    }
    if let Some(addr) = &hosts.nameless {
        return Err(TlsUrlError::Nameless(addr.clone()));
    }
    let roots = match (&params.root_cert, env_root_cert.filter(|v| !v.is_empty())) {
        (Some(url), _) => named_roots(url.into(), "sslrootcert"),
        (None, Some(env)) => named_roots(env, "PGSSLROOTCERT"),
        (None, None) => Roots::System,
    };
    Ok(Transport::Verified(roots))
}

/// `system` (libpq 16's spelling for the system's roots) or a file.
fn named_roots(value: OsString, named_by: &'static str) -> Roots {
    if value == "system" {
        return Roots::System;
    }
    Roots::File {
        path: value.into(),
        named_by,
    }
}

impl Roots {
    /// The trust anchors, read now (at start): a file that cannot be read or
    /// holds no certificate is an error, not an empty trust store.
    fn load(&self) -> Result<rustls::RootCertStore, TlsUrlError> {
        let mut store = rustls::RootCertStore::empty();
        match self {
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    let why = found.errors.first().map_or_else(
                        || "none found".to_string(),
                        std::string::ToString::to_string,
                    );
                    return Err(TlsUrlError::NoSystemRoots(why));
                }
            }
            Roots::File { path, .. } => {
                let pem = std::fs::read(path).map_err(|error| TlsUrlError::Unreadable {
                    roots: self.clone(),
                    error,
                })?;
                let no_certificate = |why: String| TlsUrlError::NoCertificate {
                    roots: self.clone(),
                    why,
                };
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: CertificateDer<'static> =
                        cert.map_err(|e| no_certificate(format!(" ({e})")))?;
                    store
                        .add(cert)
                        .map_err(|e| no_certificate(format!(" ({e})")))?;
                }
                if store.is_empty() {
                    return Err(no_certificate(String::new()));
                }
            }
        }
        Ok(store)
    }

    /// The rustls connector that checks a database's certificate against
    /// these roots and its host name (`verify-full`).
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsUrlError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(self.load()?), provider.clone())
                .build()
                .map_err(|e| TlsUrlError::Setup(rustls::Error::General(e.to_string())))?;
        let verifier = Arc::new(NamingVerifier {
            webpki,
            roots: self.to_string(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsUrlError::Setup)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// rustls's own WebPKI verifier, every check its own; the one thing added
/// is the name of the roots to a certificate they do not vouch for, so
/// that the error (logs, `status`) says *which* CA file was not enough.
/// (rustls calls installing any verifier of one's own "dangerous"; this
/// one decides nothing itself.)
#[derive(Debug)]
struct NamingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    roots: String,
}

/// A database certificate that does not chain to the roots trusted.
#[derive(Debug, thiserror::Error)]
#[error("it is not signed by a CA in {roots}")]
struct Untrusted {
    roots: String,
}

impl ServerCertVerifier for NamingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(Untrusted {
                            roots: self.roots.clone(),
                        }),
                    )))
                }
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// tokio-postgres's words when the server answers the TLS request with "no".
const NO_TLS_OFFERED: &str = "server does not support TLS";

/// Why a connection failed, when TLS is why, as a sentence that says what
/// to do; `None` for any other failure.
pub fn explain(e: &tokio_postgres::Error) -> Option<String> {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(refusal) = rustls_error(c) {
            return Some(explain_rustls(refusal));
        }
        if c.to_string() == NO_TLS_OFFERED {
            return Some(
                "the database does not offer TLS: turn ssl on in its postgresql.conf (with ssl_cert_file and ssl_key_file), or write sslmode=disable in the URL to connect in the clear on purpose".into(),
            );
        }
        cause = c.source();
    }
    None
}

/// The rustls error in `e`, also when it travels inside an `io::Error`
/// (whose `source` skips the error it wraps).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    e.downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<rustls::Error>()
}

fn explain_rustls(e: &rustls::Error) -> String {
    use CertificateError as C;
    let rustls::Error::InvalidCertificate(cert) = e else {
        return format!("the TLS handshake with the database failed: {e}");
    };
    match cert {
        C::Other(OtherError(inner)) if inner.downcast_ref::<Untrusted>().is_some() => format!(
            "the database's certificate is not trusted: {inner} (set sslrootcert= in the URL, or PGSSLROOTCERT, to the file of the CA that signed it)"
        ),
        C::UnknownIssuer => format!(
            "the database's certificate is not trusted: {e} (set sslrootcert= in the URL, or PGSSLROOTCERT, to the file of the CA that signed it)"
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => format!(
            "the database's certificate is not for the host in the URL: {e} (connect by a name or address its certificate holds; host= is the name checked, hostaddr= may give the address to dial)"
        ),
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            format!(
                "the database's certificate is outside its validity period (or this host's clock is wrong): {e}"
            )
        }
        _ => format!("the database's certificate was refused: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: Option<&str>, root_cert: Option<&str>) -> TlsParams {
        TlsParams {
            mode: mode.map(Into::into),
            root_cert: root_cert.map(Into::into),
        }
    }

    const TCP: &HostKinds = &HostKinds {
        unix: false,
        tcp: true,
        nameless: None,
    };
    const UNIX: &HostKinds = &HostKinds {
        unix: true,
        tcp: false,
        nameless: None,
    };

    #[test]
    fn a_tcp_host_without_sslmode_means_tls_verified_against_the_system_roots() {
        for mode in [
            None,
            Some("require"),
            Some("verify-ca"),
            Some("verify-full"),
        ] {
            assert_eq!(
                decide(&params(mode, None), TCP, None).unwrap(),
                Transport::Verified(Roots::System),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn cleartext_over_tcp_only_with_an_explicit_disable() {
        assert_eq!(
            decide(&params(Some("disable"), None), TCP, Some("/ca.pem".into())).unwrap(),
            Transport::Cleartext
        );
    }

    #[test]
    fn prefer_and_allow_are_refused_rather_than_falling_back_to_cleartext() {
        for mode in ["prefer", "allow"] {
            let err = decide(&params(Some(mode), None), TCP, None).unwrap_err();
            assert!(matches!(err, TlsUrlError::Fallback(_)), "{mode}: {err}");
            assert!(err.to_string().contains("sslmode=disable"), "{err}");
            // The same word means the same everywhere, a socket included.
            assert!(decide(&params(Some(mode), None), UNIX, None).is_err());
        }
        let err = decide(&params(Some("verify_full"), None), TCP, None).unwrap_err();
        assert!(err.to_string().contains("sslmode=verify_full"), "{err}");
    }

    #[test]
    fn a_unix_socket_stays_plain_whatever_sslmode_says() {
        for mode in [None, Some("disable"), Some("require"), Some("verify-full")] {
            assert_eq!(
                decide(&params(mode, Some("/ca.pem")), UNIX, None).unwrap(),
                Transport::Local,
                "{mode:?}"
            );
        }
        let both = &HostKinds {
            unix: true,
            tcp: true,
            nameless: None,
        };
        assert!(matches!(
            decide(&params(None, None), both, None),
            Err(TlsUrlError::MixedHosts)
        ));
        assert_eq!(
            decide(&params(Some("disable"), None), both, None).unwrap(),
            Transport::Cleartext
        );
    }

    #[test]
    fn the_urls_sslrootcert_comes_before_pgsslrootcert_and_system_names_the_system_roots() {
        let file = |path: &str, named_by| {
            Transport::Verified(Roots::File {
                path: path.into(),
                named_by,
            })
        };
        assert_eq!(
            decide(&params(None, None), TCP, Some("/env.pem".into())).unwrap(),
            file("/env.pem", "PGSSLROOTCERT")
        );
        assert_eq!(
            decide(
                &params(None, Some("/url.pem")),
                TCP,
                Some("/env.pem".into())
            )
            .unwrap(),
            file("/url.pem", "sslrootcert")
        );
        assert_eq!(
            decide(&params(None, Some("system")), TCP, Some("/env.pem".into())).unwrap(),
            Transport::Verified(Roots::System)
        );
        assert_eq!(
            decide(&params(None, None), TCP, Some("".into())).unwrap(),
            Transport::Verified(Roots::System)
        );
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url_and_decoded() {
        let (url, p) = split_params(
            "postgresql://u@db:5433/fleet?sslrootcert=%2Fetc%2Fca%20x.pem&connect_timeout=3&sslmode=verify-full",
        );
        assert_eq!(url, "postgresql://u@db:5433/fleet?connect_timeout=3");
        assert_eq!(p, params(Some("verify-full"), Some("/etc/ca x.pem")));
        let (url, p) = split_params("postgresql://u@db/fleet?sslmode=disable");
        assert_eq!(url, "postgresql://u@db/fleet");
        assert_eq!(p, params(Some("disable"), None));
        let (url, p) = split_params("postgresql://u@db/fleet");
        assert_eq!(url, "postgresql://u@db/fleet");
        assert_eq!(p, TlsParams::default());
        let (_, p) = split_params("postgresql://u@db/f?sslmode=disable&sslmode=require");
        assert_eq!(p.mode.as_deref(), Some("require"), "the last one wins");
    }

    #[test]
    fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Roots::File {
            path: dir.path().join("nope.pem"),
            named_by: "PGSSLROOTCERT",
        };
        let err = missing.connector().err().expect("refused");
        assert!(err.to_string().contains("PGSSLROOTCERT"), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Roots::File {
            path: empty,
            named_by: "sslrootcert",
        }
        .connector()
        .err()
        .expect("refused");
        assert!(
            err.to_string().contains("no usable PEM certificate"),
            "{err}"
        );
    }
}
