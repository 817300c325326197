//! Round trips over a WAN, counted at a userspace delay relay between agent and server (25 ms
//! each way), not timed: with our agent (v2) a request is one crossing each way — a new stream
//! opens without waiting for the agent, and later requests reuse a pooled stream; with a v1
//! peer (negotiation stripped by a middlebox, as a Go agent would be) it is two (Connect →
//! Connected, then the request).

mod support;

use std::time::Duration;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent_from_toml, get, server, wait_routed, TestServer};
use support::wan::{Turns, Wan};
use support::{listener, middlebox, within, TempDir};

const ONE_WAY: Duration = Duration::from_millis(25);

fn agent_toml(server: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    format!(
        "server_url = \"ws://{server}/connect\"\nallow_insecure_server = true\ntoken_file = \"agent.token\"\n\
         health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{upstream}\"\nplaintext = true\ninject_token = false\n"
    )
}

/// Turns the relay saw while one request went through the tunnel, after the line went quiet.
async fn request_turns(server: &TestServer, wan: &Wan) -> Turns {
    quiet(wan).await;
    wan.new_exchange();
    let before = wan.turns();
    let (status, _, _) = get(server.addrs.internal, "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::OK);
    // The response has come back through the relay; frames after it (a v1 Close) may still
    // be on their way, so only count what the response needed: wait for quiet again.
    quiet(wan).await;
    let after = wan.turns();
    Turns {
        up: after.up - before.up,
        down: after.down - before.down,
    }
}

/// Waits until no byte crossed the relay for eight one-way delays (a late window update on a
/// loaded machine must not land in the next exchange). Heartbeats are 10 s apart, far beyond
/// a test's few exchanges.
async fn quiet(wan: &Wan) {
    within("the WAN goes quiet", async {
        loop {
            let bytes = wan.bytes();
            tokio::time::sleep(ONE_WAY * 8).await;
            if wan.bytes() == bytes {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_v2_request_crosses_the_wan_once_each_way() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    let wan = Wan::start(server.addrs.public, ONE_WAY).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let _agent = agent_from_toml(&dir.0, "a", &agent_toml(wan.addr, kube.addr)).await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    // First request: a new stream, opened without waiting for the agent.
    assert_eq!(
        request_turns(&server, &wan).await,
        Turns { up: 1, down: 1 },
        "fresh stream"
    );
    // Then a pooled keep-alive stream.
    assert_eq!(
        request_turns(&server, &wan).await,
        Turns { up: 1, down: 1 },
        "pooled stream"
    );
}

#[tokio::test]
async fn a_v1_request_crosses_the_wan_twice_each_way() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    let wan = Wan::start(server.addrs.public, ONE_WAY).await;
    // agent → (strips the v2 echo, so the agent falls back to v1) → WAN → server.
    let (strip, strip_addr) = listener().await;
    tokio::spawn(middlebox::strip_echo(strip, wan.addr));
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let _agent = agent_from_toml(&dir.0, "a", &agent_toml(strip_addr, kube.addr)).await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let turns = request_turns(&server, &wan).await;
    // Connect ↓, Connected ↑, request ↓, response ↑ — and v1's Close frames after the
    // response may add one more turn each way; never fewer than two.
    assert!(
        (2..=3).contains(&turns.up) && (2..=3).contains(&turns.down),
        "{turns:?}"
    );
}

/// The heartbeat measures the tunnel's round trip: through 25 ms each way it is at least 50 ms.
#[tokio::test]
async fn the_heartbeat_reports_the_round_trip() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    std::fs::write(dir.0.join("c1.token"), "agent-token").unwrap();
    let server = support::stack::server_from_toml(
        &dir.0,
        &format!(
            "{}[limits]\nheartbeat_interval = \"200ms\"\n[[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
            support::stack::LISTENERS
        ),
    )
    .await;
    let wan = Wan::start(server.addrs.public, ONE_WAY).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let toml = agent_toml(wan.addr, kube.addr) + "[limits]\nheartbeat_interval = \"200ms\"\n";
    let agent = agent_from_toml(&dir.0, "a", &toml).await;
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c1").await;
    // Both ends ping: the server's gauge per cluster, the agent's for its one tunnel.
    for (addr, series) in [
        (ops, "tunnel_heartbeat_rtt_seconds{cluster=\"c1\"} "),
        (agent.health, "agent_tunnel_heartbeat_rtt_seconds "),
    ] {
        let rtt = within("a heartbeat answered", async {
            loop {
                let metrics = get(addr, "/metrics", &[]).await.2;
                let metrics = String::from_utf8_lossy(&metrics).into_owned();
                // An unlabelled gauge reads 0 until the first Pong.
                let value = metrics.lines().find_map(|line| line.strip_prefix(series));
                if let Some(rtt) = value.map(|value| value.parse::<f64>().unwrap()) {
                    if rtt > 0.0 {
                        return rtt;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!((0.050..5.0).contains(&rtt), "{series}{rtt}");
    }
}

/// A bulk download over the WAN keeps the pipe full: the agent's bytes in flight across the
/// 25 ms delay grow well past the initial 64 KiB window (windows auto-tune), and never past
/// the largest window (flow control holds). Measured at the relay, not timed.
#[tokio::test]
async fn bulk_over_the_wan_fills_the_window_and_never_exceeds_it() {
    const BODY: usize = 48 * 1024 * 1024;
    let dir = TempDir::new();
    let upstream = support::pattern_upstream().await;
    let server = server(&dir.0, &[("c1", "agent-token", &upstream.to_string())]).await;
    let wan = Wan::start(server.addrs.public, ONE_WAY).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let _agent = agent_from_toml(&dir.0, "a", &agent_toml(wan.addr, upstream)).await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let (status, _, body) = support::stack::get(
        server.addrs.internal,
        &format!("/tunnel/c1/bytes/{BODY}"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == support::pattern(7, BODY), "the body arrived intact");
    let in_flight = wan.max_in_flight(support::wan::Way::Up);
    let limits = argocd_proxy::mux::Limits::default();
    assert!(
        in_flight >= 16 * u64::from(limits.stream_window),
        "the window grew: at most {in_flight} bytes were in flight"
    );
    // The largest window plus frame and WebSocket headers.
    let ceiling = u64::from(limits.max_stream_window) * 105 / 100;
    assert!(
        in_flight <= ceiling,
        "{in_flight} bytes in flight, above the window"
    );
}
