//! An in-process daemon for the integration tests: the shared state on a
//! real SQLite store in a temporary directory, and a fake provider.

use super::fake_provider::FakeProvider;
use std::path::Path;
use std::sync::Arc;
use tokend::config::Config;
use tokend::config::access::Policy;
use tokend::config::paths::{Overrides, Paths};
use tokend::state::Shared;
use tokend::state::credential::Credential;
use tokend::store::StoredCredential;
use tokend::store::seal::Sealer;
use tokend_proto::{CredentialSpec, CredentialState, Secret};

pub struct World {
    pub shared: Arc<Shared>,
    pub fake: FakeProvider,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh store, and a provider whose tokens live `lifetime_secs`.
pub async fn world(lifetime_secs: u64, config: Config) -> World {
    let dir = tempfile::tempdir().unwrap();
    World {
        shared: shared_on(&dir.path().join("t.db"), config),
        fake: FakeProvider::start(lifetime_secs).await,
        _dir: Some(dir),
    }
}

/// Shared state on the store at `db` (created if new), run by root.
fn shared_on(db: &Path, config: Config) -> Arc<Shared> {
    let overrides = Overrides {
        db: Some(db.to_path_buf()),
        ..Overrides::default()
    };
    let paths = Paths::resolve(false, &overrides);
    let store = tokend::store::open_sqlite(&paths.db, Sealer::from_key(&[9u8; 32])).unwrap();
    let policy = Policy {
        daemon_uid: 0,
        admin_gid: None,
    };
    Shared::new(store, paths, config, policy)
}

impl World {
    /// A new daemon on the same store and provider, as after a restart:
    /// every credential loaded and put on the schedule.
    #[allow(dead_code)] // used by some of the test files only
    pub fn reopen(&self) -> World {
        let shared = shared_on(&self.shared.paths.db, self.shared.config().as_ref().clone());
        let stored = shared.store.load_all().unwrap();
        shared.registry.extend(
            stored
                .into_iter()
                .map(|s| Arc::new(Credential::from_stored(s)))
                .collect(),
        );
        tokend::token::schedule_loaded(&shared);
        World {
            shared,
            fake: self.fake.clone(),
            _dir: None,
        }
    }

    /// Stores `row` (replacing one of the same name) and registers it.
    pub fn register(&self, row: StoredCredential) -> Arc<Credential> {
        self.shared.store.insert(&row, true).unwrap();
        let cred = Arc::new(Credential::from_stored(row));
        self.shared.registry.insert(cred.clone());
        cred
    }
}

/// A credential row owned by root with client secret "cs", no tokens yet.
pub fn row(name: &str, spec: CredentialSpec, state: CredentialState) -> StoredCredential {
    StoredCredential {
        name: name.into(),
        description: String::new(),
        spec,
        owner_uid: 0,
        allowed: vec![],
        client_secret: Some(Secret::new("cs")),
        access_token: None,
        refresh_token: None,
        generation: 0,
        expires_at: None,
        state,
        reason: None,
        created_at: 0,
        last_refresh_at: None,
        last_use_at: None,
        next_refresh_at: None,
        last_error: None,
        last_check: None,
        fence: Default::default(),
        change: 0,
        untrusted: false,
        forecast: Default::default(),
        names: None,
        incarnation: 1,
    }
}
