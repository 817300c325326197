//! The frame decoder on arbitrary messages: never panics, and whatever it accepts re-encodes
//! to a message that decodes to the same frame.
#![no_main]

use argocd_proxy::protocol::{decode, encode};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(Bytes::copy_from_slice(data)) {
        let again = decode(encode(&frame)).expect("re-encoded frame decodes");
        assert_eq!(again, frame);
    }
});
