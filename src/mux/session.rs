//! Starting a session and its two driver tasks, and the handles the rest of the program holds:
//! [`SessionHandle`] (open streams, drain, close, watch for the end) and [`Incoming`] (accept).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::error::{MuxError, SessionEnd, StreamError};
use super::ids::IdAllocator;
use super::state::{Config, Counters, Shared, Slot, State};
use super::{Limits, MemoryBudget, MuxStream, Role, Transport};
use crate::protocol::{self, Frame, ResetReason, Settings, StreamId, Version};

/// Bytes of Data the writer hands the transport before it flushes and looks at the queues again.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Everything a session needs besides its transport.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Server (opens) or agent (accepts).
    pub role: Role,
    /// Negotiated version.
    pub version: Version,
    /// Our limits.
    pub limits: Limits,
    /// v2: what the peer announced (its window, stream cap, frame size).
    pub peer: Settings,
    /// Receive memory shared with every other session of the process.
    pub process_budget: Arc<MemoryBudget>,
    /// A message already read during negotiation (a v1 agent's first Ping), handled first.
    pub first_message: Option<Bytes>,
}

/// A running session. Split it into its handles; the session ends when the transport does,
/// on [`SessionHandle::close`], or when every handle is dropped.
pub struct Session {
    /// Opens streams, closes, observes.
    pub handle: SessionHandle,
    /// Accepts streams (agent role); yields nothing for the server role.
    pub incoming: Incoming,
}

/// Closes the session when the last handle to it goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        self.0.end(&mut state, SessionEnd::LocalClose);
    }
}

/// A cloneable handle to a session.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
    ended: tokio::sync::watch::Receiver<Option<SessionEnd>>,
}

/// Streams the peer opened (agent role), in order.
pub struct Incoming {
    queue: mpsc::UnboundedReceiver<IncomingStream>,
    _owner: Arc<Owner>,
}

/// A stream the peer opened, not yet accepted. Dropping it refuses it.
pub struct IncomingStream {
    shared: Arc<Shared>,
    id: StreamId,
    target: Bytes,
    decided: bool,
}

/// A snapshot of a session's load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStats {
    /// Streams with live state.
    pub streams: usize,
    /// Bytes sitting in receive buffers now.
    pub buffered: usize,
    /// Receive memory held against the budgets (v2 reservations, v1 buffers).
    pub reserved: usize,
    /// Outgoing Data bytes queued.
    pub queued_send: usize,
    /// Event counters.
    pub counters: Counters,
}

impl Session {
    /// Starts the driver tasks on the current runtime and returns the handles.
    pub fn start<T: Transport>(transport: T, config: SessionConfig) -> Session {
        let limits = config.limits;
        let peer_window = match config.version {
            Version::V2 => config.peer.stream_window.unwrap_or(limits.stream_window),
            Version::V1 => 0,
        };
        let peer_payload = config
            .peer
            .max_frame_payload
            .map_or(usize::MAX, |max| max as usize);
        let peer_max_streams = config.peer.max_streams.map_or(limits.max_streams, |max| {
            (max as usize).min(limits.max_streams)
        });
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = tokio::sync::watch::channel(None);
        let shared = Arc::new(Shared {
            config: Config {
                role: config.role,
                version: config.version,
                send_payload: limits.max_frame_payload.min(peer_payload).max(1),
                peer_max_streams,
                peer_window,
                process_budget: config.process_budget,
                limits,
            },
            state: Mutex::new(State {
                streams: HashMap::new(),
                open_deadlines: BTreeSet::new(),
                ids: IdAllocator::new(),
                control: VecDeque::new(),
                data: VecDeque::new(),
                queued_data: 0,
                send_waiters: Vec::new(),
                pong_due: None,
                end: None,
                closing: false,
                draining: false,
                peer_draining: false,
                session_used: 0,
                last_pong: Instant::now(),
                incoming: (config.role == Role::Agent).then_some(incoming_tx),
                counters: Counters::default(),
            }),
            writer_wake: Notify::new(),
            ended: Notify::new(),
            rearm: Notify::new(),
        });
        if let Some(first) = config.first_message {
            let mut state = shared.lock();
            shared.on_message(&mut state, first);
        }
        let (sink, stream) = transport.split();
        let writer = tokio::spawn(write_loop(shared.clone(), sink));
        tokio::spawn(read_loop(shared.clone(), stream, writer, ended_tx));
        let owner = Arc::new(Owner(shared.clone()));
        Session {
            handle: SessionHandle {
                shared,
                _owner: owner.clone(),
                ended: ended_rx,
            },
            incoming: Incoming {
                queue: incoming_rx,
                _owner: owner,
            },
        }
    }
}

impl SessionHandle {
    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.shared.config.version
    }

    /// Opens a stream to `target` (server role). v1 waits for Connected (the Go agent drops Data
    /// sent before it); v2 returns at once and the first bytes travel with the open.
    pub async fn open(&self, target: &[u8]) -> Result<MuxStream, MuxError> {
        let shared = &self.shared;
        let config = &shared.config;
        let (id, answered) = {
            let mut guard = shared.lock();
            let state = &mut *guard;
            if config.role != Role::Server {
                return Err(MuxError::NotOpener);
            }
            if let Some(end) = &state.end {
                return Err(MuxError::SessionLost(end.clone()));
            }
            if state.draining || state.peer_draining || state.closing {
                return Err(MuxError::Draining);
            }
            if state.streams.len() >= config.peer_max_streams {
                return Err(MuxError::TooManyStreams);
            }
            let window = config.limits.stream_window as usize;
            let reserved = match config.version {
                Version::V2 if !shared.try_reserve(state, window) => {
                    return Err(MuxError::OverBudget)
                }
                Version::V2 => window,
                Version::V1 => 0,
            };
            let streams = &state.streams;
            let Some(id) = state.ids.allocate(|id| streams.contains_key(&id)) else {
                shared.release(state, reserved);
                return Err(MuxError::TooManyStreams);
            };
            let mut slot = Slot::new(
                u64::from(config.peer_window),
                u64::from(config.limits.stream_window),
                reserved,
            );
            let (answer_tx, answer_rx) = oneshot::channel();
            match config.version {
                Version::V1 => slot.open_waiter = Some(answer_tx),
                Version::V2 => {
                    let deadline = Instant::now() + config.limits.open_timeout;
                    slot.open_deadline = Some(deadline);
                    state.open_deadlines.insert((deadline, id));
                    shared.rearm.notify_one();
                }
            }
            state.streams.insert(id, slot);
            let target = Bytes::copy_from_slice(target);
            // Connect goes in the data queue so it always precedes the stream's own Data.
            state.data.push_back(Frame::Connect { id, target });
            shared.writer_wake.notify_one();
            (id, answer_rx)
        };
        let stream = MuxStream::new(shared.clone(), id);
        if config.version == Version::V2 {
            return Ok(stream);
        }
        match tokio::time::timeout(config.limits.open_timeout, answered).await {
            Ok(Ok(Ok(()))) => Ok(stream),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err(MuxError::SessionLost(SessionEnd::LocalClose)),
            // Dropping `stream` sends Close for the abandoned id (B9).
            Err(_) => Err(MuxError::OpenTimeout),
        }
    }

    /// Stops new streams in both directions; v2 peers are told with a Drain frame. Streams in
    /// flight continue.
    pub fn drain(&self, grace: Duration) {
        let mut state = self.shared.lock();
        if std::mem::replace(&mut state.draining, true) || state.end.is_some() {
            return;
        }
        if self.shared.config.version == Version::V2 {
            let grace_ms = u32::try_from(grace.as_millis()).unwrap_or(u32::MAX);
            self.shared
                .push_control(&mut state, Frame::Drain { grace_ms });
        }
    }

    /// Closes the session: frames already queued are flushed, the transport is closed (a
    /// WebSocket close frame), and streams still open fail. Writes after this fail at once, so
    /// a busy stream cannot hold the close off.
    pub fn close(&self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.writer_wake.notify_one();
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// True when the peer asked for no new streams.
    pub fn peer_draining(&self) -> bool {
        self.shared.lock().peer_draining
    }

    /// Resolves with the reason once the session has ended.
    pub async fn closed(&self) -> SessionEnd {
        let mut ended = self.ended.clone();
        loop {
            if let Some(end) = ended.borrow_and_update().clone() {
                return end;
            }
            if ended.changed().await.is_err() {
                return SessionEnd::LocalClose;
            }
        }
    }

    /// A snapshot of load and counters.
    pub fn stats(&self) -> SessionStats {
        let state = self.shared.lock();
        SessionStats {
            streams: state.streams.len(),
            buffered: state.streams.values().map(|slot| slot.recv_len).sum(),
            reserved: state.session_used,
            queued_send: state.queued_data,
            counters: state.counters.clone(),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Test hook: the process budget this session draws from.
    pub fn process_budget(&self) -> Arc<MemoryBudget> {
        self.shared.config.process_budget.clone()
    }
}

impl Drop for Incoming {
    /// New opens are refused from here on. The sender is cleared under the lock *before* the
    /// receiver (and any stream still queued in it) is dropped, so the queued streams' own
    /// Drop, which takes the lock, never runs while it is held.
    fn drop(&mut self) {
        let shared = &self._owner.0;
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
                    state.data.push_back(Frame::Connected { id: self.id });
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
        state.counters.resets_sent += 1;
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

/// Reads messages until the transport ends or the session does; runs the heartbeat and the
/// v2 open deadlines on its own timer, so a stalled write never hides a dead peer (B10).
async fn read_loop<R>(
    shared: Arc<Shared>,
    mut stream: R,
    writer: tokio::task::JoinHandle<()>,
    ended: tokio::sync::watch::Sender<Option<SessionEnd>>,
) where
    R: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let limits = &shared.config.limits;
    let mut next_ping = Instant::now() + limits.heartbeat_interval;
    let started = Instant::now();
    shared.lock().last_pong = started;
    loop {
        let next_deadline = next_ping.min(next_open_deadline(&shared).unwrap_or(next_ping));
        tokio::select! {
            message = stream.next() => {
                let mut state = shared.lock();
                match message {
                    Some(Ok(bytes)) => shared.on_message(&mut state, bytes),
                    Some(Err(error)) => shared.end(&mut state, SessionEnd::Transport(error.to_string())),
                    None => shared.end(&mut state, SessionEnd::PeerClosed),
                }
            }
            _ = tokio::time::sleep_until(next_deadline) => {
                let now = Instant::now();
                let mut state = shared.lock();
                expire_opens(&shared, &mut state, now);
                if now >= next_ping {
                    if now.duration_since(state.last_pong) > limits.heartbeat_timeout {
                        shared.end(&mut state, SessionEnd::HeartbeatTimeout);
                    } else {
                        let payload = Bytes::copy_from_slice(&now.duration_since(started).as_millis().to_be_bytes()[8..]);
                        let ping = match shared.config.version {
                            Version::V1 => Frame::Ping { payload: Bytes::new() },
                            Version::V2 => Frame::Ping { payload },
                        };
                        shared.push_control(&mut state, ping);
                    }
                    next_ping += limits.heartbeat_interval;
                }
            }
            _ = shared.ended.notified() => {}
            // A new open may have a deadline earlier than the one we sleep towards.
            _ = shared.rearm.notified() => {}
        }
        let end = shared.lock().end.clone();
        if let Some(end) = end {
            // Let the writer send a close frame if it is closing gracefully; bound the wait.
            let _ = tokio::time::timeout(limits.write_timeout, writer).await;
            let _ = ended.send(Some(end));
            return;
        }
    }
}

fn next_open_deadline(shared: &Shared) -> Option<Instant> {
    shared
        .lock()
        .open_deadlines
        .first()
        .map(|(deadline, _)| *deadline)
}

/// v2: opens nobody answered in time are reset (the opener's reads fail, the agent is told).
fn expire_opens(shared: &Shared, state: &mut State, now: Instant) {
    while let Some(&(deadline, id)) = state.open_deadlines.first() {
        if deadline > now {
            break;
        }
        state.open_deadlines.pop_first();
        if let Some(slot) = state.streams.get_mut(&id) {
            slot.open_deadline = None;
        }
        let reason = ResetReason::OpenTimeout;
        shared.reset_stream(state, id, StreamError::ResetLocally(reason), reason);
    }
}

/// Writes queued frames: the Pong and other control frames first, then Data up to a batch,
/// each batch under the write deadline. On close it flushes and closes the transport.
async fn write_loop<W>(shared: Arc<Shared>, mut sink: W)
where
    W: futures_util::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let write_timeout = shared.config.limits.write_timeout;
    loop {
        let (batch, closing) = {
            let mut guard = shared.lock();
            let state = &mut *guard;
            if state.end.is_some() {
                return;
            }
            let mut batch = Vec::new();
            if let Some(payload) = state.pong_due.take() {
                batch.push(Frame::Pong { payload });
            }
            batch.extend(state.control.drain(..));
            let mut bytes = 0;
            while bytes < WRITE_BATCH_BYTES {
                let Some(frame) = state.data.pop_front() else {
                    break;
                };
                if let Frame::Data { payload, .. } = &frame {
                    bytes += payload.len();
                }
                batch.push(frame);
            }
            if bytes > 0 {
                state.queued_data -= bytes;
                state
                    .send_waiters
                    .drain(..)
                    .for_each(std::task::Waker::wake);
            }
            (batch, state.closing && state.data.is_empty())
        };
        if batch.is_empty() && !closing {
            // `end()` also notifies this, so the writer never outlives the session.
            shared.writer_wake.notified().await;
            continue;
        }
        let write = async {
            for frame in &batch {
                sink.feed(protocol::encode(frame)).await?;
            }
            if closing {
                sink.close().await
            } else {
                sink.flush().await
            }
        };
        let outcome = tokio::time::timeout(write_timeout, write).await;
        let mut state = shared.lock();
        match outcome {
            Ok(Ok(())) if closing => {
                shared.end(&mut state, SessionEnd::LocalClose);
                return;
            }
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                shared.end(&mut state, SessionEnd::Transport(error.to_string()));
                return;
            }
            Err(_) => {
                shared.end(&mut state, SessionEnd::WriteTimeout);
                return;
            }
        }
    }
}
