//! Keep-alive tunnel streams for v2 sessions (DESIGN.md §3 item 4): an HTTP/1.1 connection over
//! a stream is reused for the next request to the same agent, so most requests cost no open.
//! A connection comes back only when its response ended cleanly (an abandoned body closes
//! it); only the server closes idle ones, after [`IDLE_TIMEOUT`], so a request can never race
//! an agent-side close (the lost-POST race of agent-closed pools).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::mux::{MuxStream, SessionHandle};

/// An idle pooled stream is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per cluster; more are closed when they come back.
pub const MAX_IDLE_PER_CLUSTER: usize = 64;

/// An idle tunnel stream that carried a complete exchange, with the session it belongs to.
pub struct Pooled {
    /// The stream, between HTTP/1.1 exchanges.
    pub conn: MuxStream,
    /// The tunnel it runs over.
    pub session: SessionHandle,
    idle_since: Instant,
}

impl Pooled {
    /// A stream of `session`, fresh or just returned.
    pub fn new(conn: MuxStream, session: SessionHandle) -> Self {
        Self {
            conn,
            session,
            idle_since: Instant::now(),
        }
    }
}

/// Expired entries of every cluster are swept at most this often (on a checkin).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Idle connections by cluster id, and when they were last swept.
#[derive(Default)]
pub struct StreamPool {
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Idle connections per cluster id, most recently returned last.
    by_cluster: HashMap<String, Vec<Pooled>>,
    /// When every cluster's expired entries were last dropped.
    swept: Option<Instant>,
}

impl StreamPool {
    /// An idle connection to `cluster` over `session` (the cluster's current tunnel) that can
    /// take a request now, if any. Stale, closed or other-session entries are dropped.
    pub fn checkout(&self, cluster: &str, session: &SessionHandle) -> Option<Pooled> {
        let mut idle = self.lock();
        let entries = idle.by_cluster.get_mut(cluster)?;
        while let Some(pooled) = entries.pop() {
            let fresh = pooled.idle_since.elapsed() < IDLE_TIMEOUT;
            if fresh && pooled.session.same_session(session) && pooled.conn.is_idle_open() {
                return Some(pooled);
            }
        }
        None
    }

    /// Returns a connection whose response ended cleanly.
    pub fn checkin(&self, cluster: &str, mut pooled: Pooled) {
        if pooled.session.is_closed()
            || pooled.session.peer_draining()
            || !pooled.conn.is_idle_open()
        {
            return;
        }
        let now = Instant::now();
        pooled.idle_since = now;
        let mut idle = self.lock();
        // Sweep every cluster's expired entries while here, but not on every checkin: it reads
        // each entry's age (S2: once per request, it took a tenth of the server's CPU).
        // Dropping an entry closes its stream.
        if idle.swept.is_none_or(|swept| now - swept >= SWEEP_INTERVAL) {
            idle.swept = Some(now);
            for entries in idle.by_cluster.values_mut() {
                entries.retain(|entry| {
                    now - entry.idle_since < IDLE_TIMEOUT && !entry.session.is_closed()
                });
            }
        }
        // Looked up before inserting: the key is copied once per cluster, not per request.
        if !idle.by_cluster.contains_key(cluster) {
            idle.by_cluster.insert(cluster.to_owned(), Vec::new());
        }
        let entries = idle.by_cluster.get_mut(cluster).expect("inserted above");
        if entries.len() >= MAX_IDLE_PER_CLUSTER {
            // Full: make room from this cluster's expired entries before refusing a good one.
            entries.retain(|entry| now - entry.idle_since < IDLE_TIMEOUT);
        }
        if entries.len() < MAX_IDLE_PER_CLUSTER {
            entries.push(pooled);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::testing::session_pair;
    use crate::mux::Limits;
    use crate::protocol::Version;

    impl StreamPool {
        fn idle_len(&self, cluster: &str) -> usize {
            self.lock().by_cluster.get(cluster).map_or(0, Vec::len)
        }
    }

    /// A pooled stream of `session` (the agent side holds it open).
    async fn pooled(session: &SessionHandle) -> Pooled {
        let stream = session.open(b"target").await.expect("open");
        Pooled::new(stream, session.clone())
    }

    /// Ages every entry of `cluster` past the timeout, and dates the last sweep `ago`.
    fn age(pool: &StreamPool, cluster: &str, last_sweep_ago: Duration) {
        let now = Instant::now();
        let mut idle = pool.lock();
        for entry in idle.by_cluster.get_mut(cluster).into_iter().flatten() {
            entry.idle_since = now.checked_sub(IDLE_TIMEOUT).expect("uptime over a minute");
        }
        idle.swept = now.checked_sub(last_sweep_ago);
    }

    #[tokio::test]
    async fn expired_entries_are_swept_at_most_once_a_second() {
        let (server, mut agent) = session_pair(Version::V2, Limits::default(), Limits::default());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(stream) = agent.incoming.accept().await {
                held.push(stream.accept());
            }
        });
        let session = &server.handle;
        let pool = StreamPool::default();
        pool.checkin("a", pooled(session).await);
        age(&pool, "a", SWEEP_INTERVAL);
        pool.checkin("b", pooled(session).await);
        assert_eq!(
            pool.idle_len("a"),
            0,
            "expired, and the last sweep was a second ago"
        );
        assert_eq!(pool.idle_len("b"), 1);
        age(&pool, "b", Duration::from_millis(500));
        pool.checkin("c", pooled(session).await);
        assert_eq!(
            pool.idle_len("b"),
            1,
            "expired, but swept under a second ago"
        );
        age(&pool, "c", Duration::ZERO);
        pool.lock().swept = Instant::now().checked_sub(SWEEP_INTERVAL);
        pool.checkin("d", pooled(session).await);
        assert_eq!(pool.idle_len("b") + pool.idle_len("c"), 0, "both swept");
        // A full cluster makes room from its own expired entries at once.
        for _ in 0..MAX_IDLE_PER_CLUSTER {
            pool.checkin("e", pooled(session).await);
        }
        age(&pool, "e", Duration::ZERO);
        pool.checkin("e", pooled(session).await);
        assert_eq!(
            pool.idle_len("e"),
            1,
            "the fresh one kept, the expired dropped"
        );
    }
}
