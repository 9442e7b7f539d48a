//! The in-memory table of credentials, the daemon's working copy of the store.
//!
//! Reads (every token request) take a short read lock and clone an `Arc`;
//! writes happen only on add and remove.

use crate::credential::Credential;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Registry {
    map: RwLock<HashMap<String, Arc<Credential>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Credential>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn insert(&self, cred: Arc<Credential>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cred.name.clone(), cred);
    }

    /// Adds many credentials under one lock, with the table sized once
    /// (start-up with a large store).
    pub fn extend(&self, creds: Vec<Arc<Credential>>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.reserve(creds.len());
        map.extend(creds.into_iter().map(|c| (c.name.clone(), c)));
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Credential>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// All credentials, sorted by name.
    pub fn all(&self) -> Vec<Arc<Credential>> {
        let mut all = self.unordered();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// All credentials in no particular order, for work that visits each
    /// once: sorting 100,000 names costs a quarter of a second at start-up.
    pub fn unordered(&self) -> Vec<Arc<Credential>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
