//! Open connections, by listener and by user: what `status` and the
//! metrics tell an admin about who holds the daemon's places.
//!
//! The admission gate (`server/quota.rs`) keeps its own per-uid counts to
//! decide; these are the census, kept where the handlers can read them,
//! and counted by the connection's own task from its start to its end.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where a connection came in: the `listener` label of `tokend_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The main socket (`tokend.sock`, bincode).
    Socket,
    /// The HTTP API's socket (`http.sock`).
    Http,
    /// A `[proxy] listen` address.
    ProxyTcp,
    /// A `[metrics] listen` address.
    MetricsTcp,
}

impl Listener {
    pub const ALL: [Listener; 4] = [
        Listener::Socket,
        Listener::Http,
        Listener::ProxyTcp,
        Listener::MetricsTcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Socket => "socket",
            Listener::Http => "http",
            Listener::ProxyTcp => "proxy_tcp",
            Listener::MetricsTcp => "metrics_tcp",
        }
    }
}

/// The census of open connections.
#[derive(Debug, Default)]
pub struct Connections {
    by_listener: [AtomicU32; Listener::ALL.len()],
    /// Open connections per uid; a uid with none has no entry. A
    /// `std::sync::Mutex`: each section is one map operation.
    by_uid: Mutex<HashMap<u32, u32>>,
}

impl Connections {
    /// Counts a connection of `uid` on `listener` until the guard drops.
    pub fn open(&self, listener: Listener, uid: u32) -> Open<'_> {
        self.by_listener[listener as usize].fetch_add(1, Ordering::Relaxed);
        *self.lock().entry(uid).or_insert(0) += 1;
        Open {
            census: self,
            listener,
            uid,
        }
    }

    /// All open connections.
    pub fn total(&self) -> u32 {
        Listener::ALL.iter().map(|&l| self.on(l)).sum()
    }

    /// Open connections on `listener`.
    pub fn on(&self, listener: Listener) -> u32 {
        self.by_listener[listener as usize].load(Ordering::Relaxed)
    }

    /// Open connections per uid, by uid.
    pub fn by_uid(&self) -> Vec<(u32, u32)> {
        let mut all: Vec<_> = self.lock().iter().map(|(&u, &n)| (u, n)).collect();
        all.sort_unstable();
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u32>> {
        self.by_uid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open connection, counted while it lives.
#[derive(Debug)]
pub struct Open<'a> {
    census: &'a Connections,
    listener: Listener,
    uid: u32,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.census.by_listener[self.listener as usize].fetch_sub(1, Ordering::Relaxed);
        if let Entry::Occupied(mut open) = self.census.lock().entry(self.uid) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_by_listener_and_user_until_they_close() {
        let census = Connections::default();
        let a = census.open(Listener::Socket, 1000);
        let b = census.open(Listener::Http, 1000);
        let c = census.open(Listener::Http, 0);
        assert_eq!(census.total(), 3);
        assert_eq!(census.on(Listener::Http), 2);
        assert_eq!(census.by_uid(), vec![(0, 1), (1000, 2)]);
        drop((a, c));
        assert_eq!(census.by_uid(), vec![(1000, 1)]);
        drop(b);
        assert_eq!(census.total(), 0);
        assert!(census.by_uid().is_empty(), "no entry left behind");
    }
}
