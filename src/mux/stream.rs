//! One multiplexed byte stream: `AsyncRead + AsyncWrite`. A reset or a lost session reads as an
//! error, never as EOF; dropping the handle releases its memory and tells the peer.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::StreamError;
use super::state::{Outbound, ReadEnd, Shared, WriteEnd};
use crate::protocol::{Frame, Payload, ResetReason, StreamId, Version};

/// A stream of a tunnel session. See the [module docs](super) for the v1/v2 rules.
pub struct MuxStream {
    shared: Arc<Shared>,
    id: StreamId,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl MuxStream {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId) -> Self {
        Self { shared, id }
    }

    /// The stream's id on the wire.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Aborts the stream: the peer gets a Reset (v2) or Close (v1) and both local sides fail.
    pub fn reset(&self, reason: ResetReason) {
        let mut state = self.shared.lock();
        self.shared.reset_stream(
            &mut state,
            self.id,
            StreamError::ResetLocally(reason),
            reason,
        );
    }
}

impl MuxStream {
    /// The next received bytes, at most `max`, without a copy (the relay's HTTP/1.1 client
    /// slices bodies out of them); `None` at the peer's clean end. Errors as `poll_read`'s.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let max = max.max(1);
        self.poll_take(cx, None, |recv| {
            let front = recv.front_mut()?;
            let chunk = if front.len() > max {
                front.split_to(max)
            } else {
                recv.pop_front().expect("front exists")
            };
            let len = chunk.len();
            Some((Some(chunk), len))
        })
    }

    /// The read path `poll_read` and `poll_recv` share: `take` removes bytes from the queue
    /// and says how many; they are released (v1) or credited back (v2). With nothing taken, the
    /// reader parks (and the stream counts as starved, window.rs) or gets `at_end` at EOF.
    fn poll_take<T>(
        &self,
        cx: &mut Context<'_>,
        at_end: T,
        take: impl FnOnce(&mut VecDeque<Bytes>) -> Option<(T, usize)>,
    ) -> Poll<io::Result<T>> {
        let shared = &self.shared;
        let mut guard = shared.lock();
        let state = &mut *guard;
        let Some(slot) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(lost()));
        };
        if let ReadEnd::Failed(error) = &slot.read {
            return Poll::Ready(Err(error.to_io()));
        }
        if let Some((taken, len)) = take(&mut slot.recv) {
            slot.recv_len -= len;
            match shared.config.version {
                Version::V1 => shared.release(state, len),
                Version::V2 => shared.credit_back(state, self.id, len),
            }
            return Poll::Ready(Ok(taken));
        }
        match &slot.read {
            ReadEnd::Open => {
                slot.read_waker = Some(cx.waker().clone());
                slot.starved = true;
                Poll::Pending
            }
            ReadEnd::Eof => Poll::Ready(Ok(at_end)),
            ReadEnd::Failed(error) => Poll::Ready(Err(error.to_io())),
        }
    }

    /// Whether the stream can carry another exchange: both directions open and nothing
    /// unread (a pooled stream the peer closed or wrote on is not reused). A grown window
    /// goes with it: it was sized to the path's round trip (window.rs), which the next request
    /// shares, and a new stream would climb to it again (S10: 0.43× instead of 0.52×).
    pub fn is_idle_open(&self) -> bool {
        let state = self.shared.lock();
        state.end.is_none()
            && !state.closing
            && state.streams.get(&self.id).is_some_and(|slot| {
                slot.read == ReadEnd::Open && slot.write == WriteEnd::Open && slot.recv.is_empty()
            })
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "tunnel stream no longer exists",
    )
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_take(cx, (), |recv| {
            let mut copied = 0;
            while buf.remaining() > 0 {
                let Some(chunk) = recv.front_mut() else {
                    break;
                };
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                chunk.advance(n);
                if chunk.is_empty() {
                    recv.pop_front();
                }
                copied += n;
            }
            (copied > 0).then_some(((), copied))
        })
    }
}

impl MuxStream {
    /// Sends the front of `data` without copying it: as much as the stream may queue now
    /// (one frame, held to the frame size, its credit and the session's queue) is split off
    /// and becomes the payload of a Data frame. The relay hands whole upstream reads here.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        self.poll_queue(cx, data.len(), |len| data.split_to(len).into())
    }

    /// [`MuxStream::poll_send`] for bytes the caller alone holds: each frame's payload is a
    /// part of `data` that its frame alone holds, so a client's transport masks it where it
    /// is instead of copying it first (`Bytes` split into frames share their buffer).
    pub fn poll_send_owned(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        self.poll_queue(cx, data.len(), |len| {
            // Taking all of it keeps a buffer of its own (a split would share its allocation
            // with an empty rest, at an allocation and reference counts per frame).
            if len == data.len() {
                std::mem::take(data).into()
            } else {
                data.split_to(len).into()
            }
        })
    }

    /// The write path of `poll_write`, `poll_send` and `poll_send_owned`: waits until up to
    /// `want` bytes may be queued, then queues `take(len)` as one Data frame.
    fn poll_queue(
        &self,
        cx: &mut Context<'_>,
        want: usize,
        take: impl FnOnce(usize) -> Payload,
    ) -> Poll<io::Result<usize>> {
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        let shared = &self.shared;
        let config = &shared.config;
        let mut guard = shared.lock();
        let state = &mut *guard;
        if let Some(end) = &state.end {
            return Poll::Ready(Err(StreamError::SessionLost(end.clone()).to_io()));
        }
        if state.closing {
            let closing = StreamError::SessionLost(super::SessionEnd::LocalClose);
            return Poll::Ready(Err(closing.to_io()));
        }
        let Some(slot) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(lost()));
        };
        match &slot.write {
            WriteEnd::Open => {}
            WriteEnd::Finished => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "write after shutdown",
                )))
            }
            WriteEnd::Failed(error) => return Poll::Ready(Err(error.to_io())),
        }
        let mut len = want.min(config.send_payload);
        if config.version == Version::V2 {
            if slot.send_credit == 0 {
                state.counters.credit_stalls += 1;
                let slot = state.streams.get_mut(&self.id).expect("slot present");
                slot.write_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            len = len.min(usize::try_from(slot.send_credit).unwrap_or(usize::MAX));
        }
        let (queued, limit) = (state.data.bytes(), config.limits.send_queue);
        let first_in_line = state.data.bytes_of(self.id) == 0 && queued < 2 * limit;
        if queued >= limit && !first_in_line {
            // Parked twice: on the session queue (woken when it drains) and in the slot (woken
            // if the stream fails meanwhile). A re-poll does not grow the list.
            let waker = cx.waker();
            if !state
                .send_waiters
                .iter()
                .any(|parked| parked.will_wake(waker))
            {
                state.send_waiters.push(waker.clone());
            }
            let slot = state.streams.get_mut(&self.id).expect("slot present");
            slot.write_waker = Some(waker.clone());
            return Poll::Pending;
        }
        if config.version == Version::V2 {
            let slot = state.streams.get_mut(&self.id).expect("slot present");
            slot.send_credit -= len as u64;
        }
        state.counters.bytes_sent += len as u64;
        let message = crate::protocol::data_message(self.id, take(len));
        state.data.push(self.id, Outbound::Data { message, len });
        shared.writer_wake.notify_one();
        Poll::Ready(Ok(len))
    }
}

impl AsyncWrite for MuxStream {
    /// Copies the bytes once, into the frame's payload; [`MuxStream::poll_send`] does not.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_queue(cx, buf.len(), |len| BytesMut::from(&buf[..len]).into())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames are written by the session's writer as fast as the transport allows.
        Poll::Ready(Ok(()))
    }

    /// Ends our direction: v2 sends Fin (the peer reads EOF). v1 has no half-close, so nothing
    /// is sent until the handle is dropped (Close).
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut guard = shared.lock();
        let state = &mut *guard;
        let Some(slot) = state.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(lost()));
        };
        match &slot.write {
            WriteEnd::Open => slot.write = WriteEnd::Finished,
            WriteEnd::Finished => return Poll::Ready(Ok(())),
            WriteEnd::Failed(error) => return Poll::Ready(Err(error.to_io())),
        }
        if shared.config.version == Version::V2 {
            // Fin goes behind the Data already queued, in the data queue, so it cannot overtake it.
            state.data.push(self.id, Frame::Fin { id: self.id }.into());
            shared.writer_wake.notify_one();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    /// Releases the stream. Unless both directions ended cleanly, the peer is told to stop:
    /// v1 Close, v2 Reset(Cancelled), so an abandoned stream never looks complete.
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut guard = shared.lock();
        let state = &mut *guard;
        let Some(slot) = shared.remove(state, self.id) else {
            return;
        };
        if slot.terminated || state.end.is_some() {
            return;
        }
        let frame = match shared.config.version {
            Version::V1 => Frame::Close { id: self.id },
            Version::V2 if slot.write == WriteEnd::Finished && slot.read == ReadEnd::Eof => return,
            Version::V2 => Frame::Reset {
                id: self.id,
                reason: ResetReason::Cancelled,
                message: Bytes::new(),
            },
        };
        // Behind queued Data, so a v1 peer receives everything written before the Close.
        state.data.push(self.id, frame.into());
        shared.writer_wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;
    use crate::mux::testing::{pattern, session_pair};
    use crate::mux::Limits;

    /// The Data payloads queued for `stream`, oldest first (taken off the session's queue).
    fn queued_payloads(stream: &MuxStream) -> Vec<Payload> {
        let mut state = stream.shared.lock();
        std::iter::from_fn(|| state.data.pop())
            .filter_map(|item| match item {
                Outbound::Data { message, .. } => Some(message.into_parts().2),
                Outbound::Frame(_) => None,
            })
            .collect()
    }

    /// Owned bytes become payloads that are those very bytes, still owned, a frame at a time:
    /// the agent's WebSocket writer masks them where they are (S1).
    #[tokio::test]
    async fn owned_bytes_are_queued_where_they_are_and_owned() {
        // Two frames within the stream's first window.
        let limits = Limits {
            max_frame_payload: 16 * 1024,
            ..Limits::default()
        };
        let (server, mut agent) = session_pair(Version::V2, limits.clone(), limits);
        let accepted = tokio::spawn(async move { agent.incoming.accept().await.unwrap().accept() });
        let mut stream = server.handle.open(b"bulk").await.unwrap();
        let _agent_stream = accepted.await.unwrap();
        let frame = stream.shared.config.send_payload;
        let mut data = BytesMut::from(&pattern(5, frame + 100)[..]);
        let starts = [data.as_ptr(), data[frame..].as_ptr()];
        let mut taken = 0;
        while !data.is_empty() {
            taken += poll_fn(|cx| stream.poll_send_owned(cx, &mut data))
                .await
                .unwrap();
        }
        assert_eq!(taken, frame + 100);
        let payloads = queued_payloads(&stream);
        assert_eq!(payloads.len(), 2);
        for (payload, start) in payloads.iter().zip(starts) {
            assert!(matches!(payload, Payload::Owned(_)), "{payload:?}");
            assert_eq!(payload.as_slice().as_ptr(), start, "the payload was copied");
        }
    }
}
