//! The in-memory table of credentials, the daemon's working copy of the store.
//!
//! Reads (every token request) take a short read lock and clone an `Arc`;
//! writes happen only on add and remove.

use crate::state::credential::Credential;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

/// A credential keyed by its own name: the table holds no second copy of
/// every name (at 100,000 credentials that copy and its allocation were
/// about 5 MiB).
#[derive(Debug, Clone)]
struct ByName(Arc<Credential>);

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash as the `str` it borrows as.
        self.0.name.hash(state)
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

#[derive(Debug, Default)]
pub struct Registry {
    map: RwLock<HashSet<ByName>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<Credential>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|c| c.0.clone())
    }

    /// True while `cred` is the credential of its name: a removed or
    /// replaced one must not act any more (docs/RULES.md, "Fencing").
    pub fn is_current(&self, cred: &Arc<Credential>) -> bool {
        self.get(&cred.name).is_some_and(|c| Arc::ptr_eq(&c, cred))
    }

    /// Adds `cred`, replacing one of the same name.
    pub fn insert(&self, cred: Arc<Credential>) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(ByName(cred));
    }

    /// Adds many credentials under one lock, with the table sized once
    /// (start-up with a large store).
    pub fn extend(&self, creds: Vec<Arc<Credential>>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        map.reserve(creds.len());
        map.extend(creds.into_iter().map(ByName));
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Credential>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take(name)
            .map(|c| c.0)
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
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::bearer;

    fn cred(name: &str, token: &str) -> Arc<Credential> {
        Arc::new(Credential::from_stored(bearer(name, token)))
    }

    #[test]
    fn credentials_are_found_replaced_and_removed_by_name() {
        let registry = Registry::default();
        registry.extend(vec![cred("a", "t1"), cred("b", "t2")]);
        registry.insert(cred("a", "t3"));
        assert_eq!(registry.len(), 2);
        let a = registry.get("a").unwrap();
        assert_eq!(a.live().access_token.unwrap().expose(), "t3", "replaced");
        let names: Vec<String> = registry.all().iter().map(|c| c.name.to_string()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(Arc::ptr_eq(&registry.remove("a").unwrap(), &a));
        assert!(registry.get("a").is_none());
        assert!(registry.remove("a").is_none());
        assert_eq!(registry.len(), 1);
    }
}
