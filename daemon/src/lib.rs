//! tokend: a local credential broker. Keeps API credentials in a sealed
//! SQLite store, keeps their access tokens fresh, and hands them to local
//! programs over a Unix socket.
//!
//! The binary is thin (`main.rs`); everything lives here so tests can drive
//! it. Data flows one way, from the top of this list to the bottom; no
//! module imports one above it (docs/ARCHITECTURE.md, checked by
//! `daemon/tests/architecture.rs`):
//!
//! - [`app`]: start-up, shutdown, reload, signals, systemd, logging, the
//!   background tasks and who owns them.
//! - [`server`]: the listening socket, admission (connection caps per user),
//!   one task per connection: frames in, responses out.
//! - [`proxy`]: the credential-injecting proxy: a request for an API sent
//!   on with the credential's token, retried once after a refused token.
//! - [`handler`]: one request from one peer: access decisions, then the
//!   operation; credential administration (add, remove, allow).
//! - [`login`]: the authorization-code login (authorize URL, redirect, code
//!   exchange) and the device authorization grant (RFC 8628).
//! - [`token`]: serving tokens, the refresh transaction, refresh-time
//!   planning, the refresher task, checks, notifications.
//! - [`state`]: what the daemon holds: credentials, the registry, the
//!   refresh schedule, pending logins, the clocks.
//! - [`store`]: durable storage (SQLite) and sealing.
//! - [`provider`]: talking to OAuth2 providers: token and introspection
//!   requests, discovery, the HTTP client and its URL rules.
//! - [`config`]: the config file, presets, paths, the access policy.
//! - [`error`]: the daemon's errors, as sentences with a wire code.

pub mod app;
pub mod config;
pub mod error;
pub mod handler;
pub mod login;
pub mod provider;
pub mod proxy;
pub mod server;
pub mod state;
pub mod store;
pub mod token;
