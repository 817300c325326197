//! What the session does with each message it receives. Runs under the state lock and never
//! waits: answers go to the control queue, bytes to the stream's buffer. Every malformed or
//! out-of-place frame has a defined outcome (seed-protocol.md §1.2, B4, B9, B14) and none panics.

use tokio::time::Instant;

use bytes::Bytes;

use super::error::{MuxError, StreamError};
use super::incoming::IncomingStream;
use super::state::{ReadEnd, Shared, Slot, State, WriteEnd, MAX_PING_PAYLOAD};
use super::Role;
use crate::protocol::{self, Frame, ResetReason, StreamId, Version};

/// The text of the v1 Error a Go server maps to 502, kept byte-compatible (seed-protocol.md §1.2).
const V1_TOO_MANY: &[u8] = b"too many connections";

impl Shared {
    /// Handles one received message.
    pub(crate) fn on_message(self: &std::sync::Arc<Self>, state: &mut State, message: Bytes) {
        let frame = match protocol::decode(message) {
            Ok(frame) => frame,
            Err(error) => {
                // Go logs and skips an undecodable message; so do we (unknown types included,
                // so a newer peer's frames cannot break an older session).
                tracing::debug!(%error, "skipping undecodable tunnel message");
                state.counters.frames_ignored += 1;
                return;
            }
        };
        if !matches!(frame, Frame::Ping { .. } | Frame::Pong { .. }) {
            crate::nap::note_activity();
        }
        self.on_frame(state, frame);
    }

    fn on_frame(self: &std::sync::Arc<Self>, state: &mut State, frame: Frame) {
        match frame {
            Frame::Ping { mut payload } => {
                payload.truncate(MAX_PING_PAYLOAD);
                state.pong_due = Some(payload);
                let now = Instant::now();
                state.last_heard = now;
                state.peer_pinged = Some(now);
                self.writer_wake.notify_one();
            }
            Frame::Pong { payload } => {
                let now = Instant::now();
                let answers_the_last = |(_, sent): &(Instant, Bytes)| *sent == payload;
                if let Some((sent, _)) = state.ping_sent.take_if(|ping| answers_the_last(ping)) {
                    let rtt = now.duration_since(sent);
                    state.rtt = Some(rtt);
                    state.min_rtt = Some(state.min_rtt.map_or(rtt, |min| min.min(rtt)));
                }
                state.last_heard = now;
                // Pongs come in order: this one answers every Ping before the one it echoes,
                // and the oldest still unanswered is the last sent, unless this answered it.
                state.unanswered_since = state.ping_sent.as_ref().map(|(at, _)| *at);
            }
            Frame::Connect { id, target } => self.on_connect(state, id, target),
            Frame::Connected { id } => self.on_connected(state, id),
            Frame::Data { id, payload } => self.on_data(state, id, payload),
            Frame::Error { id, message } => self.on_peer_abort(
                state,
                id,
                ResetReason::Refused,
                String::from_utf8_lossy(&message).into_owned(),
            ),
            Frame::Reset {
                id,
                reason,
                message,
            } => self.on_peer_abort(
                state,
                id,
                reason,
                String::from_utf8_lossy(&message).into_owned(),
            ),
            Frame::Close { id } | Frame::Fin { id } => self.on_peer_finished(state, id, &frame),
            Frame::WindowUpdate { id, increment } => match state.streams.get_mut(&id) {
                Some(slot) => {
                    slot.send_credit = slot.send_credit.saturating_add(u64::from(increment));
                    if let Some(waker) = slot.write_waker.take() {
                        waker.wake();
                    }
                }
                None => state.counters.frames_ignored += 1,
            },
            Frame::Drain { .. } => state.peer_draining = true,
            Frame::LiveIds { up_to, ids } => self.on_live_ids(state, up_to, &ids),
            // Settings are exchanged during negotiation; a later one changes nothing.
            Frame::Settings(_) => state.counters.frames_ignored += 1,
        }
    }

    /// Agent: a new stream. Refused when draining or at a limit; otherwise queued for accept.
    fn on_connect(self: &std::sync::Arc<Self>, state: &mut State, id: StreamId, target: Bytes) {
        let config = &self.config;
        if config.role == Role::Server || id == 0 || state.streams.contains_key(&id) {
            // The Go server ignores Connect; an id already live would be a peer bug (B16).
            state.counters.frames_ignored += 1;
            return;
        }
        let window = config.limits.stream_window as usize;
        let refusal = if state.draining || state.incoming.is_none() {
            Some(ResetReason::GoingAway)
        } else if state.streams.len() >= config.limits.max_streams
            || (config.version == Version::V2 && !self.try_reserve(state, window))
        {
            Some(ResetReason::Busy)
        } else {
            None
        };
        if let Some(reason) = refusal {
            state.counters.reset("sent", reason);
            self.push_control(state, self.refusal(id, reason));
            return;
        }
        let reserved = if config.version == Version::V2 {
            window
        } else {
            0
        };
        let slot = Slot::new(
            u64::from(config.peer_window),
            u64::from(config.limits.stream_window),
            reserved,
        );
        state.streams.insert(id, slot);
        let incoming = IncomingStream::new(self.clone(), id, target);
        let queued = state.incoming.as_ref().map(|queue| queue.send(incoming));
        if let Some(Err(tokio::sync::mpsc::error::SendError(unqueued))) = queued {
            // `Incoming` clears `state.incoming` before its receiver goes, so this is only
            // defence: refuse here, and never let the IncomingStream's Drop take the lock we hold.
            unqueued.defuse();
            self.remove(state, id);
            self.push_control(state, self.refusal(id, ResetReason::GoingAway));
        }
    }

    /// The frame refusing an open we will not serve: v1 Error with the text a Go server maps to
    /// 502 (Error is safe here: we never sent Connected), v2 Reset with the reason.
    fn refusal(&self, id: StreamId, reason: ResetReason) -> Frame {
        match self.config.version {
            Version::V1 => Frame::Error {
                id,
                message: Bytes::from_static(V1_TOO_MANY),
            },
            Version::V2 => Frame::Reset {
                id,
                reason,
                message: Bytes::new(),
            },
        }
    }

    /// Server: the open was answered. A late answer to an abandoned open gets a terminal frame
    /// so the peer's handler ends (B9); a duplicate is ignored (B4: it panics a Go peer).
    fn on_connected(&self, state: &mut State, id: StreamId) {
        let Some(slot) = state.streams.get_mut(&id) else {
            if self.config.role == Role::Server && id != 0 {
                let frame = match self.config.version {
                    Version::V1 => Frame::Close { id },
                    Version::V2 => Frame::Reset {
                        id,
                        reason: ResetReason::Cancelled,
                        message: Bytes::new(),
                    },
                };
                self.push_control(state, frame);
            }
            state.counters.frames_ignored += 1;
            return;
        };
        if self.config.role == Role::Agent || slot.established {
            state.counters.frames_ignored += 1;
            return;
        }
        slot.established = true;
        if let Some(deadline) = slot.open_deadline.take() {
            state.open_deadlines.remove(&(deadline, id));
        }
        if let Some(waiter) = slot.open_waiter.take() {
            let _ = waiter.send(Ok(()));
        }
    }

    fn on_data(&self, state: &mut State, id: StreamId, payload: Bytes) {
        let len = payload.len();
        let Some(slot) = state.streams.get_mut(&id) else {
            // Go drops Data for an unknown id; it is also the tail of a stream we reset.
            state.counters.frames_ignored += 1;
            return;
        };
        if slot.read != ReadEnd::Open {
            // After the peer's Fin/Close this breaks the protocol; after our own reset it is
            // just in flight. Either way the bytes have nowhere to go.
            state.counters.frames_ignored += 1;
            return;
        }
        // Any sign of life from the agent answers a v2 open.
        if let Some(deadline) = slot.open_deadline.take() {
            state.open_deadlines.remove(&(deadline, id));
        }
        if len == 0 {
            return;
        }
        match self.config.version {
            Version::V2 => {
                if len as u64 > slot.recv_credit {
                    self.reset_stream(
                        state,
                        id,
                        StreamError::ResetLocally(ResetReason::FlowControl),
                        ResetReason::FlowControl,
                    );
                    return;
                }
                slot.recv_credit -= len as u64;
            }
            Version::V1 => {
                let over_stream = slot.recv_len + len > self.config.limits.v1_stream_buffer;
                if over_stream || !self.try_reserve(state, len) {
                    // B14: never a silent truncation: the reader gets an error, the peer a Close.
                    state.counters.overflows += 1;
                    tracing::warn!(stream = id, "tunnel stream buffer limit reached; resetting");
                    self.reset_stream(state, id, StreamError::Overflow, ResetReason::Busy);
                    return;
                }
            }
        }
        let slot = state.streams.get_mut(&id).expect("slot checked above");
        slot.recv_len += len;
        state.counters.bytes_received += len as u64;
        slot.recv.push_back(payload);
        if let Some(waker) = slot.read_waker.take() {
            waker.wake();
        }
    }

    /// v1 Error or v2 Reset. Before the open was answered it is a refusal; after, an abort
    /// (v1 Error after Connected panics a Go peer; here it just fails the stream, B4).
    fn on_peer_abort(&self, state: &mut State, id: StreamId, reason: ResetReason, message: String) {
        let Some(slot) = state.streams.get_mut(&id) else {
            state.counters.frames_ignored += 1;
            return;
        };
        slot.terminated = true;
        state.counters.reset("received", reason);
        if let Some(deadline) = slot.open_deadline.take() {
            state.open_deadlines.remove(&(deadline, id));
        }
        if let Some(waiter) = slot.open_waiter.take() {
            let _ = waiter.send(Err(MuxError::Refused(message.clone())));
        }
        let dropped = slot.fail(StreamError::ResetByPeer { reason, message });
        self.release_dropped(state, dropped);
    }

    /// v2 Fin (half-close) or v1 Close (gone): the reader gets EOF after the buffer drains.
    /// A v1 Close also ends our write side: the Go peer drops Data for an id it removed.
    fn on_peer_finished(&self, state: &mut State, id: StreamId, frame: &Frame) {
        let Some(slot) = state.streams.get_mut(&id) else {
            state.counters.frames_ignored += 1;
            return;
        };
        if let Some(deadline) = slot.open_deadline.take() {
            state.open_deadlines.remove(&(deadline, id));
        }
        if slot.read == ReadEnd::Open {
            slot.read = ReadEnd::Eof;
        }
        if matches!(frame, Frame::Close { .. }) {
            slot.terminated = true;
            if let Some(waiter) = slot.open_waiter.take() {
                let _ = waiter.send(Err(MuxError::Refused("closed before connected".into())));
            }
            if matches!(slot.write, WriteEnd::Open | WriteEnd::Finished) {
                slot.write = WriteEnd::Failed(StreamError::PeerGone);
            }
        }
        slot.wake();
    }

    /// Agent, v2: reconcile with the server's list of live ids ≤ `up_to` (DESIGN.md §3 item 8).
    /// Frames on one transport arrive in order, so any stream the server still holds was
    /// opened before this list was sent; one we hold that it does not list was lost.
    fn on_live_ids(&self, state: &mut State, up_to: StreamId, ids: &[StreamId]) {
        // A server holds at most max_streams of ours; a longer list is not one we can trust.
        let too_long = ids.len() > self.config.limits.max_streams;
        if self.config.role != Role::Agent || self.config.version != Version::V2 || too_long {
            state.counters.frames_ignored += 1;
            return;
        }
        let listed: std::collections::HashSet<_> = ids.iter().copied().collect();
        let orphaned: Vec<_> = state
            .streams
            .keys()
            .copied()
            .filter(|id| *id <= up_to && !listed.contains(id))
            .collect();
        for id in orphaned {
            self.reset_stream(
                state,
                id,
                StreamError::ResetLocally(ResetReason::Protocol),
                ResetReason::Protocol,
            );
        }
        // A listed id we no longer have needs no answer: our Close or Reset for it is already
        // on its way to the server, ahead of anything we send now. Answering with a Reset
        // could cut a stream the server still reads after our Fin (its buffered tail).
    }
}
