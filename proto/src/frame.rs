//! Length-prefixed frames, blocking and async, over the same rules: the length
//! is checked before any buffer is allocated — against [`MAX_FRAME`] for what
//! a client sends (the daemon's hostile input), against the larger
//! [`MAX_RESPONSE_FRAME`] for what the daemon answers (a long `list`).

use crate::{FrameError, MAX_FRAME, MAX_RESPONSE_FRAME, codec};
use serde::{Serialize, de::DeserializeOwned};
use std::io::{self, Read, Write};
use zeroize::Zeroizing;

fn check_len(len: u32, max: usize) -> Result<usize, FrameError> {
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Prefix and body in one buffer, so a frame goes out in one write. Wiped
/// when dropped: a frame may carry a token or a client secret in the clear
/// (the buffer is sized exactly, so it never grows and leaves a copy).
fn framed<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    codec::encode_frame(value, MAX_RESPONSE_FRAME).map(Zeroizing::new)
}

fn eof_is_closed(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Reads one frame of at most [`MAX_FRAME`] and decodes it.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    codec::decode(&read_body(r, MAX_FRAME)?)
}

/// Reads one of the daemon's answers (at most [`MAX_RESPONSE_FRAME`]).
pub fn read_response_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    codec::decode_response(&read_body(r, MAX_RESPONSE_FRAME)?)
}

/// The body of one frame, in a buffer wiped when dropped (like [`framed`]'s).
fn read_body(r: &mut impl Read, max: usize) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix).map_err(eof_is_closed)?;
    let len = check_len(u32::from_be_bytes(prefix), max)?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut body).map_err(eof_is_closed)?;
    Ok(body)
}

/// Encodes and writes one frame, then flushes.
pub fn write_frame<T: Serialize>(w: &mut impl Write, value: &T) -> Result<(), FrameError> {
    w.write_all(&framed(value)?)?;
    w.flush()?;
    Ok(())
}

#[cfg(feature = "tokio")]
mod async_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads one frame of at most [`MAX_FRAME`] and decodes it.
    pub async fn read_frame_async<T: DeserializeOwned>(
        r: &mut (impl AsyncRead + Unpin),
    ) -> Result<T, FrameError> {
        codec::decode(&read_body(r, MAX_FRAME).await?)
    }

    /// Reads one of the daemon's answers (at most [`MAX_RESPONSE_FRAME`]).
    pub async fn read_response_frame_async<T: DeserializeOwned>(
        r: &mut (impl AsyncRead + Unpin),
    ) -> Result<T, FrameError> {
        codec::decode_response(&read_body(r, MAX_RESPONSE_FRAME).await?)
    }

    async fn read_body(
        r: &mut (impl AsyncRead + Unpin),
        max: usize,
    ) -> Result<Zeroizing<Vec<u8>>, FrameError> {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).await.map_err(eof_is_closed)?;
        let len = check_len(u32::from_be_bytes(prefix), max)?;
        let mut body = Zeroizing::new(vec![0u8; len]);
        r.read_exact(&mut body).await.map_err(eof_is_closed)?;
        Ok(body)
    }

    /// Encodes and writes one frame, then flushes.
    pub async fn write_frame_async<T: Serialize>(
        w: &mut (impl AsyncWrite + Unpin),
        value: &T,
    ) -> Result<(), FrameError> {
        w.write_all(&framed(value)?).await?;
        w.flush().await?;
        Ok(())
    }
}

#[cfg(feature = "tokio")]
pub use async_io::{read_frame_async, read_response_frame_async, write_frame_async};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hello, Request, Response, Secret, TokenReply};

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let req = Request::Token {
            name: "uptempo".into(),
            min_valid_secs: 30,
        };
        write_frame(&mut buf, &req).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        let err = read_frame::<Request>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == u32::MAX as usize));
    }

    #[test]
    fn truncated_frame_is_closed_not_garbage() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Hello::current()).unwrap();
        buf.truncate(buf.len() - 1);
        let err = read_frame::<Hello>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn trailing_bytes_are_a_decode_error() {
        let mut body = crate::encode(&Response::Done).unwrap();
        body.push(0);
        assert!(matches!(
            crate::decode::<Response>(&body),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn secrets_survive_the_wire() {
        let reply = Response::Token(TokenReply {
            token: Secret::new("tok"),
            expires_at: Some(5),
            generation: 2,
        });
        let back: Response = crate::decode(&crate::encode(&reply).unwrap()).unwrap();
        assert_eq!(back, reply);
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn async_and_blocking_codecs_agree() {
        let mut buf = Vec::new();
        write_frame_async(&mut buf, &Request::List).await.unwrap();
        let mut blocking = Vec::new();
        write_frame(&mut blocking, &Request::List).unwrap();
        assert_eq!(buf, blocking);
        let back: Request = read_frame_async(&mut buf.as_slice()).await.unwrap();
        assert_eq!(back, Request::List);
    }
}
