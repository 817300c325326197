//! Our own HTTP/1.1 server on one connection (the agent on every tunnel stream; the server on
//! its internal listener's HTTP/1.1 clients): a request head parsed, the request handed on
//! with a body that reads the rest of it off the connection, the response written back; then
//! the next request while both sides keep the connection. It replaces a hyper server
//! connection, which holds ~9 KiB for as long as a watch idles (S9 and F in
//! docs/benchmarks.md); between pieces this holds the connection, a decoder and the task.
//!
//! An upgrade (exec, attach, port-forward) answered 101 by the handler: the head goes back and
//! the connection is spliced with what the handler put in the response's extensions, an
//! [`UpgradeTo`].

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{EXPECT, UPGRADE};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Body as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::codec::CodecError;
use super::decode::{ChunkedDecoder, LengthDecoder};
use super::request_body::{
    lock, watch_for_cancel, BodyDecoder, RequestBody, ServerConn, ServerIo, Shared,
};
use super::respond::write_body;
use super::server_codec::{
    bodiless, encode_response_head, parse_request_head, Persistence, RequestBodyFraming,
    RequestHead, ResponseFraming,
};
use super::upgrade::{splice, UpgradeTo};
use crate::http::{status_response, Body};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What one connection's peer may send, and how the connection is kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeLimits {
    /// Largest request head; more is answered 431.
    pub(crate) max_head: usize,
    /// Time a request head has to arrive whole, counted from the end of the previous exchange
    /// (or the connection's start); `None`: unbounded (a tunnel stream, whose peer is our own
    /// server). A late head, or an idle connection, is closed without an answer.
    pub(crate) head_timeout: Option<Duration>,
    /// More than one request per connection (a v1 tunnel stream carries one).
    pub(crate) keep_alive: bool,
}

/// Serves the requests on `stream` until it ends, one at a time, each answered by `handler`.
/// On `shutdown`, a request in progress is finished and the connection closes; an idle one
/// closes at once. An upgrade's splice outlives the loop: it is spawned on `splices` (so a
/// shutdown waits for it) or, without one, on the runtime.
pub(crate) async fn serve<S, H, F>(
    stream: S,
    limits: ServeLimits,
    shutdown: CancellationToken,
    splices: Option<TaskTracker>,
    mut handler: H,
) where
    S: ServerIo,
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    let conn: Shared = Arc::new(Mutex::new(ServerConn {
        pending: Bytes::new(),
        body: None,
        spoiled: false,
        watcher: None,
        continue_unsent: &[],
        stream,
    }));
    let keep_alive = limits.keep_alive;
    loop {
        // Boxed like the other phases: the wait for a head (its timer, the shutdown watch and
        // the gathered bytes) is not part of what a streaming watch holds.
        let head = Box::pin(async {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                head = read_request_head(&conn, &limits) => Some(head),
            }
        })
        .await;
        let Some(head) = head else {
            return;
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) | Err(None) => return, // the peer's clean end between requests, or a failure
            Err(Some(error)) => {
                Box::pin(refuse(&conn, &error)).await;
                return;
            }
        };
        // Each phase is boxed and freed when it ends: the stream's task holds little, and a
        // watch streaming its events holds only the send phase's state (S9).
        let answer = Box::pin(answer(&conn, head, keep_alive, &shutdown, &mut handler)).await;
        let (head, body, framing, close) = match answer {
            Answer::Send {
                head,
                body,
                framing,
                close,
            } => (head, body, framing, close),
            Answer::Drop => return,
            Answer::Upgrade(response, upgraded) => {
                return Box::pin(splice(conn, response, upgraded, splices)).await
            }
        };
        let sent = Box::pin(async {
            tokio::select! {
                sent = write_body(&conn, head, body, framing) => sent,
                // The peer went away: the body (and the upstream request) is dropped.
                () = watch_for_cancel(&conn) => Err(io::ErrorKind::ConnectionReset.into()),
            }
        })
        .await;
        if sent.is_err() {
            // Dropped unfinished: the peer gets a Reset (v2) or Close (v1), never a clean end.
            return;
        }
        let reusable = {
            let conn = lock(&conn);
            conn.body.is_none() && !conn.spoiled
        };
        if close || !reusable {
            let _ = poll_fn(|cx| Pin::new(&mut lock(&conn).stream).poll_shutdown(cx)).await;
            return;
        }
    }
}

/// What the handler's answer to a request is to become.
enum Answer {
    /// A response: its head, then its body in `framing`; `close` ends the stream after it.
    Send {
        head: Vec<u8>,
        body: Body,
        framing: ResponseFraming,
        close: bool,
    },
    /// Nothing more: the stream is dropped (the peer went away, or the request was refused).
    Drop,
    /// A 101: the stream is spliced with the upgraded connection after writing it.
    Upgrade(Response<Body>, UpgradeTo),
}

/// Hands one request to `handler` and returns its response, ready to send.
async fn answer<H, F>(
    conn: &Shared,
    mut head: RequestHead,
    keep_alive: bool,
    shutdown: &CancellationToken,
    handler: &mut H,
) -> Answer
where
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    let framing = match head.body_framing() {
        Ok(framing) => framing,
        Err(error) => return refuse(conn, &error).await,
    };
    let keep = keep_alive && head.keep_alive() && !head.close_after;
    let continue_first = head
        .headers
        .remove(EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // Only an HTTP/1.1 client may be sent a 1xx (RFC 9110 §15.2). It goes when the handler
    // first reads the body, as hyper's server did: a refused request's body is never sent.
    if continue_first && framing != RequestBodyFraming::Empty && head.version == Version::HTTP_11 {
        lock(conn).continue_unsent = CONTINUE;
    }
    let upgrade = head.headers.contains_key(UPGRADE);
    let (method, version) = (head.method.clone(), head.version);
    let Some(request) = request(head, conn, framing) else {
        let error = CodecError::Head("invalid request target".into());
        return refuse(conn, &error).await;
    };
    // The peer may go away (Argo CD's client cancelled): then the handler is dropped, and
    // with it the upstream request.
    let mut response = tokio::select! {
        response = handler(request) => response,
        () = watch_for_cancel(conn) => return Answer::Drop,
    };
    let status = response.status();
    if upgrade && status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(upgraded) = response.extensions_mut().remove::<UpgradeTo>() {
            return Answer::Upgrade(response, upgraded);
        }
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // A 101 with nothing to splice with: the peer would speak another protocol to a loop
        // that reads HTTP requests.
        tracing::warn!("a 101 answer without an upgraded connection; the connection is dropped");
        return Answer::Drop;
    }
    let (parts, body) = response.into_parts();
    // The body's exact size, else the handler's `Content-Length` (a relayed body's size is
    // not known to the wrappers around it; `write_body` holds the body to it), else chunked.
    let length = body
        .size_hint()
        .exact()
        .or_else(|| super::codec::content_length(&parts.headers).ok().flatten());
    let framing = match length {
        _ if bodiless(&method, status) => ResponseFraming::NoBody,
        Some(len) => ResponseFraming::Length(len),
        None if version == Version::HTTP_11 => ResponseFraming::Chunked,
        None => ResponseFraming::UntilClose,
    };
    // A request body the handler left unread (an early answer, a refusal) would read as the
    // next request: the stream closes after this answer, and the answer says so.
    // And an answer before the body was read takes back the `100 Continue` not yet sent.
    let body_left = {
        let mut conn = lock(conn);
        conn.continue_unsent = &[];
        conn.spoiled || conn.body.is_some()
    };
    let close =
        !keep || body_left || framing == ResponseFraming::UntilClose || shutdown.is_cancelled();
    let persistence = match (close, version) {
        (true, _) => Persistence::Close,
        (false, Version::HTTP_11) => Persistence::Unsaid,
        (false, _) => Persistence::KeepAlive,
    };
    let mut head = Vec::with_capacity(512);
    encode_response_head(
        parts.status,
        &parts.headers,
        framing,
        persistence,
        &mut head,
    );
    Answer::Send {
        head,
        body,
        framing,
        close,
    }
}

/// The request to hand on; `None` if the target is not a valid URI.
fn request(
    head: RequestHead,
    conn: &Shared,
    framing: RequestBodyFraming,
) -> Option<Request<RequestBody>> {
    let uri = head.target.parse::<http::Uri>().ok()?;
    let (decoder, remaining) = match framing {
        RequestBodyFraming::Empty => (None, Some(0)),
        RequestBodyFraming::Length(len) => (
            Some(BodyDecoder::Length(LengthDecoder::new(len))),
            Some(len),
        ),
        RequestBodyFraming::Chunked => {
            (Some(BodyDecoder::Chunked(ChunkedDecoder::default())), None)
        }
    };
    let body = RequestBody {
        conn: decoder.is_some().then(|| conn.clone()),
        remaining,
    };
    lock(conn).body = decoder;
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    Some(request)
}

/// Reads the next request head; `None` if the stream ended cleanly before one began. Gathered
/// like the client's response heads: parsed again only when a piece ends a line. `Err(None)`:
/// the stream failed or ended inside the head (nobody to answer).
async fn read_request_head(
    conn: &Shared,
    limits: &ServeLimits,
) -> Result<Option<RequestHead>, Option<CodecError>> {
    let max_head = limits.max_head;
    let mut gathered = BytesMut::new();
    // From the start of the wait: an idle keep-alive connection closes too (as the listener's
    // HTTP/2 connections do after the same time).
    let deadline = limits
        .head_timeout
        .map(|timeout| tokio::time::Instant::now() + timeout);
    loop {
        let pending = std::mem::take(&mut lock(conn).pending);
        let mut piece = if pending.is_empty() {
            let receive = poll_fn(|cx| lock(conn).stream.poll_recv(cx, max_head));
            let received = match deadline {
                None => receive.await,
                Some(deadline) => match tokio::time::timeout_at(deadline, receive).await {
                    Ok(received) => received,
                    Err(_) => {
                        tracing::debug!("request head not complete in time; connection closed");
                        return Err(None);
                    }
                },
            };
            match received {
                Ok(Some(piece)) => piece,
                Ok(None) if gathered.is_empty() => return Ok(None),
                Ok(None) | Err(_) => return Err(None),
            }
        } else {
            pending
        };
        if gathered.is_empty() {
            if let Some((head, len)) = parse_request_head(&piece, max_head)? {
                lock(conn).pending = piece.split_off(len);
                return Ok(Some(head));
            }
            gathered.extend_from_slice(&piece);
            continue;
        }
        let ends_a_line = piece.contains(&b'\n');
        gathered.extend_from_slice(&piece);
        if !ends_a_line && gathered.len() < max_head {
            continue;
        }
        if let Some((head, len)) = parse_request_head(&gathered, max_head)? {
            lock(conn).pending = gathered.split_off(len).freeze();
            return Ok(Some(head));
        }
    }
}

/// Answers a request that cannot be served (400, or 431 for a head over the limit) and closes.
async fn refuse(conn: &Shared, error: &CodecError) -> Answer {
    tracing::debug!(%error, "refused a request");
    let status = match error {
        CodecError::HeadTooLarge | CodecError::TooManyHeaders => {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
        CodecError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::BAD_REQUEST,
    };
    let response = status_response(status, "BadRequest", &error.to_string());
    let (parts, body) = response.into_parts();
    let framing = ResponseFraming::Length(body.size_hint().exact().unwrap_or(0));
    let mut head = Vec::with_capacity(256);
    encode_response_head(
        parts.status,
        &parts.headers,
        framing,
        Persistence::Close,
        &mut head,
    );
    if write_body(conn, head, body, framing).await.is_ok() {
        let _ = poll_fn(|cx| Pin::new(&mut lock(conn).stream).poll_shutdown(cx)).await;
    }
    Answer::Drop
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;
