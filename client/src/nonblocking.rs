//! The async client, for tokio programs.

use crate::{Error, ops};
use interprocess::local_socket::GenericFilePath;
use interprocess::local_socket::tokio::{Stream, prelude::*};
use std::path::{Path, PathBuf};
use tokend_proto::{
    CredentialInfo, DaemonStatus, Hello, HelloReply, Request, Response, Secret, TokenReply,
    read_frame_async, read_response_frame_async, write_frame_async,
};
use tokio::io::BufReader;

/// An async connection to tokend; the same operations as [`crate::Client`].
pub struct AsyncClient {
    reader: BufReader<Stream>,
    socket: PathBuf,
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl AsyncClient {
    pub async fn connect_default() -> Result<AsyncClient, Error> {
        AsyncClient::connect(crate::default_socket()).await
    }

    pub async fn connect(socket: impl AsRef<Path>) -> Result<AsyncClient, Error> {
        let socket = socket.as_ref().to_path_buf();
        let unreachable = |source| Error::unreachable(&socket, source);
        let name = socket
            .as_path()
            .to_fs_name::<GenericFilePath>()
            .map_err(unreachable)?;
        let stream = Stream::connect(name).await.map_err(unreachable)?;
        ops::check_server(&socket, &stream)?;
        let mut client = AsyncClient {
            reader: BufReader::new(stream),
            socket,
        };
        write_frame_async(client.reader.get_mut(), &Hello::current()).await?;
        let reply: HelloReply = read_frame_async(&mut client.reader).await?;
        ops::accept_hello(reply)?;
        Ok(client)
    }

    pub async fn call(&mut self, request: &Request) -> Result<Response, Error> {
        write_frame_async(self.reader.get_mut(), request).await?;
        Ok(read_response_frame_async(&mut self.reader).await?)
    }

    pub async fn token(&mut self, name: &str) -> Result<Secret, Error> {
        Ok(self.token_reply(name, 0).await?.token)
    }

    pub async fn token_reply(
        &mut self,
        name: &str,
        min_valid_secs: u32,
    ) -> Result<TokenReply, Error> {
        ops::read_token(self.call(&ops::token(name, min_valid_secs)).await?)
    }

    pub async fn reject(&mut self, name: &str, token: Option<&Secret>) -> Result<String, Error> {
        ops::read_message(self.call(&ops::reject(name, token, None)).await?)
    }

    pub async fn show(&mut self, name: &str) -> Result<CredentialInfo, Error> {
        ops::read_info(self.call(&Request::Show { name: name.into() }).await?)
    }

    pub async fn list(&mut self) -> Result<Vec<CredentialInfo>, Error> {
        ops::read_list(self.call(&Request::List).await?)
    }

    pub async fn status(&mut self) -> Result<DaemonStatus, Error> {
        ops::read_status(self.call(&Request::Status).await?)
    }
}
