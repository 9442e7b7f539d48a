//! The fleet refresh locks this member holds: each one's connection, kept
//! between [`Backend::lock_refresh`](crate::store::Backend::lock_refresh)
//! and the write (or unlock) that ends its transaction (`lock.rs`).

use super::{PgStore, lock, row};
use crate::store::rows::open_all;
use crate::store::{Claim, StoreError};
use deadpool_postgres::Object;

impl PgStore {
    pub(super) fn take_held(&self, name: &str, incarnation: i64) -> Option<Object> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(name.to_string(), incarnation))
    }

    /// Keeps a lock this member now holds, until a write or
    /// `Backend::unlock_refresh` ends it.
    pub(super) fn keep_held(&self, name: &str, incarnation: i64, client: Object) {
        let stale = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((name.to_string(), incarnation), client);
        if let Some(stale) = stale {
            self.handle.spawn(lock::discard(stale));
        }
    }

    /// Settles what a held lock's re-read found: the row, unless it is
    /// gone. A journal mark in it is the lifecycle's to judge, by its lease.
    pub(super) fn claim(
        &self,
        name: &str,
        incarnation: i64,
        client: Object,
        rows: Vec<tokio_postgres::Row>,
    ) -> Result<Claim, StoreError> {
        let loaded = row::Loaded::from_rows(&rows);
        let row::Loaded { mut creds, sealed } = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // Never back to the pool mid-transaction.
                self.handle.spawn(lock::discard(client));
                return Err(e);
            }
        };
        if creds.first().is_none_or(|c| c.incarnation != incarnation) {
            self.handle.spawn(lock::discard(client));
            return Err(StoreError::Gone(name.to_string()));
        }
        open_all(&self.sealer, &mut creds, &sealed);
        self.keep_held(name, incarnation, client);
        Ok(Claim::Held(Box::new(creds.remove(0))))
    }
}
