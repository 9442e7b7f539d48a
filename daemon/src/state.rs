//! The state every connection and background task shares.

use crate::access::Policy;
use crate::config::Config;
use crate::paths::Paths;
use crate::registry::Registry;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

#[derive(Debug)]
pub struct Shared {
    pub registry: Registry,
    pub store: Store,
    pub paths: Paths,
    config: RwLock<Arc<Config>>,
    policy: RwLock<Policy>,
    pub http: reqwest::Client,
    pub started: Instant,
    pub connections: AtomicU32,
    /// Some credential's last-use time changed since the last flush.
    pub uses_dirty: AtomicBool,
    pub logins: crate::login::Logins,
    pub scheduler: crate::scheduler::Scheduler,
    /// Bounds refreshes in flight across all credentials (a refresh storm
    /// must not open thousands of connections to one provider).
    pub refresh_slots: tokio::sync::Semaphore,
    pub clock: crate::clock::Clock,
}

impl Shared {
    pub fn new(store: Store, paths: Paths, config: Config, policy: Policy) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Registry::default(),
            store,
            paths,
            http: crate::http::client(),
            config: RwLock::new(Arc::new(config.clone())),
            policy: RwLock::new(policy),
            started: Instant::now(),
            connections: AtomicU32::new(0),
            uses_dirty: AtomicBool::new(false),
            logins: Default::default(),
            scheduler: Default::default(),
            refresh_slots: tokio::sync::Semaphore::new(config.refresh.max_concurrent),
            clock: Default::default(),
        })
    }

    /// Some credential's last-use time changed: the next flush has work.
    pub fn note_use(&self) {
        self.uses_dirty.store(true, Ordering::Relaxed);
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swaps in a reloaded config and the access policy derived from it.
    pub fn replace_config(&self, config: Config, policy: Policy) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }
}
