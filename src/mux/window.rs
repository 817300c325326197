//! v2 receive windows: credit goes back to the peer as a stream's reader consumes, and a
//! window grows when it, not the reader, limits the stream (DESIGN.md §3 item 1).
//!
//! Growth needs two signs at once, checked at each credit step (a quarter of the window):
//! - the reader caught up since the last step (a read found the queue empty, or this one
//!   emptied it): the reader is not the limit. Whether a read emptied the queue alone is not
//!   enough: over a WAN a whole window arrives in one burst, and a reader taking it in pieces
//!   has bytes left at the quarter mark although it waits between bursts (S10 ran at 1.1 MB/s
//!   through a 50 ms round trip with 16 KiB reads);
//! - the quarter went by within [`GROWTH_ROUND_TRIPS`] of the path's round trips (the
//!   shortest heartbeat round trip seen, at least [`MIN_GROWTH_RTT`]): the stream moves close
//!   to a window per round trip. The last heartbeat's round trip would not do: measured
//!   during a bulk transfer on loopback it was milliseconds of queueing, and windows grew to
//!   tens of MiB that a slow reader then had to buffer. A stream that carries a small answer now and then (a pooled
//!   stream, a watch) also finds its queue empty at every read, and must not grow: a grown
//!   window is credit the peer keeps, which a slow reader later has to buffer (S6).
//!
//! So a window settles near bandwidth × round trip, within `max_stream_window`.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{ReadEnd, Shared, State};
use crate::protocol::{Frame, StreamId};

/// A window grows when a quarter of it was consumed within this many round trips.
const GROWTH_ROUND_TRIPS: u32 = 2;

/// Round trips shorter than this count as this: on loopback the scheduler, not the wire, sets
/// how soon returned credit is used. (S1 and S6 in docs/benchmarks.md: 200 µs moved S1 bulk as
/// fast as 1 ms did, and kept S6's slow reader at 14 MiB instead of 57.)
const MIN_GROWTH_RTT: Duration = Duration::from_micros(200);

impl Shared {
    /// v2: `read` bytes of stream `id` were consumed. Credit goes back in quarter-window steps
    /// (few frames, and the sender never runs dry while the reader keeps up); the window
    /// doubles, up to `max_stream_window`, when the budgets have room and it limits the stream
    /// (module docs).
    pub(crate) fn credit_back(&self, state: &mut State, id: StreamId, read: usize) {
        let limits = &self.config.limits;
        let rtt = state.min_rtt.unwrap_or_default().max(MIN_GROWTH_RTT);
        let Some(slot) = state.streams.get_mut(&id) else {
            return;
        };
        slot.consumed += read as u64;
        let window = slot.reserved;
        if slot.consumed < (window as u64 / 4).max(1) || slot.read != ReadEnd::Open {
            return;
        }
        let now = Instant::now();
        let quick = now.duration_since(slot.last_credit_step) < rtt * GROWTH_ROUND_TRIPS;
        slot.last_credit_step = now;
        let caught_up = std::mem::take(&mut slot.starved) || slot.recv_len == 0;
        let mut increment = std::mem::take(&mut slot.consumed);
        let growth = window.min((limits.max_stream_window as usize).saturating_sub(window));
        if caught_up && quick && growth > 0 && self.try_grow(state, growth) {
            increment += growth as u64;
            let slot = state.streams.get_mut(&id).expect("slot present");
            slot.reserved += growth;
        }
        let slot = state.streams.get_mut(&id).expect("slot present");
        slot.recv_credit += increment;
        let increment = u32::try_from(increment).unwrap_or(u32::MAX);
        self.push_control(state, Frame::WindowUpdate { id, increment });
    }

    /// Reserves `extra` window for a growing stream, only from the headroom above what the
    /// streams not yet open could need for their initial windows: growth never makes an open
    /// fail for memory.
    fn try_grow(&self, state: &mut State, extra: usize) -> bool {
        let limits = &self.config.limits;
        let unopened = limits.max_streams.saturating_sub(state.streams.len());
        let kept_for_opens = unopened.saturating_mul(limits.stream_window as usize);
        let after = state.session_used + extra + kept_for_opens;
        after <= limits.session_buffer && self.try_reserve(state, extra)
    }
}
