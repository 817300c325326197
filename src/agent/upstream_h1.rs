//! The agent's own HTTP/1.1 client for long-lived requests (watches, followed logs), and for
//! bodiless requests to a destination that speaks only HTTP/1.1: a connection of their own to
//! the destination, our `h1` exchange on it, and idle connections kept for the next one. A
//! hyper client connection holds ~14 KiB for as long as a watch idles; this holds the socket
//! and a decoder (S9 in docs/benchmarks.md); per request it costs the agent ~14% less CPU than
//! hyper's pooled client (S2).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Body;
use rustls::ClientConfig;

use crate::h1::codec::CodecError;
use crate::h1::{self, Answer, Conn, ExchangeError, Pieces, ResponseBody, Reuse};
use crate::http::BoxError;
use crate::transport::tls::{dial_upstream, TlsError, UpstreamIo};

/// A connection to the destination, read in pieces.
pub(crate) type UpstreamConn = Pieces<UpstreamIo>;

/// A new connection to the destination, read in pieces: 256 KiB at most per read of a
/// download on a plain one (each read is a system call), the default 64 KiB on a TLS one
/// (each read hands out at most one record).
fn read_in_pieces(io: UpstreamIo) -> UpstreamConn {
    let burst_piece = match &io {
        UpstreamIo::Left(_) => h1::TCP_BURST_PIECE,
        UpstreamIo::Right(_) => h1::BURST_PIECE,
    };
    Pieces::with_burst_piece(io, burst_piece)
}

/// Idle connections kept per destination; more are closed when they come back.
const MAX_IDLE: usize = 64;
/// How long an idle connection is kept: well under the API server's own idle timeout (Go's
/// `http.Server` closes idle connections after its `IdleTimeout`). A backend that closes
/// sooner is found out by the sweep, or at checkout.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the idle connections are looked at while there are any: one the upstream closed
/// is closed here too within this (not held half-closed until the next request), and one past
/// [`IDLE_TIMEOUT`] goes.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error(transparent)]
    Dial(#[from] TlsError),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

/// One destination's HTTP/1.1 connections of our own.
pub(crate) struct UpstreamH1 {
    target: String,
    /// `None`: plain HTTP.
    tls: Option<Arc<ClientConfig>>,
    idle: Arc<Mutex<Idle>>,
}

/// The idle connections, oldest first, and whether a sweep task looks after them.
#[derive(Default)]
struct Idle {
    conns: Vec<(UpstreamConn, Instant)>,
    swept: bool,
}

fn lock(idle: &Mutex<Idle>) -> MutexGuard<'_, Idle> {
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UpstreamH1 {
    pub(crate) fn new(target: String, tls: Option<Arc<ClientConfig>>) -> Self {
        Self {
            target,
            tls,
            idle: Arc::default(),
        }
    }

    /// Sends `request` (origin-form or absolute URI; hop-by-hop headers removed, `Host` set)
    /// on an idle connection or a new one; the connection comes back after a clean end.
    pub(crate) async fn send<B>(
        &self,
        request: Request<B>,
    ) -> Result<Response<ResponseBody<UpstreamConn>>, H1Error>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let Some(conn) = self.checkout() else {
            let conn = read_in_pieces(dial_upstream(self.tls.as_ref(), &self.target).await?);
            return self.exchange(conn, &mut parts, body).await;
        };
        if !body.is_end_stream() || !idempotent(&parts.method) {
            return self.exchange(conn, &mut parts, body).await;
        }
        // The upstream may close an idle connection just as we take it: a bodiless idempotent
        // request is sent again on a new one if writing it failed (RFC 9112 §9.3.1, RFC 9110
        // §9.2.2: a POST might have been acted on). Once it was written, only a safe one is
        // (a watch, a GET): a DELETE the upstream acted on before the connection broke would
        // answer 404 the second time. Go's `http.Transport` draws the same line.
        let first = self.exchange(conn, &mut parts, body).await;
        let again = match &first {
            Err(H1Error::Exchange(ExchangeError::Write(_))) => true,
            Err(H1Error::Exchange(ExchangeError::Read(_) | ExchangeError::NoAnswer)) => {
                safe(&parts.method)
            }
            _ => false,
        };
        if !again {
            return first;
        }
        let conn = read_in_pieces(dial_upstream(self.tls.as_ref(), &self.target).await?);
        let empty = http_body_util::Empty::<Bytes>::new();
        self.exchange(conn, &mut parts, empty).await
    }

    async fn exchange<B>(
        &self,
        conn: UpstreamConn,
        parts: &mut http::request::Parts,
        body: B,
    ) -> Result<Response<ResponseBody<UpstreamConn>>, H1Error>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let idle = Arc::downgrade(&self.idle);
        let reuse: Reuse<UpstreamConn> = Box::new(move |conn| put_back(&idle, conn));
        match h1::exchange(conn, parts, body, false, Some(reuse)).await? {
            Answer::Response(response) => Ok(response),
            // Not asked for: `exchange` refuses a 101 then, so this is never reached.
            Answer::Upgraded { .. } => {
                Err(ExchangeError::from(CodecError::UnexpectedUpgrade).into())
            }
        }
    }

    /// The most recently returned idle connection that is still open and silent; the
    /// others that are not, or are past [`IDLE_TIMEOUT`], are closed on the way.
    fn checkout(&self) -> Option<UpstreamConn> {
        let mut idle = lock(&self.idle);
        drop_expired(&mut idle.conns, Instant::now());
        while let Some((mut conn, _)) = idle.conns.pop() {
            if still_open(&mut conn) {
                return Some(conn);
            }
        }
        None
    }
}

/// An idle HTTP/1.1 connection has nothing to say: bytes or an end mean the peer closed it (or
/// broke the protocol).
fn still_open(conn: &mut UpstreamConn) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    conn.poll_recv(&mut cx, 1).is_pending()
}

/// A connection whose answer ended cleanly comes back to the idle list, if the destination
/// is still configured and the list has room; a sweep task starts if none looks after it.
fn put_back(idle: &Weak<Mutex<Idle>>, conn: UpstreamConn) {
    let Some(pool) = idle.upgrade() else {
        return;
    };
    let mut idle = lock(&pool);
    // Expired ones go now, not only at the next checkout.
    let now = Instant::now();
    drop_expired(&mut idle.conns, now);
    if idle.conns.len() < MAX_IDLE {
        idle.conns.push((conn, now));
    }
    if !idle.swept {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            idle.swept = true;
            runtime.spawn(sweep(Arc::downgrade(&pool)));
        }
    }
}

/// Every [`SWEEP_EVERY`], closes the idle connections the upstream closed or that are past
/// [`IDLE_TIMEOUT`]; ends when none are left, or the destination is gone (a reload).
async fn sweep(idle: Weak<Mutex<Idle>>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = idle.upgrade() else {
            return;
        };
        let mut idle = lock(&pool);
        drop_expired(&mut idle.conns, Instant::now());
        idle.conns.retain_mut(|(conn, _)| still_open(conn));
        if idle.conns.is_empty() {
            idle.swept = false;
            return;
        }
    }
}

/// Closes the idle connections past [`IDLE_TIMEOUT`]: the oldest, at the front (they are
/// pushed as they come back), found without reading the clock for each.
fn drop_expired<T>(idle: &mut Vec<(T, Instant)>, now: Instant) {
    let expired = idle.partition_point(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT);
    idle.drain(..expired);
}

/// Methods a client may send again after a connection failed under them (RFC 9112 §9.3.1):
/// the idempotent ones (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    safe(method) || matches!(*method, Method::PUT | Method::DELETE)
}

/// Methods that change nothing (RFC 9110 §9.2.1): sent again even after they were written.
fn safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the connections idle for [`IDLE_TIMEOUT`] or longer go, the oldest first.
    #[test]
    fn expired_idle_connections_are_dropped_from_the_front() {
        let now = Instant::now();
        let mut idle: Vec<((), Instant)> = [45, 31, 30, 29, 1]
            .into_iter()
            .map(|idle_for| ((), now.checked_sub(Duration::from_secs(idle_for)).unwrap()))
            .collect();
        drop_expired(&mut idle, now);
        let left: Vec<u64> = idle
            .iter()
            .map(|(_, since)| now.duration_since(*since).as_secs())
            .collect();
        assert_eq!(left, [29, 1]);
    }
}
