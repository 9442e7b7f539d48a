//! Errors that cross the wire, and errors of the framing layer itself.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure the daemon reports. Clients map these to exit codes
/// and typed errors; the accompanying message is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request could not be decoded or makes no sense in this state.
    BadRequest,
    /// The client speaks another protocol version.
    ProtocolVersion,
    /// The peer may not do this.
    PermissionDenied,
    /// No credential has that name.
    UnknownCredential,
    /// The credential exists but cannot give a token now (needs login, failing).
    NotUsable,
    /// A credential with that name already exists.
    AlreadyExists,
    /// An argument was refused (bad URL, empty token, …).
    InvalidArgument,
    /// The provider answered with an error.
    Provider,
    /// Waited too long (for a refresh, a login).
    Timeout,
    /// The daemon is at a limit (connections, logins).
    Busy,
    /// Something went wrong inside the daemon (storage, I/O).
    Internal,
}

/// An error reported by the daemon: a code for programs, a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
    /// With [`ErrorCode::NotUsable`]: the credential's state.
    pub state: Option<crate::CredentialState>,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
            state: None,
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("a frame of {0} bytes is larger than the size limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
