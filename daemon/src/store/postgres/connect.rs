//! Where the PostgreSQL store is and how to reach it: the store URL, the
//! password file, TLS (`tls.rs`), and the connection pools (docs/CONFIG.md,
//! `store`).

use super::tls::{self, Transport};
use crate::store::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::path::Path;
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// How to connect, parsed from the store URL and the password file.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    /// The URL as shown in logs and `status` (it never holds a password).
    pub shown: String,
    pub tls: Tls,
}

/// TLS to the database, as `tls.rs` decided from the URL.
#[derive(Clone)]
pub enum Tls {
    /// Unix sockets only: plain.
    Local,
    /// TCP without TLS, because the URL says `sslmode=disable`.
    Cleartext,
    /// TCP with TLS, certificate and host name verified against `roots`.
    Verified {
        connector: tokio_postgres_rustls::MakeRustlsConnect,
        roots: tls::Roots,
    },
}

impl Target {
    /// Parses `url` (libpq's URL form, e.g. `postgresql://tokend@/tokend?host=/run/postgresql`).
    /// A password in the URL is refused: URLs end up in argv, configs and
    /// logs; the password comes from `password_file` instead. A TCP host
    /// means TLS, verified, unless the URL says `sslmode=disable`.
    pub fn parse(
        url: &str,
        password_file: Option<&Path>,
        member: &str,
    ) -> Result<Target, StoreError> {
        let bad = |why: String| StoreError::BadUrl(why);
        let (rest, tls_params) = tls::split_params(url);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            bad(format!(
                "{e} (expected e.g. postgresql://USER@/DBNAME?host=/run/postgresql)"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(bad(
                "the URL holds a password; remove it and put the password in the file named by store_password_file (docs/CONFIG.md)".into(),
            ));
        }
        if config.get_dbname().is_none() {
            return Err(bad(
                "the URL names no database (postgresql://USER@HOST/DBNAME)".into(),
            ));
        }
        if config.get_user().is_none() {
            config.user(std::env::var("USER").unwrap_or_else(|_| "tokend".into()));
        }
        if let Some(path) = password_file {
            config.password(read_password(path)?);
        }
        config.application_name(member);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        bound_every_call(&mut config);
        let transport = tls::decide(
            &tls_params,
            &tls::host_kinds(&config),
            std::env::var_os("PGSSLROOTCERT"),
        )
        .map_err(|e| bad(e.to_string()))?;
        let tls = match transport {
            Transport::Local => Tls::Local,
            Transport::Cleartext => Tls::Cleartext,
            Transport::Verified(roots) => Tls::Verified {
                connector: roots.connector().map_err(|e| bad(e.to_string()))?,
                roots,
            },
        };
        // `Require`: a server that answers the TLS request with "no" is an
        // error, never a cleartext session (`Prefer` would be).
        config.ssl_mode(match tls {
            Tls::Verified { .. } => SslMode::Require,
            Tls::Local | Tls::Cleartext => SslMode::Disable,
        });
        Ok(Target {
            config,
            shown: url.to_string(),
            tls,
        })
    }

    /// Says at start how the database is reached: a warning for cleartext
    /// over the network, which only an explicit `sslmode=disable` gives.
    pub fn log_transport(&self) {
        match &self.tls {
            Tls::Local => {
                tracing::debug!(database = %self.shown, "the database is reached over a Unix socket (no TLS: it is local)");
            }
            Tls::Cleartext => {
                tracing::warn!(database = %self.shown, "sslmode=disable: the connection to the database is not encrypted, and anyone on the network path can read and change what passes between this member and the database (sealed values stay sealed); remove sslmode=disable to use TLS");
            }
            Tls::Verified { roots, .. } => {
                tracing::info!(database = %self.shown, roots = %roots, "the database is reached over TLS, its certificate checked against these roots and for the host's name");
            }
        }
    }

    /// A pool of at most `size` connections.
    pub fn pool(&self, size: usize, wait: Duration) -> Result<Pool, StoreError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &self.tls {
            Tls::Local | Tls::Cleartext => {
                Manager::from_config(self.config.clone(), tokio_postgres::NoTls, manager_config)
            }
            Tls::Verified { connector, .. } => {
                Manager::from_config(self.config.clone(), connector.clone(), manager_config)
            }
        };
        Pool::builder(manager)
            .max_size(size)
            .wait_timeout(Some(wait))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))
    }
}

/// A database that stalls (a frozen host, a black-holed network) must look
/// down, not hang a member: TCP keepalives notice a dead peer within about
/// 30 s (the default is two hours), and the server cancels any statement
/// that runs longer than the client waits for it (`STATEMENT_LIMIT_MS`,
/// unless the URL sets `options` of its own; a lock's wait sets its own).
fn bound_every_call(config: &mut tokio_postgres::Config) {
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(15));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    if config.get_options().is_none() {
        config.options(format!("-c statement_timeout={STATEMENT_LIMIT_MS}"));
    }
}

/// The server's limit on one statement, in ms: the client's own limit on a
/// call (`CALL_LIMIT` in `mod.rs`).
pub const STATEMENT_LIMIT_MS: u64 = 10_000;

/// The password: the file's first line. Like libpq with ~/.pgpass, a file
/// other users may read is refused.
fn read_password(path: &Path) -> Result<Vec<u8>, StoreError> {
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(StoreError::BadUrl(format!(
                "the database password file {} may be read by other users (mode {mode:o}); chmod 600 it",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::BadUrl(format!(
            "cannot read the database password file {}: {e}",
            path.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or("").as_bytes().to_vec())
}

/// A connection for `LISTEN`: its notifications arrive on the returned
/// channel, which closes when the connection ends.
pub async fn listener(
    target: &Target,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    ),
    tokio_postgres::Error,
> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = match &target.tls {
        Tls::Local | Tls::Cleartext => {
            let (client, conn) = target.config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(drive(conn, tx));
            client
        }
        Tls::Verified { connector, .. } => {
            let (client, conn) = target.config.connect(connector.clone()).await?;
            tokio::spawn(drive(conn, tx));
            client
        }
    };
    Ok((client, rx))
}

/// Runs a connection, passing its notifications on, until it ends.
async fn drive<S, T>(
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_postgres::Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx.send(n).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "the database's notification connection ended");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_read_with_its_socket_directory_and_tls_for_every_tcp_host() {
        let t = Target::parse(
            "postgresql://tokend@/fleet?host=/run/postgresql",
            None,
            "m1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.config.get_dbname(), Some("fleet"));
        assert_eq!(t.config.get_user(), Some("tokend"));
        assert_eq!(t.config.get_application_name(), Some("m1"));
        assert!(matches!(t.tls, Tls::Local));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
        for query in [
            "",
            "?sslmode=require",
            "?sslmode=verify-ca",
            "?sslmode=verify-full",
        ] {
            let url = format!("postgres://tokend@db.internal/fleet{query}");
            let t = Target::parse(&url, None, "m1").unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(t.tls, Tls::Verified { .. }), "{url}");
            // A server that offers no TLS fails the connection: no fallback.
            assert_eq!(t.config.get_ssl_mode(), SslMode::Require, "{url}");
            assert_eq!(t.shown, url);
        }
        let t = Target::parse(
            "postgres://tokend@db.internal/fleet?sslmode=disable",
            None,
            "m",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t.tls, Tls::Cleartext));
        assert_eq!(t.config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn tls_settings_that_cannot_hold_their_promise_are_refused_with_the_fix() {
        let refusal = |url: &str| match Target::parse(url, None, "m") {
            Ok(_) => panic!("{url} accepted"),
            Err(e) => e.to_string(),
        };
        let err = refusal("postgres://u@db.internal/fleet?sslmode=prefer");
        assert!(
            err.contains("fall back") && err.contains("sslmode=disable"),
            "{err}"
        );
        let err = refusal("postgres://u@/fleet?hostaddr=10.0.0.5");
        assert!(
            err.contains("hostaddr=10.0.0.5") && err.contains("host=NAME"),
            "{err}"
        );
        let err = refusal("postgres://u@db.internal/fleet?host=/run/postgresql");
        assert!(err.contains("Unix sockets and TCP hosts"), "{err}");
        let err = refusal("postgres://u@db.internal/fleet?sslrootcert=/nonexistent/ca.pem");
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        // The address dialled may differ from the name checked.
        let t = Target::parse(
            "postgres://u@/fleet?host=db.internal&hostaddr=10.0.0.5",
            None,
            "m",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(t.tls, Tls::Verified { .. }));
    }

    #[test]
    fn a_password_comes_from_its_file_never_from_the_url() {
        let err = Target::parse("postgresql://u:hunter2@db/fleet", None, "m")
            .err()
            .expect("refused");
        assert!(err.to_string().contains("store_password_file"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = Target::parse("postgresql://u@db/fleet", Some(&file), "m").err();
            assert!(err.is_some_and(|e| e.to_string().contains("chmod 600")));
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let t = Target::parse("postgresql://u@db/fleet", Some(&file), "m")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert!(
            Target::parse("postgresql://u@db", None, "m").is_err(),
            "no database"
        );
    }
}
