//! The agent's own HTTP/1.1 client for long-lived requests (watches, followed logs): a
//! connection of their own to the destination, our `h1` exchange on it, and a few idle
//! connections kept for the next one. A hyper client connection holds ~14 KiB for as long as
//! a watch idles; this holds the socket and a decoder (S9 in docs/benchmarks.md).

use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Body;
use rustls::ClientConfig;

use crate::h1::codec::CodecError;
use crate::h1::{self, Answer, Conn, ExchangeError, Pieces, ResponseBody, Reuse};
use crate::http::BoxError;
use crate::transport::tls::{dial_upstream, TlsError, UpstreamIo};

/// A connection to the destination, read in pieces.
pub(crate) type UpstreamConn = Pieces<UpstreamIo>;

/// Idle connections kept per destination; more are closed when they come back.
const MAX_IDLE: usize = 32;
/// How long an idle connection is kept: well under the API server's own idle timeout (Go's
/// `http.Server` closes idle connections after its `IdleTimeout`), so we seldom pick one the
/// upstream is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a long-lived request got no response head.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error(transparent)]
    Dial(#[from] TlsError),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

/// One destination's HTTP/1.1 connections for long-lived requests.
pub(crate) struct UpstreamH1 {
    target: String,
    /// `None`: plain HTTP.
    tls: Option<Arc<ClientConfig>>,
    idle: Arc<Mutex<Vec<(UpstreamConn, Instant)>>>,
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
        if let Some(conn) = self.checkout() {
            if !request.body().is_end_stream() {
                return self.exchange(conn, request).await;
            }
            // The upstream may close an idle connection just as we take it: a bodiless
            // request (a watch) is sent again on a new one if that one fails before answering.
            let (parts, body) = request.into_parts();
            let mut again = Request::new(http_body_util::Empty::<Bytes>::new());
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            return match self.exchange(conn, Request::from_parts(parts, body)).await {
                Err(H1Error::Exchange(
                    ExchangeError::Write(_) | ExchangeError::Read(_) | ExchangeError::NoAnswer,
                )) => {
                    let conn = Pieces(dial_upstream(self.tls.as_ref(), &self.target).await?);
                    self.exchange(conn, again).await
                }
                other => other,
            };
        }
        let conn = Pieces(dial_upstream(self.tls.as_ref(), &self.target).await?);
        self.exchange(conn, request).await
    }

    async fn exchange<B>(
        &self,
        conn: UpstreamConn,
        request: Request<B>,
    ) -> Result<Response<ResponseBody<UpstreamConn>>, H1Error>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let idle = Arc::downgrade(&self.idle);
        let reuse: Reuse<UpstreamConn> = Box::new(move |conn| {
            if let Some(idle) = idle.upgrade() {
                let mut idle = idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Expired ones go now, not only at the next checkout.
                idle.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
                if idle.len() < MAX_IDLE {
                    idle.push((conn, Instant::now()));
                }
            }
        });
        match h1::exchange(conn, request, false, Some(reuse)).await? {
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
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
        while let Some((mut conn, _)) = idle.pop() {
            // An idle HTTP/1.1 connection has nothing to say: bytes or an end mean the peer
            // closed it (or broke the protocol).
            let mut cx = Context::from_waker(Waker::noop());
            if conn.poll_recv(&mut cx, 1).is_pending() {
                return Some(conn);
            }
        }
        None
    }
}
