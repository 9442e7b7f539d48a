//! Who is on the other end of a connection, and what they may do (docs/DESIGN.md §5).
//!
//! The peer's uid/gid come from the kernel (SO_PEERCRED), read once when the
//! connection is accepted; a client cannot claim to be someone else. On
//! Windows the "uid" is the id of the client's user SID (`config/sids.rs`).

use crate::config::groups::GroupCache;
use tokend_proto::Principal;

/// The identity of a connected client. Its supplementary groups are not
/// part of it: they are looked up only when a decision needs them
/// ([`Access::IfInGroup`]), off the async workers ([`GroupCache`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// Reads the peer's credentials from a connected local socket.
    #[cfg(unix)]
    pub fn of(stream: &interprocess::local_socket::tokio::Stream) -> std::io::Result<Peer> {
        use interprocess::local_socket::traits::StreamCommon;
        let creds = stream.peer_creds()?;
        let missing = || std::io::Error::other("the kernel did not report the peer's uid/gid");
        let uid = creds.euid().ok_or_else(missing)?;
        let gid = creds.egid().ok_or_else(missing)?;
        Ok(Peer {
            uid,
            gid,
            pid: creds.pid(),
        })
    }

    /// On Windows a peer is its user SID: the client's process id
    /// (`GetNamedPipeClientProcessId`), that process's token, its user SID,
    /// and the SID's id in this run (`config/sids.rs`), on which the owner,
    /// allow list and admin rules decide as they do on uids. A client whose
    /// SID cannot be read is refused (the error closes the connection): it
    /// never becomes someone by default. Groups are not supported there:
    /// the gid is one no group has.
    #[cfg(windows)]
    pub fn of(stream: &interprocess::local_socket::tokio::Stream) -> std::io::Result<Peer> {
        use interprocess::local_socket::traits::StreamCommon;
        let pid = stream
            .peer_creds()?
            .pid()
            .ok_or_else(|| std::io::Error::other("Windows did not tell the client's process"))?;
        let sid = tokend_proto::sid::user_of_process(pid)?;
        let uid = crate::config::sids::id_of(&sid)
            .ok_or_else(|| std::io::Error::other(format!("no id for the client's SID {sid}")))?;
        Ok(Peer {
            uid,
            gid: NO_GROUP,
            pid: i32::try_from(pid).ok(),
        })
    }

    /// Who the peer is, for messages: `uid N` on Unix, `user S-1-5-…` on
    /// Windows.
    pub fn who(&self) -> String {
        match user_sid(self.uid) {
            Some(sid) => format!("user {sid}"),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The gid of a Windows peer: one no group has (groups are not supported there).
#[cfg(windows)]
const NO_GROUP: u32 = u32::MAX;

/// The SID a user id stands for in this run, on Windows (whose ids mean
/// nothing outside it); `None` on Unix, where the id is the uid.
pub fn user_sid(uid: u32) -> Option<String> {
    #[cfg(windows)]
    return crate::config::sids::sid_of(uid);
    #[cfg(not(windows))]
    {
        let _ = uid;
        None
    }
}

/// What the peer's uid and primary gid decide about a request. Decided
/// under the credential's lock, with no lookup; a group lookup, when one is
/// needed, happens after the lock is released ([`Access::granted`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Granted,
    Denied,
    /// Granted if the peer's user is in one of these groups.
    IfInGroup(Vec<u32>),
}

impl Access {
    /// The decision, looking up the peer's groups only if it depends on them.
    pub async fn granted(self, peer: &Peer, groups: &GroupCache) -> bool {
        match self {
            Access::Granted => true,
            Access::Denied => false,
            Access::IfInGroup(wanted) => {
                let member_of = groups.groups(peer.uid, peer.gid).await;
                wanted.iter().any(|g| member_of.contains(g))
            }
        }
    }

    /// Granted if the uid alone says so, else if the primary gid is one of
    /// `wanted`, else it depends on the supplementary groups (if any are
    /// wanted at all).
    fn decide(uid_says_yes: bool, peer: &Peer, wanted: Vec<u32>) -> Access {
        if uid_says_yes || wanted.contains(&peer.gid) {
            Access::Granted
        } else if wanted.is_empty() {
            Access::Denied
        } else {
            Access::IfInGroup(wanted)
        }
    }
}

/// The rules, fixed at start (and on reload) from the daemon's identity and config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub daemon_uid: u32,
    pub admin_gid: Option<u32>,
}

impl Policy {
    /// The policy of a daemon running as this process's user with `config`.
    pub fn for_config(config: &crate::config::Config) -> Result<Policy, String> {
        Ok(Policy {
            daemon_uid: daemon_uid()?,
            admin_gid: config.admin_group.as_deref().map(group_id).transpose()?,
        })
    }

    /// Add, remove, login, allow/deny: the daemon's own user, root, the admin group.
    pub fn is_admin(&self, peer: &Peer) -> Access {
        let wanted = self.admin_gid.into_iter().collect();
        Access::decide(self.is_root_or_daemon(peer.uid), peer, wanted)
    }

    /// Root and the daemon's own user: no per-user connection cap, and the
    /// reserved connections are theirs. Decided from the uid alone, because
    /// it is decided at accept time for every connection, where a group
    /// lookup (NSS, possibly over the network) would stall the accept loop;
    /// `admin_group` members therefore count as other users here.
    pub fn has_reserved_connections(&self, uid: u32) -> bool {
        self.is_root_or_daemon(uid)
    }

    fn is_root_or_daemon(&self, uid: u32) -> bool {
        uid == self.daemon_uid || uid == 0
    }

    /// Reading a credential's token: its owner, an admin, or someone on its
    /// allow list. The owner (the usual case) needs no group lookup.
    pub fn may_use(&self, peer: &Peer, owner_uid: u32, allowed: &[Principal]) -> Access {
        let by_uid = peer.uid == owner_uid
            || self.is_root_or_daemon(peer.uid)
            || allowed.contains(&Principal::User(peer.uid));
        if by_uid {
            return Access::Granted;
        }
        let groups = allowed.iter().filter_map(|p| match *p {
            Principal::Group(g) => Some(g),
            Principal::User(_) => None,
        });
        Access::decide(
            false,
            peer,
            self.admin_gid.into_iter().chain(groups).collect(),
        )
    }
}

/// The daemon's own user: its uid on Unix; on Windows its process's user
/// SID, as an id of this run (`config/sids.rs`).
#[cfg(unix)]
fn daemon_uid() -> Result<u32, String> {
    Ok(tokend_proto::paths::current_uid())
}

#[cfg(windows)]
fn daemon_uid() -> Result<u32, String> {
    let sid = tokend_proto::sid::user_of_this_process()
        .map_err(|e| format!("cannot read this process's user SID: {e}"))?;
    crate::config::sids::id_of(&sid).ok_or_else(|| format!("no id for this process's SID {sid}"))
}

/// Resolves a group name (or number) to a gid.
#[cfg(unix)]
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("there is no group named {name:?}")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

/// Windows: groups are not supported (`admin_group`, `socket_group`, a
/// group on an allow list): refused rather than ignored, so that nobody
/// believes a group grants or restricts anything there.
#[cfg(not(unix))]
pub fn group_id(name: &str) -> Result<u32, String> {
    Err(format!(
        "groups are not supported on Windows ({name:?}); name users by SID or account instead"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    /// A group database in which uid 1000 is in group 42 and uid 1002 in
    /// group 77, and the number of lookups made.
    fn database() -> (GroupCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let lookup = Arc::new(move |uid, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            match uid {
                1000 => vec![42],
                1002 => vec![77],
                _ => vec![],
            }
        });
        (GroupCache::new(lookup, GroupCache::TTL), calls)
    }

    #[tokio::test]
    async fn admins_are_the_daemon_user_root_and_the_admin_group() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: Some(42),
        };
        let (groups, _) = database();
        let admin = |p: Peer| {
            let (policy, groups) = (&policy, &groups);
            async move { policy.is_admin(&p).granted(&p, groups).await }
        };
        assert!(admin(peer(500, 500)).await);
        assert!(admin(peer(0, 0)).await);
        assert!(admin(peer(1000, 1000)).await, "in group 42");
        assert!(admin(peer(1001, 42)).await, "primary group 42");
        assert!(!admin(peer(1002, 1002)).await);
    }

    #[test]
    fn reserved_connections_are_for_root_and_the_daemon_user_only() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: Some(42),
        };
        assert!(policy.has_reserved_connections(500));
        assert!(policy.has_reserved_connections(0));
        assert!(!policy.has_reserved_connections(1000));
    }

    #[tokio::test]
    async fn the_owner_is_allowed_without_a_group_lookup() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: Some(42),
        };
        let (groups, calls) = database();
        let owner = peer(1000, 1000);
        let access = policy.may_use(&owner, 1000, &[Principal::Group(77)]);
        assert_eq!(access, Access::Granted);
        assert!(access.granted(&owner, &groups).await);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "no group lookup was needed"
        );
    }

    #[tokio::test]
    async fn token_use_needs_owner_or_allow_list() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: None,
        };
        let (groups, _) = database();
        let allowed = [Principal::User(1001), Principal::Group(77)];
        let may = |p: Peer, allowed: &'static [Principal]| {
            let (policy, groups) = (&policy, &groups);
            async move { policy.may_use(&p, 1000, allowed).granted(&p, groups).await }
        };
        let allowed: &'static [Principal] = Box::leak(Box::new(allowed));
        assert!(may(peer(1000, 1000), &[]).await);
        assert!(may(peer(1001, 1001), allowed).await);
        assert!(may(peer(1002, 1002), allowed).await, "in group 77");
        assert!(may(peer(1003, 77), allowed).await, "primary group 77");
        assert!(!may(peer(1003, 1003), allowed).await);
        assert_eq!(
            policy.may_use(&peer(1003, 1003), 1000, &[]),
            Access::Denied,
            "no group can grant it: nothing to look up"
        );
    }
}
