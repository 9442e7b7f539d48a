//! The one place that knows the body encoding (bincode 2 over serde).
//!
//! bincode is marked unmaintained (RUSTSEC-2025-0141, "considered complete");
//! keeping it behind these two functions makes a swap to postcard a local
//! change.

use crate::{FrameError, MAX_FRAME};
use serde::{Serialize, de::DeserializeOwned};

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Decodes a whole body; trailing bytes are an error, not silently ignored.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Decode(format!(
            "{} unexpected trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}
