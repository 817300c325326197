//! A Go-peer emulator: raw tungstenite plus hand-built v1 frames, behaving as the Go
//! implementation does (seed-protocol.md §1): no negotiation header, ids from 1, Pong for
//! every Ping, unknown types ignored, Close without a WebSocket close frame.

use std::net::SocketAddr;

use argocd_proxy::protocol::{decode, encode, Frame};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One end of a v1 tunnel driven frame by frame.
pub struct GoPeer<S> {
    socket: WebSocketStream<S>,
    /// Header values the peer saw on the upgrade (the agent's request or the server's 101).
    pub seen_protocol_header: bool,
}

impl<S> GoPeer<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub async fn send(&mut self, frame: Frame) {
        self.socket
            .send(Message::Binary(encode(&frame)))
            .await
            .expect("go peer send");
    }

    /// The next tunnel frame, answering Pings on the way as the Go read loop does.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            let message = match self.socket.next().await? {
                Ok(message) => message,
                Err(_) => return None,
            };
            let Message::Binary(bytes) = message else {
                continue;
            };
            match decode(bytes) {
                Ok(Frame::Ping { .. }) => {
                    self.send(Frame::Pong {
                        payload: Bytes::new(),
                    })
                    .await;
                }
                Ok(frame) => return Some(frame),
                Err(_) => continue, // Go logs and skips
            }
        }
    }

    /// Reads Data for `id` until the bytes contain `marker` (an HTTP head's blank line), or the
    /// stream's Close.
    pub async fn read_until(&mut self, id: u32, marker: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        while !bytes.windows(marker.len()).any(|window| window == marker) {
            match self.recv().await {
                Some(Frame::Data { id: got, payload }) if got == id => {
                    bytes.extend_from_slice(&payload)
                }
                Some(Frame::Close { id: got }) if got == id => break,
                Some(_) => {}
                None => break,
            }
        }
        bytes
    }

    /// Drops TCP without a close frame, as the Go peer does.
    pub fn drop_tcp(self) {
        drop(self.socket.into_inner());
    }
}

/// The Go server: accepts one upgrade, ignores any negotiation header.
pub async fn go_server(listener: &TcpListener) -> GoPeer<TcpStream> {
    let (tcp, _) = listener.accept().await.expect("accept");
    let mut seen = false;
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let callback = |request: &Request, response: Response| {
        seen = request.headers().contains_key("x-argocd-proxy-protocol");
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .expect("upgrade");
    GoPeer {
        socket,
        seen_protocol_header: seen,
    }
}

/// The Go agent: dials with `Authorization: Bearer token` and no negotiation header.
pub async fn go_agent(addr: SocketAddr) -> GoPeer<TcpStream> {
    go_agent_with_token(addr, "token").await
}

/// The Go agent with a given token.
pub async fn go_agent_with_token(addr: SocketAddr, token: &str) -> GoPeer<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("ws://{addr}/connect")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    GoPeer {
        seen_protocol_header: response.headers().contains_key("x-argocd-proxy-protocol"),
        socket,
    }
}
