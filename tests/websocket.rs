//! The mux over a real WebSocket on loopback, and the WebSocket adapter's own duties:
//! answering pings, ignoring text, refusing oversized messages, closing properly, surviving a
//! peer that drops TCP.

mod support;

use std::io::ErrorKind;

use argocd_proxy::mux::SessionEnd;
use argocd_proxy::protocol::{encode, Frame, MAX_MESSAGE};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::{
    connected_pair, limits, listener, middlebox, our_agent, our_server, pattern, within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn thousand_streams(v2: bool) {
    let (server, mut agent) = connected_pair(v2, v2).await;
    tokio::spawn(async move {
        while let Some(incoming) = agent.session.incoming.accept().await {
            tokio::spawn(async move {
                let mut stream = incoming.accept();
                let len = stream.read_u64().await.unwrap() as usize;
                let mut body = vec![0; len];
                stream.read_exact(&mut body).await.unwrap();
                stream.write_all(&body).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    let mut tasks = Vec::new();
    for index in 0..1000u64 {
        let handle = server.session.handle.clone();
        tasks.push(tokio::spawn(async move {
            let body = pattern(index, (index as usize * 7919) % 50_000);
            let mut stream = handle.open(b"kubernetes").await.unwrap();
            stream.write_u64(body.len() as u64).await.unwrap();
            stream.write_all(&body).await.unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.unwrap();
            assert!(back == body, "stream {index} differs");
        }));
    }
    for task in tasks {
        within("streams", task).await.unwrap();
    }
}

#[tokio::test]
async fn thousand_streams_over_websocket_v2() {
    thousand_streams(true).await;
}

#[tokio::test]
async fn thousand_streams_over_websocket_v1() {
    thousand_streams(false).await;
}

/// A raw WebSocket client against our server side of the transport.
async fn raw_client_and_server() -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    support::ServerSide,
) {
    let (listener, addr) = listener().await;
    let client = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let url = format!("ws://{addr}/connect");
        tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .unwrap()
            .0
    });
    let server = within("server", our_server(&listener, true, limits())).await;
    (within("client", client).await.unwrap(), server)
}

/// The next binary tunnel message, skipping WebSocket control messages.
async fn next_binary(
    client: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Option<Bytes> {
    while let Some(message) = client.next().await {
        if let Message::Binary(bytes) = message.ok()? {
            return Some(bytes);
        }
    }
    None
}

#[tokio::test]
async fn websocket_pings_are_answered() {
    let (mut client, _server) = raw_client_and_server().await;
    client
        .send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let pong = within("pong", async {
        loop {
            if let Message::Pong(payload) = client.next().await.unwrap().unwrap() {
                return payload;
            }
        }
    })
    .await;
    assert_eq!(&pong[..], b"are you there");
}

/// A text message is skipped; the session still answers a tunnel Ping afterwards.
#[tokio::test]
async fn text_messages_are_ignored() {
    let (mut client, server) = raw_client_and_server().await;
    let ping = encode(&Frame::Ping {
        payload: Bytes::new(),
    });
    client.send(Message::text("\u{6}\0\0\0\0")).await.unwrap();
    client.send(Message::Binary(ping)).await.unwrap();
    let answer = within("pong frame", next_binary(&mut client))
        .await
        .unwrap();
    assert_eq!(
        &answer[..],
        &encode(&Frame::Pong {
            payload: Bytes::new()
        })[..]
    );
    assert!(!server.session.handle.is_closed());
}

/// A message over 16 MiB ends the session (as in Go), with an error on its streams.
#[tokio::test]
async fn oversized_message_ends_the_session() {
    let (mut client, server) = raw_client_and_server().await;
    let handle = server.session.handle.clone();
    let open = tokio::spawn(async move { handle.open(b"t").await });
    let connect = within("connect", next_binary(&mut client)).await.unwrap();
    assert_eq!(connect[0], 0x01);
    client
        .send(Message::Binary(encode(&Frame::Connected { id: 1 })))
        .await
        .unwrap();
    let mut stream = within("open", open).await.unwrap().unwrap();
    let mut huge = vec![0u8; MAX_MESSAGE + 1];
    huge[..5].copy_from_slice(&[3, 0, 0, 0, 1]);
    let _ = client.send(Message::Binary(Bytes::from(huge))).await;
    let error = within("read", stream.read_to_end(&mut Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConnectionAborted);
    let end = server.session.handle.closed().await;
    assert!(matches!(end, SessionEnd::Transport(_)), "{end:?}");
}

/// close() sends a WebSocket close frame (the Go peer just drops TCP).
#[tokio::test]
async fn close_sends_a_close_frame() {
    let (mut client, server) = raw_client_and_server().await;
    server.session.handle.close();
    let closed = within("close frame", async {
        while let Some(message) = client.next().await {
            if let Ok(Message::Close(_)) = message {
                return true;
            }
        }
        false
    })
    .await;
    assert!(closed);
    assert_eq!(server.session.handle.closed().await, SessionEnd::LocalClose);
}

/// A connection cut without close frames mid-transfer is an error on both ends' streams.
#[tokio::test]
async fn dropped_tcp_is_an_error_on_both_ends() {
    for v2 in [true, false] {
        let (server_listener, server_addr) = listener().await;
        let (box_listener, box_addr) = listener().await;
        let cut = middlebox::cuttable(box_listener, server_addr).await;
        let agent = tokio::spawn(our_agent(box_addr, v2, limits()));
        let server = within("server", our_server(&server_listener, v2, limits())).await;
        let mut agent = within("agent", agent).await.unwrap();
        let handle = server.session.handle.clone();
        let opener = tokio::spawn(async move {
            let mut stream = handle.open(b"t").await.unwrap();
            stream.write_all(b"request").await.unwrap();
            stream
        });
        let mut agent_stream = within("accept", agent.session.incoming.accept())
            .await
            .unwrap()
            .accept();
        let mut server_stream = within("open", opener).await.unwrap();
        let mut request = [0u8; 7];
        agent_stream.read_exact(&mut request).await.unwrap();
        agent_stream.write_all(b"partial").await.unwrap();
        let mut partial = [0u8; 7];
        server_stream.read_exact(&mut partial).await.unwrap();
        cut.send(()).unwrap();
        let error = within("server read", server_stream.read_to_end(&mut Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionAborted,
            "v2={v2}: {error}"
        );
        let error = within("agent read", agent_stream.read_to_end(&mut Vec::new()))
            .await
            .unwrap_err();
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionAborted,
            "v2={v2}: {error}"
        );
    }
}

/// A refused upgrade answers with the refusal's status and body, and no session starts.
#[tokio::test]
async fn refused_upgrade_gets_its_status() {
    use argocd_proxy::transport::websocket::{self, Refusal};
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let refuse = |_: &_| {
            Err(Refusal {
                status: 401,
                body: "unauthorized\n",
            })
        };
        websocket::accept(tcp, true, refuse).await.is_err()
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/connect");
    let error = websocket::connect(tcp, &url, Some("wrong"), true)
        .await
        .err()
        .unwrap();
    match error {
        websocket::HandshakeError::Refused { status, body, .. } => {
            assert_eq!(status, 401);
            assert_eq!(&body[..], b"unauthorized\n");
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
    assert!(within("server", server).await.unwrap());
}

/// Over a real WebSocket: a reader that stalls holds at most its window while another stream
/// on the same tunnel moves 16 MiB each way (v2, progress asserted, not time).
#[tokio::test]
async fn stalled_reader_does_not_block_other_streams_over_websocket() {
    let (server, mut agent) = connected_pair(true, true).await;
    let window = limits().stream_window as usize;
    let handle = server.session.handle.clone();
    let mut stalled = handle.open(b"stalled").await.unwrap();
    stalled.write_all(b"go").await.unwrap();
    let busy = handle.open(b"busy").await.unwrap();
    let mut agent_stalled = agent.session.incoming.accept().await.unwrap().accept();
    let mut agent_busy = agent.session.incoming.accept().await.unwrap().accept();
    let flood = tokio::spawn(async move {
        let chunk = vec![1u8; 64 * 1024];
        while agent_stalled.write_all(&chunk).await.is_ok() {}
    });
    let body = pattern(9, 16 * 1024 * 1024);
    let expected = body.clone();
    let echo = tokio::spawn(async move {
        let mut got = vec![0; expected.len()];
        agent_busy.read_exact(&mut got).await.unwrap();
        agent_busy.write_all(&got).await.unwrap();
        agent_busy.shutdown().await.unwrap();
        agent_busy
    });
    let (mut busy_read, mut busy_write) = tokio::io::split(busy);
    let mut back = Vec::new();
    let ((), read) = tokio::join!(
        async {
            busy_write.write_all(&body).await.unwrap();
            busy_write.shutdown().await.unwrap();
        },
        within("busy read", busy_read.read_to_end(&mut back))
    );
    read.unwrap();
    within("echo", echo).await.unwrap();
    assert!(back == body, "busy stream corrupted");
    let stats = handle.stats();
    assert!(
        stats.buffered <= window,
        "stalled stream holds {} > window {window}",
        stats.buffered
    );
    assert!(
        agent.session.handle.stats().counters.credit_stalls > 0,
        "flood never hit its window"
    );
    let mut first = [0u8; 1];
    stalled.read_exact(&mut first).await.unwrap();
    flood.abort();
}
