//! WebSocket ⇄ frame transport: one binary message is one frame. WebSocket pings are answered
//! (tungstenite replies while reading), a close frame is sent on shutdown, and a peer that just
//! drops TCP ends the stream with an error rather than a panic or a hang.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::client::Request as ClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::readahead::Readahead;
use crate::protocol::{handshake, MAX_MESSAGE};

/// tungstenite's read buffer, zero-filled (so resident) on every read: small, because every
/// idle tunnel keeps one; bursts are read ahead below it by [`Readahead`].
const WEBSOCKET_READ_BUFFER: usize = 1024;

/// The handshake failed; the message says at which step.
pub type HandshakeError = WsError;

/// The WebSocket limits both ends apply: no message or frame over [`MAX_MESSAGE`] (the Go
/// peers' read limit), so an oversized message from a peer ends that session, as it does in Go.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A WebSocket carrying tunnel frames.
pub struct WebSocketTransport<S> {
    socket: WebSocketStream<Readahead<S>>,
}

impl<S> WebSocketTransport<S> {
    fn new(socket: WebSocketStream<Readahead<S>>) -> Self {
        Self { socket }
    }
}

fn to_io(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketTransport<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let message = match Pin::new(&mut self.socket).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                    return Poll::Ready(None)
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(to_io(error)))),
                Poll::Ready(Some(Ok(message))) => message,
            };
            match message {
                Message::Binary(bytes) => return Poll::Ready(Some(Ok(bytes))),
                Message::Text(text) => {
                    // The Go reader would decode a text message as a frame; no peer sends one.
                    // Skipping it (and saying so) keeps a confused client from injecting frames.
                    tracing::warn!(
                        len = text.len(),
                        "ignoring a text WebSocket message on the tunnel"
                    );
                }
                // Pings are answered by tungstenite; the close handshake ends the stream next.
                Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for WebSocketTransport<S> {
    type Error = io::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_ready(cx).map_err(to_io)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        Pin::new(&mut self.socket)
            .start_send(Message::Binary(item))
            .map_err(to_io)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx).map_err(to_io)
    }

    /// Sends a WebSocket close frame (the Go peer closes TCP without one; we do better).
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.socket).poll_close(cx) {
            Poll::Ready(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Poll::Ready(Ok(()))
            }
            other => other.map_err(to_io),
        }
    }
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

impl Refusal {
    fn into_response(self) -> ErrorResponse {
        let mut response = ErrorResponse::new(Some(self.body.to_owned()));
        *response.status_mut() =
            tokio_tungstenite::tungstenite::http::StatusCode::from_u16(self.status)
                .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST);
        response
    }
}

/// Server side: completes the upgrade on `io`. `check` sees the request first and may refuse it
/// (401, 403…); a v2 offer is echoed when `v2_enabled`.
pub async fn accept<S, F>(io: S, v2_enabled: bool, check: F) -> Result<Accepted<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Result<(), Refusal> + Unpin,
{
    let mut echoed = false;
    // tungstenite's callback signature returns its (large) ErrorResponse by value.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        check(request).map_err(Refusal::into_response)?;
        let offered = request.headers().get_all(handshake::PROTOCOL_HEADER);
        if handshake::server_echoes(v2_enabled, offered.iter().map(HeaderValue::as_bytes)) {
            echoed = true;
            response.headers_mut().insert(
                handshake::PROTOCOL_HEADER,
                HeaderValue::from_static(handshake::PROTOCOL_V2),
            );
        }
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async_with_config(
        Readahead::new(io),
        callback,
        Some(config()),
    )
    .await?;
    Ok(Accepted {
        transport: WebSocketTransport::new(socket),
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
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request: ClientRequest = url.into_client_request()?;
    let headers = request.headers_mut();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|error| WsError::HttpFormat(error.into()))?;
        headers.insert("authorization", value);
    }
    if offer_v2 {
        headers.insert(
            handshake::PROTOCOL_HEADER,
            HeaderValue::from_static(handshake::PROTOCOL_V2),
        );
    }
    let (socket, response) =
        tokio_tungstenite::client_async_with_config(request, Readahead::new(io), Some(config()))
            .await?;
    let echo = response.headers().get_all(handshake::PROTOCOL_HEADER);
    let echoed = handshake::agent_version(offer_v2, echo.iter().map(HeaderValue::as_bytes))
        == crate::protocol::Version::V2;
    Ok(Connected {
        transport: WebSocketTransport::new(socket),
        offered: offer_v2,
        echoed,
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
    use tokio_tungstenite::tungstenite::protocol::Role;
    WebSocketTransport::new(
        WebSocketStream::from_raw_socket(Readahead::new(io), Role::Server, Some(config())).await,
    )
}
