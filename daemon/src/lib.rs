//! tokend: a local credential broker. Keeps API credentials in a sealed
//! SQLite store, keeps their access tokens fresh, and hands them to local
//! programs over a Unix socket.
//!
//! The binary is thin (`main.rs`); everything lives here so tests can drive it.

pub mod access;
pub mod admission;
pub mod args;
pub mod check;
pub mod clock;
pub mod config;
pub mod connection;
pub mod credential;
pub mod daemon;
pub mod discovery;
pub mod endpoints;
pub mod error;
pub mod handler;
pub mod http;
pub mod http_api;
pub mod lifecycle;
pub mod logging;
pub mod login;
pub mod notify;
pub mod paths;
pub mod preset;
pub mod provider;
pub mod quota;
pub mod registry;
pub mod scheduler;
pub mod seal;
pub mod server;
pub mod service;
pub mod signals;
pub mod state;
pub mod store;
