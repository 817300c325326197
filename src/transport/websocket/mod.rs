//! WebSocket ⇄ frame transport: both sides of the upgrade (RFC 6455 §4) with version
//! negotiation, then [`WebSocketTransport`] (`conn`), one binary message per tunnel frame, in
//! our own framing (`frame`). WebSocket pings are answered, a close frame is sent on shutdown,
//! and a peer that just drops TCP ends the stream with an error rather than a panic or a hang.
//! tungstenite remains for the accept-key digest (and as the independent peer in tests).

mod conn;
mod frame;
mod writer;

use std::io;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::handshake;
use conn::Role;
pub use conn::WebSocketTransport;

/// The longest upgrade request or response head either side reads.
pub const MAX_UPGRADE_HEAD: usize = 16 * 1024;

/// The most of a refusal's body the agent keeps (for its log line).
const MAX_REFUSAL_BODY: usize = 4 * 1024;

/// An upgrade request as the server's check sees it.
pub type Request = http::Request<()>;

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or closed during the upgrade.
    #[error("WebSocket upgrade: {0}")]
    Io(#[from] io::Error),
    /// The server answered with another status than 101 (401 for a bad token, 503…).
    #[error("the server answered the WebSocket upgrade with HTTP {status}")]
    Refused {
        /// The answer's status.
        status: u16,
        /// Seconds from `Retry-After`, if any.
        retry_after: Option<u64>,
        /// The start of the answer's body.
        body: Bytes,
    },
    /// The request or the answer is not a WebSocket upgrade (or the URL cannot be one).
    #[error("WebSocket upgrade: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> HandshakeError {
    HandshakeError::Invalid(why.into())
}

/// The server's side of an accepted upgrade.
pub struct Accepted<S> {
    /// The tunnel transport.
    pub transport: WebSocketTransport<S>,
    /// Whether we echoed the agent's v2 offer (then negotiation waits for its first message).
    pub echoed: bool,
}

/// Why the server refuses an upgrade request: the status and a short plain-text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status (401, 403, 405…).
    pub status: u16,
    /// Body text, e.g. `unauthorized\n` as the Go server sends it.
    pub body: &'static str,
}

/// Reads an HTTP head into `buf` until `parse` says it is complete; returns its length. Bytes
/// past it stay in `buf`: they are the peer's first frames.
async fn read_head<S, T>(
    io: &mut S,
    buf: &mut BytesMut,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(usize, T)>, String>,
) -> Result<(usize, T), HandshakeError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some(parsed) = parse(buf).map_err(invalid)? {
            return Ok(parsed);
        }
        if buf.len() >= MAX_UPGRADE_HEAD {
            return Err(invalid(format!("head over {MAX_UPGRADE_HEAD} bytes")));
        }
        buf.reserve(1024);
        if io.read_buf(buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// Ends an upgrade head (with the v2 negotiation header when `v2`) and sends it.
async fn send_head<S>(io: &mut S, mut head: String, v2: bool) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    if v2 {
        head += &format!(
            "{}: {}\r\n",
            handshake::PROTOCOL_HEADER,
            handshake::PROTOCOL_V2
        );
    }
    head += "\r\n";
    io.write_all(head.as_bytes()).await?;
    io.flush().await
}

fn header_has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case(name))
        .flat_map(|header| header.value.split(|&byte| byte == b','))
        .any(|value| value.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn header_values<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

/// Server side: completes the upgrade on `io`. `check` sees the request first and may refuse it
/// (401, 403…); a v2 offer is echoed when `v2_enabled`.
pub async fn accept<S, F>(
    mut io: S,
    v2_enabled: bool,
    check: F,
) -> Result<Accepted<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Result<(), Refusal>,
{
    let mut buf = BytesMut::new();
    let (len, request) = read_head(&mut io, &mut buf, |bytes| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(bytes).map_err(|error| error.to_string())? {
            httparse::Status::Partial => Ok(None),
            httparse::Status::Complete(len) => {
                let mut request = http::Request::builder()
                    .method(parsed.method.unwrap_or_default())
                    .uri(parsed.path.unwrap_or_default());
                for header in parsed.headers.iter() {
                    request = request.header(header.name, header.value);
                }
                let request = request.body(()).map_err(|error| error.to_string())?;
                let upgrade = parsed.method == Some("GET")
                    && header_has_token(parsed.headers, "upgrade", "websocket")
                    && header_has_token(parsed.headers, "connection", "upgrade")
                    && header_has_token(parsed.headers, "sec-websocket-version", "13");
                Ok(Some((len, (request, upgrade))))
            }
        }
    })
    .await?;
    let (request, upgrade) = request;
    let key = request.headers().get("sec-websocket-key").cloned();
    let refusal = match (upgrade, key.as_ref()) {
        (true, Some(_)) => check(&request).err(),
        _ => Some(Refusal {
            status: 400,
            body: "not a WebSocket upgrade\n",
        }),
    };
    if let Some(refusal) = refusal {
        let reason = http::StatusCode::from_u16(refusal.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Refused");
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n{}",
            refusal.status,
            refusal.body.len(),
            refusal.body
        );
        io.write_all(head.as_bytes()).await?;
        io.flush().await?;
        return Err(HandshakeError::Refused {
            status: refusal.status,
            retry_after: None,
            body: Bytes::from_static(refusal.body.as_bytes()),
        });
    }
    let offered = request.headers().get_all(handshake::PROTOCOL_HEADER);
    let echoed = handshake::server_echoes(v2_enabled, offered.iter().map(HeaderValue::as_bytes));
    let accept = accept_key(key.as_ref().map_or(&[][..], HeaderValue::as_bytes));
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n"
    );
    send_head(&mut io, head, echoed).await?;
    let _ = buf.split_to(len);
    Ok(Accepted {
        transport: WebSocketTransport::new(io, Role::Server, buf),
        echoed,
    })
}

/// The agent's side of a completed upgrade.
pub struct Connected<S> {
    /// The tunnel transport.
    pub transport: WebSocketTransport<S>,
    /// Whether we offered v2.
    pub offered: bool,
    /// Whether the server echoed it.
    pub echoed: bool,
}

/// What the agent needs of the server's answer to its upgrade.
struct Answer {
    status: u16,
    accept_ok: bool,
    upgrade_ok: bool,
    echoed: bool,
    retry_after: Option<u64>,
    content_length: Option<usize>,
}

/// Agent side: sends the upgrade for `url` over `io` (already TCP/TLS-connected) with
/// `Authorization: Bearer <token>` and, when `offer_v2`, the negotiation header.
pub async fn connect<S>(
    io: S,
    url: &str,
    token: Option<&str>,
    offer_v2: bool,
) -> Result<Connected<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connect_with_headers(io, url, token, offer_v2, &[]).await
}

/// [`connect`] with `extra` headers on the upgrade request (values must be valid).
pub async fn connect_with_headers<S>(
    mut io: S,
    url: &str,
    token: Option<&str>,
    offer_v2: bool,
    extra: &[(&str, &str)],
) -> Result<Connected<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let uri: http::Uri = url
        .parse()
        .map_err(|error| invalid(format!("server URL {url:?}: {error}")))?;
    if !matches!(uri.scheme_str(), Some("ws" | "wss" | "http" | "https")) {
        return Err(invalid(format!(
            "server URL {url:?} is not ws:// or wss://"
        )));
    }
    let host = uri
        .authority()
        .map(|authority| authority.as_str().rsplit('@').next().unwrap_or_default())
        .filter(|host| !host.is_empty())
        .ok_or_else(|| invalid(format!("server URL {url:?} has no host")))?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if let Some(token) = token {
        if HeaderValue::from_str(token).is_err() {
            return Err(invalid("the token is not a valid header value"));
        }
        head += &format!("Authorization: Bearer {token}\r\n");
    }
    for (name, value) in extra {
        if HeaderValue::from_str(value).is_err()
            || http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(invalid(format!("header {name:?} is not valid")));
        }
        head += &format!("{name}: {value}\r\n");
    }
    send_head(&mut io, head, offer_v2).await?;
    let expected_accept = accept_key(key.as_bytes());
    let mut buf = BytesMut::new();
    let (len, answer) = read_head(&mut io, &mut buf, |bytes| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(bytes).map_err(|error| error.to_string())? {
            httparse::Status::Partial => Ok(None),
            httparse::Status::Complete(len) => {
                let number = |name| -> Option<u64> {
                    header_values(parsed.headers, name)
                        .next()
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .and_then(|value| value.trim().parse().ok())
                };
                let answer = Answer {
                    status: parsed.code.unwrap_or_default(),
                    accept_ok: header_values(parsed.headers, "sec-websocket-accept")
                        .any(|value| value.trim_ascii() == expected_accept.as_bytes()),
                    upgrade_ok: header_has_token(parsed.headers, "upgrade", "websocket")
                        && header_has_token(parsed.headers, "connection", "upgrade"),
                    echoed: handshake::agent_version(
                        offer_v2,
                        header_values(parsed.headers, handshake::PROTOCOL_HEADER),
                    ) == crate::protocol::Version::V2,
                    retry_after: number("retry-after"),
                    content_length: number("content-length")
                        .and_then(|len| usize::try_from(len).ok()),
                };
                Ok(Some((len, answer)))
            }
        }
    })
    .await?;
    let _ = buf.split_to(len);
    if answer.status != 101 {
        // The body says why (e.g. `unauthorized`); read what fits, never wait past its end.
        let wanted = answer.content_length.unwrap_or(0).min(MAX_REFUSAL_BODY);
        while buf.len() < wanted {
            buf.reserve(wanted - buf.len());
            if io.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        let keep = match answer.content_length {
            Some(_) => wanted.min(buf.len()),
            None => buf.len().min(MAX_REFUSAL_BODY),
        };
        buf.truncate(keep);
        return Err(HandshakeError::Refused {
            status: answer.status,
            retry_after: answer.retry_after,
            body: buf.freeze(),
        });
    }
    if !answer.upgrade_ok {
        return Err(invalid(
            "101 without Upgrade: websocket and Connection: upgrade",
        ));
    }
    if !answer.accept_ok {
        return Err(invalid("Sec-WebSocket-Accept does not match our key"));
    }
    Ok(Connected {
        transport: WebSocketTransport::new(io, Role::Client, buf),
        offered: offer_v2,
        echoed: answer.echoed,
    })
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2), for
/// servers that answer the upgrade themselves (the server's hyper listener does).
pub fn accept_key(client_key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(client_key)
}

/// Server side, after the HTTP layer has answered 101 itself: wraps the upgraded connection.
pub async fn from_upgraded<S>(io: S) -> WebSocketTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketTransport::new(io, Role::Server, BytesMut::new())
}
