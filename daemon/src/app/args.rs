//! The daemon's command line. It lives in the library, not in `main.rs`, so
//! that `tokend-assets` can generate the man page and shell completions
//! from the same definition the binary parses.

use crate::app::Options;
use crate::config::paths::Overrides;
use clap::Parser;
use std::path::PathBuf;

/// The local credential broker: keeps API tokens fresh and hands them to
/// local programs over a Unix socket (see tokenctl).
#[derive(Parser, Debug)]
// `about` is this doc comment (not the crate description): it is the NAME
// line of the man page as well as the head of `--help`.
#[command(name = "tokend", version)]
pub struct Args {
    /// Run as the system service: /run/tokend, /var/lib/tokend, /etc/tokend
    /// (or systemd's RUNTIME_DIRECTORY, STATE_DIRECTORY, CONFIGURATION_DIRECTORY).
    #[arg(long)]
    pub system: bool,
    /// The socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The HTTP/JSON API socket (default: http.sock beside the main socket).
    #[arg(long, value_name = "PATH")]
    pub http_socket: Option<PathBuf>,
    /// The SQLite store (the same as --store sqlite:PATH).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The store: sqlite:PATH, or postgresql://USER@HOST/DBNAME (a
    /// database shared by a fleet of tokend daemons; libpq-style
    /// parameters such as ?host=/run/postgresql; TLS, verified, to a TCP
    /// host unless ?sslmode=disable, with ?sslrootcert=CAFILE; never a
    /// password: see store_password_file in the config).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The TOML config file (optional; defaults apply when it does not exist).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The sealing key file, used when no systemd credential `tokend.key` is given.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

impl Args {
    /// How the daemon was asked to run.
    pub fn options(self) -> Options {
        Options {
            system: self.system,
            overrides: Overrides {
                socket: self.socket,
                http_socket: self.http_socket,
                db: self.db,
                store: self.store,
                config: self.config,
                key_file: self.key_file,
            },
        }
    }
}
