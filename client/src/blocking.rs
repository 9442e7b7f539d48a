//! The blocking client: plain socket I/O, no async runtime.
//!
//! Every wait is bounded: the connect, and each answer (through the socket's
//! read and write timeouts on Unix; on Windows, whose named pipes have no
//! timeouts, by running the exchange on a thread of its own and giving up
//! on it). A daemon that accepts but never answers — hung, stopped under a
//! debugger, or an impostor — fails the call with [`Error::Timeout`]
//! instead of hanging the program forever.

use crate::{Error, ops};
use interprocess::ConnectWaitMode;
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{ConnectOptions, GenericFilePath, Stream};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokend_proto::{
    AddCredential, CheckReport, CredentialInfo, DaemonStatus, DeviceChallenge, EditCredential,
    FrameError, Hello, HelloReply, LoginChallenge, NamedPrincipal, Principal, Request, Response,
    Secret, TokenReply, read_frame, read_response_frame, write_frame,
};

/// The connection after an exchange that timed out took it with it.
fn gone() -> Error {
    Error::Connection("an earlier call on this connection timed out; connect again".into())
}

/// A socket timeout: `WouldBlock` (EAGAIN) from SO_RCVTIMEO/SO_SNDTIMEO on
/// Unix, `TimedOut` elsewhere and from a bounded connect.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// How long an ordinary call (and the connect and hello) waits for the
/// daemon. The daemon bounds its own waits well below this by default
/// (`refresh.wait_secs` 10 s for a token, `refresh.http_timeout_secs` 15 s
/// plus 5 s for a refresh); raise it with [`Client::set_timeout`] if the
/// daemon's configuration raises those.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The least `login_finish` waits: the daemon answers it within its HTTP
/// timeout plus 10 s (25 s by default), but a configuration may raise that,
/// and after the user has been through the browser a slow answer is better
/// than a lost login. Five minutes is the login's own default `--timeout`.
pub const LOGIN_FINISH_TIMEOUT: Duration = Duration::from_secs(300);

/// How much longer than its timeout `device_login_finish` waits: the
/// daemon's last poll (its HTTP timeout, 15 s by default) and the commit.
pub const DEVICE_FINISH_MARGIN: Duration = Duration::from_secs(60);

/// A connection to tokend. Reuse it for many requests: each costs one round trip.
pub struct Client {
    /// None only after an exchange that timed out on Windows kept it.
    reader: Option<BufReader<Stream>>,
    socket: PathBuf,
    timeout: Duration,
    /// A call failed half-way (e.g. timed out): a late answer could still
    /// arrive and be taken for the next call's, so the connection is not
    /// used again.
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Client {
    /// Connects to the default socket (see [`crate::default_socket`]).
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(crate::default_socket())
    }

    /// Connects to the daemon at `socket` and exchanges the hello, waiting
    /// at most [`DEFAULT_TIMEOUT`] for each.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        Client::connect_with_timeout(socket, DEFAULT_TIMEOUT)
    }

    /// Like [`Client::connect`], with `timeout` for the connect, the hello
    /// and every later call (see [`Client::set_timeout`]).
    pub fn connect_with_timeout(
        socket: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Client, Error> {
        let socket = socket.as_ref().to_path_buf();
        let unreachable = |source: std::io::Error| {
            if is_timeout(&source) {
                Error::timeout(&socket, timeout)
            } else {
                Error::unreachable(&socket, source)
            }
        };
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(unreachable)?;
        let stream = ConnectOptions::new()
            .name(name)
            .wait_mode(ConnectWaitMode::Timeout(timeout))
            .connect_sync()
            .map_err(unreachable)?;
        ops::check_server(&socket, &stream)?;
        let mut client = Client {
            reader: Some(BufReader::new(stream)),
            socket,
            timeout,
            broken: false,
        };
        let reply = client.exchange(timeout, |reader| {
            write_frame(&mut BufWriter::new(reader.get_mut()), &Hello::current())?;
            // The hello reply is small; a stranger at the socket cannot make
            // us allocate a large answer before it has shown it is tokend.
            read_frame::<HelloReply>(reader)
        })?;
        ops::accept_hello(reply)?;
        Ok(client)
    }

    /// How long each later call waits for the daemon's answer (and for its
    /// request to be taken). `login_finish` waits at least
    /// [`LOGIN_FINISH_TIMEOUT`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The timeout set by [`Client::connect_with_timeout`] or [`Client::set_timeout`].
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads its response, within the client's timeout.
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        self.call_within(request, self.timeout)
    }

    fn call_within(&mut self, request: &Request, timeout: Duration) -> Result<Response, Error> {
        if self.broken {
            return Err(Error::Connection(
                "an earlier call on this connection failed half-way; connect again".into(),
            ));
        }
        let request = request.clone();
        self.exchange(timeout, move |reader| {
            write_frame(reader.get_mut(), &request)?;
            read_response_frame(reader)
        })
    }

    /// Runs `io` (a request and the reading of its answer) on the
    /// connection, within `timeout`: under the socket's read and write
    /// timeouts (a zero `timeout` would mean "none" to the OS, so it is
    /// raised to a millisecond).
    #[cfg(unix)]
    fn exchange<T: Send + 'static>(
        &mut self,
        timeout: Duration,
        io: impl FnOnce(&mut BufReader<Stream>) -> Result<T, FrameError> + Send + 'static,
    ) -> Result<T, Error> {
        let reader = self.reader.as_mut().ok_or_else(gone)?;
        let bound = Some(timeout.max(Duration::from_millis(1)));
        let stream = reader.get_ref();
        stream
            .set_recv_timeout(bound)
            .and_then(|()| stream.set_send_timeout(bound))
            .map_err(|e| Error::Connection(format!("cannot set the socket's timeouts: {e}")))?;
        let result = io(reader);
        self.settle(result, timeout)
    }

    /// Runs `io` on the connection, within `timeout`. A named pipe has no
    /// I/O timeouts, so the exchange runs on a thread of its own, which
    /// takes the connection with it: one that does not end in time is left
    /// to finish or fail on its own, and this connection is not used again.
    #[cfg(windows)]
    fn exchange<T: Send + 'static>(
        &mut self,
        timeout: Duration,
        io: impl FnOnce(&mut BufReader<Stream>) -> Result<T, FrameError> + Send + 'static,
    ) -> Result<T, Error> {
        let mut reader = self.reader.take().ok_or_else(gone)?;
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tokend-call".into())
            .spawn(move || {
                let result = io(&mut reader);
                let _ = done.send((reader, result));
            })
            .map_err(|e| Error::Connection(format!("cannot start the call's thread: {e}")))?;
        match answer.recv_timeout(timeout) {
            Ok((reader, result)) => {
                self.reader = Some(reader);
                self.settle(result, timeout)
            }
            Err(_) => {
                self.broken = true;
                Err(Error::timeout(&self.socket, timeout))
            }
        }
    }

    /// Maps a frame error to the client's error; a timeout names the
    /// socket and the wait. Any I/O failure leaves the connection unusable.
    fn settle<T>(&mut self, result: Result<T, FrameError>, timeout: Duration) -> Result<T, Error> {
        result.map_err(|e| {
            self.broken = true;
            match e {
                FrameError::Io(io) if is_timeout(&io) => Error::timeout(&self.socket, timeout),
                other => other.into(),
            }
        })
    }

    /// A valid access token for `name`.
    pub fn token(&mut self, name: &str) -> Result<Secret, Error> {
        Ok(self.token_reply(name, 0)?.token)
    }

    /// A token valid for at least `min_valid_secs`, with its expiry and generation.
    pub fn token_reply(&mut self, name: &str, min_valid_secs: u32) -> Result<TokenReply, Error> {
        ops::read_token(self.call(&ops::token(name, min_valid_secs))?)
    }

    /// [`Client::token_reply`] saying what the token is for: the audit
    /// trail records `header`, `exec`, `git` or `kube` rather than `token`.
    pub fn token_for(
        &mut self,
        name: &str,
        min_valid_secs: u32,
        purpose: tokend_proto::TokenUse,
    ) -> Result<TokenReply, Error> {
        ops::read_token(self.call(&ops::token_for(name, min_valid_secs, purpose))?)
    }

    /// The audit trail's entries `query` asks for, oldest first: all of
    /// them for an admin, those about the caller's own credentials for
    /// anyone else.
    pub fn audit(
        &mut self,
        query: tokend_proto::AuditQuery,
    ) -> Result<Vec<tokend_proto::AuditEntry>, Error> {
        ops::read_audit(self.call(&Request::Audit(query))?)
    }

    /// Reports that the API refused `token`: the daemon refreshes unless it
    /// already replaced that token.
    pub fn reject(&mut self, name: &str, token: Option<&Secret>) -> Result<String, Error> {
        ops::read_message(self.call(&ops::reject(name, token, None))?)
    }

    /// [`Client::reject`], naming the host that refused `token`: a bearer
    /// token, which cannot be refreshed, is marked `failing: rejected by
    /// HOST` (git's `erase`).
    pub fn reject_by(&mut self, name: &str, token: &Secret, host: &str) -> Result<String, Error> {
        ops::read_message(self.call(&ops::reject(name, Some(token), Some(host)))?)
    }

    pub fn refresh(&mut self, name: &str) -> Result<String, Error> {
        ops::read_message(self.call(&Request::Refresh { name: name.into() })?)
    }

    pub fn check(&mut self, name: &str) -> Result<CheckReport, Error> {
        ops::read_check(self.call(&Request::Check { name: name.into() })?)
    }

    pub fn show(&mut self, name: &str) -> Result<CredentialInfo, Error> {
        ops::read_info(self.call(&Request::Show { name: name.into() })?)
    }

    pub fn list(&mut self) -> Result<Vec<CredentialInfo>, Error> {
        ops::read_list(self.call(&Request::List)?)
    }

    pub fn status(&mut self) -> Result<DaemonStatus, Error> {
        ops::read_status(self.call(&Request::Status)?)
    }

    pub fn add(&mut self, add: AddCredential) -> Result<String, Error> {
        ops::read_message(self.call(&ops::add(add))?)
    }

    /// The base URL of credential `name` through tokend's proxy, if this
    /// user may use it and it has an API URL (`None`: it has none).
    pub fn proxy_url(&mut self, name: &str) -> Result<Option<crate::ProxyUrl>, Error> {
        let info = self.show(name)?;
        if info
            .spec
            .upstream()
            .and_then(|u| u.api_url.as_ref())
            .is_none()
        {
            return Ok(None);
        }
        let status = self.status()?;
        Ok(Some(crate::proxy_url(&status, &self.socket, name)))
    }

    /// Changes a credential's non-secret settings (`tokenctl edit`).
    pub fn edit(&mut self, edit: EditCredential) -> Result<String, Error> {
        ops::read_message(self.call(&Request::Edit(Box::new(edit)))?)
    }

    pub fn remove(&mut self, name: &str) -> Result<String, Error> {
        ops::read_message(self.call(&Request::Remove { name: name.into() })?)
    }

    /// Adds (`allow = true`) or removes a user or group on the allow list.
    pub fn set_allowed(
        &mut self,
        name: &str,
        principal: Principal,
        allow: bool,
    ) -> Result<String, Error> {
        ops::read_message(self.call(&ops::allow(name, principal, allow))?)
    }

    /// [`Client::set_allowed`] naming the user or group, which the daemon
    /// resolves on its host: how Windows clients name users (a SID, or an
    /// account name), whose ids only the daemon knows.
    pub fn set_allowed_named(
        &mut self,
        name: &str,
        principal: NamedPrincipal,
        allow: bool,
    ) -> Result<String, Error> {
        ops::read_message(self.call(&ops::allow_named(name, principal, allow))?)
    }

    pub fn login_start(
        &mut self,
        name: &str,
        redirect_uri: Option<String>,
    ) -> Result<LoginChallenge, Error> {
        ops::read_login(self.call(&Request::LoginStart {
            name: name.into(),
            redirect_uri,
        })?)
    }

    /// Starts a device login (RFC 8628): the daemon asks the provider for a
    /// user code and answers what the user must open and type.
    pub fn device_login_start(&mut self, name: &str) -> Result<DeviceChallenge, Error> {
        let request = Request::DeviceLoginStart { name: name.into() };
        // The daemon asks the provider first; its HTTP timeout is below ours.
        ops::read_device_login(self.call(&request)?)
    }

    /// Waits until the user approves (or denies) the device login, at most
    /// `timeout` (the daemon polls the provider meanwhile; this call waits a
    /// little longer than `timeout` for its answer).
    pub fn device_login_finish(
        &mut self,
        login_id: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let request = Request::DeviceLoginFinish {
            login_id: login_id.into(),
            timeout_secs: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        };
        let wait = self
            .timeout
            .max(timeout.saturating_add(DEVICE_FINISH_MARGIN));
        ops::read_message(self.call_within(&request, wait)?)
    }

    pub fn login_finish(&mut self, login_id: &str, redirect_url: &str) -> Result<String, Error> {
        let request = Request::LoginFinish {
            login_id: login_id.into(),
            redirect_url: redirect_url.into(),
        };
        let timeout = self.timeout.max(LOGIN_FINISH_TIMEOUT);
        ops::read_message(self.call_within(&request, timeout)?)
    }
}
