//! Wire compatibility with the Go implementation at the HTTP level, both directions, using the
//! Go-peer emulator (raw v1 frames, the Go quirks of seed-protocol.md §1).

mod support;

use argocd_proxy::protocol::Frame;
use bytes::Bytes;
use http::StatusCode;
use support::gopeer::{go_agent_with_token, go_server};
use support::kubeapi::FakeKubeApi;
use support::stack::{agent, get, server, try_get, wait_routed, Inject, SA_TOKEN};
use support::{listener, within, TempDir};

/// A Go agent behind our server: Connect names the cluster's target, the request arrives as
/// one HTTP/1.1 request with `Connection: close`, a close-delimited response (B6) completes,
/// and a response's `Connection: close, X-Secret` does not leak `X-Secret`.
#[tokio::test]
async fn go_agent_is_served_by_our_server() {
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c1", "go-agent-token", "10.0.0.1:6443")]).await;
    let mut go = within(
        "go agent connects",
        go_agent_with_token(server.addrs.public, "go-agent-token"),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let internal = server.addrs.internal;
    let client = tokio::spawn(async move {
        try_get(
            internal,
            "/tunnel/c1/api/v1/namespaces?x=%2F",
            &[("authorization", "Bearer caller")],
        )
        .await
    });
    let connect = within("Connect", go.recv()).await;
    assert_eq!(
        connect,
        Some(Frame::Connect {
            id: 1,
            target: Bytes::from_static(b"10.0.0.1:6443")
        })
    );
    go.send(Frame::Connected { id: 1 }).await;
    go.send(Frame::Connected { id: 1 }).await; // B4: a duplicate must not hurt
    let head =
        String::from_utf8(within("request head", go.read_until(1, b"\r\n\r\n")).await).unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("GET /api/v1/namespaces?x=%2F HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(lower.contains("\r\nhost: 10.0.0.1:6443\r\n"), "{head}");
    assert!(!lower.contains("authorization"), "{head}");
    let response = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close, X-Secret\r\nX-Secret: leak\r\n\r\n{\"kind\":\"NamespaceList\"}";
    go.send(Frame::Data {
        id: 1,
        payload: Bytes::from(response),
    })
    .await;
    go.send(Frame::Close { id: 1 }).await;
    let (status, headers, body) = within("response", client)
        .await
        .unwrap()
        .expect("complete response");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        &body[..],
        b"{\"kind\":\"NamespaceList\"}",
        "close-delimited body complete"
    );
    assert!(
        !headers.contains_key("x-secret"),
        "Connection-named response header leaked"
    );

    // B4: Error after Connected for another stream fails that request only.
    let client = tokio::spawn(async move { try_get(internal, "/tunnel/c1/api", &[]).await });
    assert!(matches!(
        within("Connect 2", go.recv()).await,
        Some(Frame::Connect { id: 2, .. })
    ));
    go.send(Frame::Connected { id: 2 }).await;
    go.send(Frame::Error {
        id: 2,
        message: Bytes::from_static(b"dial failed"),
    })
    .await;
    let outcome = within("second response", client).await.unwrap();
    assert!(
        outcome.is_err() || outcome.as_ref().unwrap().0 == StatusCode::BAD_GATEWAY,
        "{outcome:?}"
    );
    assert_eq!(
        get(server.addrs.ops.unwrap(), "/readyz?cluster=c1", &[])
            .await
            .0,
        StatusCode::OK,
        "session survived"
    );
    let (_, _, metrics) = get(server.addrs.ops.unwrap(), "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let reset =
        "tunnel_stream_resets_total{cluster=\"c1\",direction=\"received\",reason=\"refused\"} 1";
    assert!(
        metrics.contains(reset),
        "resets counted by direction and reason: {metrics}"
    );
}

/// Our agent behind a Go server: it answers a v1 Connect (whose target it does not share,
/// S6) from its configured upstream only, injects its credentials, and ends the stream with
/// Close after the one response.
#[tokio::test]
async fn our_agent_serves_a_go_server() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let (go_listener, go_addr) = listener().await;
    let sa = dir.0.join("sa.token");
    std::fs::write(&sa, SA_TOKEN).unwrap();
    let agent = agent(
        &dir.0,
        "a",
        go_addr,
        "agent-token",
        &kube.addr.to_string(),
        Inject::TokenFile(sa),
    )
    .await;
    let mut go = within("agent dials the Go server", go_server(&go_listener)).await;
    go.send(Frame::Connect {
        id: 1,
        target: Bytes::from_static(b"kubernetes.default.svc:443"),
    })
    .await;
    assert_eq!(
        within("Connected", go.recv()).await,
        Some(Frame::Connected { id: 1 })
    );
    let request = "GET /api/v1/namespaces HTTP/1.1\r\nHost: kubernetes.default.svc:443\r\nUser-Agent: Go-http-client/1.1\r\nConnection: close\r\n\r\n";
    go.send(Frame::Data {
        id: 1,
        payload: Bytes::from(request),
    })
    .await;
    let response =
        String::from_utf8(within("response", go.read_until(1, b"\0never\0")).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.contains("NamespaceList"), "{response}");
    let seen = kube.requests().pop().expect("upstream reached");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SA_TOKEN}").as_str())
    );
    let (_, _, metrics) = get(agent.health, "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("agent_upstream_errors_total{reason=\"target_mismatch\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("agent_connected 1"), "{metrics}");
    assert!(
        !metrics.contains("proxy_requests_total"),
        "B19: no server series on the agent"
    );
}

/// B3: an agent flapping while 32 clients hammer its cluster never takes the server down, and
/// every answer is a success or a documented error status with a Status body.
#[tokio::test]
async fn flapping_agent_never_breaks_the_server() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let target = kube.addr.to_string();
    let server = server(&dir.0, &[("c1", "t1", &target)]).await;
    let internal = server.addrs.internal;
    let done = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..32 {
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut answers = 0;
            while !done.is_cancelled() {
                let (status, _, body) = try_get(internal, "/tunnel/c1/api", &[])
                    .await
                    .expect("a whole response, never a dropped connection");
                let ok = status == StatusCode::OK
                    || ([
                        StatusCode::SERVICE_UNAVAILABLE,
                        StatusCode::BAD_GATEWAY,
                        StatusCode::GATEWAY_TIMEOUT,
                    ]
                    .contains(&status)
                        && String::from_utf8_lossy(&body).contains("\"kind\":\"Status\""));
                assert!(ok, "{status} {body:?}");
                answers += 1;
            }
            answers
        }));
    }
    for round in 0..10 {
        let flapping = agent(
            &dir.0,
            &format!("flap{round}"),
            server.addrs.public,
            "t1",
            &target,
            Inject::Nothing,
        )
        .await;
        wait_routed(server.addrs.ops.unwrap(), "c1").await;
        flapping.shutdown().await;
    }
    done.cancel();
    for client in clients {
        assert!(within("client", client).await.unwrap() > 0);
    }
    assert_eq!(
        get(server.addrs.ops.unwrap(), "/healthz", &[]).await.0,
        StatusCode::OK
    );
}

/// B4 at the agent: a (buggy or hostile) server sending Connected, or Error, for a stream the
/// agent accepted does not crash or disconnect the agent.
#[tokio::test]
async fn agent_survives_connected_and_error_for_its_own_streams() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let (go_listener, go_addr) = listener().await;
    let agent = agent(
        &dir.0,
        "a",
        go_addr,
        "agent-token",
        &kube.addr.to_string(),
        Inject::Nothing,
    )
    .await;
    let mut go = within("agent dials", go_server(&go_listener)).await;
    for id in [1, 2] {
        go.send(Frame::Connect {
            id,
            target: Bytes::from_static(b"kubernetes.default.svc:443"),
        })
        .await;
        assert_eq!(
            within("Connected", go.recv()).await,
            Some(Frame::Connected { id })
        );
    }
    go.send(Frame::Connected { id: 1 }).await;
    go.send(Frame::Error {
        id: 2,
        message: Bytes::from_static(b"nonsense"),
    })
    .await;
    let request = "GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    go.send(Frame::Data {
        id: 1,
        payload: Bytes::from(request),
    })
    .await;
    let response =
        String::from_utf8(within("response", go.read_until(1, b"\0never\0")).await).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(
        get(agent.health, "/readyz", &[]).await.0,
        StatusCode::OK,
        "still connected"
    );
}

/// S6 under v2: a target name the agent has not configured is refused at once, and nothing is
/// dialled.
#[tokio::test]
async fn v2_open_for_an_unknown_target_is_refused() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let (listener, addr) = listener().await;
    let agent = agent(
        &dir.0,
        "a",
        addr,
        "agent-token",
        &kube.addr.to_string(),
        Inject::Nothing,
    )
    .await;
    let server = within(
        "v2 tunnel",
        support::our_server(&listener, true, support::limits()),
    )
    .await;
    assert_eq!(
        server.negotiated.version,
        argocd_proxy::protocol::Version::V2
    );
    let mut stream = server.session.handle.open(b"10.0.0.1:22").await.unwrap();
    let error = within("refusal", stream.read_to_end(&mut Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    assert!(kube.requests().is_empty());
    let (_, _, metrics) = get(agent.health, "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics)
        .contains("agent_upstream_errors_total{reason=\"unknown_target\"} 1"));
}
