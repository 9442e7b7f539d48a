//! The blocking client: plain socket I/O, no async runtime.

use crate::{Error, ops};
use interprocess::local_socket::prelude::*;
use interprocess::local_socket::{GenericFilePath, Stream};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use tokend_proto::{
    AddCredential, CheckReport, CredentialInfo, DaemonStatus, Hello, HelloReply, LoginChallenge,
    Principal, Request, Response, Secret, TokenReply, read_frame, read_response_frame, write_frame,
};

/// A connection to tokend. Reuse it for many requests: each costs one round trip.
pub struct Client {
    reader: BufReader<Stream>,
    socket: PathBuf,
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

    /// Connects to the daemon at `socket` and exchanges the hello.
    pub fn connect(socket: impl AsRef<Path>) -> Result<Client, Error> {
        let socket = socket.as_ref().to_path_buf();
        let unreachable = |source| Error::unreachable(&socket, source);
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(unreachable)?;
        let stream = Stream::connect(name).map_err(unreachable)?;
        ops::check_daemon(&socket, ops::daemon_uid(&stream))?;
        let mut client = Client {
            reader: BufReader::new(stream),
            socket,
        };
        write_frame(
            &mut BufWriter::new(client.reader.get_mut()),
            &Hello::current(),
        )?;
        // The hello reply is small; a stranger at the socket cannot make us
        // allocate a large answer before it has shown it is tokend.
        let reply: HelloReply = read_frame(&mut client.reader)?;
        ops::accept_hello(reply)?;
        Ok(client)
    }

    /// Sends one request and reads its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, Error> {
        write_frame(self.reader.get_mut(), request)?;
        Ok(read_response_frame(&mut self.reader)?)
    }

    /// A valid access token for `name`.
    pub fn token(&mut self, name: &str) -> Result<Secret, Error> {
        Ok(self.token_reply(name, 0)?.token)
    }

    /// A token valid for at least `min_valid_secs`, with its expiry and generation.
    pub fn token_reply(&mut self, name: &str, min_valid_secs: u32) -> Result<TokenReply, Error> {
        ops::read_token(self.call(&ops::token(name, min_valid_secs))?)
    }

    /// Reports that the API refused `token`: the daemon refreshes unless it
    /// already replaced that token.
    pub fn reject(&mut self, name: &str, token: Option<&Secret>) -> Result<String, Error> {
        ops::read_message(self.call(&ops::reject(name, token))?)
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

    pub fn login_finish(&mut self, login_id: &str, redirect_url: &str) -> Result<String, Error> {
        let request = Request::LoginFinish {
            login_id: login_id.into(),
            redirect_url: redirect_url.into(),
        };
        ops::read_message(self.call(&request)?)
    }
}
