//! Two agents for one cluster (its token installed twice, or an old pod still up): the newer
//! one serves; the one it displaced stands by instead of taking the route back on every redial
//! (which ended the other's watches each time), and takes over when the serving agent leaves.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent, get, scrape, Inject, Stack, TestAgent, SA_TOKEN};
use support::{middlebox, within};

/// A second agent with the stack's cluster token, dialing `server`, serving `kube`.
async fn second_agent(stack: &Stack, server: SocketAddr, kube: &FakeKubeApi) -> TestAgent {
    let dir = &stack.dir.0;
    let upstream = kube.addr.to_string();
    let sa = Inject::TokenFile(dir.join("sa.token"));
    agent(dir, "a2", server, "agent-token-1", &upstream, sa).await
}

const REFUSED: &str = "agents_standing_by_total{cluster=\"c1\"}";
const REPLACED: &str = "agents_replaced_total{cluster=\"c1\"}";

#[tokio::test]
async fn a_displaced_agent_stands_by_and_takes_over_when_the_serving_one_leaves() {
    let stack = Stack::start().await;
    let (internal, ops) = (stack.internal(), stack.ops());
    let first_health = stack.agent.health;
    let second_kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let second = second_agent(&stack, stack.server.addrs.public, &second_kube).await;
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

/// The serving agent's tunnel drops (a load balancer recycling connections, a blip) and it
/// redials: the standby, polling meanwhile, must not take the route in that window.
#[tokio::test]
async fn the_serving_agents_redial_keeps_the_route_from_the_standby() {
    let stack = Stack::start().await;
    let (internal, ops) = (stack.internal(), stack.ops());
    let second_kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let cuttable = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let via = cuttable.local_addr().unwrap();
    let cut = middlebox::cut_all(cuttable, stack.server.addrs.public);
    let second = second_agent(&stack, via, &second_kube).await;
    within("the first agent stands by", async {
        while scrape(ops, REFUSED).await.is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let first_served = stack.kube.requests().len();
    for round in 1..=3u32 {
        let reconnects = scrape(second.health, "agent_reconnects_total").await;
        cut.send(round).unwrap();
        wait_redialled(&second, reconnects).await;
        let served = second_kube.requests().len();
        within("the second agent serves again", async {
            while second_kube.requests().len() == served {
                let (status, _, _) = get(internal, "/tunnel/c1/api", &[]).await;
                if status == StatusCode::OK {
                    let first = stack.kube.requests().len();
                    assert_eq!(first, first_served, "round {round}: the standby took over");
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        assert_eq!(scrape(ops, REPLACED).await, Some(1.0), "round {round}");
    }
    assert_eq!(scrape(stack.agent.health, "agent_standby").await, Some(1.0));
}

/// Waits until `agent` has lost its tunnel (its reconnect count moved past `before`) and
/// has a new one up.
async fn wait_redialled(agent: &TestAgent, before: Option<f64>) {
    within("the agent redials", async {
        loop {
            let now = scrape(agent.health, "agent_reconnects_total").await;
            let (status, _, body) = get(agent.health, "/readyz", &[]).await;
            let body = String::from_utf8_lossy(&body);
            assert!(
                !body.contains("standing by"),
                "the standby took the route over"
            );
            if now > before && status == StatusCode::OK {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// After a token rotation the agent holding the new token wins, even over a route it was
/// displaced from (the holder of a leaked old token must not keep the route), and an agent
/// refused for another reason (401) no longer says it stands by.
#[tokio::test]
async fn a_rotated_token_takes_the_route_from_the_old_tokens_holder() {
    let stack = Stack::start().await;
    let (internal, ops) = (stack.internal(), stack.ops());
    let first = &stack.agent;
    let other_kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let _old_token_holder = second_agent(&stack, stack.server.addrs.public, &other_kube).await;
    within("the first agent stands by", async {
        while scrape(first.health, "agent_standby").await != Some(1.0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // The server rotates first: the holder's tunnel stays; the first agent's old token gets 401.
    std::fs::write(stack.dir.0.join("c1.token"), "agent-token-2").unwrap();
    stack.server.reloader.reload().expect("server reload");
    within("a 401 ends standing by", async {
        while scrape(first.health, "agent_standby").await != Some(0.0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, _, body) = get(first.health, "/readyz", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        String::from_utf8_lossy(&body).contains("not connected"),
        "{body:?}"
    );
    // Then the first agent gets the new token and takes the route back.
    support::write_atomic(&stack.dir.0.join("a1.agent-token"), "agent-token-2");
    first.reloader.reload().expect("agent reload");
    let served = stack.kube.requests().len();
    within("the new token's agent serves", async {
        while stack.kube.requests().len() == served {
            get(internal, "/tunnel/c1/api", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(scrape(ops, REPLACED).await, Some(2.0));
}

/// A Go agent names no instance: it displaces ours as before (newest wins) and is never
/// refused, so ours stands by; when the Go agent's connection goes, ours takes over.
#[tokio::test]
async fn a_go_agent_displaces_ours_which_stands_by_until_it_leaves() {
    let stack = Stack::start().await;
    let (internal, ops, ours) = (stack.internal(), stack.ops(), stack.agent.health);
    let go_agent =
        support::gopeer::go_agent_with_token(stack.server.addrs.public, "agent-token-1").await;
    within("ours stands by", async {
        while scrape(ours, "agent_standby").await != Some(1.0) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(scrape(ops, REPLACED).await, Some(1.0));
    assert_eq!(
        scrape(ops, "agents_connected").await,
        Some(1.0),
        "the Go agent serves"
    );
    let served = stack.kube.requests().len();
    go_agent.drop_tcp();
    within("ours takes over", async {
        while stack.kube.requests().len() == served {
            get(internal, "/tunnel/c1/api", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(scrape(ours, "agent_standby").await, Some(0.0));
}
