//! Windows users as the access model's numbers: each user SID gets a
//! local id for the life of the daemon, so that the owner, the allow list,
//! the admin rule and the per-user connection caps — all written for
//! uids — decide on SIDs unchanged (docs/SECURITY.md, "Windows").
//!
//! The ids are never stored or sent to mean a user: the store keeps a
//! user by its SID string (its "name", `store/names.rs`) and resolves it
//! to an id on every load, as it resolves user names on Unix. So the
//! table only has to be injective within one run: one SID, one id; one
//! id, one SID; an id never reused. LocalSystem is id 0, so the rule
//! "uid 0 is root" means LocalSystem; every other SID gets an id from
//! [`FIRST_ID`] up, in the order they are first seen.
//!
//! Platform-neutral on purpose: the table and the decisions made on its
//! ids are unit-tested on every platform; only reading a process's SID and
//! looking up an account name are Windows calls (`tokend_proto::sid`).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// LocalSystem's SID (the system daemon's user), which gets id 0.
pub const LOCAL_SYSTEM: &str = "S-1-5-18";

/// The first id given to a SID other than LocalSystem's.
pub const FIRST_ID: u32 = 1000;

/// The one id no SID gets: the store's "nobody" (`store::names::NOBODY`).
const NO_ID: u32 = u32::MAX;

/// SIDs to ids and back, for one run.
#[derive(Debug)]
pub struct Sids {
    ids: HashMap<String, u32>,
    sids: HashMap<u32, String>,
    next: u32,
}

impl Default for Sids {
    fn default() -> Self {
        let mut sids = Sids {
            ids: HashMap::new(),
            sids: HashMap::new(),
            next: FIRST_ID,
        };
        sids.insert(LOCAL_SYSTEM.to_string(), 0);
        sids
    }
}

impl Sids {
    /// The id of `sid` (a SID's string form, any case), given on first
    /// sight; `None` if it is not a SID's string form (so it grants
    /// nothing) or every id is taken.
    pub fn id(&mut self, sid: &str) -> Option<u32> {
        let sid = canonical(sid)?;
        if let Some(&id) = self.ids.get(&sid) {
            return Some(id);
        }
        let id = self.next;
        if id == NO_ID {
            return None;
        }
        self.next += 1;
        self.insert(sid, id);
        Some(id)
    }

    /// The SID that has the id `id` in this run, if any.
    pub fn sid(&self, id: u32) -> Option<String> {
        self.sids.get(&id).cloned()
    }

    fn insert(&mut self, sid: String, id: u32) {
        self.sids.insert(id, sid.clone());
        self.ids.insert(sid, id);
    }
}

/// The daemon's table. A `std` mutex: held for a map look-up, never
/// across an `.await`.
static TABLE: LazyLock<Mutex<Sids>> = LazyLock::new(Mutex::default);

/// The id of `sid` in this run (see [`Sids::id`]).
pub fn id_of(sid: &str) -> Option<u32> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).id(sid)
}

/// The SID of the id `id` in this run (see [`Sids::sid`]).
pub fn sid_of(id: u32) -> Option<String> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).sid(id)
}

/// The id of the user `name` names on this host: a SID's string form is
/// taken as it is (exact, no look-up); anything else is an account name
/// (`user`, `DOMAIN\user`) resolved to its SID by `lookup`. `None`: no
/// such user here, or the look-up failed — a name that cannot be checked
/// grants nothing.
pub fn user_id(name: &str, lookup: impl FnOnce(&str) -> Option<String>) -> Option<u32> {
    match canonical(name) {
        Some(sid) => id_of(&sid),
        None => id_of(&lookup(name)?),
    }
}

/// `sid` in its canonical string form (`S-1-` then decimal numbers, no
/// leading zeros, at most 15 sub-authorities), or `None` if it is not one.
/// Canonical so that a SID has one string, and two strings are the same
/// SID exactly when they are equal.
pub fn canonical(sid: &str) -> Option<String> {
    let rest = sid.strip_prefix(['S', 's'])?.strip_prefix("-1-")?;
    let parts: Vec<&str> = rest.split('-').collect();
    let authority_and_subs = 1..=16;
    if !authority_and_subs.contains(&parts.len()) || !parts.iter().all(|p| is_number(p)) {
        return None;
    }
    Some(format!("S-1-{rest}"))
}

/// A decimal number as Windows writes one: digits, no leading zero, at
/// most 32 bits (the authority may have 48, which Windows then writes in
/// hex; no user SID has one).
fn is_number(part: &str) -> bool {
    !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'))
        && part.parse::<u32>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access::{Access, Peer, Policy};
    use tokend_proto::Principal;

    const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
    const BOB: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";
    const CAROL: &str = "S-1-5-21-1004336348-1177238915-682003330-1003";

    /// A client as `Peer::of` makes one on Windows: its SID's id, and no
    /// group (groups are not supported there).
    fn peer(sid: &str) -> Peer {
        Peer {
            uid: id_of(sid).expect("a SID"),
            gid: NO_ID,
            pid: None,
        }
    }

    /// A daemon running as `sid`, as `Policy::for_config` makes one.
    fn daemon(sid: &str) -> Policy {
        Policy {
            daemon_uid: id_of(sid).expect("a SID"),
            admin_gid: None,
        }
    }

    #[test]
    fn a_sid_keeps_its_id_and_distinct_sids_get_distinct_ids() {
        let mut sids = Sids::default();
        let alice = sids.id(ALICE).unwrap();
        let bob = sids.id(BOB).unwrap();
        assert_ne!(alice, bob);
        assert_eq!(sids.id(ALICE), Some(alice));
        assert_eq!(sids.id(&ALICE.to_lowercase()), Some(alice), "any case");
        assert_eq!(sids.sid(alice).as_deref(), Some(ALICE));
        assert_eq!(sids.sid(bob).as_deref(), Some(BOB));
        assert!(alice >= FIRST_ID && bob >= FIRST_ID);
        assert_eq!(sids.sid(4242), None, "an id nobody was given");
    }

    #[test]
    fn local_system_is_id_0_the_root_of_the_access_rules() {
        let mut sids = Sids::default();
        assert_eq!(sids.id(LOCAL_SYSTEM), Some(0));
        assert_eq!(sids.sid(0).as_deref(), Some(LOCAL_SYSTEM));
    }

    #[test]
    fn what_is_not_a_sid_gets_no_id() {
        let mut sids = Sids::default();
        for not_a_sid in [
            "",
            "alice",
            "DOMAIN\\alice",
            "S-1-",
            "S-1-5-",
            "S-2-5-18",
            "S-1-05-18",
            "S-1-5-18-",
            "S-1-5-x",
            "S-1-5-99999999999",
            "S-1-0x5-18",
            "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
        ] {
            assert_eq!(sids.id(not_a_sid), None, "{not_a_sid:?}");
        }
    }

    #[test]
    fn ids_run_out_rather_than_repeat() {
        let mut sids = Sids {
            next: NO_ID - 1,
            ..Sids::default()
        };
        assert_eq!(sids.id(ALICE), Some(NO_ID - 1));
        assert_eq!(sids.id(BOB), None, "no id, so it grants nothing");
        assert_eq!(sids.id(ALICE), Some(NO_ID - 1));
    }

    #[test]
    fn a_name_is_a_sid_or_an_account_looked_up_and_an_unknown_one_grants_nothing() {
        let no_lookup = |_: &str| panic!("a SID needs no look-up");
        assert_eq!(user_id(ALICE, no_lookup), id_of(ALICE));
        let directory = |name: &str| (name == "HOST\\bob").then(|| BOB.to_string());
        assert_eq!(user_id("HOST\\bob", directory), id_of(BOB));
        assert_eq!(user_id("HOST\\nobody", directory), None);
        assert_eq!(user_id("HOST\\bob", |_| None), None, "the look-up failed");
    }

    #[test]
    fn the_owner_uses_a_credential_by_sid_and_another_sid_is_refused() {
        let policy = daemon(ALICE);
        let owner = id_of(BOB).unwrap();
        assert_eq!(policy.may_use(&peer(BOB), owner, &[]), Access::Granted);
        assert_eq!(policy.may_use(&peer(CAROL), owner, &[]), Access::Denied);
    }

    #[test]
    fn the_allow_list_admits_by_sid() {
        let policy = daemon(ALICE);
        let owner = id_of(BOB).unwrap();
        let allowed = [Principal::User(id_of(CAROL).unwrap())];
        assert_eq!(
            policy.may_use(&peer(CAROL), owner, &allowed),
            Access::Granted
        );
        let dave = "S-1-5-21-1004336348-1177238915-682003330-1004";
        assert_eq!(policy.may_use(&peer(dave), owner, &allowed), Access::Denied);
    }

    #[test]
    fn admins_are_the_daemons_sid_and_local_system_only() {
        let policy = daemon(ALICE);
        assert_eq!(policy.is_admin(&peer(ALICE)), Access::Granted);
        assert_eq!(policy.is_admin(&peer(LOCAL_SYSTEM)), Access::Granted);
        assert_eq!(policy.is_admin(&peer(BOB)), Access::Denied);
        let owner = id_of(BOB).unwrap();
        assert_eq!(
            policy.may_use(&peer(ALICE), owner, &[]),
            Access::Granted,
            "an admin uses every credential"
        );
        assert!(policy.has_reserved_connections(id_of(ALICE).unwrap()));
        assert!(!policy.has_reserved_connections(id_of(BOB).unwrap()));
    }
}
