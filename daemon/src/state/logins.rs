//! Logins in progress: what the daemon holds between the authorize URL it
//! handed out and the redirect that completes it, and between a device
//! authorization and the grant (the flows are in `login/`).

use super::credential::Credential;
use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};
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

/// A device login (RFC 8628) waiting for the user's approval.
#[derive(Debug)]
pub struct DevicePending {
    pub name: String,
    /// The credential it started for (see [`Pending::cred`]).
    pub cred: Weak<Credential>,
    pub device_code: Secret,
    /// The provider's polling interval when the login started.
    pub interval: Duration,
    /// When the device code expires.
    pub expires: Instant,
    pub uid: u32,
    /// A `DeviceLoginFinish` is polling for it: a second one is refused,
    /// so the device code is never polled twice at once.
    pub polling: bool,
}

/// Logins in progress, by login id.
#[derive(Debug, Default)]
pub struct Logins {
    map: Mutex<HashMap<String, Pending>>,
    devices: Mutex<HashMap<String, DevicePending>>,
}

impl Logins {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device logins in progress. Never taken while holding [`Logins::lock`].
    pub fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<String, DevicePending>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every pending login of credential `name`, device logins
    /// included (it is being removed or replaced); returns how many there
    /// were. Their `tokenctl login` then fails with "no such login in
    /// progress", and a device login being polled stops at its next poll.
    pub fn cancel(&self, name: &str) -> usize {
        let cancelled = {
            let mut logins = self.lock();
            let before = logins.len();
            logins.retain(|_, p| p.name != name);
            before - logins.len()
        } + {
            let mut devices = self.devices();
            let before = devices.len();
            devices.retain(|_, p| p.name != name);
            before - devices.len()
        };
        if cancelled > 0 {
            tracing::info!(credential = %name, cancelled, "pending logins cancelled");
        }
        cancelled
    }

    /// How many logins are waiting, of both kinds (expired ones included
    /// until the next start).
    pub fn len(&self) -> usize {
        let codes = self.lock().len();
        codes + self.devices().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
