//! The heartbeat, run by the session's reader: when each end pings, when a peer is dead, and
//! how an idle agent's tunnel costs the server no wake-up of its own.
//!
//! Both ends beat every `heartbeat_interval` on a grid from the session's start. At a beat a
//! peer silent for `heartbeat_timeout`, or one that left a Ping of ours unanswered that long, is
//! dead (B10: its Pings do not answer ours); otherwise the end pings. A server skips its own
//! Ping on an idle tunnel whose agent pinged lately, since that Ping already proved the agent
//! alive ([`Heartbeat::answer_only`]).
//!
//! With thousands of idle agents those beats were most of the server's idle work, and they
//! were work only to find there was nothing to do. So the reader's timer skips every beat whose
//! outcome is already known (the agent pinged lately enough that the beat would only answer),
//! and the server's periodic Ping of its own, which catches an agent that pings but no longer
//! reads, goes out with the Pong of an agent's Ping: one write, no timer. An idle tunnel then
//! wakes the server once per agent Ping, and once per answer to its own.

use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

use super::state::{Shared, State};
use super::Role;
use crate::protocol::{Frame, Version};

/// Every this many beats (a minute by default) a v2 server lists its live streams.
pub(crate) const LIVE_IDS_EVERY: u32 = 6;

/// A server that only answers an idle agent's Pings still sends one of its own about every
/// this many beats, with the Pong of the agent's Ping that comes first once they have passed: a
/// peer that keeps pinging but has stopped reading is then dropped within
/// `(OWN_PING_EVERY + 1) × heartbeat_interval + heartbeat_timeout` of its last Pong (70 s by
/// default, for an agent pinging every interval; 50 s when every beat pings), and the round
/// trip stays current.
pub(crate) const OWN_PING_EVERY: u32 = 3;

/// The heartbeat's clock; the reader owns it and runs it under the session lock.
pub(crate) struct Heartbeat {
    started: Instant,
    /// The next beat on the grid (every interval from the start) not yet handled.
    next_beat: Instant,
    /// A server only answering sends its own Ping with the first Pong from here on.
    own_ping_due: Instant,
    /// v2 server: the live-stream list is due from here on.
    live_ids_due: Instant,
    /// The agent's Ping already looked at ([`State::peer_pinged`]).
    peer_ping_seen: Option<Instant>,
    /// The last answer of [`Heartbeat::wake`]: no beat before it was due.
    armed: Instant,
}

impl Heartbeat {
    /// Starts the clock; a v2 end pings at once (window growth needs the round trip, and a
    /// transfer should not wait a heartbeat interval for it).
    pub(crate) fn start(shared: &Shared, state: &mut State) -> Heartbeat {
        let limits = &shared.config.limits;
        let started = Instant::now();
        let interval = limits.heartbeat_interval;
        let mut heartbeat = Heartbeat {
            started,
            next_beat: started + interval,
            own_ping_due: started + interval * OWN_PING_EVERY - interval / 2,
            live_ids_due: started + interval * LIVE_IDS_EVERY - interval / 2,
            peer_ping_seen: None,
            armed: started,
        };
        state.last_heard = started;
        if shared.config.version == Version::V2 {
            heartbeat.ping(shared, state, started);
        }
        heartbeat
    }

    /// When the reader must wake next for the heartbeat: the moment the peer's silence, or a
    /// Ping of ours left unanswered, passes the timeout; and the next beat, or, while that beat
    /// would only answer, the first beat that might not (the agent quiet for too long). A
    /// wake-up therefore always finds the peer expired or a beat due.
    pub(crate) fn wake(&mut self, shared: &Shared, state: &State) -> Instant {
        let (interval, timeout) = intervals(shared);
        let past_timeout = |since: Instant| since + timeout + Duration::from_nanos(1);
        let expiry = state
            .unanswered_since
            .map_or(past_timeout(state.last_heard), |since| {
                past_timeout(since.min(state.last_heard))
            });
        let beat = match state.peer_pinged {
            Some(pinged) if self.answer_only(shared, state, self.next_beat) => {
                // `answer_only` holds at a beat `t` while `t - pinged` is below 1.5 intervals
                // and at most `timeout - interval`: the first beat past either bound.
                let quiet = (pinged + interval * 3 / 2)
                    .min(pinged + timeout.saturating_sub(interval) + Duration::from_nanos(1));
                self.beat_at_or_after(interval, quiet)
            }
            _ => self.next_beat,
        };
        self.armed = beat.min(expiry);
        self.armed
    }

    /// The reader woke before its timer (a message, a stream opened): beats it slept past
    /// were only answering ones, so the grid moves on to now rather than beat at once, late.
    /// Reads the clock only while the timer is set past the next beat (an idle tunnel), not
    /// per message of a busy one.
    pub(crate) fn catch_up(&mut self, shared: &Shared) {
        if self.next_beat >= self.armed {
            return;
        }
        let now = Instant::now();
        if self.next_beat < now && now < self.armed {
            self.next_beat = self.beat_at_or_after(shared.config.limits.heartbeat_interval, now);
        }
    }

    /// The reader's timer fired at `now`: drops an expired peer, and handles the beat if one
    /// is due.
    pub(crate) fn on_timer(&mut self, shared: &Shared, state: &mut State, now: Instant) {
        if expired(shared, state, now) {
            shared.end(state, super::SessionEnd::HeartbeatTimeout);
            return;
        }
        if now < self.next_beat {
            return;
        }
        state.counters.beats += 1;
        if !self.answer_only(shared, state, now) {
            self.ping(shared, state, now);
        }
        if now >= self.live_ids_due {
            self.send_live_ids(shared, state, now);
        }
        let interval = shared.config.limits.heartbeat_interval;
        self.next_beat = self.beat_at_or_after(interval, now + Duration::from_nanos(1));
    }

    /// After a message: an agent's Ping arrived on a tunnel the server only answers, and the
    /// server's own Ping (or its minute's live-stream list) is due: it goes out with the Pong.
    pub(crate) fn after_message(&mut self, shared: &Shared, state: &mut State) {
        let Some(at) = state.peer_pinged else { return };
        if self.peer_ping_seen == Some(at) || !self.answer_only(shared, state, at) {
            return;
        }
        self.peer_ping_seen = Some(at);
        if at >= self.own_ping_due {
            self.ping(shared, state, at);
        }
        if at >= self.live_ids_due {
            self.send_live_ids(shared, state, at);
        }
    }

    /// A server skips its own Ping on an idle tunnel whose agent pinged lately: the agent's
    /// Ping already proved it alive. "Lately" is within 1.5 intervals (both ends' timers run at
    /// about the same period; a Go agent pings every 15 s), and only when the silence could not
    /// outlast `heartbeat_timeout` before the next beat pings after all. While streams are
    /// open it pings every beat (window growth uses the round trip).
    fn answer_only(&self, shared: &Shared, state: &State, at: Instant) -> bool {
        let (interval, timeout) = intervals(shared);
        shared.config.role == Role::Server
            && state.streams.is_empty()
            && state.peer_pinged.is_some_and(|pinged| {
                let since = at.saturating_duration_since(pinged);
                since < interval * 3 / 2 && since + interval <= timeout
            })
    }

    fn ping(&mut self, shared: &Shared, state: &mut State, now: Instant) {
        let payload = match shared.config.version {
            Version::V1 => Bytes::new(),
            Version::V2 => {
                let millis = now.duration_since(self.started).as_millis() as u64;
                Bytes::copy_from_slice(&millis.to_be_bytes())
            }
        };
        shared.push_control(
            state,
            Frame::Ping {
                payload: payload.clone(),
            },
        );
        state.ping_sent = Some((now, payload));
        state.unanswered_since.get_or_insert(now);
        // Half a beat early, so an agent whose timer runs a little fast still carries it on
        // every `OWN_PING_EVERY`-th Ping rather than the next one.
        let interval = shared.config.limits.heartbeat_interval;
        self.own_ping_due = now + interval * OWN_PING_EVERY - interval / 2;
    }

    /// Server, v2: asks the writer to list every stream it holds, so the agent drops any it
    /// holds that the server forgot (a lost close must never leak a stream).
    fn send_live_ids(&mut self, shared: &Shared, state: &mut State, now: Instant) {
        let interval = shared.config.limits.heartbeat_interval;
        self.live_ids_due = now + interval * LIVE_IDS_EVERY - interval / 2;
        if shared.config.role != Role::Server || shared.config.version != Version::V2 {
            return;
        }
        state.live_ids_due = true;
        shared.writer_wake.notify_one();
    }

    /// The first beat of the grid at or after `at`, and never before the next one.
    fn beat_at_or_after(&self, interval: Duration, at: Instant) -> Instant {
        if at <= self.next_beat {
            return self.next_beat;
        }
        let behind = (at - self.next_beat).as_nanos();
        let step = interval.as_nanos().max(1);
        u32::try_from(behind.div_ceil(step))
            .ok()
            .and_then(|beats| interval.checked_mul(beats))
            .and_then(|ahead| self.next_beat.checked_add(ahead))
            .unwrap_or(at)
    }
}

/// The session's heartbeat interval and timeout.
fn intervals(shared: &Shared) -> (Duration, Duration) {
    let limits = &shared.config.limits;
    (limits.heartbeat_interval, limits.heartbeat_timeout)
}

/// The peer is dead to us: nothing from it (Ping or Pong) for the timeout, or a Ping of ours
/// unanswered for the timeout (a peer that pings but no longer reads us is dead too).
fn expired(shared: &Shared, state: &State, now: Instant) -> bool {
    let timeout = shared.config.limits.heartbeat_timeout;
    now.duration_since(state.last_heard) > timeout
        || state
            .unanswered_since
            .is_some_and(|since| now.duration_since(since) > timeout)
}
