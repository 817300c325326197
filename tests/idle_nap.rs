//! Idle coalescing with the real binaries as processes: a server that does nothing but
//! heartbeats naps before its sleeps (`idle_nap`, on by default; counted in
//! `idle_naps_total`), and one serving requests back to back does not: through the tunnel, or
//! answered by the server itself on one keep-alive connection (no tunnel frame, no new
//! connection).

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::kubeapi::FakeKubeApi;
use support::notify::{addr_in, start, status_of, Notifications};
use support::stack::{get, open_watch, wait_routed, LISTENERS};
use support::{within, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_argocd-proxy-server");
const AGENT: &str = env!("CARGO_BIN_EXE_argocd-proxy-agent");

/// `idle_naps_total` on the server.
async fn naps(ops: SocketAddr) -> u64 {
    let (_, _, metrics) = get(ops, "/metrics", &[]).await;
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|line| line.strip_prefix("idle_naps_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("idle_naps_total in /metrics")
}

/// Exchanges in each busy phase, at least (each phase also lasts longer than `QUIET`).
const MIN_EXCHANGES: u64 = 40;

#[tokio::test]
async fn a_quiet_server_naps_and_one_serving_requests_does_not() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    support::write_atomic(&dir.0.join("c1.token"), "one");
    let server_toml = format!("{LISTENERS}[[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n");
    std::fs::write(dir.0.join("server.toml"), server_toml).unwrap();
    let mut server_notify = Notifications::bind(&dir.0, "server");
    let _server = start(SERVER, &dir.0.join("server.toml"), &server_notify);
    let ready = status_of(&server_notify.until("READY=1").await);
    let (public, internal, ops) = (
        addr_in(&ready, "public"),
        addr_in(&ready, "internal"),
        addr_in(&ready, "ops"),
    );
    let agent_toml = format!(
        "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\ntoken_file = \"c1.token\"\n\
         [upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n",
        kube.addr
    );
    std::fs::write(dir.0.join("agent.toml"), agent_toml).unwrap();
    let agent_notify = Notifications::bind(&dir.0, "agent");
    let _agent = start(AGENT, &dir.0.join("agent.toml"), &agent_notify);
    wait_routed(ops, "c1").await;

    // Between scrapes (each one is work), only heartbeats and the watchdog's timer: the
    // server naps before its sleeps.
    within("the quiet server's first nap", async {
        while naps(ops).await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    })
    .await;

    // Longer than QUIET (100 ms) after a scrape, which is work of its own.
    let span = std::time::Duration::from_millis(500);

    // Watch events back to back, for longer than QUIET: each is a tunnel frame the server
    // reads (no request, no new connection), and a few sleeps, none of them a nap.
    let (mut events, _watch) = open_watch(internal, "c1");
    within("the watch is open upstream", async {
        while kube.open_watches() != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let before = naps(ops).await;
    let started = std::time::Instant::now();
    let mut pushed = 0;
    while pushed < MIN_EXCHANGES || started.elapsed() < span {
        pushed += 1;
        kube.push_pod_event("ADDED", &format!("pod-{pushed}"));
        let event = within("the event", events.recv())
            .await
            .expect("watch open");
        assert!(event.contains(&format!("pod-{pushed}")), "{event}");
    }
    let during = naps(ops).await - before;
    assert!(
        during <= 4,
        "{during} naps during {pushed} watch events: a busy server napped"
    );

    // Requests for a cluster the server does not know, on one connection: answered by the
    // server alone.
    let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let before = naps(ops).await;
    let started = std::time::Instant::now();
    let mut sent = 0;
    while sent < MIN_EXCHANGES || started.elapsed() < span {
        sent += 1;
        let request = http::Request::get(format!("/tunnel/nope/{sent}"))
            .header(http::header::HOST, "x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within("an answer", sender.send_request(request))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        within("its body", response.into_body().collect())
            .await
            .unwrap();
    }
    let during = naps(ops).await - before;
    assert!(
        during <= 4,
        "{during} naps during {sent} requests on one connection: a busy server napped"
    );
}
