//! The state every connection and background task shares.

pub mod audit;
pub mod clock;
pub mod connections;
pub mod credential;
pub mod events;
pub mod logins;
pub mod metrics;
pub mod refusals;
pub mod registry;
pub mod scheduler;
pub mod throttle;

use crate::config::Config;
use crate::config::access::Policy;
use crate::config::paths::Paths;
use crate::state::credential::Credential;
use crate::state::registry::Registry;
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

/// What every connection and background task shares. Each field is its own
/// handle with its own short lock (or none): nothing here is locked as a
/// whole, so a token request touches only the registry's read lock and the
/// credential's own.
#[derive(Debug)]
pub struct Shared {
    pub registry: Registry,
    pub store: Store,
    pub paths: Paths,
    config: RwLock<Arc<Config>>,
    policy: RwLock<Policy>,
    /// Built on first use: see [`crate::provider::http::client`].
    http: OnceLock<reqwest::Client>,
    pub started: Instant,
    /// Open connections, by listener and by user.
    pub connections: connections::Connections,
    /// Some credential's last-use time changed since the last flush.
    pub uses_dirty: AtomicBool,
    pub logins: logins::Logins,
    pub scheduler: crate::state::scheduler::Scheduler,
    /// When each refresh token forecast not yet warned of comes within
    /// `refresh.warn_before_secs` (`token/forecast.rs`): only credentials
    /// with a forecast have an entry.
    pub warnings: crate::state::scheduler::Scheduler,
    /// What happens to credentials, for `GET /v1/events`.
    pub events: events::Events,
    /// Bounds refreshes in flight across all credentials (a refresh storm
    /// must not open thousands of connections to one provider).
    pub refresh_slots: tokio::sync::Semaphore,
    pub clock: crate::state::clock::Clock,
    /// Peers' supplementary groups, looked up off the async workers.
    pub groups: crate::config::groups::GroupCache,
    /// How many refused requests of each uid the log still shows.
    pub refusals: refusals::Refusals,
    /// Tokens served and refreshes ended, per credential, for `/v1/metrics`.
    pub metrics: metrics::Metrics,
    /// A graceful stop has begun: no refresh starts any more.
    stopping: AtomicBool,
    /// The audit trail's entries on their way to the store.
    pub audit: audit::AuditLog,
}

impl Shared {
    pub fn new(store: Store, paths: Paths, config: Config, policy: Policy) -> Arc<Shared> {
        Arc::new(Shared {
            registry: Registry::default(),
            store,
            paths,
            http: OnceLock::new(),
            config: RwLock::new(Arc::new(config.clone())),
            policy: RwLock::new(policy),
            started: Instant::now(),
            connections: Default::default(),
            uses_dirty: AtomicBool::new(false),
            logins: Default::default(),
            scheduler: Default::default(),
            warnings: Default::default(),
            events: Default::default(),
            refresh_slots: tokio::sync::Semaphore::new(config.refresh.max_concurrent),
            clock: Default::default(),
            groups: Default::default(),
            refusals: Default::default(),
            metrics: Default::default(),
            stopping: AtomicBool::new(false),
            audit: audit::AuditLog::new(config.audit.enabled),
        })
    }

    /// The HTTP client, built the first time a request needs it. A failure
    /// is not remembered: the next request tries again (certificates may
    /// have been installed meanwhile).
    pub fn http(&self) -> Result<&reqwest::Client, crate::provider::http::ClientError> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        let client = crate::provider::http::client()?;
        Ok(self.http.get_or_init(|| client))
    }

    /// A graceful stop begins: from now on no refresh starts (one in
    /// flight finishes; the stop waits for it).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A refresh of `cred` ended with `result`: counted unless `cred` was
    /// removed or replaced meanwhile (its counters are gone, and must not
    /// come back for a name nothing holds).
    pub fn count_refresh(&self, cred: &Arc<Credential>, result: metrics::RefreshResult) {
        if self.registry.is_current(cred) {
            self.metrics.refreshed(&cred.name, result);
        }
    }

    /// A refresh token of `cred` in doubt was settled (or not) so; as
    /// [`Shared::count_refresh`].
    pub fn count_doubt(&self, cred: &Arc<Credential>, outcome: metrics::Doubt) {
        if self.registry.is_current(cred) {
            self.metrics.doubt(&cred.name, outcome);
        }
    }

    /// Announces that credential `cred` is gone (removed or replaced), with
    /// who could use it: the streams that may see it are told.
    pub fn announce_removed(&self, cred: &credential::Credential) {
        let allowed = cred.with_live(|l| l.allowed.clone());
        self.events.publish(
            &cred.name,
            events::Kind::Removed {
                owner_uid: cred.owner_uid,
                allowed,
            },
        );
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
        self.audit.set_enabled(config.audit.enabled);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }
}
