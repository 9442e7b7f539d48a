//! The daemon's errors, each a sentence the user can act on, and the wire
//! code that tells a client which exit status to use.

use crate::store::StoreError;
use tokend_proto::{CredentialState, ErrorCode, RemoteError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("no credential named {0:?} (see `tokenctl list`)")]
    UnknownCredential(String),
    #[error("{}", not_usable_message(.name, *.state, .reason.as_deref()))]
    NotUsable {
        name: String,
        state: CredentialState,
        reason: Option<String>,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "a credential named {0:?} already exists (remove it with `tokenctl rm {0}`, or add with --replace)"
    )]
    AlreadyExists(String),
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Url(#[from] crate::provider::http::UrlError),
    #[error(transparent)]
    Preset(#[from] crate::config::preset::PresetError),
    #[error(transparent)]
    HttpClient(#[from] crate::provider::http::ClientError),
}

fn not_usable_message(name: &str, state: CredentialState, reason: Option<&str>) -> String {
    let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
    match state {
        CredentialState::NeedsLogin => {
            format!("credential {name:?} needs a login{why}; run `tokenctl login {name}`")
        }
        CredentialState::Failing => format!(
            "credential {name:?} is failing{why}; fix it, then `tokenctl refresh {name}` or `tokenctl check {name}`"
        ),
        CredentialState::Refreshing => {
            format!("credential {name:?} has no valid token yet: a refresh is still in flight{why}")
        }
        CredentialState::Ready => format!("credential {name:?} has no valid token{why}"),
    }
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::UnknownCredential(_) => ErrorCode::UnknownCredential,
            Error::NotUsable { .. } => ErrorCode::NotUsable,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::Provider(_) => ErrorCode::Provider,
            Error::Timeout(_) => ErrorCode::Timeout,
            Error::Busy(_) => ErrorCode::Busy,
            Error::Internal(_) | Error::HttpClient(_) => ErrorCode::Internal,
            Error::Url(_) | Error::Preset(_) => ErrorCode::InvalidArgument,
        }
    }

    pub fn to_remote(&self) -> RemoteError {
        let mut remote = RemoteError::new(self.code(), self.to_string());
        if let Error::NotUsable { state, .. } = self {
            remote.state = Some(*state);
        }
        remote
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(name) => Error::AlreadyExists(name),
            StoreError::NotFound(name) | StoreError::Gone(name) => Error::UnknownCredential(name),
            other => Error::Internal(format!(
                "the store could not be updated, nothing was changed: {other}"
            )),
        }
    }
}
