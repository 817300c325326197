//! Version negotiation for every pairing, over real WebSockets on loopback (DESIGN.md §3).

mod support;

use argocd_proxy::protocol::{Frame, Version};
use bytes::Bytes;
use support::{connected_pair, gopeer, limits, listener, middlebox, our_agent, our_server, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Our agent and our server settle on v2, and the agent learns the server's identity.
#[tokio::test]
async fn our_agent_and_our_server_speak_v2() {
    let (server, agent) = connected_pair(true, true).await;
    assert_eq!(server.negotiated.version, Version::V2);
    assert_eq!(agent.negotiated.version, Version::V2);
    assert_eq!(
        agent.negotiated.peer.server_id.as_deref(),
        Some("replica-a")
    );
    assert_eq!(agent.negotiated.peer.replica_count, Some(1));
    assert_eq!(
        server.negotiated.peer.stream_window,
        Some(limits().stream_window)
    );
    assert_eq!(server.session.handle.version(), Version::V2);
    assert_eq!(agent.session.handle.version(), Version::V2);
}

/// Either end with v2 off gives v1 on both.
#[tokio::test]
async fn v2_disabled_on_either_end_gives_v1_on_both() {
    for (server_v2, agent_offers) in [(false, true), (true, false), (false, false)] {
        let (server, agent) = connected_pair(server_v2, agent_offers).await;
        assert_eq!(
            server.negotiated.version,
            Version::V1,
            "{server_v2} {agent_offers}"
        );
        assert_eq!(
            agent.negotiated.version,
            Version::V1,
            "{server_v2} {agent_offers}"
        );
    }
}

/// Our agent against a v1-only (Go) server: v1, and the Go server's Connect is served.
#[tokio::test]
async fn our_agent_works_with_a_v1_only_server() {
    let (listener, addr) = listener().await;
    let agent = tokio::spawn(our_agent(addr, true, limits()));
    let mut go = within("go server accepts", gopeer::go_server(&listener)).await;
    assert!(go.seen_protocol_header, "our agent offers v2");
    let mut agent = within("agent", agent).await.unwrap();
    assert_eq!(agent.negotiated.version, Version::V1);

    go.send(Frame::Connect {
        id: 1,
        target: Bytes::from_static(b"127.0.0.1:6443"),
    })
    .await;
    let incoming = within("incoming", agent.session.incoming.accept())
        .await
        .unwrap();
    assert_eq!(incoming.target(), b"127.0.0.1:6443");
    let mut stream = incoming.accept();
    assert_eq!(go.recv().await, Some(Frame::Connected { id: 1 }));
    go.send(Frame::Data {
        id: 1,
        payload: Bytes::from_static(b"hello"),
    })
    .await;
    let mut got = [0u8; 5];
    within("data", stream.read_exact(&mut got)).await.unwrap();
    stream.write_all(b"HELLO").await.unwrap();
    drop(stream);
    assert_eq!(
        go.recv().await,
        Some(Frame::Data {
            id: 1,
            payload: Bytes::from_static(b"HELLO")
        })
    );
    assert_eq!(go.recv().await, Some(Frame::Close { id: 1 }));
}

/// A v1-only (Go) agent against our server: v1 at once (no wait for a first message), ids
/// from 1, no Data before Connected.
#[tokio::test]
async fn a_v1_only_agent_works_with_our_server() {
    let (listener, addr) = listener().await;
    let go = tokio::spawn(gopeer::go_agent(addr));
    let server = within("server accepts", our_server(&listener, true, limits())).await;
    let mut go = within("go agent", go).await.unwrap();
    assert!(!go.seen_protocol_header, "no echo without an offer");
    assert_eq!(server.negotiated.version, Version::V1);

    let handle = server.session.handle.clone();
    let request = tokio::spawn(async move {
        let mut stream = handle.open(b"127.0.0.1:6443").await.expect("open");
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    });
    let connect = within("connect", go.recv()).await;
    assert_eq!(
        connect,
        Some(Frame::Connect {
            id: 1,
            target: Bytes::from_static(b"127.0.0.1:6443")
        })
    );
    go.send(Frame::Connected { id: 1 }).await;
    let data = within("request", go.recv()).await;
    assert_eq!(
        data,
        Some(Frame::Data {
            id: 1,
            payload: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")
        })
    );
    go.send(Frame::Data {
        id: 1,
        payload: Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n"),
    })
    .await;
    go.send(Frame::Close { id: 1 }).await;
    let response = within("response", request).await.unwrap();
    assert_eq!(response, b"HTTP/1.1 200 OK\r\n\r\n");
}

/// A middlebox strips the server's echo: the agent stays v1 and tells the server so with a v1
/// Ping; the server, which echoed, follows to v1 without waiting out its timeout.
#[tokio::test]
async fn stripped_echo_leaves_both_ends_on_v1() {
    let (server_listener, server_addr) = listener().await;
    let (box_listener, box_addr) = listener().await;
    tokio::spawn(middlebox::strip_echo(box_listener, server_addr));
    let agent = tokio::spawn(our_agent(box_addr, true, limits()));
    let server = within("server", our_server(&server_listener, true, limits())).await;
    let mut agent = within("agent", agent).await.unwrap();
    assert_eq!(agent.negotiated.version, Version::V1);
    assert_eq!(server.negotiated.version, Version::V1);

    // And the v1 session works end to end through the middlebox.
    let handle = server.session.handle.clone();
    let opener = tokio::spawn(async move {
        let mut stream = handle.open(b"kubernetes.default.svc:443").await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.unwrap();
        reply
    });
    let mut stream = within("accept", agent.session.incoming.accept())
        .await
        .unwrap()
        .accept();
    let mut got = [0u8; 4];
    stream.read_exact(&mut got).await.unwrap();
    stream.write_all(b"pong").await.unwrap();
    assert_eq!(&within("reply", opener).await.unwrap(), b"pong");
    drop(server.session.incoming);
}
