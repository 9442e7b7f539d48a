//! Fair shares of the connection limit: who holds how many connections.
//!
//! The global cap (`limits.max_connections`, a semaphore in `server.rs`)
//! alone lets one local user take every place, and everyone else is then
//! told "busy". Two more rules, checked when a connection is accepted and
//! before it takes a place, keep that from happening:
//!
//! - each user other than root and the daemon's own holds at most
//!   `limits.max_connections_per_user` connections;
//! - those users together hold at most `max_connections -
//!   reserved_connections`, so the last places are always free for root and
//!   the daemon's own user (the owner of every secret, who can stop the
//!   daemon anyway, so is not limited further).
//!
//! The uid is the kernel's (SO_PEERCRED of the accepted stream): a client
//! cannot spread its connections over other identities.

use crate::config::Limits;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};

/// The shares in force for one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shares {
    /// Connections one user without reserved connections may hold.
    pub per_user: usize,
    /// Connections all users without reserved connections may hold together.
    pub others: usize,
}

impl Shares {
    /// The shares of `limits` under the global cap the server was started
    /// with (`max_connections` only changes at a restart; these two keys
    /// apply to the next connection after a reload).
    pub fn new(limits: &Limits, max_connections: usize) -> Shares {
        Shares {
            per_user: limits.per_user(),
            others: max_connections.saturating_sub(limits.reserved()),
        }
    }
}

/// Why a connection gets no place; the text is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "tokend is at its limit of {0} connections per user, and this user has them all open; close some and try again"
    )]
    PerUser(usize),
    #[error(
        "tokend is at its limit of {0} connections for users other than root and its own; try again shortly"
    )]
    Others(usize),
}

/// Open connections by uid. A `std::sync::Mutex`: every critical section
/// is a few integer operations with no `.await`.
#[derive(Debug, Default)]
pub struct Quota {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Open connections per uid; a uid with none has no entry, so the map
    /// does not grow with every uid ever seen.
    by_uid: HashMap<u32, usize>,
    /// Open connections of all users without reserved connections.
    others: usize,
}

/// One admitted connection's place in the counts, given back on drop: a
/// connection that ends in any way, or is refused later, stops counting.
#[derive(Debug)]
pub struct Admitted {
    quota: Arc<Quota>,
    uid: u32,
    reserved: bool,
}

impl Quota {
    /// Counts a new connection of `uid`, or says why it gets no place.
    /// `reserved`: the uid is root's or the daemon's own, which only the
    /// global cap limits.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        reserved: bool,
        shares: Shares,
    ) -> Result<Admitted, Refusal> {
        let mut counts = self.lock();
        if !reserved {
            let mine = counts.by_uid.get(&uid).copied().unwrap_or(0);
            if mine >= shares.per_user {
                return Err(Refusal::PerUser(shares.per_user));
            }
            if counts.others >= shares.others {
                return Err(Refusal::Others(shares.others));
            }
            counts.others += 1;
        }
        *counts.by_uid.entry(uid).or_insert(0) += 1;
        Ok(Admitted {
            quota: self.clone(),
            uid,
            reserved,
        })
    }

    /// Connections `uid` has open.
    #[cfg(test)]
    fn open(&self, uid: u32) -> usize {
        self.lock().by_uid.get(&uid).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.quota.lock();
        if !self.reserved {
            counts.others -= 1;
        }
        if let Entry::Occupied(mut open) = counts.by_uid.entry(self.uid) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARES: Shares = Shares {
        per_user: 2,
        others: 3,
    };

    #[test]
    fn a_user_gets_no_more_than_the_per_user_share() {
        let quota = Arc::new(Quota::default());
        let held: Vec<_> = (0..2)
            .map(|_| quota.admit(1000, false, SHARES).unwrap())
            .collect();
        assert_eq!(
            quota.admit(1000, false, SHARES).unwrap_err(),
            Refusal::PerUser(2)
        );
        // Another user still gets in.
        assert!(quota.admit(1001, false, SHARES).is_ok());
        assert_eq!(quota.open(1000), 2);
        drop(held);
        assert_eq!(quota.open(1000), 0);
        assert!(quota.lock().by_uid.is_empty(), "no entry left behind");
    }

    #[test]
    fn other_users_together_leave_the_reserve_free() {
        let quota = Arc::new(Quota::default());
        let _held = [
            quota.admit(1000, false, SHARES).unwrap(),
            quota.admit(1000, false, SHARES).unwrap(),
            quota.admit(1001, false, SHARES).unwrap(),
        ];
        assert_eq!(
            quota.admit(1002, false, SHARES).unwrap_err(),
            Refusal::Others(3)
        );
        // Root and the daemon's user are limited by neither share.
        let owner: Vec<_> = (0..10)
            .map(|_| quota.admit(500, true, SHARES).unwrap())
            .collect();
        assert_eq!(quota.open(500), 10);
        drop(owner);
        assert_eq!(quota.lock().others, 3);
    }

    #[test]
    fn a_refused_connection_does_not_count() {
        let quota = Arc::new(Quota::default());
        let _one = quota.admit(1000, false, SHARES).unwrap();
        let _two = quota.admit(1000, false, SHARES).unwrap();
        for _ in 0..100 {
            assert!(quota.admit(1000, false, SHARES).is_err());
        }
        assert_eq!(quota.open(1000), 2);
        assert_eq!(quota.lock().others, 2);
    }

    #[test]
    fn shares_come_from_the_limits_under_the_starting_cap() {
        let limits = Limits {
            max_connections_per_user: Some(100),
            reserved_connections: Some(24),
            ..Limits::default()
        };
        assert_eq!(
            Shares::new(&limits, 1024),
            Shares {
                per_user: 100,
                others: 1000
            }
        );
        assert_eq!(Shares::new(&limits, 10).others, 0);
    }
}
