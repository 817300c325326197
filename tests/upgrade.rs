//! Protocol upgrades (kubectl exec / attach / port-forward over WebSocket) through the tunnel:
//! the 101 is relayed verbatim, then bytes flow both ways until either end closes.

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent, server, wait_routed, Inject, SA_TOKEN};
use support::{listener, within, TempDir};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// What the fake exec endpoint saw on the upgrade request.
#[derive(Debug, Default, Clone)]
struct SeenUpgrade {
    path: String,
    authorization: Option<String>,
    stream_versions: Vec<String>,
}

/// A fake kubelet-behind-apiserver exec endpoint: accepts one WebSocket upgrade, answers with
/// `v5.channel.k8s.io`, echoes each stdin message (channel 0) on stdout (channel 1); on a
/// message "exit" it closes, as a process that ends does.
async fn exec_endpoint() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Receiver<SeenUpgrade>,
) {
    let (listener, addr) = listener().await;
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = SeenUpgrade::default();
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let callback = |request: &Request, mut response: Response| {
            seen.path = request.uri().to_string();
            seen.authorization = request
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            seen.stream_versions = request
                .headers()
                .get_all("x-stream-protocol-version")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            response.headers_mut().insert(
                "sec-websocket-protocol",
                "v5.channel.k8s.io".parse().unwrap(),
            );
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        let _ = seen_tx.send(seen);
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Binary(bytes) = message {
                if &bytes[1..] == b"exit" {
                    let _ = socket.close(None).await;
                    break;
                }
                let mut echo = bytes.to_vec();
                echo[0] = 1;
                socket
                    .send(Message::Binary(Bytes::from(echo)))
                    .await
                    .unwrap();
            }
        }
    });
    (addr, seen_rx)
}

#[tokio::test]
async fn exec_over_websocket_is_relayed_both_ways() {
    let dir = TempDir::new();
    let (exec, seen) = exec_endpoint().await;
    let target = exec.to_string();
    let server = server(&dir.0, &[("c1", "t1", &target)]).await;
    let sa = dir.0.join("sa.token");
    std::fs::write(&sa, SA_TOKEN).unwrap();
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &target,
        Inject::TokenFile(sa),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;

    let url = format!("ws://{}/tunnel/c1/api/v1/namespaces/default/pods/web-0/exec?command=sh&stdin=true&stdout=true", server.addrs.internal);
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    headers.insert("authorization", "Bearer argo-cd".parse().unwrap());
    headers.append(
        "x-stream-protocol-version",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    headers.append(
        "x-stream-protocol-version",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(server.addrs.internal)
        .await
        .unwrap();
    let (mut socket, response) = within("upgrade", tokio_tungstenite::client_async(request, tcp))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );

    let seen = within("exec endpoint saw the upgrade", seen).await.unwrap();
    assert!(
        seen.path
            .starts_with("/api/v1/namespaces/default/pods/web-0/exec?command=sh"),
        "{seen:?}"
    );
    assert_eq!(
        seen.authorization.as_deref(),
        Some(format!("Bearer {SA_TOKEN}").as_str())
    );
    assert_eq!(
        seen.stream_versions,
        ["v4.channel.k8s.io", "v5.channel.k8s.io"],
        "every value kept"
    );

    for line in ["ls", "whoami"] {
        let mut stdin = vec![0u8];
        stdin.extend_from_slice(line.as_bytes());
        socket
            .send(Message::Binary(Bytes::from(stdin)))
            .await
            .unwrap();
        let stdout = within("stdout", socket.next()).await.unwrap().unwrap();
        let Message::Binary(stdout) = stdout else {
            panic!("{stdout:?}")
        };
        assert_eq!(stdout[0], 1);
        assert_eq!(&stdout[1..], line.as_bytes());
    }
    // Upgrades are counted like other requests (B19), and the stream shows on the tunnel.
    let (_, _, metrics) = support::stack::get(server.addrs.ops.unwrap(), "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("proxy_requests_total{cluster=\"c1\",method=\"GET\",code=\"101\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tunnel_streams{cluster=\"c1\"} 1"),
        "{metrics}"
    );
    // The process exits: the client sees the end promptly (B2).
    socket
        .send(Message::Binary(Bytes::from_static(b"\0exit")))
        .await
        .unwrap();
    within("the end reaches the client", async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    })
    .await;
}

/// A non-101 answer (here the API's 404) goes back as a normal response, so clients can fall
/// back (kubectl retries over SPDY), and `Connection: keep-alive, Upgrade` counts (B11).
#[tokio::test]
async fn refused_upgrade_comes_back_as_a_normal_response() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let target = kube.addr.to_string();
    let server = server(&dir.0, &[("c1", "t1", &target)]).await;
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &target,
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let headers = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "SPDY/3.1"),
    ];
    let (status, _, body) = support::stack::get(
        server.addrs.internal,
        "/tunnel/c1/api/v1/namespaces/default/pods/web-0/attach",
        &headers,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    let seen = kube.requests().pop().expect("forwarded as an upgrade");
    assert_eq!(seen.header("upgrade"), Some("SPDY/3.1"));
    assert_eq!(
        seen.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
}
