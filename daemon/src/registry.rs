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

    pub fn remove(&self, name: &str) -> Option<Arc<Credential>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// All credentials, sorted by name.
    pub fn all(&self) -> Vec<Arc<Credential>> {
        let mut all: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
