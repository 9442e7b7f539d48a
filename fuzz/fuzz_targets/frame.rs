//! Arbitrary bytes as they would arrive on the socket: the hello, a request
//! frame, a response frame (what a client reads), and a bare body. None may
//! panic or allocate beyond the frame limit; whatever decodes must survive
//! an encode/decode round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokend_proto::{FrameError, Hello, Request, Response, decode, encode, read_frame};

fn round_trips<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = encode(value).expect("a decoded value encodes");
    let back: T = decode(&body).expect("an encoded value decodes");
    assert_eq!(&back, value);
}

fuzz_target!(|data: &[u8]| {
    let _ = read_frame::<Hello>(&mut &data[..]);
    match read_frame::<Request>(&mut &data[..]) {
        Ok(request) => round_trips(&request),
        Err(FrameError::TooLarge(n)) => assert!(n > tokend_proto::MAX_FRAME),
        Err(_) => {}
    }
    if let Ok(response) = read_frame::<Response>(&mut &data[..]) {
        round_trips(&response);
    }
    if let Ok(request) = decode::<Request>(data) {
        round_trips(&request);
    }
});
