//! The agent over time: reconnecting after its connection is cut, releasing the upstream when a
//! request is cancelled, and what it never forwards.

mod support;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent, agent_from_toml, get, server, try_get, wait_routed, Inject};
use support::{listener, middlebox, within, TempDir};
use tokio::io::AsyncReadExt;

/// A cut connection (no close frame, as a NAT timeout or a Go server does) is followed by a
/// reconnect, and the cluster is routed again. The agent's first reconnect delay is jittered in
/// [0, 0.5 s], so its new tunnel can be registered before a poll of `/readyz` would see the
/// cluster unrouted: the test waits for the agent's reconnect, not for that gap.
#[tokio::test]
async fn agent_reconnects_after_its_connection_is_cut() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let target = kube.addr.to_string();
    let server = server(&dir.0, &[("c1", "t1", &target)]).await;
    let (box_listener, box_addr) = listener().await;
    let cut = middlebox::cut_all(box_listener, server.addrs.public);
    let agent = agent(&dir.0, "a", box_addr, "t1", &target, Inject::Nothing).await;
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c1").await;
    cut.send_modify(|generation| *generation += 1);
    within("the agent reconnects", async {
        loop {
            let (_, _, metrics) = get(agent.health, "/metrics", &[]).await;
            let metrics = String::from_utf8_lossy(&metrics);
            if metrics.contains("agent_reconnects_total 1") && metrics.contains("agent_connected 1")
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // Until the server has read the cut (EOF) and registered the new tunnel, a request may
    // still meet the old one; then every request goes through the new one.
    within("a request goes through the new tunnel", async {
        while get(server.addrs.internal, "/tunnel/c1/api", &[]).await.0 != StatusCode::OK {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    wait_routed(ops, "c1").await;
    let (_, _, metrics) = get(agent.health, "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics).contains("agent_reconnects_total 1"));
}

/// B7/B9: a client that gives up on a request whose upstream never answers ends it at the
/// agent: the upstream connection is closed, not held until the upstream gives up.
#[tokio::test]
async fn cancelled_request_closes_the_upstream_connection() {
    let dir = TempDir::new();
    let (silent, silent_addr) = listener().await;
    let server = server(&dir.0, &[("c1", "t1", "x:1")]).await;
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &silent_addr.to_string(),
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let internal = server.addrs.internal;
    let client =
        tokio::spawn(async move { try_get(internal, "/tunnel/c1/api/v1/pods?watch=1", &[]).await });
    let (mut upstream, _) = within("the request reaches the upstream", silent.accept())
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let read = within("request head", upstream.read(&mut head))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&head[..read]).starts_with("GET /api/v1/pods?watch=1 "));
    client.abort();
    let eof = within("the agent closes the upstream connection", async {
        loop {
            match upstream.read(&mut head).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(eof);
}

/// B5: `Retry-After: 0` (an ingress's 503) never turns into a reconnect hot loop: the jittered
/// backoff still applies.
#[tokio::test]
async fn retry_after_zero_does_not_spin() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let (busy, busy_addr) = listener().await;
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = busy.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let _agent = agent(&dir.0, "a", busy_addr, "t1", "127.0.0.1:1", Inject::Nothing).await;
    // Observe for 1.5 s: with a 1 s cap and full jitter that is a handful of attempts; a
    // hot loop would be thousands.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=30).contains(&seen), "{seen} attempts in 1.5 s");
}

/// A server answering /connect with 503 and Retry-After is honoured: the agent waits at least
/// that long (here 2 s, above its 1 s backoff cap) before the next attempt.
#[tokio::test]
async fn agent_honours_retry_after_on_connect() {
    use tokio::io::AsyncWriteExt;
    let dir = TempDir::new();
    let (busy, busy_addr) = listener().await;
    let (attempts_tx, mut attempts) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = busy.accept().await else {
                return;
            };
            let _ = attempts_tx.send(tokio::time::Instant::now());
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let _agent = agent(&dir.0, "a", busy_addr, "t1", "127.0.0.1:1", Inject::Nothing).await;
    let first = within("first attempt", attempts.recv()).await.unwrap();
    let second = within("second attempt", attempts.recv()).await.unwrap();
    let gap = second.duration_since(first);
    assert!(
        gap >= std::time::Duration::from_millis(1900),
        "retried after {gap:?}"
    );
}

/// An idle keep-alive stream (the server pools them after a request) is not a request in
/// flight: SIGTERM closes it at once instead of waiting out the whole shutdown grace.
#[tokio::test]
async fn agent_stops_at_once_with_only_idle_pooled_streams() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    // A grace longer than `within`'s bound: waiting it out fails the test.
    let agent = agent_from_toml(
        &dir.0,
        "a",
        &format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"agent.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n\
             [limits]\nshutdown_grace = \"60s\"\n",
            server.addrs.public, kube.addr
        ),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    assert_eq!(
        get(server.addrs.internal, "/tunnel/c1/api", &[]).await.0,
        StatusCode::OK
    );
    agent.shutdown().await;
}
