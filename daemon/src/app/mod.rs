//! Start-up and shutdown: load the config and key, open the store, bind the
//! socket, start the background tasks, serve, and stop cleanly.

pub mod args;
mod audit;
pub mod dumps;
mod fleet;
mod instance;
pub mod logging;
mod reload;
pub mod service;
pub mod signals;
mod stop;
mod tasks;
mod uses;

use crate::config::Config;
use crate::config::access::{Policy, group_id};
use crate::config::paths::{Overrides, Paths};
use crate::config::store::StoreLocation;
use crate::server::admission::SharedGate;
use crate::state::Shared;
use crate::state::credential::Credential;
use crate::store::Store;
use crate::store::seal::{KeySource, Sealer};
use crate::token::remote::Versions;
use crate::{server, token};
use interprocess::local_socket::tokio::Listener;
use std::sync::Arc;
use std::time::Duration;
use tasks::Tasks;
use tokio::sync::{mpsc, watch};

/// How the daemon was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub system: bool,
    pub overrides: Overrides,
}

/// A start-up failure, as a sentence for the terminal or the journal.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

fn fail(e: impl std::fmt::Display) -> StartError {
    StartError(e.to_string())
}

/// Loads the config for `options` (before logging starts, for its format).
pub fn load_config(options: &Options) -> Result<(Paths, Config), StartError> {
    let paths = Paths::resolve(options.system, &options.overrides);
    let config = Config::load(&paths.config).map_err(fail)?;
    let mut paths = paths;
    if options.overrides.key_file.is_none()
        && let Some(key) = &config.key_file
    {
        paths.key_file = key.clone();
    }
    if options.overrides.http_socket.is_none()
        && let Some(http) = &config.http.socket
    {
        paths.http_socket = http.clone();
    }
    paths.store = StoreLocation::resolve(
        options.overrides.store.as_deref(),
        options.overrides.db.as_ref(),
        config.store.as_deref(),
        &paths.db,
    )
    .map_err(StartError)?;
    if let StoreLocation::Sqlite(db) = &paths.store {
        paths.db = db.clone();
    }
    Ok((paths, config))
}

/// Runs the daemon until SIGTERM/SIGINT. Returns an error only for start-up
/// failures; everything after start is logged and survived.
pub async fn run(paths: Paths, config: Config) -> Result<(), StartError> {
    let _instance = instance::claim(&paths.socket).map_err(fail)?;
    raise_fd_limit();
    let policy = Policy::for_config(&config).map_err(|e| {
        fail(format!(
            "config {}: admin_group: {e}",
            paths.config.display()
        ))
    })?;
    let (store, key_source) = open_store(&paths, &config)?;
    let (shared, versions) = load(store, &paths, config, policy)?;
    let (listener, http_listener) = listen(&shared)?;
    let tcp_listeners = server::http::tcp::bind(&shared).await.map_err(fail)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = start_tasks(&shared, shutdown_tx, &shutdown_rx)?;
    if let Some(events) = shared.store.take_events() {
        let sync = fleet::run(shared.clone(), events, versions, shutdown_rx.clone());
        tasks.spawn("fleet sync", sync);
    }
    log_start(&shared, &key_source);
    service::ready(&status_line(&shared));
    // One gate for both listeners: the connection caps count them together.
    let gate = SharedGate::new(shared.config().limits.max_connections);
    let grace = Duration::from_secs(5);
    // One proxy for every listener: one pool of upstream connections, one
    // count of each user's requests in flight.
    let proxy = Arc::new(crate::proxy::Proxy::default());
    if let Some(http) = http_listener {
        let http = server::http::run(
            http,
            gate.clone(),
            shared.clone(),
            shutdown_rx.clone(),
            grace,
            proxy.clone(),
        );
        tasks.spawn("HTTP listener", http);
    }
    for listener in tcp_listeners {
        let tcp = server::http::tcp::run(
            listener,
            gate.clone(),
            shared.clone(),
            shutdown_rx.clone(),
            grace,
            proxy.clone(),
        );
        tasks.spawn("TCP listener", tcp);
    }
    server::run(listener, gate, shared.clone(), shutdown_rx, grace).await;
    stop::stop(&shared).await;
    tasks.join(Duration::from_secs(5)).await;
    // Every listener has drained now: what the HTTP API and the proxy
    // answered while stopping is written too.
    stop::last_audit_write(&shared).await;
    Ok(())
}

/// Opens the sealing key and the store, and checks that they belong together.
fn open_store(paths: &Paths, config: &Config) -> Result<(Store, KeySource), StartError> {
    if let Some(dir) = paths.key_file.parent() {
        crate::config::paths::ensure_private_dir(dir, 0o700)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let (sealer, key_source) =
        Sealer::load(paths.credential_key.as_deref(), &paths.key_file, true).map_err(fail)?;
    let store = match &paths.store {
        StoreLocation::Sqlite(db) => crate::store::open_sqlite(db, sealer).map_err(fail)?,
        StoreLocation::Postgres(url) => {
            crate::store::open_postgres(url, config, sealer).map_err(|e| match e {
                // The URL's own error says what to write instead.
                crate::store::StoreError::BadUrl(_) => fail(format!("cannot open the store: {e}")),
                e => fail(format!(
                    "cannot open the store: {e}. Check that PostgreSQL runs and that the database exists (tokend creates its tables, not the database: createdb -O USER DBNAME)"
                )),
            })?
        }
    };
    store.verify_key().map_err(|e| {
        let advice = if store.is_shared() {
            "every member of a fleet must use the same key: deploy the fleet's key file (--key-file, or the systemd credential tokend.key) to this host"
        } else {
            "start tokend with the key the store was created with"
        };
        fail(format!(
            "the sealing key does not match the store {}: {e}. {advice}",
            store.describe()
        ))
    })?;
    Ok((store, key_source))
}

/// Loads every credential into the shared state and puts them on the
/// schedule; the versions loaded, for a fleet's resync.
fn load(
    store: Store,
    paths: &Paths,
    config: Config,
    policy: Policy,
) -> Result<(Arc<Shared>, Versions), StartError> {
    let stored = store.load_all().map_err(fail)?;
    let versions: Versions = if store.is_shared() {
        stored
            .iter()
            .map(|s| (s.name.clone(), (s.incarnation, s.change)))
            .collect()
    } else {
        Versions::new()
    };
    // In a fleet the mark may be another member's refresh in flight: its
    // lease, read under the lock, tells (token/claim.rs).
    for s in stored
        .iter()
        .filter(|s| s.fence.mark.is_some() && !store.is_shared())
    {
        tracing::warn!(credential = %tokend_proto::logged(&s.name), "tokend stopped during a refresh: the held refresh token is in doubt and is not sent before its lease ends and introspection says it is still active");
    }
    for s in stored.iter().filter(|s| s.untrusted) {
        let why = s
            .reason
            .as_deref()
            .unwrap_or(crate::store::binding::TAMPERED);
        crate::token::warn_untrusted(&s.name, why);
        crate::token::notify::at_start(&config, &s.name, s.state, Some(why));
    }
    let shared = Shared::new(store, paths.clone(), config, policy);
    shared.registry.extend(
        stored
            .into_iter()
            .map(|s| Arc::new(Credential::from_stored(s)))
            .collect(),
    );
    token::schedule_loaded(&shared);
    Ok((shared, versions))
}

/// The main socket and the HTTP API's (unless `[http] enabled = false`):
/// those systemd passed, or bound here.
fn listen(shared: &Shared) -> Result<(Listener, Option<Listener>), StartError> {
    let paths = &shared.paths;
    let activated = service::activated_listeners()
        .map_err(|e| fail(format!("cannot use the socket passed by systemd: {e}")))?;
    let socket_gid = match (&shared.config().socket_group, paths.system) {
        (Some(g), true) => {
            Some(group_id(g).map_err(|e| fail(format!("config: socket_group: {e}")))?)
        }
        _ => None,
    };
    let main = match activated.main {
        Some(listener) => {
            tracing::info!("using the socket passed by systemd");
            listener
        }
        None => {
            let mode = if paths.system { 0o660 } else { 0o600 };
            server::bind(&paths.socket, mode, socket_gid).map_err(fail)?
        }
    };
    let http = server::http::listener(shared, activated.http, socket_gid).map_err(fail)?;
    Ok((main, http))
}

/// Starts the background tasks; each ends on the shutdown signal.
fn start_tasks(
    shared: &Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Tasks, StartError> {
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let signals = signals::listen(shutdown_tx, reload_tx)
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    let mut tasks = Tasks::default();
    tasks.spawn("signals", signals);
    tasks.spawn(
        "refresher",
        token::refresher::run(shared.clone(), shutdown.clone()),
    );
    tasks.spawn(
        "forecast warnings",
        token::forecast::run(shared.clone(), shutdown.clone()),
    );
    tasks.spawn(
        "last-use flush",
        uses::flush_uses(shared.clone(), shutdown.clone()),
    );
    tasks.spawn(
        "audit writer",
        audit::write_audit(shared.clone(), shutdown.clone()),
    );
    let refusals = shared.clone();
    let quiet = shutdown.clone();
    tasks.spawn("refusal counts", async move {
        refusals.refusals.report(quiet).await;
    });
    tasks.spawn(
        "reload",
        reload::reload(shared.clone(), reload_rx, shutdown.clone()),
    );
    if let Some(watchdog) = service::watchdog(shutdown.clone()) {
        tasks.spawn("watchdog", watchdog);
    }
    Ok(tasks)
}

fn status_line(shared: &Shared) -> String {
    format!(
        "serving {} credentials on {}",
        shared.registry.len(),
        shared.paths.socket.display()
    )
}

fn log_start(shared: &Shared, key: &KeySource) {
    let key = match key {
        KeySource::SystemdCredential(p) => format!("systemd credential {}", p.display()),
        KeySource::File(p) => format!("key file {}", p.display()),
        KeySource::Created(p) => format!("new key file {}", p.display()),
    };
    tracing::info!(
        socket = %shared.paths.socket.display(),
        store = %shared.store.describe(),
        credentials = shared.registry.len(),
        key = %key,
        "tokend {} ready",
        env!("CARGO_PKG_VERSION")
    );
}

/// Lifts the soft open-file limit to the hard one: each client is a socket.
fn raise_fd_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
        }
    }
}
