//! Idle coalescing: a process that has served nothing for a while (`QUIET`) naps briefly each
//! time its thread is about to sleep in the kernel, so the wake-ups of many idle peers are
//! taken in batches. At 10,000 idle agents the server gets an agent Ping every 0.1 ms
//! on average and woke once for each; the wake-up, not the Pong, was most of its idle CPU
//! (S7 in docs/benchmarks.md: 2.85% of a core without naps, 2.02% with 2 ms ones).
//!
//! Heartbeats do not count as work (they are what the naps batch); everything else does: a
//! connection accepted or a request read on any listener (`listen`), a tunnel frame received
//! other than Ping and Pong, stream bytes sent (`mux`). What it costs: an event that arrives
//! after 100 ms without work waits about one nap — the first request after a quiet spell, an
//! event on a watch that was quiet, an answer that took the upstream longer than 100 ms, the
//! Pong to the server's own Ping (so `tunnel_heartbeat_rtt_seconds` reads about one nap on a
//! quiet server) — and a timer fires up to one nap late while quiet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a process must have done no work but heartbeats before it naps.
pub const QUIET: Duration = Duration::from_millis(100);

/// Set by work, taken by the next sleep.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Naps taken since the process started (the `idle_naps_total` metric).
static NAPS: AtomicU64 = AtomicU64::new(0);

/// Work other than heartbeats: no nap until it has been quiet for `QUIET`.
#[inline]
pub fn note_activity() {
    // A plain store: on one thread, no read-modify-write is needed, and most calls find it set.
    ACTIVE.store(true, Ordering::Relaxed);
}

/// Naps taken so far.
pub fn naps() -> u64 {
    NAPS.load(Ordering::Relaxed)
}

/// When the last traffic was seen, and whether the thread should nap now.
#[derive(Debug)]
pub struct Quiet {
    last_active: Instant,
}

impl Quiet {
    /// Quiet since `now`.
    pub fn new(now: Instant) -> Self {
        Self { last_active: now }
    }

    /// Before a sleep at `now`: `active` says whether traffic moved since the last one.
    pub fn should_nap(&mut self, active: bool, now: Instant) -> bool {
        if active {
            self.last_active = now;
            return false;
        }
        now.duration_since(self.last_active) >= QUIET
    }
}

/// The runtime's hook before each sleep of its thread: naps for `nap` once quiet.
pub fn before_sleep(nap: Duration) -> impl Fn() + Send + Sync + 'static {
    // Only the runtime's one thread takes the lock.
    let quiet = Mutex::new(Quiet::new(Instant::now()));
    move || {
        let active = ACTIVE.swap(false, Ordering::Relaxed);
        let nap_now = quiet
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .should_nap(active, Instant::now());
        if nap_now {
            NAPS.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(nap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naps_only_after_a_quiet_spell_that_traffic_restarts() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start);
        assert!(
            !quiet.should_nap(false, start + QUIET / 2),
            "not quiet long enough"
        );
        assert!(quiet.should_nap(false, start + QUIET), "quiet for QUIET");
        assert!(!quiet.should_nap(true, start + QUIET * 2), "traffic moved");
        assert!(!quiet.should_nap(false, start + QUIET * 2 + QUIET / 2));
        assert!(quiet.should_nap(false, start + QUIET * 3));
    }
}
