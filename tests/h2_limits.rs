//! `[limits] max_h2_streams_per_connection` on the internal listener: the server advertises it
//! in its HTTP/2 SETTINGS, and a client past it waits for a stream to end instead of getting
//! more concurrent streams than the operator allowed.

mod support;

use http::StatusCode;
use std::sync::Arc;
use support::kubeapi::FakeKubeApi;
use support::pki::TestCa;
use support::stack::{agent_from_toml, server_from_toml, wait_routed};

use support::{within, TempDir};

const LIMIT: usize = 3;

struct H2Stack {
    _dir: TempDir,
    kube: FakeKubeApi,
    server: support::stack::TestServer,
    _agent: support::stack::TestAgent,
    client: Arc<rustls::ClientConfig>,
}

/// A server whose internal listener speaks TLS with ALPN h2, c1's agent, a fake API, and a
/// client config offering only h2.
async fn h2_stack(limits: &str) -> H2Stack {
    let dir = TempDir::new();
    let ca = TestCa::new("internal CA");
    let (cert, key) = ca.issue(&dir.0, "internal", &["localhost"], false);
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let kube = FakeKubeApi::start(None).await;
    let server = server_from_toml(
        &dir.0,
        &format!(
            "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [ops]\nlisten = \"127.0.0.1:0\"\n[limits]\n{limits}\n\
             [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let agent = agent_from_toml(
        &dir.0,
        "a1",
        &format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"c1.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n",
            server.addrs.public, kube.addr
        ),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let roots = argocd_proxy::transport::tls::roots(Some(&ca.write(&dir.0, "ca.pem"))).unwrap();
    let client = argocd_proxy::transport::tls::client_config(roots, &[b"h2"]);
    H2Stack {
        _dir: dir,
        kube,
        server,
        _agent: agent,
        client,
    }
}

async fn h2_tls(stack: &H2Stack) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(stack.server.addrs.internal)
        .await
        .unwrap();
    argocd_proxy::transport::tls::connect(stack.client.clone(), "localhost", tcp)
        .await
        .unwrap()
}

/// The limit is advertised in SETTINGS; the h2 client then queues a stream past it (so the
/// upstream never sees more than the limit). That the server would refuse a client ignoring
/// SETTINGS is hyper's (h2's REFUSED_STREAM), not re-tested here.
#[tokio::test]
async fn the_http2_stream_limit_is_advertised_and_a_client_past_it_waits() {
    let stack = h2_stack(&format!("max_h2_streams_per_connection = {LIMIT}")).await;
    let kube = &stack.kube;
    let tls = h2_tls(&stack).await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = within("h2 ready", client.ready()).await.unwrap();
    // SETTINGS arrive after the handshake; poll the connection's view of them, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while client.current_max_send_streams() != LIMIT {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never advertised {LIMIT} streams (saw {})",
            client.current_max_send_streams()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
    }

    let watch = || {
        http::Request::get("https://localhost/tunnel/c1/api/v1/pods?watch=1")
            .body(())
            .unwrap()
    };
    let mut open = Vec::new();
    for _ in 0..LIMIT {
        client = within("a stream slot", client.ready()).await.unwrap();
        let (response, _) = client.send_request(watch(), true).unwrap();
        let response = within("watch answered", response).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    // One past the limit: the client must wait for a slot, so the upstream never sees it.
    let extra = tokio::spawn(async move {
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(watch(), true).unwrap();
        response.await.unwrap().status()
    });
    within("the allowed watches open upstream", async {
        while kube.open_watches() < LIMIT {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(kube.open_watches(), LIMIT);
    assert!(!extra.is_finished(), "a stream past the limit was served");
    // Ending one watch frees a slot for the waiting request.
    let ended = open.pop().unwrap();
    drop(ended);
    assert_eq!(
        within("the waiting request", extra).await.unwrap(),
        StatusCode::OK
    );
}

/// A client that completes TLS, picks h2 and sends nothing is disconnected after
/// `header_read_timeout`; a connection carrying a watch is not idle, however long it lasts.
#[tokio::test]
async fn a_silent_http2_client_is_disconnected_and_a_watching_one_is_not() {
    use tokio::io::AsyncReadExt;
    let stack = h2_stack("header_read_timeout = \"300ms\"").await;
    let mut silent = h2_tls(&stack).await;
    let mut buffer = [0u8; 1024];
    within("the silent connection is closed", async {
        // The server's SETTINGS may arrive first; then the end.
        while matches!(silent.read(&mut buffer).await, Ok(n) if n > 0) {}
    })
    .await;

    let (client, connection) = h2::client::handshake(h2_tls(&stack).await).await.unwrap();
    tokio::spawn(connection);
    let mut client = within("h2 ready", client.ready()).await.unwrap();
    let request = http::Request::get("https://localhost/tunnel/c1/api/v1/pods?watch=1")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let mut body = within("watch answered", response)
        .await
        .unwrap()
        .into_body();
    within("watch open upstream", async {
        while stack.kube.open_watches() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // Several idle timeouts pass with the watch open and quiet.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    stack.kube.push_pod_event("ADDED", "still-here");
    within("the event on the long watch", async {
        loop {
            let chunk = body.data().await.expect("watch still open").unwrap();
            if chunk.windows(10).any(|w| w == b"still-here") {
                return;
            }
        }
    })
    .await;
}
