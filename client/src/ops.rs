//! Each operation as a request and a reader of its answer, shared by the
//! blocking and the async client.

use crate::Error;
use tokend_proto::{
    AddCredential, AuditEntry, CheckReport, CredentialInfo, DaemonStatus, DeviceChallenge,
    HelloReply, LoginChallenge, NamedPrincipal, Principal, Request, Response, Secret, TokenReply,
    TokenUse,
};

/// Refuses a stranger on the user's own socket before anything is sent. The
/// per-user socket may live in a shared temp directory (no
/// `XDG_RUNTIME_DIR`), where another user could have made it first; only
/// this user's daemon, or root's, may answer there. `daemon_uid` is the
/// peer's uid from the kernel (None where it cannot be read).
pub fn check_daemon(socket: &std::path::Path, daemon_uid: Option<u32>) -> Result<(), Error> {
    let me = tokend_proto::paths::current_uid();
    match daemon_uid {
        Some(uid) if uid != me && uid != 0 && socket == tokend_proto::paths::user_socket() => {
            Err(Error::Impostor {
                socket: socket.to_path_buf(),
                uid,
            })
        }
        _ => Ok(()),
    }
}

/// Refuses a daemon of another user on this user's own socket, before
/// anything is sent: on Unix by the uid the kernel reports for the peer
/// ([`check_daemon`]); on Windows by the user SID of the process that
/// serves the pipe ([`trusted_server`]; a process whose user cannot even
/// be read is refused too).
pub fn check_server(
    socket: &std::path::Path,
    stream: &impl interprocess::local_socket::traits::StreamCommon,
) -> Result<(), Error> {
    #[cfg(unix)]
    return check_daemon(socket, daemon_uid(stream));
    #[cfg(windows)]
    {
        let user_pipe = tokend_proto::paths::user_socket();
        if !is_well_known_pipe(socket, &user_pipe) {
            return Ok(());
        }
        let pid = stream.peer_creds().ok().and_then(|c| c.pid()).unwrap_or(0);
        let impostor = Error::PipeImpostor {
            socket: socket.to_path_buf(),
            pid,
        };
        let (Ok(server), Ok(me)) = (
            tokend_proto::sid::user_of_process(pid),
            tokend_proto::sid::user_of_this_process(),
        ) else {
            return Err(impostor);
        };
        if trusted_server(&server, &me) {
            Ok(())
        } else {
            Err(impostor)
        }
    }
}

/// Windows: the pipes whose server is checked — the user's own and the
/// system daemon's (`\\.\pipe\tokend`). Unlike a Unix socket in a
/// directory only root writes, a pipe name is the whole machine's: any
/// local user can create `\\.\pipe\tokend` while the system daemon is
/// not running, and would then receive what an administrator sends it
/// (`add`'s secrets). Pipe names are case-insensitive, so compared so.
/// The HTTP pipes beside them (`-http`, `tokend_proto::paths::http_socket_beside`,
/// which `Client::watch` opens) are checked as well. Any other pipe, named
/// explicitly, is exempt.
#[cfg(any(windows, test))]
fn is_well_known_pipe(socket: &std::path::Path, user_pipe: &std::path::Path) -> bool {
    let socket = socket.to_string_lossy();
    let user_pipe = user_pipe.to_string_lossy();
    [&*user_pipe, WINDOWS_SYSTEM_PIPE].iter().any(|known| {
        socket.eq_ignore_ascii_case(known) || socket.eq_ignore_ascii_case(&format!("{known}-http"))
    })
}

/// The system daemon's pipe on Windows (`tokend_proto::paths::SYSTEM_SOCKET` there).
#[cfg(any(windows, test))]
const WINDOWS_SYSTEM_PIPE: &str = r"\\.\pipe\tokend";

/// Windows: a well-known pipe may be served by this user's process or
/// LocalSystem's (the system daemon), by nobody else.
#[cfg(any(windows, test))]
fn trusted_server(server_sid: &str, my_sid: &str) -> bool {
    server_sid == my_sid || server_sid == "S-1-5-18"
}

/// The daemon's uid as the kernel reports it (`None` off Unix, where a
/// named pipe's default ACL already admits only its owner).
pub fn daemon_uid(stream: &impl interprocess::local_socket::traits::StreamCommon) -> Option<u32> {
    #[cfg(unix)]
    return stream.peer_creds().ok()?.euid();
    #[cfg(not(unix))]
    {
        let _ = stream;
        None
    }
}

/// Checks the daemon's answer to our hello.
pub fn accept_hello(reply: HelloReply) -> Result<(), Error> {
    if reply.accepted {
        Ok(())
    } else {
        Err(Error::ProtocolVersion(reply.message))
    }
}

fn unexpected(what: &str, got: &Response) -> Error {
    let kind = match got {
        Response::Token(_) => "a token",
        Response::Done | Response::Message(_) => "a message",
        Response::Credential(_) => "a credential",
        Response::List(_) => "a list",
        Response::Status(_) => "a status",
        Response::Check(_) => "a check report",
        Response::Login(_) => "a login challenge",
        Response::DeviceLogin(_) => "a device login challenge",
        Response::Error(_) => "an error",
        Response::Audit(_) => "audit entries",
    };
    Error::Connection(format!("expected {what} from tokend, got {kind}"))
}

/// Turns an error response into an `Err`, passing anything else through.
pub fn check(response: Response) -> Result<Response, Error> {
    match response {
        Response::Error(e) => Err(e.into()),
        other => Ok(other),
    }
}

pub fn token(name: &str, min_valid_secs: u32) -> Request {
    Request::Token {
        name: name.into(),
        min_valid_secs,
    }
}

/// A token request that says what the token is for (the audit trail
/// records it).
pub fn token_for(name: &str, min_valid_secs: u32, purpose: TokenUse) -> Request {
    Request::TokenFor {
        name: name.into(),
        min_valid_secs,
        purpose,
    }
}

pub fn read_audit(response: Response) -> Result<Vec<AuditEntry>, Error> {
    match check(response)? {
        Response::Audit(entries) => Ok(entries),
        other => Err(unexpected("audit entries", &other)),
    }
}

pub fn read_token(response: Response) -> Result<TokenReply, Error> {
    match check(response)? {
        Response::Token(t) => Ok(t),
        other => Err(unexpected("a token", &other)),
    }
}

/// `rejected_by`: the host that refused the token, when known (git's
/// `erase`); a bearer token is then marked as rejected by it.
pub fn reject(name: &str, token: Option<&Secret>, rejected_by: Option<&str>) -> Request {
    Request::Reject {
        name: name.into(),
        token: token.cloned(),
        rejected_by: rejected_by.map(Into::into),
    }
}

/// Reads a response that carries only a sentence for the user.
pub fn read_message(response: Response) -> Result<String, Error> {
    match check(response)? {
        Response::Message(m) => Ok(m),
        Response::Done => Ok(String::new()),
        other => Err(unexpected("a message", &other)),
    }
}

pub fn read_info(response: Response) -> Result<CredentialInfo, Error> {
    match check(response)? {
        Response::Credential(c) => Ok(*c),
        other => Err(unexpected("a credential", &other)),
    }
}

pub fn read_list(response: Response) -> Result<Vec<CredentialInfo>, Error> {
    match check(response)? {
        Response::List(l) => Ok(l),
        other => Err(unexpected("a list", &other)),
    }
}

pub fn read_status(response: Response) -> Result<DaemonStatus, Error> {
    match check(response)? {
        Response::Status(s) => Ok(s),
        other => Err(unexpected("a status", &other)),
    }
}

pub fn read_check(response: Response) -> Result<CheckReport, Error> {
    match check(response)? {
        Response::Check(c) => Ok(c),
        other => Err(unexpected("a check report", &other)),
    }
}

pub fn read_login(response: Response) -> Result<LoginChallenge, Error> {
    match check(response)? {
        Response::Login(l) => Ok(l),
        other => Err(unexpected("a login challenge", &other)),
    }
}

pub fn read_device_login(response: Response) -> Result<DeviceChallenge, Error> {
    match check(response)? {
        Response::DeviceLogin(d) => Ok(d),
        other => Err(unexpected("a device login challenge", &other)),
    }
}

pub fn add(add: AddCredential) -> Request {
    Request::Add(Box::new(add))
}

pub fn allow(name: &str, principal: Principal, allow: bool) -> Request {
    let name = name.to_string();
    if allow {
        Request::Allow { name, principal }
    } else {
        Request::Deny { name, principal }
    }
}

/// `allow`/`deny` naming the user or group, for the daemon to resolve.
pub fn allow_named(name: &str, principal: NamedPrincipal, allow: bool) -> Request {
    let name = name.to_string();
    if allow {
        Request::AllowNamed { name, principal }
    } else {
        Request::DenyNamed { name, principal }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const ALICE: &str = "S-1-5-21-1004336348-1177238915-682003330-1001";
    const BOB: &str = "S-1-5-21-1004336348-1177238915-682003330-1002";

    #[test]
    fn the_system_pipe_is_checked_as_the_users_own_is_in_any_case() {
        let mine = Path::new(r"\\.\pipe\tokend-alice");
        assert!(is_well_known_pipe(mine, mine));
        assert!(is_well_known_pipe(
            Path::new(r"\\.\PIPE\TOKEND-ALICE"),
            mine
        ));
        assert!(
            is_well_known_pipe(Path::new(r"\\.\pipe\tokend"), mine),
            "any user can create the system pipe while its daemon is down"
        );
        assert!(is_well_known_pipe(Path::new(r"\\.\pipe\TOKEND"), mine));
        assert!(!is_well_known_pipe(Path::new(r"\\.\pipe\elsewhere"), mine));
        // The HTTP pipes beside them, which `Client::watch` opens.
        assert!(is_well_known_pipe(
            Path::new(r"\\.\pipe\tokend-alice-HTTP"),
            mine
        ));
        assert!(is_well_known_pipe(Path::new(r"\\.\pipe\tokend-http"), mine));
        assert!(!is_well_known_pipe(
            Path::new(r"\\.\pipe\elsewhere-http"),
            mine
        ));
    }

    #[test]
    fn a_well_known_pipe_is_served_by_its_user_or_local_system_only() {
        assert!(trusted_server(ALICE, ALICE));
        assert!(trusted_server("S-1-5-18", ALICE));
        assert!(!trusted_server(BOB, ALICE));
        assert!(
            !trusted_server("S-1-5-19", ALICE),
            "LocalService is not LocalSystem"
        );
        assert!(!trusted_server("S-1-5-20", ALICE), "nor NetworkService");
    }
}
