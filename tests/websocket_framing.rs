//! Our WebSocket framing (transport::websocket) against raw bytes and against tungstenite, over
//! real TCP: fragments (the Go agent sends a message in 4 KiB fragments), control frames between
//! them, masks required one way and refused the other, limits enforced before any payload is
//! buffered, and every size of message intact both ways.

mod support;

use argocd_proxy::protocol::{data_message, encode, Frame, MAX_MESSAGE};
use argocd_proxy::transport::websocket::{self, WebSocketTransport};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use support::{listener, pattern, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// One raw frame: FIN, opcode, payload, masked when `mask` is given.
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![u8::from(fin) << 7 | opcode];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        len @ 0..=125 => out.push(masked | len as u8),
        len @ 126..=0xFFFF => {
            out.push(masked | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(masked | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one unmasked frame from a raw socket: (FIN and opcode byte, payload).
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server's frame is never masked");
    let len = match head[1] & 0x7F {
        126 => usize::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap() as usize,
        len => usize::from(len),
    };
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

/// A raw client upgraded against our server side: the socket and our transport.
async fn raw_client_to_our_server() -> (TcpStream, WebSocketTransport<TcpStream>) {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        websocket::accept(tcp, false, |_| Ok(())).await.unwrap()
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    // RFC 6455 §1.3's example key and its accept value.
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let accepted = within("accept", server).await.unwrap();
    (tcp, accepted.transport)
}

#[tokio::test]
async fn fragments_with_a_ping_between_them_make_one_message() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    let mut bytes = frame(false, 0x2, b"hel", Some(MASK));
    bytes.extend(frame(true, 0x9, b"still there?", Some(MASK)));
    bytes.extend(frame(false, 0x0, b"lo ", Some(MASK)));
    bytes.extend(frame(true, 0x0, b"world", Some(MASK)));
    tcp.write_all(&bytes).await.unwrap();
    let message = within("message", ours.next()).await.unwrap().unwrap();
    assert_eq!(&message[..], b"hello world");
    let (first, payload) = within("pong", read_frame(&mut tcp)).await;
    assert_eq!((first, &payload[..]), (0x8A, &b"still there?"[..]));
}

#[tokio::test]
async fn a_close_is_echoed_and_ends_the_stream() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    tcp.write_all(&frame(true, 0x8, &[0x03, 0xE9], Some(MASK)))
        .await
        .unwrap();
    assert!(within("end", ours.next()).await.is_none());
    let (first, payload) = within("close echo", read_frame(&mut tcp)).await;
    assert_eq!((first, &payload[..]), (0x88, &[0x03, 0xE9][..]));
}

/// Our client side, upgraded against the server at `addr`.
async fn our_client(addr: std::net::SocketAddr) -> WebSocketTransport<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/connect");
    websocket::connect(tcp, &url, None, false)
        .await
        .unwrap()
        .transport
}

async fn assert_fails(ours: &mut WebSocketTransport<TcpStream>, expected: &str) {
    let error = within("error", ours.next()).await.unwrap().unwrap_err();
    assert!(error.to_string().contains(expected), "{error}");
    assert!(
        ours.next().await.is_none(),
        "nothing after a protocol error"
    );
}

#[tokio::test]
async fn an_unmasked_frame_from_a_client_fails_the_connection() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    tcp.write_all(&frame(true, 0x2, b"x", None)).await.unwrap();
    assert_fails(&mut ours, "unmasked").await;
}

#[tokio::test]
async fn bad_frames_fail_the_connection() {
    let cases: [(Vec<u8>, &str); 4] = [
        (vec![0xC2, 0x80, 0, 0, 0, 0], "reserved bits"),
        (frame(true, 0x0, b"x", Some(MASK)), "continuation"),
        (
            [
                frame(false, 0x2, b"x", Some(MASK)),
                frame(true, 0x2, b"y", Some(MASK)),
            ]
            .concat(),
            "inside a fragmented",
        ),
        (frame(false, 0x9, b"", Some(MASK)), "control frame"),
    ];
    for (bytes, expected) in cases {
        let (mut tcp, mut ours) = raw_client_to_our_server().await;
        tcp.write_all(&bytes).await.unwrap();
        assert_fails(&mut ours, expected).await;
    }
}

/// A header announcing more than 16 MiB fails at once: nothing of it is buffered or awaited.
#[tokio::test]
async fn a_frame_over_the_limit_fails_before_its_payload_arrives() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
    header.extend_from_slice(&MASK);
    tcp.write_all(&header).await.unwrap();
    assert_fails(&mut ours, "limit").await;
}

/// Fragments each under the limit that add up to more than it fail the connection.
#[tokio::test]
async fn fragments_over_the_limit_together_fail_the_connection() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    let half = vec![7u8; MAX_MESSAGE / 2 + 1];
    let writer = tokio::spawn(async move {
        let _ = tcp.write_all(&frame(false, 0x2, &half, Some(MASK))).await;
        let _ = tcp.write_all(&frame(true, 0x0, &half, Some(MASK))).await;
        tcp
    });
    assert_fails(&mut ours, "limit").await;
    drop(writer);
}

/// Our client's messages of every size path (gathered small, written from where they are
/// large; whole, or a 5-byte head before a body we alone hold, masked in place, or share,
/// masked in a copy, or owned parts of one buffer, each masked in place) reach a tungstenite
/// server intact and masked as it requires, and a body the caller still holds is never masked
/// under it; the server's messages reach us.
#[tokio::test]
async fn messages_of_every_size_cross_both_ways_with_tungstenite() {
    let (listener, addr) = listener().await;
    let sizes = [0usize, 1, 125, 126, 4096, 4097, 65_535, 65_536, 300_000];
    let count = 5 * sizes.len();
    let peer = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut socket = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut received = Vec::new();
        for _ in 0..count {
            match socket.next().await.unwrap().unwrap() {
                Message::Binary(bytes) => received.push(bytes),
                other => panic!("unexpected {other:?}"),
            }
        }
        for bytes in &received {
            socket.send(Message::Binary(bytes.clone())).await.unwrap();
        }
        received
    });
    let mut ours = our_client(addr).await;
    let mut expected: Vec<Bytes> = Vec::new();
    let mut held: Vec<Bytes> = Vec::new();
    for &len in &sizes {
        let body: Bytes = pattern(len as u64, len).into();
        // Whole, and still held by us.
        ours.feed(body.clone().into()).await.unwrap();
        expected.push(body.clone());
        // Behind a head, still held by us.
        ours.feed(data_message(7, body.clone())).await.unwrap();
        expected.push(encode(&Frame::Data {
            id: 7,
            payload: body.clone(),
        }));
        // Behind a head, held by nobody else.
        ours.feed(data_message(9, Bytes::from(pattern(len as u64, len))))
            .await
            .unwrap();
        expected.push(encode(&Frame::Data {
            id: 9,
            payload: body.clone(),
        }));
        // Two payloads cut from one read, each held by its own frame alone (the agent's
        // download): each is masked in place, and masking one leaves the other intact.
        let mut read = BytesMut::from(&[&body[..], &body[..]].concat()[..]);
        let first = read.split_to(len);
        ours.feed(data_message(11, first)).await.unwrap();
        ours.feed(data_message(13, read)).await.unwrap();
        for id in [11, 13] {
            expected.push(encode(&Frame::Data {
                id,
                payload: body.clone(),
            }));
        }
        held.push(body);
    }
    ours.flush().await.unwrap();
    let received = within("peer", peer).await.unwrap();
    assert_eq!(received, expected);
    for (body, &len) in held.iter().zip(&sizes) {
        assert_eq!(body, &pattern(len as u64, len), "a held body was masked");
    }
    for message in &expected {
        let echoed = within("echo", ours.next()).await.unwrap().unwrap();
        assert_eq!(&echoed, message);
    }
}

/// Small messages that arrive together, in one read, are each their own allocation: a queued
/// small message never keeps the read buffer (and every other message in it) alive.
#[tokio::test]
async fn small_messages_read_together_do_not_share_a_buffer() {
    let (mut tcp, mut ours) = raw_client_to_our_server().await;
    let burst: Vec<u8> = (0..2000u32)
        .flat_map(|i| frame(true, 0x2, &i.to_be_bytes().repeat(50), Some(MASK)))
        .collect();
    tcp.write_all(&burst).await.unwrap();
    let mut held = Vec::new();
    for i in 0..2000u32 {
        let message = within("message", ours.next()).await.unwrap().unwrap();
        assert_eq!(message, i.to_be_bytes().repeat(50));
        held.push(message);
    }
    for (i, message) in held.into_iter().enumerate() {
        assert!(
            message.try_into_mut().is_ok(),
            "message {i} shares its buffer"
        );
    }
}

/// A server that masks its frames is refused, as RFC 6455 §5.1 requires of a client.
#[tokio::test]
async fn a_masked_frame_from_a_server_fails_the_connection() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            websocket::accept_key(key.as_bytes())
        );
        // The answer and the masked frame in one write: the frame is read with the head.
        let mut bytes = answer.into_bytes();
        bytes.extend(frame(true, 0x2, b"x", Some(MASK)));
        tcp.write_all(&bytes).await.unwrap();
        tcp
    });
    let mut ours = our_client(addr).await;
    let _server = within("server", server).await.unwrap();
    assert_fails(&mut ours, "masked WebSocket frame from a server").await;
}
