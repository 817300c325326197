//! TLS from the agent's side: it verifies the server (`server_ca`) and its upstream
//! (`ca_file`) against a test PKI generated at test time, and refuses what they do not sign.

mod support;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::pki::{tls_terminator, TestCa};
use support::stack::{agent_from_toml, get, server, wait_routed, SA_TOKEN};
use support::{within, TempDir};

fn agent_toml(server_url: &str, server_ca: &std::path::Path, upstream: &str) -> String {
    format!(
        "server_url = \"{server_url}\"\nserver_ca = \"{}\"\ntoken_file = \"agent.token\"\nhealth_listen = \"127.0.0.1:0\"\n\
         max_reconnect_interval = \"1s\"\n{upstream}",
        server_ca.display()
    )
}

/// wss:// with the server's CA: the tunnel comes up and requests flow.
#[tokio::test]
async fn agent_verifies_the_server_with_its_ca() {
    let dir = TempDir::new();
    let ca = TestCa::new("proxy CA");
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    let public_tls = tls_terminator(ca.server_config(&["localhost"]), server.addrs.public).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let upstream = format!(
        "[upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n",
        kube.addr
    );
    let url = format!("wss://localhost:{}/connect", public_tls.port());
    let _agent = agent_from_toml(
        &dir.0,
        "a",
        &agent_toml(&url, &ca.write(&dir.0, "ca.pem"), &upstream),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    assert_eq!(
        get(server.addrs.internal, "/tunnel/c1/api", &[]).await.0,
        StatusCode::OK
    );
}

/// A server whose certificate another CA signed is never trusted: the agent keeps retrying
/// and the cluster is never routed.
#[tokio::test]
async fn agent_refuses_a_server_it_cannot_verify() {
    let dir = TempDir::new();
    let real = TestCa::new("proxy CA");
    let other = TestCa::new("someone else");
    let server = server(&dir.0, &[("c1", "agent-token", "127.0.0.1:1")]).await;
    let public_tls = tls_terminator(other.server_config(&["localhost"]), server.addrs.public).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let upstream = "[upstream]\ntarget = \"127.0.0.1:1\"\nplaintext = true\ninject_token = false\n";
    let url = format!("wss://localhost:{}/connect", public_tls.port());
    let agent = agent_from_toml(
        &dir.0,
        "a",
        &agent_toml(&url, &real.write(&dir.0, "ca.pem"), upstream),
    )
    .await;
    within("two failed attempts", async {
        loop {
            let (_, _, metrics) = get(agent.health, "/metrics", &[]).await;
            if String::from_utf8_lossy(&metrics).contains("agent_reconnects_total 2") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        get(agent.health, "/readyz", &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (_, _, metrics) = get(server.addrs.ops.unwrap(), "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics).contains("agents_connected 0"));
}

/// The upstream over TLS, verified with ca_file; an upstream signed by another CA is refused
/// with a 502 Status, and nothing is sent to it.
#[tokio::test]
async fn agent_verifies_its_upstream_with_ca_file() {
    let dir = TempDir::new();
    let ca = TestCa::new("cluster CA");
    let kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let api_tls = tls_terminator(ca.server_config(&["localhost"]), kube.addr).await;
    let impostor_ca = TestCa::new("impostor");
    let impostor_tls = tls_terminator(impostor_ca.server_config(&["localhost"]), kube.addr).await;
    let server = server(&dir.0, &[("c1", "t1", "x:1"), ("c2", "t2", "x:2")]).await;
    std::fs::write(dir.0.join("sa.token"), SA_TOKEN).unwrap();
    let ca_file = ca.write(&dir.0, "cluster-ca.pem");
    let mut agents = Vec::new();
    for (name, token, api) in [("a1", "t1", api_tls), ("a2", "t2", impostor_tls)] {
        std::fs::write(dir.0.join(format!("{name}.token")), token).unwrap();
        let toml = format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"{name}.token\"\nhealth_listen = \"127.0.0.1:0\"\n\
             [upstream]\ntarget = \"localhost:{}\"\nca_file = \"{}\"\ntoken_file = \"sa.token\"\n",
            server.addrs.public,
            api.port(),
            ca_file.display()
        );
        agents.push(agent_from_toml(&dir.0, name, &toml).await);
    }
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    wait_routed(server.addrs.ops.unwrap(), "c2").await;
    let (status, _, body) = get(server.addrs.internal, "/tunnel/c1/api/v1/namespaces", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(kube.requests().len(), 1);
    let (status, _, body) = get(server.addrs.internal, "/tunnel/c2/api/v1/namespaces", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("\"kind\":\"Status\""));
    assert_eq!(
        kube.requests().len(),
        1,
        "nothing reached the upstream through the impostor"
    );
}
