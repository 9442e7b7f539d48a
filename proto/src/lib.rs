//! Wire types and framing shared by `tokend` and its clients.
//!
//! A connection is a stream of frames: a 4-byte big-endian length followed by
//! a bincode body. The first frame each way is a [`Hello`] / [`HelloReply`],
//! whose layout never changes, so that a client speaking another protocol
//! version gets a clear answer instead of a decode error or a hang.

mod codec;
mod error;
mod frame;
mod message;
mod name;
pub mod paths;
mod secret;
#[cfg(windows)]
pub mod sid;
mod spec;

pub use codec::{decode, decode_response, encode};
pub use error::{ErrorCode, FrameError, RemoteError};
pub use frame::{read_frame, read_response_frame, write_frame};
#[cfg(feature = "tokio")]
pub use frame::{read_frame_async, read_response_frame_async, write_frame_async};
pub use message::*;
pub use name::{LOGGED_NAME_BYTES, Logged, NameError, escaped, is_escaped, logged, validate_name};
pub use secret::Secret;
pub use spec::*;

/// The protocol version this build speaks. Bumped on any change to
/// [`Request`] or [`Response`].
pub const PROTOCOL_VERSION: u32 = 6;

/// "TKND": lets the daemon tell a tokend client from a stray writer.
pub const MAGIC: u32 = 0x544b_4e44;

/// The largest frame body the daemon accepts from a client, checked before
/// allocating: requests are small, and clients may be hostile.
pub const MAX_FRAME: usize = 64 * 1024;

/// The largest answer a client accepts from the daemon: `list` and `status`
/// grow with the number of credentials (100,000 fit).
pub const MAX_RESPONSE_FRAME: usize = 64 * 1024 * 1024;
