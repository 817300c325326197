//! The agent's side of opening: streams the peer opened wait in [`Incoming`] until they are
//! accepted (Connected) or refused (v1 Error / v2 Reset).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::session::Owner;
use super::state::Shared;
use super::MuxStream;
use crate::protocol::{Frame, ResetReason, StreamId, Version};

/// Streams the peer opened (agent role), in order.
pub struct Incoming {
    pub(crate) queue: mpsc::UnboundedReceiver<IncomingStream>,
    pub(crate) owner: Arc<Owner>,
}

/// A stream the peer opened, not yet accepted. Dropping it refuses it.
pub struct IncomingStream {
    shared: Arc<Shared>,
    id: StreamId,
    target: Bytes,
    decided: bool,
}

impl Drop for Incoming {
    /// New opens are refused from here on. The sender is cleared under the lock *before* the
    /// receiver (and any stream still queued in it) is dropped, so the queued streams' own
    /// Drop, which takes the lock, never runs while it is held.
    fn drop(&mut self) {
        let shared = &self.owner.0;
        let sender = shared.lock().incoming.take();
        drop(sender);
        self.queue.close();
        while let Ok(stream) = self.queue.try_recv() {
            drop(stream); // refuses it
        }
    }
}

impl Incoming {
    /// The next stream the peer opened; `None` once the session has ended.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.queue.recv().await
    }
}

impl IncomingStream {
    pub(crate) fn new(shared: Arc<Shared>, id: StreamId, target: Bytes) -> Self {
        Self {
            shared,
            id,
            target,
            decided: false,
        }
    }

    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// What the opener asked for: v1 the cluster's `host:port`; v2 a target name.
    pub fn target(&self) -> &[u8] {
        &self.target
    }

    /// Accepts: sends Connected and returns the stream. Data the opener sent ahead (v2) is
    /// already buffered in it.
    pub fn accept(mut self) -> MuxStream {
        self.decided = true;
        let shared = self.shared.clone();
        {
            let mut guard = shared.lock();
            let state = &mut *guard;
            if let Some(slot) = state.streams.get_mut(&self.id) {
                // Reset or closed before it was accepted, or the session is gone: a Connected
                // now would name an id the peer already dropped (a Go peer may panic on it).
                if !slot.terminated && state.end.is_none() {
                    slot.established = true;
                    state
                        .data
                        .push(self.id, Frame::Connected { id: self.id }.into());
                    shared.writer_wake.notify_one();
                }
            }
        }
        MuxStream::new(shared, self.id)
    }

    /// Refuses: v1 sends Error with `message` (the Go server answers 502); v2 a Reset.
    pub fn refuse(mut self, reason: ResetReason, message: &str) {
        self.decided = true;
        self.refuse_inner(reason, message);
    }

    /// Marks the stream decided without telling the peer (the caller does).
    pub(crate) fn defuse(mut self) {
        self.decided = true;
    }

    fn refuse_inner(&self, reason: ResetReason, message: &str) {
        let shared = &self.shared;
        let mut state = shared.lock();
        let Some(slot) = shared.remove(&mut state, self.id) else {
            return;
        };
        if slot.terminated || state.end.is_some() {
            return;
        }
        state.counters.reset("sent", reason);
        let message = Bytes::copy_from_slice(message.as_bytes());
        let frame = match shared.config.version {
            Version::V1 => Frame::Error {
                id: self.id,
                message,
            },
            Version::V2 => Frame::Reset {
                id: self.id,
                reason,
                message,
            },
        };
        shared.push_control(&mut state, frame);
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.decided {
            self.refuse_inner(ResetReason::Refused, "stream not accepted");
        }
    }
}
