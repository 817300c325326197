//! `[limits] max_h2_streams_per_connection` on the internal listener: the server advertises it
//! in its HTTP/2 SETTINGS, and a client past it waits for a stream to end instead of getting
//! more concurrent streams than the operator allowed.

mod support;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::pki::TestCa;
use support::stack::{agent_from_toml, server_from_toml, wait_routed};
use support::{within, TempDir};

const LIMIT: usize = 3;

#[tokio::test]
async fn the_http2_stream_limit_is_advertised_and_enforced() {
    let dir = TempDir::new();
    let ca = TestCa::new("internal CA");
    let (cert, key) = ca.issue(&dir.0, "internal", &["localhost"], false);
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let kube = FakeKubeApi::start(None).await;
    let server = server_from_toml(
        &dir.0,
        &format!(
            "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [ops]\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_h2_streams_per_connection = {LIMIT}\n\
             [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let _agent = agent_from_toml(
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
    let config = argocd_proxy::transport::tls::client_config(roots, &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(server.addrs.internal)
        .await
        .unwrap();
    let tls = argocd_proxy::transport::tls::connect(config, "localhost", tcp)
        .await
        .unwrap();
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
