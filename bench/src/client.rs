//! tokend as a measured endpoint: token requests through the real blocking
//! client library (`tokend_client::Client`), as a program would make them.

use crate::measure::Endpoint;
use std::path::PathBuf;
use tokend_client::Client;

pub struct TokendEndpoint {
    pub socket: PathBuf,
    /// The credentials requests cycle through.
    pub names: Vec<String>,
    /// Every token served must have this length (a wrong answer is an error,
    /// not a fast one).
    pub token_len: usize,
}

impl Endpoint for TokendEndpoint {
    type Conn = Client;

    fn connect(&self) -> Result<Client, String> {
        Client::connect(&self.socket).map_err(|e| e.to_string())
    }

    fn request(&self, conn: &mut Client, i: usize) -> Result<(), String> {
        let name = &self.names[i % self.names.len()];
        let reply = conn
            .token_reply(name, 0)
            .map_err(|e| format!("{name}: {e}"))?;
        if reply.token.len() != self.token_len {
            return Err(format!(
                "{name}: got a token of {} bytes",
                reply.token.len()
            ));
        }
        Ok(())
    }
}
