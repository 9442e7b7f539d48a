//! Who is on the other end of a connection, and what they may do (docs/DESIGN.md §5).
//!
//! The peer's uid/gid come from the kernel (SO_PEERCRED), read once when the
//! connection is accepted; a client cannot claim to be someone else.

use std::sync::OnceLock;
use tokend_proto::Principal;

/// The identity of a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    /// Supplementary groups of the peer's user (from the group database),
    /// looked up on first need: most requests come from a credential's owner
    /// and never need them, and the lookup reads /etc/passwd and /etc/group
    /// (or asks NSS, which may be a network service), once per connection.
    groups: OnceLock<Vec<u32>>,
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
            groups: OnceLock::new(),
        })
    }

    /// Off Unix there are no uids: every peer is uid 0, which is also the
    /// daemon's own uid there (`current_uid`), so every client is the
    /// daemon's user and an admin. That holds because the named pipe's
    /// default ACL lets only the daemon's user, administrators and
    /// LocalSystem write to it (docs/SECURITY.md, "Windows"); allow lists
    /// and `admin_group` decide nothing. The client's process id is kept
    /// (`None` if Windows cannot tell it); its user's SID is not read.
    #[cfg(not(unix))]
    pub fn of(stream: &interprocess::local_socket::tokio::Stream) -> std::io::Result<Peer> {
        use interprocess::local_socket::traits::StreamCommon;
        let pid = stream.peer_creds().ok().and_then(|c| c.pid());
        Ok(Peer {
            uid: 0,
            gid: 0,
            pid: pid.and_then(|p| i32::try_from(p).ok()),
            groups: OnceLock::from(Vec::new()),
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups().contains(&gid)
    }

    /// The supplementary groups, looked up the first time they are needed.
    fn groups(&self) -> &[u32] {
        #[cfg(unix)]
        return self
            .groups
            .get_or_init(|| supplementary_groups(self.uid, self.gid));
        #[cfg(not(unix))]
        return self.groups.get_or_init(Vec::new);
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
            daemon_uid: tokend_proto::paths::current_uid(),
            admin_gid: config.admin_group.as_deref().map(group_id).transpose()?,
        })
    }

    /// Add, remove, login, allow/deny: the daemon's own user, root, the admin group.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == self.daemon_uid
            || peer.uid == 0
            || self.admin_gid.is_some_and(|g| peer.in_group(g))
    }

    /// Root and the daemon's own user: no per-user connection cap, and the
    /// reserved connections are theirs. Decided from the uid alone, because
    /// it is decided at accept time for every connection, where a group
    /// lookup (NSS, possibly over the network) would stall the accept loop;
    /// `admin_group` members therefore count as other users here.
    pub fn has_reserved_connections(&self, uid: u32) -> bool {
        uid == self.daemon_uid || uid == 0
    }

    /// Reading a credential's token: its owner, an admin, or someone on its allow list.
    pub fn may_use(&self, peer: &Peer, owner_uid: u32, allowed: &[Principal]) -> bool {
        peer.uid == owner_uid
            || self.is_admin(peer)
            || allowed.iter().any(|p| match *p {
                Principal::User(u) => u == peer.uid,
                Principal::Group(g) => peer.in_group(g),
            })
    }
}

/// The groups a user belongs to, from the group database (what `id -G` says).
#[cfg(unix)]
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    use nix::unistd::{Gid, Uid, User, getgrouplist};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    getgrouplist(&name, Gid::from_raw(gid))
        .map(|groups| groups.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
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

#[cfg(not(unix))]
pub fn group_id(name: &str) -> Result<u32, String> {
    name.parse::<u32>()
        .map_err(|_| format!("groups are not supported on this platform: {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: OnceLock::from(groups.to_vec()),
        }
    }

    #[test]
    fn admins_are_the_daemon_user_root_and_the_admin_group() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: Some(42),
        };
        assert!(policy.is_admin(&peer(500, 500, &[])));
        assert!(policy.is_admin(&peer(0, 0, &[])));
        assert!(policy.is_admin(&peer(1000, 1000, &[42])));
        assert!(!policy.is_admin(&peer(1000, 1000, &[7])));
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

    #[test]
    fn the_owner_is_allowed_without_a_group_lookup() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: Some(42),
        };
        let owner = Peer {
            uid: 1000,
            gid: 1000,
            pid: None,
            groups: OnceLock::new(),
        };
        assert!(policy.may_use(&owner, 1000, &[Principal::Group(77)]));
        assert!(owner.groups.get().is_none(), "no group lookup was needed");
    }

    #[test]
    fn token_use_needs_owner_or_allow_list() {
        let policy = Policy {
            daemon_uid: 500,
            admin_gid: None,
        };
        let allowed = [Principal::User(1001), Principal::Group(77)];
        assert!(policy.may_use(&peer(1000, 1000, &[]), 1000, &[]));
        assert!(policy.may_use(&peer(1001, 1001, &[]), 1000, &allowed));
        assert!(policy.may_use(&peer(1002, 1002, &[77]), 1000, &allowed));
        assert!(!policy.may_use(&peer(1003, 1003, &[]), 1000, &allowed));
    }
}
