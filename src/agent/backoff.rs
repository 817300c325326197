//! Reconnect delays: exponential with full jitter, capped, reset after a stable connection,
//! and free of overflow however long the server stays away (B5).

use std::time::Duration;

/// The base delay of the first retry.
const BASE: Duration = Duration::from_millis(500);

/// A connection that lasted this long resets the backoff.
pub const STABLE: Duration = Duration::from_secs(30);

/// Backoff state.
pub struct Backoff {
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// A backoff capped at `cap`.
    pub fn new(cap: Duration) -> Self {
        // Time, pid and a per-process counter: agents restarted together (a server outage
        // ends for all at once) must not retry in lockstep.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32
            ^ nth.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            cap,
            attempt: 0,
            seed: seed | 1,
        }
    }

    /// A new cap (after a reload).
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }

    /// Forget past failures (the last connection was stable).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay: uniformly random in [0, min(cap, base × 2^attempt)].
    pub fn next_delay(&mut self) -> Duration {
        // 2^20 × 0.5 s is days: past that the cap rules anyway, and the shift cannot overflow.
        let ceiling = BASE
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(if millis == 0 {
            0
        } else {
            self.seed % (millis + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap_forever() {
        let cap = Duration::from_secs(60);
        let mut backoff = Backoff::new(cap);
        let mut largest = Duration::ZERO;
        for attempt in 0..100_000u32 {
            let delay = backoff.next_delay();
            assert!(delay <= cap, "attempt {attempt}: {delay:?}");
            if attempt < 3 {
                assert!(delay <= BASE * (1 << attempt));
            }
            largest = largest.max(delay);
        }
        assert!(largest > cap / 2, "full jitter still reaches near the cap");
        backoff.reset();
        assert!(backoff.next_delay() <= BASE);
    }

    /// B5, in paused time: 10,000 consecutive failures never exceed the cap, and no
    /// 10-minute stretch has more than a bounded number of attempts (no hot loop, however long
    /// the server stays away).
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_failures_never_spin() {
        let cap = Duration::from_secs(60);
        let mut backoff = Backoff::new(cap);
        let mut attempts = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let delay = backoff.next_delay();
            assert!(delay <= cap, "{delay:?}");
            tokio::time::sleep(delay).await;
            attempts.push(tokio::time::Instant::now());
        }
        let window = Duration::from_secs(600);
        let busiest = (0..attempts.len())
            .map(|i| {
                attempts[i..]
                    .iter()
                    .take_while(|at| at.duration_since(attempts[i]) < window)
                    .count()
            })
            .max()
            .unwrap();
        // Full jitter averages cap/2 = 30 s: about 20 attempts per 10 minutes.
        assert!(busiest <= 60, "{busiest} attempts in one 10-minute window");
        let total = attempts.last().unwrap().duration_since(attempts[0]);
        assert!(
            total > Duration::from_secs(10_000 * 20),
            "mean delay too short: {total:?}"
        );
    }

    /// Full jitter: two agents that start failing together spread out instead of retrying
    /// in lockstep.
    #[test]
    fn agents_started_together_do_not_retry_in_lockstep() {
        let cap = Duration::from_secs(60);
        let (mut first, mut second) = (Backoff::new(cap), Backoff::new(cap));
        let first: Vec<_> = (0..20).map(|_| first.next_delay()).collect();
        let second: Vec<_> = (0..20).map(|_| second.next_delay()).collect();
        let same = first.iter().zip(&second).filter(|(a, b)| a == b).count();
        assert!(same < 5, "{same} of 20 delays identical");
    }
}
