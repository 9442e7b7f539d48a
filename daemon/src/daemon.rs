//! Start-up and shutdown: load the config and key, open the store, bind the
//! socket, start the background tasks, serve, and stop cleanly.

use crate::access::{Policy, group_id};
use crate::admission::SharedGate;
use crate::config::Config;
use crate::credential::Credential;
use crate::paths::{Overrides, Paths};
use crate::seal::{KeySource, Sealer};
use crate::state::Shared;
use crate::store::Store;
use crate::{http_api, lifecycle, scheduler, server, service, signals};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
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
    Ok((paths, config))
}

fn policy_for(config: &Config) -> Result<Policy, String> {
    Ok(Policy {
        daemon_uid: tokend_proto::paths::current_uid(),
        admin_gid: config.admin_group.as_deref().map(group_id).transpose()?,
    })
}

/// Runs the daemon until SIGTERM/SIGINT. Returns an error only for start-up
/// failures; everything after start is logged and survived.
pub async fn run(paths: Paths, config: Config) -> Result<(), StartError> {
    raise_fd_limit();
    let policy = policy_for(&config).map_err(|e| {
        fail(format!(
            "config {}: admin_group: {e}",
            paths.config.display()
        ))
    })?;
    let socket_gid = match (&config.socket_group, paths.system) {
        (Some(g), true) => {
            Some(group_id(g).map_err(|e| fail(format!("config: socket_group: {e}")))?)
        }
        _ => None,
    };
    if let Some(dir) = paths.key_file.parent() {
        crate::paths::ensure_private_dir(dir, 0o700)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    let (sealer, key_source) =
        Sealer::load(paths.credential_key.as_deref(), &paths.key_file, true).map_err(fail)?;
    let store = Store::open(&paths.db, sealer).map_err(fail)?;
    store.verify_key().map_err(|e| {
        fail(format!(
            "the sealing key does not match the store {}: {e}. Start tokend with the key the store was created with",
            paths.db.display()
        ))
    })?;
    let stored = store.load_all().map_err(fail)?;
    for s in stored.iter().filter(|s| s.refresh_interrupted) {
        tracing::warn!(credential = %s.name, "tokend stopped during a refresh: the held refresh token is in doubt and is not sent before introspection says it is still active");
    }
    let shared = Shared::new(store, paths.clone(), config, policy);
    shared.registry.extend(
        stored
            .into_iter()
            .map(|s| Arc::new(Credential::from_stored(s)))
            .collect(),
    );
    let activated = service::activated_listeners()
        .map_err(|e| fail(format!("cannot use the socket passed by systemd: {e}")))?;
    let listener = match activated.main {
        Some(listener) => {
            tracing::info!("using the socket passed by systemd");
            listener
        }
        None => {
            let mode = if paths.system { 0o660 } else { 0o600 };
            server::bind(&paths.socket, mode, socket_gid).map_err(fail)?
        }
    };
    let http_listener = http_api::listener(&shared, activated.http, socket_gid).map_err(fail)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = mpsc::channel(1);
    signals::spawn(shutdown_tx, reload_tx)
        .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
    lifecycle::schedule_loaded(&shared);
    tokio::spawn(scheduler::run(shared.clone(), shutdown_rx.clone()));
    tokio::spawn(flush_uses(shared.clone(), shutdown_rx.clone()));
    tokio::spawn(reload(shared.clone(), reload_rx));
    service::spawn_watchdog();
    log_start(&shared, &key_source);
    service::ready(&status_line(&shared));
    let gate = SharedGate::new(shared.config().limits.max_connections);
    let grace = Duration::from_secs(5);
    let http = http_listener.map(|l| {
        let (gate, shared, shutdown) = (gate.clone(), shared.clone(), shutdown_rx.clone());
        tokio::spawn(http_api::run(l, gate, shared, shutdown, grace))
    });
    server::run(listener, gate, shared.clone(), shutdown_rx, grace).await;
    if let Some(http) = http {
        let _ = http.await;
    }
    stop(&shared).await;
    Ok(())
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
        db = %shared.paths.db.display(),
        credentials = shared.registry.len(),
        key = %key,
        "tokend {} ready",
        env!("CARGO_PKG_VERSION")
    );
}

/// Graceful stop: refreshes in flight finish and commit, last-use times are
/// written, the WAL is folded in, and the socket file goes.
async fn stop(shared: &Arc<Shared>) {
    let deadline = Duration::from_secs(shared.config().refresh.http_timeout_secs + 2);
    let creds = shared.registry.all();
    let mut held = Vec::new();
    for cred in &creds {
        match tokio::time::timeout(deadline, cred.refresh_lock.lock()).await {
            Ok(guard) => held.push(guard),
            Err(_) => {
                tracing::warn!(credential = %cred.name, "a refresh did not finish before shutdown")
            }
        }
    }
    lifecycle::save_before_stop(shared).await;
    save_uses(shared).await;
    if let Err(e) = shared.store.checkpoint() {
        tracing::warn!(error = %e, "WAL checkpoint at shutdown failed");
    }
    if !shared.paths.socket.as_os_str().is_empty() && service_owns_socket() {
        let _ = std::fs::remove_file(&shared.paths.socket);
    }
    tracing::info!("stopped");
    drop(held);
}

/// A socket passed by systemd belongs to systemd: it is not removed.
fn service_owns_socket() -> bool {
    std::env::var_os("LISTEN_FDS").is_none()
}

/// Writes last-use times every minute, if any changed.
async fn flush_uses(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => save_uses(&shared).await,
            _ = shutdown.changed() => return,
        }
    }
}

async fn save_uses(shared: &Arc<Shared>) {
    if !shared.uses_dirty.swap(false, Ordering::Relaxed) {
        return;
    }
    // Only the credentials used since the last flush: rewriting every
    // credential ever used would be an O(N) fsync'd transaction a minute.
    let uses: Vec<(String, i64)> = shared
        .registry
        .unordered()
        .iter()
        .filter_map(|c| {
            c.with_live(|l| {
                let unsaved = std::mem::take(&mut l.use_unsaved);
                unsaved.then_some(l.last_use_at.get()).flatten()
            })
            .map(|t| (c.name.to_string(), t))
        })
        .collect();
    if uses.is_empty() {
        return;
    }
    let store = shared.store.clone();
    let result = tokio::task::spawn_blocking(move || (store.save_last_use(&uses), uses)).await;
    match result {
        Ok((Ok(()), _)) => {}
        Ok((Err(e), uses)) => {
            tracing::warn!(error = %e, "could not save last-use times; will retry");
            for cred in uses
                .iter()
                .filter_map(|(name, _)| shared.registry.get(name))
            {
                cred.with_live(|l| l.use_unsaved = true);
            }
            shared.note_use();
        }
        Err(e) => tracing::warn!(error = %e, "the last-use flush failed"),
    }
}

/// SIGHUP: re-read the config. A broken file keeps the running config.
async fn reload(shared: Arc<Shared>, mut requests: mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        service::reloading();
        match Config::load(&shared.paths.config)
            .map_err(|e| e.to_string())
            .and_then(|c| Ok((policy_for(&c)?, c)))
        {
            Ok((policy, config)) => {
                let old = shared.config();
                let changed = *old != config;
                let later = old.restart_only_changes(&config);
                shared.replace_config(config, policy);
                tracing::info!(path = %shared.paths.config.display(), changed, "config reloaded");
                if !later.is_empty() {
                    tracing::warn!(
                        "config changes to {} take effect at the next start",
                        later.join(", ")
                    );
                }
            }
            Err(e) => tracing::error!("config not reloaded, keeping the running one: {e}"),
        }
        service::ready(&status_line(&shared));
    }
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
