//! Idle tracking for HTTP/2 connections. hyper's HTTP/1.1 server closes a connection that sends
//! no request head within `header_read_timeout` (also between keep-alive requests); its HTTP/2
//! server has no such bound, so a client that finishes TLS, picks `h2` and then sends nothing
//! would hold a connection slot forever. Here a connection with no request in flight for
//! `header_read_timeout` — from the handshake on — is closed; a connection carrying a watch is
//! never idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

/// Requests in flight on one connection, and since when it has had none.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

/// One request in flight: held by its response body until the body ends or is dropped.
pub(super) struct InFlight(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    pub(super) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection counts as idle for `timeout`; `None` while a request is in flight.
    pub(super) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                + timeout,
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        }
    }
}

/// Resolves once the connection has been idle for `timeout` (polling at most every `timeout`).
pub(super) async fn idle_for(activity: &Activity, timeout: Duration) {
    loop {
        match activity.idle_deadline(timeout) {
            Some(deadline) if deadline <= Instant::now() => return,
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => tokio::time::sleep(timeout).await,
        }
    }
}
