//! Two agents for one cluster (its token installed twice, or an old pod still up): the newer
//! one serves; the one it displaced stands by instead of taking the route back on every redial
//! (which ended the other's watches each time), and takes over when the serving agent leaves.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent, get, Inject, Stack, SA_TOKEN};
use support::within;

/// The value of one series (name with labels, exactly as exported), if present.
fn metric(text: &[u8], series: &str) -> Option<f64> {
    String::from_utf8_lossy(text).lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

async fn scrape(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, _, body) = get(addr, "/metrics", &[]).await;
    metric(&body, series)
}

const REFUSED: &str = "agents_standing_by_total{cluster=\"c1\"}";
const REPLACED: &str = "agents_replaced_total{cluster=\"c1\"}";

#[tokio::test]
async fn a_displaced_agent_stands_by_and_takes_over_when_the_serving_one_leaves() {
    let stack = Stack::start().await;
    let (internal, ops) = (stack.internal(), stack.ops());
    let first_health = stack.agent.health;
    let second_kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let second = agent(
        &stack.dir.0,
        "a2",
        stack.server.addrs.public,
        "agent-token-1",
        &second_kube.addr.to_string(),
        Inject::TokenFile(stack.dir.0.join("sa.token")),
    )
    .await;
    within("the server routes to the second agent", async {
        while second_kube.requests().is_empty() {
            get(internal, "/tunnel/c1/api", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let first_served = stack.kube.requests().len();

    // The first agent redials (every ≤ 1 s here) and is refused each time; before, its first
    // redial took the route back. Requests meanwhile all reach the second agent's API.
    within("the first agent is refused three times", async {
        while scrape(ops, REFUSED).await.unwrap_or(0.0) < 3.0 {
            let (status, _, body) = get(internal, "/tunnel/c1/api", &[]).await;
            assert_eq!(status, StatusCode::OK, "{body:?}");
            assert_eq!(
                stack.kube.requests().len(),
                first_served,
                "the route flapped back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        scrape(ops, REPLACED).await,
        Some(1.0),
        "replaced more than once"
    );
    assert_eq!(scrape(ops, "agents_connected").await, Some(1.0));
    let (status, _, body) = get(first_health, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("standing by"),
        "{body:?}"
    );
    assert_eq!(scrape(first_health, "agent_standby").await, Some(1.0));
    assert_eq!(scrape(second.health, "agent_standby").await, Some(0.0));
    let (status, _, _) = get(second.health, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK);

    // The serving agent leaves: the standby's next attempt (≤ max_reconnect_interval) wins.
    second.shutdown().await;
    within("the first agent takes over", async {
        while stack.kube.requests().len() == first_served {
            get(internal, "/tunnel/c1/api", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, _, _) = get(first_health, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(scrape(first_health, "agent_standby").await, Some(0.0));
    assert_eq!(
        scrape(ops, REPLACED).await,
        Some(1.0),
        "the takeover replaced nobody"
    );
}
