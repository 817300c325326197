//! The state one session shares between its driver tasks and its stream handles, behind one
//! `std::sync::Mutex` that is never held across an await.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};

use super::error::{SessionEnd, StreamError};
use super::ids::IdAllocator;
use super::queue::DataQueue;
use super::{Limits, MemoryBudget, Role};
use crate::protocol::{Frame, Message, ResetReason, StreamId, Version};

/// Control frames waiting to be written before a peer that is not reading makes us give up.
/// Control frames are small (≤ 64 bytes each), so this caps the queue near 256 KiB.
pub(crate) const MAX_CONTROL_QUEUE: usize = 4096;

/// Largest Ping payload echoed in a Pong; a v1 Ping is empty, ours carry 8 bytes.
pub(crate) const MAX_PING_PAYLOAD: usize = 64;

/// Immutable per-session facts.
#[derive(Debug)]
pub(crate) struct Config {
    pub role: Role,
    pub version: Version,
    pub limits: Limits,
    /// v2: the peer's per-stream window (our initial send credit).
    pub peer_window: u32,
    /// The largest Data payload we put in one frame.
    pub send_payload: usize,
    /// Streams the peer accepts (v2 settings; v1: our own limit).
    pub peer_max_streams: usize,
    pub process_budget: Arc<MemoryBudget>,
}

pub(crate) struct Shared {
    pub config: Config,
    pub state: Mutex<State>,
    /// Wakes the writer task: a frame was queued, or the session is ending.
    pub writer_wake: Notify,
    /// Wakes the reader task when the session ends for a reason it did not see.
    pub ended: Notify,
    /// Wakes the reader task to recompute its next timer (a new open deadline).
    pub rearm: Notify,
}

/// How the read side of a stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    Open,
    /// The peer finished sending (v2 Fin, v1 Close): EOF once the buffer drains.
    Eof,
    Failed(StreamError),
}

/// How the write side of a stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteEnd {
    Open,
    /// We shut down our side (v2: Fin sent).
    Finished,
    Failed(StreamError),
}

pub(crate) struct Slot {
    pub recv: VecDeque<Bytes>,
    pub recv_len: usize,
    pub read: ReadEnd,
    pub read_waker: Option<Waker>,
    pub write: WriteEnd,
    pub write_waker: Option<Waker>,
    /// v2: bytes we may still send (the peer's window for us).
    pub send_credit: u64,
    /// v2: bytes the peer may still send before our next WindowUpdate.
    pub recv_credit: u64,
    /// v2: bytes read locally and not yet credited back.
    pub consumed: u64,
    /// v2: budget reserved for this stream's window.
    pub reserved: usize,
    /// v2: a read found nothing to read since the last WindowUpdate: the reader keeps up, so
    /// the window (or the sender) limits the stream, not the reader.
    pub starved: bool,
    /// v2: when the last WindowUpdate went out (or the stream opened).
    pub last_credit_step: Instant,
    /// Server: fires when a pending open is answered.
    pub open_waiter: Option<oneshot::Sender<Result<(), super::MuxError>>>,
    /// Server: the open was answered (Connected). Agent: we sent Connected.
    pub established: bool,
    /// v2 server: when an unanswered open gives up.
    pub open_deadline: Option<Instant>,
    /// A terminal frame (v1 Close / v2 Reset) went out, or the peer's did: send no more.
    pub terminated: bool,
}

impl Slot {
    pub(crate) fn new(send_credit: u64, recv_credit: u64, reserved: usize) -> Self {
        Self {
            recv: VecDeque::new(),
            recv_len: 0,
            read: ReadEnd::Open,
            read_waker: None,
            write: WriteEnd::Open,
            write_waker: None,
            send_credit,
            recv_credit,
            consumed: 0,
            reserved,
            starved: false,
            last_credit_step: Instant::now(),
            open_waiter: None,
            established: false,
            open_deadline: None,
            terminated: false,
        }
    }

    /// Fails whichever sides are still open and wakes their tasks. Returns the buffered bytes
    /// it dropped, which the caller releases from the budgets under v1.
    pub(crate) fn fail(&mut self, error: StreamError) -> usize {
        let mut dropped = 0;
        if self.read == ReadEnd::Open {
            self.read = ReadEnd::Failed(error.clone());
            self.recv.clear();
            dropped = std::mem::take(&mut self.recv_len);
        }
        if matches!(self.write, WriteEnd::Open | WriteEnd::Finished) {
            self.write = WriteEnd::Failed(error);
        }
        self.wake();
        dropped
    }

    pub(crate) fn wake(&mut self) {
        // A writer parked on the session's send queue also left its waker here.
        if let Some(waker) = self.read_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.write_waker.take() {
            waker.wake();
        }
    }
}

impl Counters {
    /// Counts one reset in its direction (`"sent"` or `"received"`) and by reason.
    pub(crate) fn reset(&mut self, direction: &'static str, reason: ResetReason) {
        match direction {
            "sent" => self.resets_sent += 1,
            _ => self.resets_received += 1,
        }
        *self
            .resets_by_reason
            .entry((direction, reason.as_str()))
            .or_default() += 1;
    }
}

/// An item of the data queue.
pub(crate) enum Outbound {
    /// A frame to encode when written.
    Frame(Frame),
    /// A Data frame built by the writer that produced it (its payload not copied); `len` is
    /// the payload's length.
    Data { message: Message, len: usize },
}

impl From<Frame> for Outbound {
    fn from(frame: Frame) -> Self {
        Outbound::Frame(frame)
    }
}

/// Counters a session exposes to tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames skipped: undecodable, unknown type, or for an unknown stream.
    pub frames_ignored: u64,
    /// Streams we reset or closed because of a limit or a peer's fault.
    pub resets_sent: u64,
    /// Streams the peer reset (v2 Reset, v1 Error).
    pub resets_received: u64,
    /// Resets by (`"sent"`/`"received"`, reason label).
    pub resets_by_reason: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// Streams reset because a receive buffer limit was hit (v1).
    pub overflows: u64,
    /// Times a writer waited for v2 credit.
    pub credit_stalls: u64,
    /// Data payload bytes handed to the transport.
    pub bytes_sent: u64,
    /// Data payload bytes received for live streams.
    pub bytes_received: u64,
    /// Heartbeat beats the reader woke up for (a server that only answers an idle agent's
    /// Pings wakes for none while the agent keeps pinging).
    pub beats: u64,
}

pub(crate) struct State {
    pub streams: HashMap<StreamId, Slot>,
    /// v2 opens not answered yet, by deadline (mirrors `Slot::open_deadline`), so the timer
    /// finds the next one without scanning every stream.
    pub open_deadlines: BTreeSet<(Instant, StreamId)>,
    pub ids: IdAllocator,
    pub control: VecDeque<Frame>,
    /// Each stream's Data with the frames that must not overtake it (Connect, Connected, Fin,
    /// a Close/Reset after the stream's last Data); streams take turns.
    pub data: DataQueue,
    /// v2 server: a LiveIds frame is due; the writer builds it behind what it has written.
    pub live_ids_due: bool,
    /// v2 server: the last LiveIds list sent, with [`IdAllocator::peek`] when it was built.
    /// Both unchanged means no stream was opened or closed since: the agent already dropped
    /// every stream the list lacks, and the same list again would tell it nothing.
    pub live_ids_sent: Option<(StreamId, Vec<StreamId>)>,
    pub send_waiters: Vec<Waker>,
    /// A Ping to answer; repeated Pings collapse into one Pong.
    pub pong_due: Option<Bytes>,
    pub end: Option<SessionEnd>,
    /// Close requested: flush what is queued, then close the transport.
    pub closing: bool,
    pub draining: bool,
    pub peer_draining: bool,
    /// Receive bytes held (v1) or reserved (v2) by this session.
    pub session_used: usize,
    /// When the peer last sent a Ping or a Pong.
    pub last_heard: Instant,
    /// When the peer last sent a Ping (a server that heard one lately need not ping).
    pub peer_pinged: Option<Instant>,
    /// When the oldest Ping of ours that no Pong has answered yet was sent.
    pub unanswered_since: Option<Instant>,
    /// When the Ping now awaiting its Pong was queued, and its payload: a Pong to an older
    /// Ping arriving late must not pass for a short round trip (`min_rtt` keeps it for good).
    pub ping_sent: Option<(Instant, Bytes)>,
    /// Ping → Pong time of the last heartbeat (measured while data flows, since the Pong
    /// overtakes queued data on the peer's side).
    pub rtt: Option<std::time::Duration>,
    /// The shortest Ping → Pong time seen: the path's own round trip, without the queueing
    /// a loaded moment adds (window growth, window.rs).
    pub min_rtt: Option<std::time::Duration>,
    pub incoming: Option<mpsc::UnboundedSender<super::IncomingStream>>,
    pub counters: Counters,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug elsewhere; keep serving the other streams.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves `bytes` of receive memory from the session and then the process budget.
    pub(crate) fn try_reserve(&self, state: &mut State, bytes: usize) -> bool {
        if state.session_used + bytes > self.config.limits.session_buffer {
            return false;
        }
        if !self.config.process_budget.try_reserve(bytes) {
            return false;
        }
        state.session_used += bytes;
        true
    }

    pub(crate) fn release(&self, state: &mut State, bytes: usize) {
        state.session_used -= bytes;
        self.config.process_budget.release(bytes);
    }

    /// Releases buffered bytes a failed stream dropped; under v2 they sat inside the stream's
    /// reservation, which is released when the slot goes.
    pub(crate) fn release_dropped(&self, state: &mut State, dropped: usize) {
        if self.config.version == Version::V1 {
            self.release(state, dropped);
        }
    }

    /// Memory a slot holds against the budgets: its v2 reservation, or its v1 buffer.
    pub(crate) fn slot_memory(&self, slot: &Slot) -> usize {
        match self.config.version {
            Version::V2 => slot.reserved,
            Version::V1 => slot.recv_len,
        }
    }

    /// Queues a control frame; ends the session if the peer has let the queue grow past
    /// [`MAX_CONTROL_QUEUE`] (it sends us work while not reading its own answers).
    pub(crate) fn push_control(&self, state: &mut State, frame: Frame) {
        if state.end.is_some() {
            return;
        }
        if state.control.len() >= MAX_CONTROL_QUEUE {
            self.end(
                state,
                SessionEnd::Protocol("control queue overflow: peer is not reading"),
            );
            return;
        }
        state.control.push_back(frame);
        self.writer_wake.notify_one();
    }

    /// Removes a stream's slot, releasing its memory and its id.
    pub(crate) fn remove(&self, state: &mut State, id: StreamId) -> Option<Slot> {
        let mut slot = state.streams.remove(&id)?;
        if let Some(deadline) = slot.open_deadline.take() {
            state.open_deadlines.remove(&(deadline, id));
        }
        let memory = self.slot_memory(&slot);
        self.release(state, memory);
        slot.recv.clear();
        slot.recv_len = 0;
        Some(slot)
    }

    /// Resets a live stream from our side: local error, terminal frame to the peer. v1 sends
    /// Close (an Error after Connected panics a Go peer); v2 sends Reset with the reason.
    pub(crate) fn reset_stream(
        &self,
        state: &mut State,
        id: StreamId,
        error: StreamError,
        reason: ResetReason,
    ) {
        let Some(slot) = state.streams.get_mut(&id) else {
            return;
        };
        let dropped = slot.fail(error);
        let already_terminated = std::mem::replace(&mut slot.terminated, true);
        self.release_dropped(state, dropped);
        if !already_terminated {
            state.counters.reset("sent", reason);
            let frame = match self.config.version {
                Version::V1 => Frame::Close { id },
                Version::V2 => Frame::Reset {
                    id,
                    reason,
                    message: Bytes::new(),
                },
            };
            let established = state.streams.get(&id).is_some_and(|slot| slot.established);
            if self.config.role == Role::Server && !established {
                // Our Connect may still sit in the data queue: the reset must not overtake it,
                // or the agent would accept a stream nobody will ever close.
                state.data.push(id, frame.into());
                self.writer_wake.notify_one();
            } else {
                self.push_control(state, frame);
            }
        }
    }

    /// Ends the session: every stream that has not ended fails with `why`, pending opens fail,
    /// the accept queue closes, and both driver tasks are woken to exit.
    pub(crate) fn end(&self, state: &mut State, why: SessionEnd) {
        if state.end.is_some() {
            return;
        }
        tracing::debug!(reason = %why, "tunnel session ended");
        state.end = Some(why.clone());
        let mut dropped = 0;
        for slot in state.streams.values_mut() {
            if let Some(waiter) = slot.open_waiter.take() {
                let _ = waiter.send(Err(super::MuxError::SessionLost(why.clone())));
            }
            dropped += slot.fail(StreamError::SessionLost(why.clone()));
        }
        self.release_dropped(state, dropped);
        state.incoming = None;
        state.control.clear();
        state.data.clear();
        state.send_waiters.drain(..).for_each(Waker::wake);
        self.writer_wake.notify_one();
        self.ended.notify_one();
    }
}
