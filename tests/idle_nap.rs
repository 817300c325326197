//! Idle coalescing with the real binaries as processes: a server that does nothing but
//! heartbeats naps before its sleeps (`idle_nap`, on by default; counted in
//! `idle_naps_total`), and one at work does not: watch events through the tunnel (frames
//! only), requests on one keep-alive connection to each kind of listener (requests only), bare
//! connections (accepts only).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::kubeapi::FakeKubeApi;
use support::notify::{addr_in, start, status_of, Notifications};
use support::stack::{open_watch, scrape, wait_routed, LISTENERS};
use support::{within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: &str = env!("CARGO_BIN_EXE_argocd-proxy-server");
const AGENT: &str = env!("CARGO_BIN_EXE_argocd-proxy-agent");

/// `idle_naps_total` on the server.
async fn naps(ops: SocketAddr) -> u64 {
    scrape(ops, "idle_naps_total")
        .await
        .expect("idle_naps_total in /metrics") as u64
}

/// Exchanges in each busy phase, at least.
const MIN_EXCHANGES: u64 = 40;
/// And its length at least: longer than QUIET (100 ms) after the scrape before it, which is
/// work of its own.
const SPAN: Duration = Duration::from_millis(500);

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
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;

    // Watch events back to back, for longer than QUIET: each is a tunnel frame the server
    // reads (no request, no new connection), and a few sleeps, none of them a nap.
    let (mut events, _watch) = open_watch(internal, "c1");
    within("the watch is open upstream", async {
        while kube.open_watches() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let before = naps(ops).await;
    let started = Instant::now();
    let mut pushed = 0;
    while pushed < MIN_EXCHANGES || started.elapsed() < SPAN {
        pushed += 1;
        kube.push_pod_event("ADDED", &format!("pod-{pushed}"));
        let event = within("the event", events.recv())
            .await
            .expect("watch open");
        assert!(event.contains(&format!("pod-{pushed}")), "{event}");
    }
    not_napping(naps(ops).await - before, pushed, "watch events");

    // Requests for a cluster the server does not know, on one connection: answered by the
    // server alone, by our own HTTP/1.1 server (the internal listener's).
    requests_on_one_connection(ops, internal, "/tunnel/nope", StatusCode::BAD_GATEWAY).await;
    // The same on the ops listener, served by hyper.
    requests_on_one_connection(ops, ops, "/healthz", StatusCode::OK).await;

    // Connections that send nothing and close: only accepted.
    let before = naps(ops).await;
    let started = Instant::now();
    let mut connected = 0;
    while connected < MIN_EXCHANGES || started.elapsed() < SPAN {
        connected += 1;
        let mut tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        within("the server closes", tcp.read_to_end(&mut rest))
            .await
            .unwrap();
    }
    not_napping(naps(ops).await - before, connected, "bare connections");
}

/// GETs of `path` on one connection to `addr`, each answered with `status`, back to back for
/// a busy phase: the server at `ops` hardly naps.
async fn requests_on_one_connection(
    ops: SocketAddr,
    addr: SocketAddr,
    path: &str,
    status: StatusCode,
) {
    let mut conn = keep_alive(addr).await;
    let before = naps(ops).await;
    let started = Instant::now();
    let mut sent = 0;
    while sent < MIN_EXCHANGES || started.elapsed() < SPAN {
        sent += 1;
        assert_eq!(
            request(&mut conn, &format!("{path}?n={sent}")).await,
            status
        );
    }
    not_napping(
        naps(ops).await - before,
        sent,
        &format!("requests for {path} on one connection to {addr}"),
    );
}

/// A busy phase napped far less than once per exchange: a stall of the machine may let the
/// server nap a few times (the watchdog wakes it every 100 ms); a missing mark lets it nap
/// before nearly every sleep, about once per exchange or more.
fn not_napping(naps: u64, exchanges: u64, what: &str) {
    assert!(
        naps * 5 <= exchanges,
        "{naps} naps during {exchanges} {what}: a busy server napped"
    );
}

/// An HTTP/1.1 client connection to `addr`.
async fn keep_alive(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// One GET on `conn`, its body read; its status.
async fn request(conn: &mut SendRequest<Empty<Bytes>>, path: &str) -> StatusCode {
    let request = http::Request::get(path)
        .header(http::header::HOST, "x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = within("an answer", conn.send_request(request))
        .await
        .unwrap();
    let status = response.status();
    within("its body", response.into_body().collect())
        .await
        .unwrap();
    status
}
