//! RFC 6455 framing (§5.2), pure: frame headers parsed and written, payloads masked. No I/O;
//! [`super::websocket`] drives it over a connection.

use bytes::{BufMut, BytesMut};

/// The longest header: 2 bytes, a 64-bit length, a mask.
pub const MAX_HEADER: usize = 14;

/// The longest control-frame payload (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong: short, never fragmented, allowed between a message's fragments.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    pub opcode: OpCode,
    /// Present on every frame a client sends, absent on a server's (§5.1).
    pub mask: Option<[u8; 4]>,
    /// Payload bytes that follow the header.
    pub len: u64,
}

/// A header no conforming peer sends; the connection is failed (§7.1.7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("WebSocket frame with reserved bits set (no extension was negotiated)")]
    ReservedBits,
    #[error("WebSocket frame with unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("WebSocket control frame fragmented or over {MAX_CONTROL_PAYLOAD} bytes")]
    BadControl,
    #[error("WebSocket frame length with its most significant bit set")]
    LengthOverflow,
}

/// Parses the header at the start of `buf`: `Ok(None)` until all of it is there, else the
/// header and its length in bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(FrameError::UnknownOpcode(first & 0x0F))?;
    let fin = first & 0x80 != 0;
    let masked = second & 0x80 != 0;
    let (len, mut at) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => {
                let len = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(FrameError::LengthOverflow);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::BadControl);
    }
    let mask = if masked {
        let Some(bytes) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(bytes.try_into().expect("4 bytes"))
    } else {
        None
    };
    let header = Header {
        fin,
        opcode,
        mask,
        len,
    };
    Ok(Some((header, at)))
}

/// Appends `header` in its shortest form.
pub fn put_header(out: &mut BytesMut, header: &Header) {
    let fin = if header.fin { 0x80 } else { 0 };
    out.put_u8(fin | header.opcode.bits());
    let masked = if header.mask.is_some() { 0x80 } else { 0 };
    match header.len {
        len @ 0..=125 => out.put_u8(masked | len as u8),
        len @ 126..=0xFFFF => {
            out.put_u8(masked | 126);
            out.put_u16(len as u16);
        }
        len => {
            out.put_u8(masked | 127);
            out.put_u64(len);
        }
    }
    if let Some(mask) = header.mask {
        out.put_slice(&mask);
    }
}

/// The mask as it applies from byte `offset` of a payload on: the key rotated, so the part of
/// a payload from `offset` on can be masked on its own.
pub fn mask_from(mask: [u8; 4], offset: usize) -> [u8; 4] {
    let mut rotated = mask;
    rotated.rotate_left(offset % 4);
    rotated
}

/// XORs `payload` with `mask` (§5.3), eight bytes at a time; the same call unmasks.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so of 4: the mask restarts at its first byte.
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: u64) -> Header {
        Header {
            fin,
            opcode,
            mask,
            len,
        }
    }

    fn encoded(header: &Header) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_header(&mut out, header);
        out.to_vec()
    }

    #[test]
    fn rfc_6455_examples_parse() {
        // §5.7: a single-frame unmasked text message "Hello", and the masked one.
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (parsed, at) = parse_header(&unmasked).unwrap().unwrap();
        assert_eq!((parsed, at), (header(true, OpCode::Text, None, 5), 2));
        let mut masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (parsed, at) = parse_header(&masked).unwrap().unwrap();
        assert_eq!(parsed.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        apply_mask(&mut masked[at..], parsed.mask.unwrap());
        assert_eq!(&masked[at..], b"Hello");
        // A 256-byte and a 64 KiB binary message: 16- and 64-bit lengths.
        assert_eq!(
            parse_header(&[0x82, 0x7E, 0x01, 0x00]).unwrap(),
            Some((header(true, OpCode::Binary, None, 256), 4))
        );
        let long = [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(
            parse_header(&long).unwrap(),
            Some((header(true, OpCode::Binary, None, 65536), 10))
        );
    }

    #[test]
    fn a_partial_header_asks_for_more() {
        let full = encoded(&header(true, OpCode::Binary, Some([1, 2, 3, 4]), 70_000));
        assert_eq!(full.len(), MAX_HEADER);
        for cut in 0..full.len() {
            assert_eq!(parse_header(&full[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert_eq!(parse_header(&[0xC2, 0]), Err(FrameError::ReservedBits));
        assert_eq!(parse_header(&[0x83, 0]), Err(FrameError::UnknownOpcode(3)));
        // A fragmented Ping, and a Close longer than 125 bytes.
        assert_eq!(parse_header(&[0x09, 0]), Err(FrameError::BadControl));
        assert_eq!(
            parse_header(&[0x88, 126, 0, 126]),
            Err(FrameError::BadControl)
        );
        let huge = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_header(&huge), Err(FrameError::LengthOverflow));
    }

    #[test]
    fn masking_twice_restores_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut payload = original.clone();
            apply_mask(&mut payload, [0xA5, 0x5A, 0x0F, 0xF0]);
            let expected: Vec<u8> = original
                .iter()
                .zip([0xA5, 0x5A, 0x0F, 0xF0].iter().cycle())
                .map(|(byte, key)| byte ^ key)
                .collect();
            assert_eq!(payload, expected, "len {len}");
            apply_mask(&mut payload, [0xA5, 0x5A, 0x0F, 0xF0]);
            assert_eq!(payload, original);
        }
    }

    proptest! {
        #[test]
        fn headers_round_trip(
            fin in any::<bool>(),
            op in 0usize..6,
            mask in proptest::option::of(any::<[u8; 4]>()),
            len in prop_oneof![0u64..=125, 126u64..=0xFFFF, 0x1_0000u64..(1 << 63)],
        ) {
            let opcode = [OpCode::Continuation, OpCode::Text, OpCode::Binary,
                OpCode::Close, OpCode::Ping, OpCode::Pong][op];
            let (fin, len) = if opcode.is_control() { (true, len % 126) } else { (fin, len) };
            let original = header(fin, opcode, mask, len);
            let bytes = encoded(&original);
            prop_assert_eq!(parse_header(&bytes), Ok(Some((original, bytes.len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(Some((_, at))) = parse_header(&bytes) {
                prop_assert!(at <= bytes.len() && at <= MAX_HEADER);
            }
        }
    }
}
