//! Logins in progress: what the daemon holds between the authorize URL it
//! handed out and the redirect that completes it (the flow is in `login/`).

use super::credential::Credential;
use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Instant;
use tokend_proto::Secret;

/// A login waiting for its redirect.
#[derive(Debug)]
pub struct Pending {
    pub name: String,
    /// The credential the login started for. A credential removed and added
    /// again under the same name is another `Arc`: the code must never be
    /// exchanged at (or committed into) that one. Weak, so a pending login
    /// does not keep a removed credential alive.
    pub cred: Weak<Credential>,
    pub state: Secret,
    pub verifier: Option<Secret>,
    pub redirect_uri: String,
    pub expires: Instant,
    pub uid: u32,
}

/// Logins in progress, by login id.
#[derive(Debug, Default)]
pub struct Logins {
    map: Mutex<HashMap<String, Pending>>,
}

impl Logins {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every pending login of credential `name` (it is being removed
    /// or replaced); returns how many there were. Their `tokenctl login`
    /// then fails with "no such login in progress".
    pub fn cancel(&self, name: &str) -> usize {
        let mut logins = self.lock();
        let before = logins.len();
        logins.retain(|_, p| p.name != name);
        let cancelled = before - logins.len();
        if cancelled > 0 {
            tracing::info!(credential = %name, cancelled, "pending logins cancelled");
        }
        cancelled
    }

    /// How many logins are waiting (expired ones included until the next start).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
