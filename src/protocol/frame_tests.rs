//! Round-trip (property-based) and malformed-input tests for every frame.

use super::*;
use proptest::prelude::*;

use crate::protocol::data_message;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn stream_id() -> impl Strategy<Value = StreamId> {
    1..=u32::MAX
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of("[a-z0-9-]{0,60}"),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(v, w, m, hi, ht, id, rc, mf)| Settings {
            version: v,
            stream_window: w,
            max_streams: m,
            heartbeat_interval_ms: hi,
            heartbeat_timeout_ms: ht,
            server_id: id,
            replica_count: rc,
            max_frame_payload: mf,
        })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), bytes(64)).prop_map(|(id, target)| Frame::Connect { id, target }),
        any::<u32>().prop_map(|id| Frame::Connected { id }),
        (any::<u32>(), bytes(4096)).prop_map(|(id, payload)| Frame::Data { id, payload }),
        (any::<u32>(), bytes(64)).prop_map(|(id, message)| Frame::Error { id, message }),
        any::<u32>().prop_map(|id| Frame::Close { id }),
        bytes(16).prop_map(|payload| Frame::Ping { payload }),
        bytes(16).prop_map(|payload| Frame::Pong { payload }),
        settings().prop_map(Frame::Settings),
        (stream_id(), 1..=u32::MAX)
            .prop_map(|(id, increment)| Frame::WindowUpdate { id, increment }),
        stream_id().prop_map(|id| Frame::Fin { id }),
        (stream_id(), any::<u8>(), bytes(64)).prop_map(|(id, code, message)| Frame::Reset {
            id,
            reason: ResetReason::from_code(code),
            message
        }),
        any::<u32>().prop_map(|grace_ms| Frame::Drain { grace_ms }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..64))
            .prop_map(|(up_to, ids)| Frame::LiveIds { up_to, ids }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn data_message_matches_encode(id in any::<u32>(), payload in bytes(4096)) {
        let frame = Frame::Data { id, payload: payload.clone() };
        prop_assert_eq!(data_message(id, payload).to_bytes(), encode(&frame));
    }

    #[test]
    fn encode_decode_identity(frame in frame()) {
        let wire = encode(&frame);
        prop_assert_eq!(wire.len(), frame.encoded_len());
        prop_assert_eq!(decode(wire).unwrap(), frame);
    }

    /// Any byte string decodes to a frame or an error: never a panic.
    #[test]
    fn arbitrary_input_never_panics(input in bytes(256)) {
        let _ = decode(input);
    }
}

#[test]
fn v1_connect_matches_the_captured_go_frame() {
    // seed-protocol.md §1.2: Connect for id 1 to 127.0.0.1:18002, as the Go server sent it.
    let captured = [
        0x01, 0x00, 0x00, 0x00, 0x01, 0x31, 0x32, 0x37, 0x2e, 0x30, 0x2e, 0x30, 0x2e, 0x31, 0x3a,
        0x31, 0x38, 0x30, 0x30, 0x32,
    ];
    let frame = Frame::Connect {
        id: 1,
        target: Bytes::from_static(b"127.0.0.1:18002"),
    };
    assert_eq!(&encode(&frame)[..], &captured[..]);
    assert_eq!(decode(Bytes::copy_from_slice(&captured)).unwrap(), frame);
}

#[test]
fn v1_frames_have_the_go_layout() {
    let cases: [(Frame, &[u8]); 6] = [
        (Frame::Connected { id: 7 }, &[2, 0, 0, 0, 7]),
        (
            Frame::Data {
                id: 0x0102_0304,
                payload: Bytes::from_static(b"hi"),
            },
            &[3, 1, 2, 3, 4, b'h', b'i'],
        ),
        (
            Frame::Error {
                id: 2,
                message: Bytes::from_static(b"dial failed"),
            },
            b"\x04\0\0\0\x02dial failed",
        ),
        (Frame::Close { id: 9 }, &[5, 0, 0, 0, 9]),
        (
            Frame::Ping {
                payload: Bytes::new(),
            },
            &[6, 0, 0, 0, 0],
        ),
        (
            Frame::Pong {
                payload: Bytes::new(),
            },
            &[7, 0, 0, 0, 0],
        ),
    ];
    for (frame, wire) in cases {
        assert_eq!(&encode(&frame)[..], wire, "{frame:?}");
    }
}

#[test]
fn short_frames_are_rejected() {
    for len in 0..HEADER_LEN {
        assert_eq!(
            decode(Bytes::from(vec![3; len])),
            Err(FrameError::Short { len })
        );
    }
}

#[test]
fn unknown_types_are_rejected() {
    for kind in [0x00, 0x08, 0x0f, 0x16, 0xff] {
        assert_eq!(
            decode(Bytes::from(vec![kind, 0, 0, 0, 1])),
            Err(FrameError::UnknownType(kind))
        );
    }
}

#[test]
fn oversized_messages_are_rejected() {
    let len = MAX_MESSAGE + 1;
    let mut message = vec![0u8; len];
    message[0] = 3;
    assert_eq!(
        decode(Bytes::from(message)),
        Err(FrameError::Oversized { len })
    );
    let mut largest = vec![0u8; MAX_MESSAGE];
    largest[0] = 3;
    assert!(decode(Bytes::from(largest)).is_ok());
}

#[test]
fn malformed_v2_frames_are_rejected() {
    let cases: [&[u8]; 11] = [
        b"\x11\0\0\0\x01\0\0\x01",               // WindowUpdate, 3-byte payload
        b"\x11\0\0\0\x01\0\0\0\0",               // WindowUpdate, zero increment
        b"\x11\0\0\0\0\0\0\0\x01",               // WindowUpdate, id 0
        b"\x12\0\0\0\0",                         // Fin, id 0
        b"\x13\0\0\0\x01",                       // Reset, no reason code
        b"\x14\0\0\0\x01\0\0\0\x01",             // Drain on a stream id
        b"\x14\0\0\0\0\0\x01",                   // Drain, short payload
        b"\x15\0\0\0\0\0\0\x01",                 // LiveIds, not whole u32s
        b"\x10\0\0\0\0\x02\x04\0\0",             // Settings, entry longer than payload
        b"\x10\0\0\0\0\x01\x01\x02\x01\x01\x02", // Settings, duplicate key
        b"\x10\0\0\0\0\x06\x02\xff\xfe",         // Settings, server id not UTF-8
    ];
    for wire in cases {
        let result = decode(Bytes::from_static(wire));
        assert!(
            matches!(result, Err(FrameError::Malformed { .. })),
            "{wire:?} gave {result:?}"
        );
    }
}

#[test]
fn settings_skip_unknown_keys() {
    // key 200 (unknown, 3 bytes) then version 2.
    let wire = b"\x10\0\0\0\0\xc8\x03abc\x01\x01\x02";
    let Frame::Settings(settings) = decode(Bytes::from_static(wire)).unwrap() else {
        panic!("not settings");
    };
    assert_eq!(settings.version, Some(2));
}

#[test]
fn unknown_reset_codes_survive_a_round_trip() {
    let frame = Frame::Reset {
        id: 4,
        reason: ResetReason::from_code(0xee),
        message: Bytes::from_static(b"newer peer"),
    };
    assert_eq!(decode(encode(&frame)).unwrap(), frame);
    assert_eq!(ResetReason::from_code(0xee), ResetReason::Other(0xee));
}
