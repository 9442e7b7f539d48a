//! The one place that knows the body encoding (bincode 2 over serde).
//!
//! bincode is marked unmaintained (RUSTSEC-2025-0141, "considered complete");
//! keeping it behind these two functions makes a swap to postcard a local
//! change.

use crate::{FrameError, MAX_FRAME, MAX_RESPONSE_FRAME};
use bincode::config::Config;
use bincode::enc::write::SizeWriter;
use serde::{Serialize, de::DeserializeOwned};

/// Encodes a message body (without the length prefix).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(encode_error)
}

/// Encodes a whole frame — length prefix and body — into one buffer of
/// exactly the right size: one allocation and no copy on the request path,
/// where growing a `Vec` and then prefixing it cost several of each.
/// A body over `max` is refused before the buffer is allocated.
pub fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let config = bincode::config::standard();
    let mut size = SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config).map_err(encode_error)?;
    let len = u32::try_from(size.bytes_written)
        .ok()
        .filter(|&n| n as usize <= max)
        .ok_or(FrameError::TooLarge(size.bytes_written))?;
    let mut frame = vec![0u8; 4 + size.bytes_written];
    frame[..4].copy_from_slice(&len.to_be_bytes());
    bincode::serde::encode_into_slice(value, &mut frame[4..], config).map_err(encode_error)?;
    Ok(frame)
}

fn encode_error(e: bincode::error::EncodeError) -> FrameError {
    FrameError::Encode(e.to_string())
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
