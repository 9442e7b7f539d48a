//! Users and groups by name across hosts (docs/SECURITY.md, "Users are
//! names").
//!
//! The same uid number on two hosts of a fleet need not be the same person.
//! So the owner and the allow list are stored by name, with the id the
//! writing host knew, and every host resolves the names itself: a name
//! unknown on a host grants nothing there. An entry stored without a name
//! (its id had none where it was written) stands for that id everywhere.
//!
//! Looking a name up asks the system's user and group databases (NSS:
//! files, LDAP, SSSD…), which can be slow: it is done only by store
//! operations, which run off the async workers.

use super::StoreError;
use std::collections::HashMap;
use tokend_proto::{Grantee, NamedPrincipal, Principal};

/// The uid nobody has (`(uid_t) -1`): the owner, on a host where the
/// owner's name is unknown.
pub const NOBODY: u32 = u32::MAX;

/// The owner and the allow list as stored, names included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub owner: Grantee,
    pub allowed: Vec<Grantee>,
}

/// Look-ups in the user and group databases, cached for one store
/// operation: a load of 100,000 credentials asks about each name once.
#[derive(Default)]
pub struct Names {
    names: HashMap<Principal, Option<String>>,
    ids: HashMap<(bool, String), Option<u32>>,
}

impl Names {
    /// How `p`, an id on this host, is written: with its name here.
    ///
    /// A look-up that fails (the directory does not answer) is an error,
    /// never "no name": an entry without a name stands for its id on every
    /// host, which is not what was meant.
    pub fn written(&mut self, p: Principal) -> Result<Grantee, StoreError> {
        let name = match self.names.get(&p) {
            Some(name) => name.clone(),
            None => {
                let name = name_of(p)
                    .map_err(StoreError::Names)?
                    .filter(|n| storable(n));
                self.names.insert(p, name.clone());
                name
            }
        };
        Ok(Grantee {
            written: p,
            name,
            here: Some(id(p)),
        })
    }

    /// What a stored entry stands for on this host.
    pub fn resolve(&mut self, written: Principal, name: Option<String>) -> Grantee {
        let here = match &name {
            None => nameless_here(written),
            Some(n) => *self
                .ids
                .entry((is_user(written), n.clone()))
                .or_insert_with(|| id_of(written, n)),
        };
        Grantee {
            written,
            name,
            here,
        }
    }

    /// The owner and allow list of ids on this host, as they are written.
    pub fn named(&mut self, owner_uid: u32, allowed: &[Principal]) -> Result<Named, StoreError> {
        Ok(Named {
            owner: self.written(Principal::User(owner_uid))?,
            allowed: allowed
                .iter()
                .map(|p| self.written(*p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// `named` (read from a row written before names were kept) with the
    /// names its ids have on this host.
    pub fn name_ids(&mut self, named: &Named) -> Result<Named, StoreError> {
        Ok(Named {
            owner: self.written(named.owner.written)?,
            allowed: named
                .allowed
                .iter()
                .map(|g| self.written(g.written))
                .collect::<Result<_, _>>()?,
        })
    }

    /// `named` as read from a row, resolved on this host.
    pub fn resolved(&mut self, named: Named) -> Named {
        Named {
            owner: self.resolve(named.owner.written, named.owner.name),
            allowed: named
                .allowed
                .into_iter()
                .map(|g| self.resolve(g.written, g.name))
                .collect(),
        }
    }
}

impl Named {
    /// What the row's writer stored, names not looked up (before `Names::resolved`).
    pub fn as_read(owner_uid: u32, owner_name: Option<String>, allowed: Vec<Grantee>) -> Named {
        Named {
            owner: Grantee {
                written: Principal::User(owner_uid),
                name: owner_name,
                here: None,
            },
            allowed,
        }
    }

    /// The owner's uid on this host ([`NOBODY`] when unknown here).
    pub fn owner_here(&self) -> u32 {
        self.owner.here.unwrap_or(NOBODY)
    }

    /// The allow list as it applies on this host: entries unknown here
    /// left out.
    pub fn allowed_here(&self) -> Vec<Principal> {
        let mut list: Vec<Principal> = self.allowed.iter().filter_map(here).collect();
        list.sort_unstable();
        list.dedup();
        list
    }

    /// Takes off every entry that stands for `g` (same name; or, for an
    /// entry without a name, same id), then adds `g` if `allow`.
    pub fn change(&mut self, g: Grantee, allow: bool) {
        self.allowed.retain(|e| !same(e, &g));
        if allow {
            self.allowed.push(g);
            self.allowed.sort();
        }
    }
}

/// What an entry stands for here, if anything.
pub fn here(g: &Grantee) -> Option<Principal> {
    Some(with_id(g.written, g.here?))
}

/// Whether two entries stand for the same user or group.
fn same(a: &Grantee, b: &Grantee) -> bool {
    is_user(a.written) == is_user(b.written)
        && match (&a.name, &b.name) {
            (Some(x), Some(y)) => x == y,
            _ => here(a) == here(b) && here(a).is_some(),
        }
}

/// Names kept in a list separated by `,` (PostgreSQL's `allowed` column)
/// cannot hold one; POSIX names never do.
fn storable(name: &str) -> bool {
    !name.is_empty() && !name.contains([',', '\n'])
}

fn is_user(p: Principal) -> bool {
    matches!(p, Principal::User(_))
}

/// What an entry stored without a name stands for here: its id, on Unix.
/// On Windows ids belong to one run of the daemon, so such an entry (an
/// id from before SIDs were kept) grants nothing — except LocalSystem,
/// id 0 in every run.
fn nameless_here(p: Principal) -> Option<u32> {
    #[cfg(windows)]
    if p != Principal::User(0) {
        return None;
    }
    Some(id(p))
}

/// Refuses, on Windows, an allow-list entry that would grant nothing: a
/// group (groups are not supported there) or a user id no SID has in this
/// run (ids are not users there; a client names users by SID or account,
/// `Request::AllowNamed`). Anything goes on Unix.
pub fn check_allowable(p: Principal) -> Result<(), String> {
    #[cfg(windows)]
    match p {
        Principal::Group(g) => {
            return Err(format!("groups are not supported on Windows (group {g})"));
        }
        Principal::User(u) if crate::config::sids::sid_of(u).is_none() => {
            return Err(format!(
                "user id {u} is nobody on Windows: name the user by SID or account"
            ));
        }
        Principal::User(_) => {}
    }
    let _ = p;
    Ok(())
}

fn id(p: Principal) -> u32 {
    match p {
        Principal::User(u) | Principal::Group(u) => u,
    }
}

/// The name of a user or group on this host, if it has one; why not, if
/// the look-up failed.
#[cfg(unix)]
fn name_of(p: Principal) -> Result<Option<String>, String> {
    use nix::unistd::{Gid, Group, Uid, User};
    let failed = |e: nix::Error| format!("cannot look up the name of {p:?}: {e}");
    Ok(match p {
        Principal::User(u) => User::from_uid(Uid::from_raw(u))
            .map_err(failed)?
            .map(|u| u.name),
        Principal::Group(g) => Group::from_gid(Gid::from_raw(g))
            .map_err(failed)?
            .map(|g| g.name),
    })
}

/// The name of user `uid` on this host (on Windows its SID), if it has
/// one and the look-up answers: for the audit trail, which records it with
/// the uid. Looks the name up: call it off async workers.
pub fn user_name(uid: u32) -> Option<String> {
    name_of(Principal::User(uid)).ok().flatten()
}

/// The id of a named user or group on this host; none when unknown, or
/// when the look-up fails (a name that cannot be checked grants nothing).
#[cfg(unix)]
fn id_of(kind: Principal, name: &str) -> Option<u32> {
    use nix::unistd::{Group, User};
    match kind {
        Principal::User(_) => Some(User::from_name(name).ok()??.uid.as_raw()),
        Principal::Group(_) => Some(Group::from_name(name).ok()??.gid.as_raw()),
    }
}

/// Windows: a user's name is its SID's string form (`S-1-5-21-…`), which
/// is exact where an account name can be renamed or mean another account
/// on another host; its id is the SID's id in this run
/// (`config/sids.rs`). Groups have no names there: they are not supported
/// (`config::access::group_id`), and an entry for one grants nothing.
#[cfg(windows)]
fn name_of(p: Principal) -> Result<Option<String>, String> {
    Ok(match p {
        Principal::User(u) => crate::config::sids::sid_of(u),
        Principal::Group(_) => None,
    })
}

/// Windows: a SID as it is, or an account name (`user`, `DOMAIN\user`)
/// looked up to its SID.
#[cfg(windows)]
fn id_of(kind: Principal, name: &str) -> Option<u32> {
    match kind {
        Principal::User(_) => crate::config::sids::user_id(name, |account| {
            tokend_proto::sid::user_named(account).ok().flatten()
        }),
        Principal::Group(_) => None,
    }
}

/// The id of the user or group `name` names on this host, for an allow or
/// deny by name (`Request::AllowNamed`): a number is taken as an id on
/// Unix; on Windows the name is a SID or an account. Looks the name up:
/// call it off async workers.
pub fn principal_named(named: &NamedPrincipal) -> Result<Principal, String> {
    let (kind, name, what) = match named {
        NamedPrincipal::User(n) => (Principal::User(0), n, "user"),
        NamedPrincipal::Group(n) => (Principal::Group(0), n, "group"),
    };
    #[cfg(unix)]
    if let Ok(number) = name.parse::<u32>() {
        return Ok(with_id(kind, number));
    }
    #[cfg(windows)]
    if matches!(kind, Principal::Group(_)) {
        return Err(format!("groups are not supported on Windows ({name:?})"));
    }
    id_of(kind, name)
        .map(|id| with_id(kind, id))
        .ok_or_else(|| format!("there is no {what} named {name:?} on the daemon's host"))
}

fn with_id(kind: Principal, id: u32) -> Principal {
    match kind {
        Principal::User(_) => Principal::User(id),
        Principal::Group(_) => Principal::Group(id),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_resolved_on_this_host_and_an_unknown_one_grants_nothing() {
        let mut names = Names::default();
        let root = names.written(Principal::User(0)).unwrap();
        assert_eq!(root.name.as_deref(), Some("root"));
        // Written as root with uid 1234 elsewhere: root here is uid 0.
        let there = names.resolve(Principal::User(1234), Some("root".into()));
        assert_eq!(here(&there), Some(Principal::User(0)));
        let unknown = names.resolve(Principal::User(0), Some("no-such-user-xyz".into()));
        assert_eq!(here(&unknown), None);
        let nameless = names.resolve(Principal::Group(4321), None);
        assert_eq!(here(&nameless), Some(Principal::Group(4321)));
        let named = Named {
            owner: unknown,
            allowed: vec![there, nameless],
        };
        assert_eq!(named.owner_here(), NOBODY);
        assert_eq!(
            named.allowed_here(),
            vec![Principal::User(0), Principal::Group(4321)]
        );
    }

    #[test]
    fn deny_takes_off_the_entry_of_the_same_name_whatever_its_id_there() {
        let mut names = Names::default();
        let mut named = Named {
            owner: names.written(Principal::User(0)).unwrap(),
            allowed: vec![names.resolve(Principal::User(1234), Some("root".into()))],
        };
        named.change(names.written(Principal::User(0)).unwrap(), false);
        assert!(named.allowed.is_empty());
        named.change(names.written(Principal::User(0)).unwrap(), true);
        named.change(names.written(Principal::User(0)).unwrap(), true);
        assert_eq!(named.allowed.len(), 1, "allowed once");
    }
}
