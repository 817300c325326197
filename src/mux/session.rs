//! Starting a session and its two driver tasks, and the handles the rest of the program holds:
//! [`SessionHandle`] (open streams, drain, close, watch for the end) and [`Incoming`] (accept).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::error::{MuxError, SessionEnd};
use super::ids::IdAllocator;
use super::incoming::Incoming;
use super::state::{Config, Counters, Shared, Slot, State};
use super::{driver, Limits, MemoryBudget, MuxStream, Role, Transport};
use crate::protocol::{Frame, Settings, Version};

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
pub(crate) struct Owner(pub(crate) Arc<Shared>);

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
    /// Opens not answered yet.
    pub pending_opens: usize,
    /// Heartbeat round trip of the last Ping answered.
    pub rtt: Option<std::time::Duration>,
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
                data: Default::default(),
                live_ids_due: false,
                live_ids_sent: None,
                send_waiters: Vec::new(),
                pong_due: None,
                end: None,
                closing: false,
                draining: false,
                peer_draining: false,
                session_used: 0,
                last_heard: Instant::now(),
                peer_pinged: None,
                unanswered_since: None,
                ping_sent: None,
                rtt: None,
                min_rtt: None,
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
        let writer = tokio::spawn(driver::write_loop(shared.clone(), sink));
        tokio::spawn(driver::read_loop(shared.clone(), stream, writer, ended_tx));
        let owner = Arc::new(Owner(shared.clone()));
        Session {
            handle: SessionHandle {
                shared,
                _owner: owner.clone(),
                ended: ended_rx,
            },
            incoming: Incoming {
                queue: incoming_rx,
                owner,
            },
        }
    }
}

impl SessionHandle {
    /// True when both handles drive the same session (a replaced agent's session is another).
    pub fn same_session(&self, other: &SessionHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

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
                }
            }
            // The reader's timer may be set past beats it skipped on an idle tunnel; with a
            // stream open every beat pings, and a v2 open has a deadline of its own.
            shared.rearm.notify_one();
            state.streams.insert(id, slot);
            let target = Bytes::copy_from_slice(target);
            // Connect goes in the data queue so it always precedes the stream's own Data.
            state.data.push(id, Frame::Connect { id, target }.into());
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
            queued_send: state.data.bytes(),
            pending_opens: state
                .streams
                .values()
                .filter(|slot| slot.open_waiter.is_some() || slot.open_deadline.is_some())
                .count(),
            rtt: state.rtt,
            counters: state.counters.clone(),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Test hook: the process budget this session draws from.
    pub fn process_budget(&self) -> Arc<MemoryBudget> {
        self.shared.config.process_budget.clone()
    }
}
