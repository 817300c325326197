//! The session's two driver tasks: the reader (frames in, heartbeat, open deadlines) and the
//! writer (control frames first, then Data, each batch under the write deadline).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;

use super::error::{SessionEnd, StreamError};
use super::heartbeat::Heartbeat;
use super::state::{Outbound, Shared, State};
use crate::protocol::{Frame, Message, ResetReason, StreamId};

/// Bytes of Data the writer hands the transport before it flushes and looks at the queues again.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Bytes of messages the reader handles before it lets the other tasks run. Each process runs
/// on one thread, and a reader that drained a full socket buffer (megabytes on loopback) in one
/// poll made every other stream's next step wait for it.
const READ_TURN_BYTES: usize = 256 * 1024;

/// Reads messages until the transport ends or the session does; runs the heartbeat and the
/// v2 open deadlines on its own timer, so a stalled write never hides a dead peer (B10).
pub(crate) async fn read_loop<R>(
    shared: Arc<Shared>,
    mut stream: R,
    writer: tokio::task::JoinHandle<()>,
    ended: tokio::sync::watch::Sender<Option<SessionEnd>>,
) where
    R: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    let limits = &shared.config.limits;
    let mut heartbeat = Heartbeat::start(&shared, &mut shared.lock());
    let mut read_this_turn = 0;
    // One timer for the session's life, moved only when its deadline changes: a fresh
    // `sleep_until` per message was a timer-wheel insert and removal per message.
    let first_wake = heartbeat.wake(&shared, &shared.lock());
    let timer = tokio::time::sleep_until(first_wake);
    tokio::pin!(timer);
    loop {
        if read_this_turn >= READ_TURN_BYTES {
            read_this_turn = 0;
            tokio::task::yield_now().await;
        }
        let next_deadline = {
            heartbeat.catch_up(&shared);
            let state = shared.lock();
            let beat = heartbeat.wake(&shared, &state);
            state
                .open_deadlines
                .first()
                .map_or(beat, |&(open, _)| open.min(beat))
        };
        if timer.deadline() != next_deadline {
            timer.as_mut().reset(next_deadline);
        }
        tokio::select! {
            message = stream.next() => {
                let mut state = shared.lock();
                match message {
                    Some(Ok(bytes)) => {
                        read_this_turn += bytes.len();
                        shared.on_message(&mut state, bytes);
                        heartbeat.after_message(&shared, &mut state);
                    }
                    Some(Err(error)) => shared.end(&mut state, SessionEnd::Transport(error.to_string())),
                    None => shared.end(&mut state, SessionEnd::PeerClosed),
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                let mut state = shared.lock();
                expire_opens(&shared, &mut state, now);
                heartbeat.on_timer(&shared, &mut state, now);
            }
            _ = shared.ended.notified() => {}
            // A new open: its deadline, or its stream's beats, may come before the timer.
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

/// The streams the server holds and those with frames still queued, sorted.
fn live_id_list(state: &State) -> Vec<StreamId> {
    let mut ids: Vec<_> = state
        .streams
        .keys()
        .copied()
        .chain(state.data.ids())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The LiveIds frame, built by the writer behind every frame it has taken from the queues: the
/// streams the server holds, and those whose frames (a final Fin or Close, say) are still
/// queued. So a stream the agent holds and this list lacks is one whose every frame it has
/// already read, and that the server no longer has. `None` while the list is longer than the
/// agent accepts (its stream limit; closed streams whose last frames wait in the queue can
/// push it over): the agent would drop the whole frame, so the writer tries again next batch.
/// Also `None`, and no longer due, when it would repeat the last list with no stream opened
/// since (an idle tunnel's minute): the agent already dropped every stream that list lacked.
fn live_ids(state: &mut State, most: usize) -> Option<Frame> {
    let ids = live_id_list(state);
    let next = state.ids.peek();
    if let Some((sent_next, sent)) = &state.live_ids_sent {
        if *sent_next == next && *sent == ids {
            state.live_ids_due = false;
            return None;
        }
    }
    if ids.len() > most {
        return None;
    }
    state.live_ids_due = false;
    state.live_ids_sent = Some((next, ids.clone()));
    Some(Frame::LiveIds {
        up_to: StreamId::MAX,
        ids,
    })
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
pub(crate) async fn write_loop<W>(shared: Arc<Shared>, mut sink: W)
where
    W: futures_util::Sink<Message, Error = std::io::Error> + Unpin,
{
    let write_timeout = shared.config.limits.write_timeout;
    loop {
        let (batch, closing) = {
            let mut guard = shared.lock();
            let state = &mut *guard;
            if state.end.is_some() {
                return;
            }
            let mut batch: Vec<Message> = Vec::new();
            if let Some(payload) = state.pong_due.take() {
                batch.push((&Frame::Pong { payload }).into());
            }
            batch.extend(state.control.drain(..).map(|frame| Message::from(&frame)));
            let mut bytes = 0;
            while bytes < WRITE_BATCH_BYTES {
                match state.data.pop() {
                    Some(Outbound::Data { message, len }) => {
                        bytes += len;
                        batch.push(message);
                    }
                    Some(Outbound::Frame(frame)) => batch.push((&frame).into()),
                    None => break,
                }
            }
            if state.live_ids_due {
                if let Some(frame) = live_ids(state, shared.config.peer_max_streams) {
                    batch.push((&frame).into());
                }
            }
            if bytes > 0 {
                // Stream bytes going out are work (an upload to a v1 peer, which sends no
                // credit back; an agent's download): no nap while they flow.
                crate::nap::note_activity();
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
            for message in batch {
                sink.feed(message).await?;
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
            // One batch per turn: the tasks that feed other streams get to run in between.
            Ok(Ok(())) => {
                drop(state);
                tokio::task::yield_now().await;
            }
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
