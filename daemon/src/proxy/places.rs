//! How many proxied requests each user has in flight, held to
//! `proxy.max_concurrent_per_user` so one user's requests cannot take every
//! connection the daemon can make.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Places {
    /// A `std::sync::Mutex`: each section is a lookup and an add.
    taken: Arc<Mutex<HashMap<u32, usize>>>,
}

/// A place taken; given back on drop.
pub struct Place {
    taken: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Places {
    /// A place for `uid`, unless it holds `limit` already.
    pub fn take(&self, uid: u32, limit: usize) -> Option<Place> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let count = taken.entry(uid).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Place {
            taken: self.taken.clone(),
            uid,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = taken.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                taken.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_gets_its_own_limit_and_places_come_back() {
        let places = Places::default();
        let a1 = places.take(1, 2).unwrap();
        let _a2 = places.take(1, 2).unwrap();
        assert!(places.take(1, 2).is_none(), "user 1 is at its limit");
        assert!(places.take(2, 2).is_some(), "user 2 is not held back");
        drop(a1);
        assert!(places.take(1, 2).is_some(), "a place came back");
        assert!(
            places.taken.lock().unwrap().get(&2).is_none(),
            "none left for 2"
        );
    }
}
