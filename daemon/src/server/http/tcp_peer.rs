//! Who is on the other end of a loopback TCP connection: the uid that owns
//! the client's socket, read from the kernel's socket table — the table
//! `ss -e` shows, `/proc/net/tcp` and `/proc/net/tcp6` — by the client's
//! address and port and ours. A connection whose owner cannot be found
//! (the client already gone, a peer in another network namespace, a
//! NAT'd peer, a platform without that table) is refused: there is no
//! guess (docs/SECURITY.md, "The proxy's TCP listener").

use crate::config::access::Peer;
use std::net::SocketAddr;

/// Why no uid was found.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[cfg(target_os = "linux")]
    #[error(
        "no socket of {client} connected to {local} in the kernel's table (the client is gone, or in another network namespace)"
    )]
    NotFound {
        client: SocketAddr,
        local: SocketAddr,
    },
    #[cfg(target_os = "linux")]
    #[error("cannot read the kernel's socket table: {0}")]
    Table(#[from] std::io::Error),
    #[cfg(not(target_os = "linux"))]
    #[error("the kernel's socket table is not available on this platform")]
    Unsupported,
}

/// The peer of the connection from `client` to our `local` address.
#[cfg(target_os = "linux")]
pub fn of(client: SocketAddr, local: SocketAddr) -> Result<Peer, PeerError> {
    let uid = match (client, local) {
        // An IPv4 client's socket is in tcp, unless it is an IPv6 socket
        // that reached the IPv4 address (Java, any AF_INET6 client): then
        // it is in tcp6, both ends written IPv4-mapped. One 4-tuple has
        // one socket, whichever table holds it.
        (SocketAddr::V4(c), SocketAddr::V4(l)) => {
            let text = std::fs::read_to_string("/proc/net/tcp")?;
            match owner(&text, client, local) {
                Some(uid) => Some(uid),
                None => {
                    let text = std::fs::read_to_string("/proc/net/tcp6")?;
                    owner(&text, mapped(c), mapped(l))
                }
            }
        }
        _ => owner(&std::fs::read_to_string("/proc/net/tcp6")?, client, local),
    };
    let uid = uid.ok_or(PeerError::NotFound { client, local })?;
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(crate::store::names::NOBODY, |u| u.gid.as_raw());
    Ok(Peer {
        uid,
        gid,
        pid: None,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn of(_client: SocketAddr, _local: SocketAddr) -> Result<Peer, PeerError> {
    Err(PeerError::Unsupported)
}

/// `addr` as an IPv6 socket sees it (`::ffff:a.b.c.d`).
#[cfg(target_os = "linux")]
fn mapped(addr: std::net::SocketAddrV4) -> SocketAddr {
    SocketAddr::new(addr.ip().to_ipv6_mapped().into(), addr.port())
}

/// The uid of the established socket whose local end is `client` and
/// remote end is `local`, in a `/proc/net/tcp{,6}` table.
#[cfg(any(target_os = "linux", test))]
fn owner(table: &str, client: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (proc_addr(client), proc_addr(local));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid …
        let (local, remote, state, uid) = (
            fields.get(1)?,
            fields.get(2)?,
            fields.get(3)?,
            fields.get(7)?,
        );
        let established = *state == "01";
        (established
            && local.eq_ignore_ascii_case(&want_local)
            && remote.eq_ignore_ascii_case(&want_remote))
        .then(|| uid.parse().ok())
        .flatten()
    })
}

/// An address as the table writes it: each 32-bit word of the address in
/// the host's byte order, in hex, then the port in hex.
#[cfg(any(target_os = "linux", test))]
fn proc_addr(addr: SocketAddr) -> String {
    let words: String = match addr {
        SocketAddr::V4(a) => format!("{:08X}", u32::from_ne_bytes(a.ip().octets())),
        SocketAddr::V6(a) => a
            .ip()
            .octets()
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{words}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_endian = "little")]
    #[test]
    fn the_table_row_of_the_clients_socket_gives_its_uid() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1FF5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1FF5 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1FF5 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 20 4 30 10 -1
   3: 0100007F:D432 0100007F:1FF5 06 00000000:00000000 03:00000000 00000000  1001        0 0 3 0 0 0 0 0 0";
        let server: SocketAddr = "127.0.0.1:8181".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(
            owner(table, client, server),
            Some(1000),
            "the client's end, not ours"
        );
        let gone: SocketAddr = "127.0.0.1:54322".parse().unwrap();
        assert_eq!(owner(table, gone, server), None, "TIME_WAIT is no owner");
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(owner(table, other, server), None);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_loopback_is_written_word_by_word() {
        let addr: SocketAddr = "[::1]:8181".parse().unwrap();
        assert_eq!(proc_addr(addr), "00000000000000000000000001000000:1FF5");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_real_connection_is_found_with_this_processs_uid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, from) = listener.accept().unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        let peer = of(from, server).unwrap();
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_dual_stack_client_of_an_ipv4_listener_is_found_in_the_ipv6_table() {
        // Java, and any client on an AF_INET6 socket, reaches 127.0.0.1 as
        // ::ffff:127.0.0.1: its socket is in tcp6, the accepted one in tcp.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let mapped = format!("[::ffff:127.0.0.1]:{}", server.port());
        let Ok(client) = std::net::TcpStream::connect(mapped) else {
            return; // no IPv6 here
        };
        let (_accepted, from) = listener.accept().unwrap();
        assert_eq!(from.port(), client.local_addr().unwrap().port());
        let peer = of(from, server).unwrap();
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
    }
}
