//! One outgoing message as its two parts: a short head and a body written right behind it. A
//! Data frame's payload stays where its writer put it (a slice of what was read from the
//! upstream) and its 5-byte header travels beside it, so no layer copies the payload only to
//! put a header in front of it; the transport writes both back to back (a server by
//! `writev`, a client while it masks). A body says whether it is shared or held by this
//! message alone ([`Payload`]): only a body held alone can be masked where it is.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{Frame, StreamId, HEADER_LEN};

/// The most bytes a [`Message`]'s head holds.
pub const MAX_HEAD: usize = 8;

/// What follows a message's head. Two payloads are equal when their bytes are; a clone of an
/// owned one is a copy.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Bytes others may hold too (a slice of a read that other messages were cut from).
    Shared(Bytes),
    /// Bytes this message alone holds, which a client's transport masks where they are
    /// (RFC 6455 §5.3). A payload shared with the messages cut from the same read was copied
    /// before it was masked: the agent's download paid a copy per byte (S1).
    Owned(BytesMut),
}

impl Payload {
    /// `bytes`, owned if nothing else holds them (no copy either way).
    pub fn owned_if_alone(bytes: Bytes) -> Self {
        bytes.try_into_mut().map_or_else(Self::Shared, Self::Owned)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Shared(bytes) => bytes,
            Self::Owned(bytes) => bytes,
        }
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as they are written (no copy).
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Shared(bytes) => bytes,
            Self::Owned(bytes) => bytes.freeze(),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Payload {}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self::Shared(bytes)
    }
}

impl From<BytesMut> for Payload {
    fn from(bytes: BytesMut) -> Self {
        Self::Owned(bytes)
    }
}

/// A whole message: `head` then `body`.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    head: [u8; MAX_HEAD],
    head_len: u8,
    body: Payload,
}

impl Message {
    /// `head` (at most [`MAX_HEAD`] bytes) followed by `body`.
    pub fn new(head: &[u8], body: impl Into<Payload>) -> Self {
        assert!(
            head.len() <= MAX_HEAD,
            "a message head holds {MAX_HEAD} bytes"
        );
        let mut inline = [0; MAX_HEAD];
        inline[..head.len()].copy_from_slice(head);
        Self {
            head: inline,
            head_len: head.len() as u8,
            body: body.into(),
        }
    }

    /// What goes first.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// What follows the head.
    pub fn body(&self) -> &[u8] {
        self.body.as_slice()
    }

    /// The parts, for a transport that writes them.
    pub fn into_parts(self) -> ([u8; MAX_HEAD], usize, Payload) {
        (self.head, usize::from(self.head_len), self.body)
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The message in one buffer (a copy unless the head is empty and the body shared).
    pub fn to_bytes(&self) -> Bytes {
        if let (0, Payload::Shared(body)) = (self.head_len, &self.body) {
            return body.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.put_slice(self.head());
        out.put_slice(self.body());
        out.freeze()
    }
}

impl From<Bytes> for Message {
    fn from(body: Bytes) -> Self {
        Self::new(&[], body)
    }
}

impl From<&Frame> for Message {
    fn from(frame: &Frame) -> Self {
        super::encode(frame).into()
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("head", &self.head())
            .field("body_len", &self.body.len())
            .field("owned", &matches!(self.body, Payload::Owned(_)))
            .finish()
    }
}

/// A Data frame whose payload is `payload` itself, not a copy; the same bytes as
/// `encode(&Frame::Data { id, payload })`.
pub fn data_message(id: StreamId, payload: impl Into<Payload>) -> Message {
    let mut head = [0u8; HEADER_LEN];
    head[0] = 0x03;
    head[1..].copy_from_slice(&id.to_be_bytes());
    Message::new(&head, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    #[test]
    fn a_data_message_is_the_encoded_frame() {
        let payload = Bytes::from_static(b"some payload");
        let message = data_message(0x0102_0304, payload.clone());
        assert_eq!(message.len(), HEADER_LEN + payload.len());
        assert_eq!(
            message.to_bytes(),
            encode(&Frame::Data {
                id: 0x0102_0304,
                payload: payload.clone()
            })
        );
        // The payload is the caller's buffer, not a copy of it.
        assert_eq!(message.body().as_ptr(), payload.as_ptr());
    }

    #[test]
    fn an_owned_payload_stays_owned_and_in_place() {
        let mut read = BytesMut::from(&b"one read, two frames"[..]);
        let first = read.split_to(9);
        let first_at = first.as_ptr();
        let message = data_message(9, first);
        assert_eq!(message.body(), b"one read,");
        assert_eq!(message.body().as_ptr(), first_at);
        assert_eq!(
            message.to_bytes(),
            encode(&Frame::Data {
                id: 9,
                payload: Bytes::from_static(b"one read,")
            })
        );
        let (_, _, body) = message.into_parts();
        assert!(matches!(&body, Payload::Owned(_)));
        assert_eq!(body.into_bytes().as_ptr(), first_at);
    }

    #[test]
    fn a_whole_message_has_no_head() {
        let bytes = encode(&Frame::Fin { id: 7 });
        let message = Message::from(bytes.clone());
        assert!(message.head().is_empty());
        assert_eq!(message.to_bytes(), bytes);
        assert!(Message::from(Bytes::new()).is_empty());
    }

    #[test]
    #[should_panic(expected = "a message head holds")]
    fn a_head_past_its_room_is_a_bug() {
        let _ = Message::new(&[0; MAX_HEAD + 1], Bytes::new());
    }
}
