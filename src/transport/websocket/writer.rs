//! The sending half of a WebSocket connection: whole frames queued in order, headers and small
//! payloads gathered into one buffer, large payloads written from where they are (`writev`),
//! a client's masks applied in place to a payload only it holds.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

use super::conn::Role;
use super::frame::{apply_mask, mask_from, put_header, Header, OpCode};
use crate::protocol::Payload;

/// Frames with payloads up to this size are copied behind their header into one buffer; larger
/// payloads are written from where they are.
const GATHER_MAX: usize = 4 * 1024;

/// `writev` takes at most this many pieces per call.
const MAX_IOVECS: usize = 64;

/// What is waiting to be written.
pub(super) struct Writer {
    /// Whole frames in order; the front one may be partly written.
    queue: VecDeque<Bytes>,
    /// Bytes queued and gathered, not yet written.
    pub(super) queued: usize,
    /// Headers and small payloads gathered for the next queue entry.
    gather: BytesMut,
    /// A Close is queued: nothing may follow it.
    pub(super) close_queued: bool,
    /// The last waker of a task that wrote (the session's writer), woken too when the reader
    /// writes an answer to a Ping: the write readiness goes to whichever waker came last.
    pub(super) writer_waker: Option<Waker>,
    /// Masks for a client's frames: a generator seeded once from the OS.
    mask_state: u64,
}

impl Writer {
    pub(super) fn new(role: Role) -> Self {
        let mut seed = [0u8; 8];
        if role == Role::Client
            && rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty()).is_err()
        {
            seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |elapsed| elapsed.as_nanos() as u64)
                .to_le_bytes();
        }
        Self {
            queue: VecDeque::new(),
            queued: 0,
            gather: BytesMut::new(),
            close_queued: false,
            writer_waker: None,
            mask_state: u64::from_le_bytes(seed),
        }
    }

    /// splitmix64: masks need not be secret here (no browser shares the connection), only
    /// varied, as RFC 6455 §5.3 asks.
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_state = self.mask_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.mask_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let z = z ^ (z >> 31);
        (z as u32).to_le_bytes()
    }

    /// Queues one whole frame: `head` then `body` as its payload.
    pub(super) fn push(&mut self, role: Role, opcode: OpCode, head: &[u8], body: Payload) {
        let mask = (role == Role::Client).then(|| self.next_mask());
        let header = Header {
            fin: true,
            opcode,
            mask,
            len: (head.len() + body.len()) as u64,
        };
        let before = self.gather.len();
        put_header(&mut self.gather, &header);
        let start = self.gather.len();
        self.gather.extend_from_slice(head);
        if body.len() <= GATHER_MAX {
            self.gather.extend_from_slice(body.as_slice());
        }
        if let Some(mask) = mask {
            apply_mask(&mut self.gather[start..], mask);
        }
        self.queued += self.gather.len() - before;
        if body.len() <= GATHER_MAX {
            return;
        }
        self.queued += body.len();
        self.queue.push_back(self.gather.split().freeze());
        let body = match mask {
            None => body.into_bytes(),
            Some(mask) => {
                // A payload only this frame holds is masked where it is; one still shared
                // (another message holds part of its buffer) is copied first.
                let mut owned = match body {
                    Payload::Owned(owned) => owned,
                    Payload::Shared(shared) => shared
                        .try_into_mut()
                        .unwrap_or_else(|shared| BytesMut::from(&shared[..])),
                };
                apply_mask(&mut owned, mask_from(mask, head.len()));
                owned.freeze()
            }
        };
        self.queue.push_back(body);
    }

    /// Writes everything queued, then flushes `io`.
    pub(super) fn poll_write_out<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.gather.is_empty() {
            self.queue.push_back(self.gather.split().freeze());
        }
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.queue) {
                *slot = IoSlice::new(piece);
                count += 1;
            }
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued -= written;
            while written > 0 {
                let front = self.queue.front_mut().expect("written bytes were queued");
                if written >= front.len() {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        // An idle connection keeps no write buffers.
        self.gather = BytesMut::new();
        if self.queue.capacity() > 16 {
            self.queue = VecDeque::new();
        }
        Pin::new(io).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of_last_frame(writer: &Writer) -> &[u8] {
        writer
            .queue
            .back()
            .expect("a large payload is queued on its own")
    }

    /// A client masks a payload it alone holds where it is, even when the buffer it was cut
    /// from is shared with the frames cut beside it (the agent's download, S1); a payload
    /// shared with others is masked in a copy and the others' bytes are left as they were.
    #[test]
    fn an_owned_payload_is_masked_in_place_and_a_shared_one_in_a_copy() {
        let mut writer = Writer::new(Role::Client);
        let mut read = BytesMut::from(&[7u8; 2 * 8192][..]);
        let first = read.split_to(8192);
        let first_at = first.as_ptr();
        writer.push(Role::Client, OpCode::Binary, &[1, 2], Payload::Owned(first));
        assert_eq!(payload_of_last_frame(&writer).as_ptr(), first_at);
        assert_ne!(
            payload_of_last_frame(&writer),
            &[7u8; 8192][..],
            "not masked"
        );
        assert_eq!(&read[..], &[7u8; 8192][..], "the neighbour was masked");

        let shared = Bytes::from(vec![9u8; 8192]);
        writer.push(
            Role::Client,
            OpCode::Binary,
            &[],
            Payload::Shared(shared.clone()),
        );
        assert_ne!(payload_of_last_frame(&writer).as_ptr(), shared.as_ptr());
        assert_eq!(&shared[..], &[9u8; 8192][..], "a shared payload was masked");
    }

    /// A server sends payloads unmasked, as they are.
    #[test]
    fn a_server_writes_a_payload_from_where_it_is() {
        let mut writer = Writer::new(Role::Server);
        let shared = Bytes::from(vec![9u8; 8192]);
        writer.push(
            Role::Server,
            OpCode::Binary,
            &[],
            Payload::Shared(shared.clone()),
        );
        assert_eq!(payload_of_last_frame(&writer).as_ptr(), shared.as_ptr());
        let owned = BytesMut::from(&[5u8; 8192][..]);
        let owned_at = owned.as_ptr();
        writer.push(Role::Server, OpCode::Binary, &[], Payload::Owned(owned));
        assert_eq!(payload_of_last_frame(&writer).as_ptr(), owned_at);
        assert_eq!(payload_of_last_frame(&writer), &[5u8; 8192][..]);
    }
}
