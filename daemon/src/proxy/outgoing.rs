//! The request body on its way to the upstream: held in memory when its
//! length is known and at most `proxy.max_replay_bytes` (so the request can
//! be sent again after a refused token), streamed as it comes otherwise
//! (never retried), and never more than `proxy.max_request_bytes`.

use super::body::{ProxyBody, boxed, empty, full};
use super::errors::ProxyError;
use crate::config::proxy::ProxyConfig;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Bytes, Incoming};
use std::time::Duration;

pub enum Outgoing {
    /// Read whole: can be sent as often as needed.
    Held(Bytes),
    /// Sent as it arrives, once; `None` once taken.
    Streamed(Option<ProxyBody>),
}

impl Outgoing {
    /// Reads the body whose length is known and small enough (within
    /// `read_for`: a client that trickles it is cut off), or sets it up to
    /// stream.
    pub async fn read(
        body: Incoming,
        config: &ProxyConfig,
        read_for: Duration,
    ) -> Result<Outgoing, ProxyError> {
        let known = body.size_hint().exact();
        if let Some(len) = known
            && len > config.max_request_bytes
        {
            return Err(ProxyError::TooLarge(config.max_request_bytes));
        }
        let limited = Limited::new(body, config.max_request_bytes as usize);
        match known {
            Some(len) if len <= config.max_replay_bytes => {
                let collected = tokio::time::timeout(read_for, limited.collect())
                    .await
                    .map_err(|_| {
                        ProxyError::BadRequest(format!(
                            "the request body did not arrive within {} s",
                            read_for.as_secs()
                        ))
                    })?
                    .map_err(|e| {
                        ProxyError::BadRequest(format!("the request body could not be read: {e}"))
                    })?;
                Ok(Outgoing::Held(collected.to_bytes()))
            }
            _ => Ok(Outgoing::Streamed(Some(boxed(limited)))),
        }
    }

    /// The body for the first send.
    pub fn first(&mut self) -> ProxyBody {
        match self {
            Outgoing::Held(bytes) if bytes.is_empty() => empty(),
            Outgoing::Held(bytes) => full(bytes.clone()),
            Outgoing::Streamed(body) => body.take().unwrap_or_else(empty),
        }
    }

    /// The body again, for a retry: only a held one can be.
    pub fn again(&self) -> Option<ProxyBody> {
        match self {
            Outgoing::Held(bytes) if bytes.is_empty() => Some(empty()),
            Outgoing::Held(bytes) => Some(full(bytes.clone())),
            Outgoing::Streamed(_) => None,
        }
    }
}
