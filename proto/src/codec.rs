//! The one place that knows the body encoding (bincode 2 over serde).
//!
//! bincode is marked unmaintained (RUSTSEC-2025-0141, "considered complete");
//! keeping it behind these two functions makes a swap to postcard a local
//! change.

use crate::{FrameError, MAX_FRAME, MAX_RESPONSE_FRAME};
use bincode::config::Config;
use serde::{Serialize, de::DeserializeOwned};

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decodes a whole body of at most [`MAX_FRAME`] (what clients send);
/// trailing bytes are an error, not silently ignored.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    decode_with(body, bincode::config::standard().with_limit::<MAX_FRAME>())
}

/// Decodes a daemon's answer, which may be up to [`MAX_RESPONSE_FRAME`].
pub fn decode_response<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    decode_with(
        body,
        bincode::config::standard().with_limit::<MAX_RESPONSE_FRAME>(),
    )
}

fn decode_with<T: DeserializeOwned>(body: &[u8], config: impl Config) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Decode(format!(
            "{} unexpected trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}
