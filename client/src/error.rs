//! What can go wrong talking to the daemon, typed so programs can react.

use std::path::PathBuf;
use std::time::Duration;
use tokend_proto::{CredentialState, ErrorCode, FrameError, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error(
        "tokend is not running at {} (start it with `tokend` or `systemctl --user start tokend`)",
        socket.display()
    )]
    DaemonUnreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon refused this user.
    #[error("{0}")]
    PermissionDenied(String),
    /// No credential has that name.
    #[error("{0}")]
    UnknownCredential(String),
    /// The credential exists but cannot give a token now.
    #[error("{message}")]
    NotUsable {
        state: Option<CredentialState>,
        message: String,
    },
    /// The daemon speaks another protocol version.
    #[error("{0}")]
    ProtocolVersion(String),
    /// Any other error the daemon reported.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// Another user's process answers on this user's own socket.
    #[error(
        "the socket {} is served by uid {uid}, not by you or root: refusing to talk to it (another user may have created it; remove it, or set TOKEND_SOCKET)",
        socket.display()
    )]
    Impostor { socket: PathBuf, uid: u32 },
    /// Another user's process serves this user's own named pipe (Windows).
    #[error(
        "the pipe {} is served by another user's process (pid {pid}), not by you or the system: refusing to talk to it (another user may have created it first; start your tokend, or set TOKEND_SOCKET)",
        socket.display()
    )]
    PipeImpostor { socket: PathBuf, pid: u32 },
    /// The daemon took the connection but did not answer in time.
    #[error(
        "tokend at {} did not answer within {} s",
        socket.display(),
        after.as_secs_f32()
    )]
    Timeout { socket: PathBuf, after: Duration },
    /// The connection broke or the daemon's answer made no sense.
    #[error("lost the connection to tokend: {0}")]
    Connection(String),
}

impl Error {
    /// A socket that cannot be opened: not running, or not ours to open.
    pub fn unreachable(socket: &std::path::Path, source: std::io::Error) -> Error {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::PermissionDenied(format!(
                "cannot open {}: permission denied (ask an admin to add you to the socket's group, e.g. `usermod -aG tokend $USER`, then log in again)",
                socket.display()
            ));
        }
        Error::DaemonUnreachable {
            socket: socket.to_path_buf(),
            source,
        }
    }

    /// The daemon at `socket` did not answer within `after`.
    pub fn timeout(socket: &std::path::Path, after: Duration) -> Error {
        Error::Timeout {
            socket: socket.to_path_buf(),
            after,
        }
    }

    /// The tokenctl exit code for this error (docs/DESIGN.md §8). A daemon that does
    /// not answer is, to a script, as unreachable as one that is not there.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::DaemonUnreachable { .. }
            | Error::Impostor { .. }
            | Error::PipeImpostor { .. }
            | Error::Timeout { .. } => 3,
            Error::PermissionDenied(_) => 4,
            Error::UnknownCredential(_) | Error::NotUsable { .. } => 5,
            Error::ProtocolVersion(_) | Error::Remote(_) | Error::Connection(_) => 1,
        }
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        match e.code {
            ErrorCode::PermissionDenied => Error::PermissionDenied(e.message),
            ErrorCode::UnknownCredential => Error::UnknownCredential(e.message),
            ErrorCode::NotUsable => Error::NotUsable {
                state: e.state,
                message: e.message,
            },
            ErrorCode::ProtocolVersion => Error::ProtocolVersion(e.message),
            _ => Error::Remote(e),
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => Error::Connection("the daemon closed the connection".into()),
            other => Error::Connection(other.to_string()),
        }
    }
}
