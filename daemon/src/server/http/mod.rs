//! The HTTP/JSON API (docs/HTTP.md): HTTP/1.1 on a second Unix socket,
//! `http.sock`, for programs in languages that cannot speak the bincode
//! protocol of the main socket (Python, Node, Go, shell with curl).
//!
//! It adds no rules of its own: every request becomes a
//! [`tokend_proto::Request`] answered by [`crate::handler::handle`], with the
//! peer's uid/gid from the kernel, exactly as on the main socket; this
//! module only translates (routes → request, response → status and JSON).
//! Connections are admitted by the same [`SharedGate`] as the main socket's.
//!
//! - `listener.rs`: binding (or taking systemd's) socket, and the accept loop.
//! - `connection.rs`: one hyper connection, with the head and idle deadlines.
//! - `activity.rs`: what a connection is doing, for those deadlines.
//! - `routes.rs`: method and path → route, or 404/405.
//! - `api.rs`: route → request → handler → HTTP response.
//! - `body.rs`: the JSON bodies; `errors.rs`: errors as status and JSON.
//! - `tcp.rs`: the proxy's loopback TCP listeners (`[proxy] listen`);
//!   `tcp_peer.rs`: a TCP peer's uid from the kernel's socket table.

mod activity;
mod api;
mod body;
mod connection;
mod errors;
mod events;
mod listener;
mod routes;
pub mod tcp;
mod tcp_peer;

pub use listener::{listener, run};
pub use routes::{ROUTES, Route};

/// The request head limit (request line and headers), in bytes: larger
/// heads are answered 431 by hyper.
pub const MAX_HEAD: usize = 16 * 1024;

/// The request body limit, in bytes: larger bodies are answered 413.
pub const MAX_BODY: usize = 64 * 1024;
