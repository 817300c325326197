//! Our own HTTP/1.1 client: one request written on a connection, its response head read, the
//! body handed on as slices of what the connection received. The server runs it on tunnel
//! streams (to the agent), the agent on its connections to the upstream for watches and
//! HTTP/1.1-only destinations. It
//! replaces a hyper client connection, which holds ~14 KiB for as long as a watch idles (S9
//! and F in docs/benchmarks.md); this holds the connection and a decoder.
//!
//! The request body is written before the response is read, as the Go agent does; if the
//! peer answers early and stops reading, the write fails and the answer is read anyway.

mod body;
pub(crate) mod decode;
pub(crate) mod codec;
mod request_body;
mod respond;
mod pieces;
mod serve;
mod upgrade;
mod server_codec;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

pub(crate) use body::{ResponseBody, Reuse};
use codec::{encode_chunk, encode_request_head, parse_response_head, CodecError, RequestFraming};
use pieces::PIECE;
pub(crate) use pieces::{Pieces, BURST_PIECE, TCP_BURST_PIECE};
pub(crate) use request_body::{RequestBody, ServerIo};
pub(crate) use serve::{serve, ServeLimits};
pub(crate) use upgrade::UpgradeTo;

use crate::http::BoxError;
use crate::mux::MuxStream;
use crate::protocol::Payload;

/// A connection HTTP/1.1 exchanges run on, one after another: written as a byte stream, read
/// as the pieces it received, so that a body waiting for its next piece holds no buffer.
pub(crate) trait Conn: AsyncWrite + Unpin + Send + 'static {
    /// The next piece received, at most `max` bytes; `None` at the end.
    fn poll_recv(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>>;

    /// Most bytes a body asks [`Conn::poll_recv`] for at once (sockets and tunnel streams set
    /// their own).
    fn body_piece(&self) -> usize {
        PIECE
    }

    /// Writes the front of `data` and removes it from `data`; how many bytes that was. A
    /// tunnel stream takes the bytes without a copy, owned ones as owned (the agent's WebSocket
    /// writer masks those where they are); a socket writes them from where they are.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Payload) -> Poll<io::Result<usize>> {
        match data {
            Payload::Owned(data) => poll_write_front(self, cx, data),
            Payload::Shared(data) => poll_write_front(self, cx, data),
        }
    }
}

/// Writes the front of `data` as a byte stream and removes what was written.
fn poll_write_front<C: Conn + ?Sized>(
    conn: &mut C,
    cx: &mut Context<'_>,
    data: &mut impl Buf,
) -> Poll<io::Result<usize>> {
    let written = std::task::ready!(Pin::new(&mut *conn).poll_write(cx, data.chunk()))?;
    if written == 0 && data.has_remaining() {
        // As `write_all`: a writer that takes nothing would have the caller loop forever.
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    data.advance(written);
    Poll::Ready(Ok(written))
}

impl Conn for MuxStream {
    fn poll_recv(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        MuxStream::poll_recv(self, cx, max)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Payload) -> Poll<io::Result<usize>> {
        match data {
            Payload::Owned(data) => MuxStream::poll_send_owned(self, cx, data),
            Payload::Shared(data) => MuxStream::poll_send(self, cx, data),
        }
    }

    fn body_piece(&self) -> usize {
        TUNNEL_BODY_PIECE
    }
}

/// What is left of a received piece, kept while its connection waits for more: its own copy
/// or nothing (the decoders ask for more only once they used all they had, so today it is
/// always nothing; the copy keeps that an optimisation, not a condition of correctness). A
/// slice, even an empty one, keeps alive the whole buffer it was cut from, and the tunnel's
/// reader cuts many streams' messages out of one 64 KiB read: idle watches each holding a
/// slice of a different read would hold them all.
pub(crate) fn detach(pending: &mut Bytes) {
    *pending = if pending.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(pending)
    };
}

/// Most bytes a body asks a tunnel stream for: one whole Data frame at the default
/// `max_frame_payload`, handed on without a split. 16 KiB reads cut every frame in four and
/// the server wrote a download to its client in four times as many sends (0.35 → 0.27 CPU s
/// per GiB in S1). A stream's window grows only when the reader caught up *and* a quarter of
/// it went by within two round trips (window.rs), so whole-frame reads by a slow reader do
/// not grow it (S6).
const TUNNEL_BODY_PIECE: usize = 64 * 1024;

/// Writes all of `data` (a tunnel stream takes it without a copy).
async fn send_all<C: Conn>(conn: &mut C, data: Bytes) -> io::Result<()> {
    let mut data = Payload::owned_if_alone(data);
    while !data.is_empty() {
        poll_fn(|cx| conn.poll_send(cx, &mut data)).await?;
    }
    Ok(())
}

/// What the peer answered.
pub(crate) enum Answer<C> {
    /// A response; its body reads the rest of it from the connection.
    Response(Response<ResponseBody<C>>),
    /// 101 to an upgrade request: the connection now carries the new protocol; `pending` is
    /// what followed the head.
    Upgraded {
        head: Response<()>,
        conn: C,
        pending: Bytes,
    },
}

/// Why an exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the peer closed the connection before answering")]
    NoAnswer,
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Sends a request (`parts`: origin-form URI, hop-by-hop headers already removed; `body`) on
/// `conn` and reads the response head. `upgrade`: a 101 is an upgrade, not an interim
/// response. `reuse` gets the connection back after a body that ended cleanly, when both
/// sides keep it. `parts` stay the caller's, without their framing headers (made again from
/// the method and body on every send), so a bodiless request can be sent again.
pub(crate) async fn exchange<C, B>(
    mut conn: C,
    parts: &mut http::request::Parts,
    mut body: B,
    upgrade: bool,
    reuse: Option<Reuse<C>>,
) -> Result<Answer<C>, ExchangeError>
where
    C: Conn,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let framing = request_framing(&parts.method, &body);
    // Framing is this hop's; `Expect` was answered by the client's connection already.
    for name in [CONTENT_LENGTH, TRANSFER_ENCODING, EXPECT] {
        parts.headers.remove(name);
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut head = Vec::with_capacity(512);
    encode_request_head(&parts.method, path, &parts.headers, framing, &mut head);
    let written = async {
        conn.write_all(&head).await.map_err(ExchangeError::Write)?;
        if framing == RequestFraming::None {
            // A TLS connection may hold written bytes in its buffer until flushed.
            return conn.flush().await.map_err(ExchangeError::Write);
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| ExchangeError::RequestBody(error.into()))?;
            let Ok(data) = frame.into_data() else {
                continue; // request trailers are not relayed
            };
            if data.is_empty() {
                continue;
            }
            let write = if framing == RequestFraming::Chunked {
                let mut chunk = Vec::with_capacity(data.len() + 16);
                encode_chunk(&data, &mut chunk);
                conn.write_all(&chunk).await
            } else {
                send_all(&mut conn, data).await
            };
            write.map_err(ExchangeError::Write)?;
        }
        if framing == RequestFraming::Chunked {
            conn.write_all(b"0\r\n\r\n")
                .await
                .map_err(ExchangeError::Write)?;
        }
        conn.flush().await.map_err(ExchangeError::Write)
    }
    .await;
    let written = match written {
        Err(ExchangeError::RequestBody(error)) => return Err(ExchangeError::RequestBody(error)),
        other => other,
    };
    let (head, pending) = match read_head(&mut conn, upgrade).await {
        Ok(answer) => answer,
        // No answer: the write's failure, if there was one, is the cause.
        Err(error) => return Err(written.err().unwrap_or(error)),
    };
    if upgrade && head.status == StatusCode::SWITCHING_PROTOCOLS {
        let mut response = Response::new(());
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        return Ok(Answer::Upgraded {
            head: response,
            conn,
            pending,
        });
    }
    let mut head = head;
    let (framing, reusable) = codec::settle_framing(&parts.method, &mut head)?;
    let reuse = reuse.filter(|_| reusable && head.keep_alive() && written.is_ok());
    let mut response = Response::new(ResponseBody::new(conn, pending, framing, reuse));
    *response.status_mut() = head.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = head.headers;
    Ok(Answer::Response(response))
}

/// How the request body goes on the stream: its length when known, else chunked; none for a
/// bodiless request, except `Content-Length: 0` for the methods that expect a body.
fn request_framing(method: &Method, body: &impl Body) -> RequestFraming {
    if body.is_end_stream() {
        return match *method {
            Method::POST | Method::PUT | Method::PATCH => RequestFraming::Length(0),
            _ => RequestFraming::None,
        };
    }
    body.size_hint()
        .exact()
        .map_or(RequestFraming::Chunked, RequestFraming::Length)
}

/// Reads the final response head (at most [`codec::MAX_INTERIM`] 1xx before it; a 101 is
/// final only for an upgrade, and an error otherwise); returns it and the bytes that followed
/// it. A head that fits one received chunk is parsed in place; a head in pieces is gathered in
/// one buffer and parsed again only when a piece ends a line, so a peer dribbling it byte by
/// byte costs at most a parse per header line (≤ `MAX_HEADERS`), each within `MAX_HEAD`.
async fn read_head(
    conn: &mut impl Conn,
    upgrade: bool,
) -> Result<(codec::ResponseHead, Bytes), ExchangeError> {
    let mut gathered = BytesMut::new();
    let mut interim = 0;
    loop {
        let mut chunk = poll_fn(|cx| conn.poll_recv(cx, codec::MAX_HEAD))
            .await
            .map_err(ExchangeError::Read)?
            .ok_or(ExchangeError::NoAnswer)?;
        if gathered.is_empty() {
            if let Some(head) = final_head(&mut chunk, upgrade, &mut interim)? {
                return Ok((head, chunk));
            }
            gathered.extend_from_slice(&chunk);
            continue;
        }
        let ends_a_line = chunk.contains(&b'\n');
        gathered.extend_from_slice(&chunk);
        if !ends_a_line && gathered.len() < codec::MAX_HEAD {
            continue;
        }
        if let Some(head) = final_head(&mut gathered, upgrade, &mut interim)? {
            return Ok((head, gathered.split().freeze()));
        }
    }
}

/// Takes the complete heads at the start of `bytes` until the final one, counting interim
/// ones in `interim`; `None` when more bytes are needed.
fn final_head<B>(
    bytes: &mut B,
    upgrade: bool,
    interim: &mut usize,
) -> Result<Option<codec::ResponseHead>, ExchangeError>
where
    B: bytes::Buf + std::ops::Deref<Target = [u8]>,
{
    while let Some((head, len)) = parse_response_head(bytes)? {
        bytes.advance(len);
        let status = head.status;
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
            return Err(CodecError::UnexpectedUpgrade.into());
        }
        if !status.is_informational() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
        *interim += 1;
        if *interim > codec::MAX_INTERIM {
            return Err(CodecError::TooManyInterim.into());
        }
    }
    Ok(None)
}
