//! Reload without dropping tunnels, with the real binaries as processes: a server, two agents
//! and a fake kube-apiserver. Editing the server's config adds and removes clusters and rotates
//! a token while a watch streams through a tunnel that must stay up; editing an agent's config
//! moves its upstream for new requests while a watch to the old one keeps streaming.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::kubeapi::FakeKubeApi;
use support::notify::{addr_in, signal, start, status_of, Notifications};
use support::stack::{get, open_watch, wait_routed, LISTENERS};
use support::{within, KillOnDrop, TempDir};
use tokio::sync::mpsc::UnboundedReceiver;

const SERVER: &str = env!("CARGO_BIN_EXE_argocd-proxy-server");
const AGENT: &str = env!("CARGO_BIN_EXE_argocd-proxy-agent");

/// A server config with `(cluster id, token file)` pairs.
fn server_toml(clusters: &[(&str, &str)]) -> String {
    let mut toml = format!(
        "config_poll_interval = \"100ms\"\n{LISTENERS}[limits]\nreconnect_wait = \"100ms\"\nopen_timeout = \"1s\"\n"
    );
    for (id, token_file) in clusters {
        toml += &format!("[[cluster]]\nid = \"{id}\"\ntoken_file = \"{token_file}\"\n");
    }
    toml
}

fn agent_toml(public: SocketAddr, token_file: &str, upstream: SocketAddr) -> String {
    format!(
        "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\ntoken_file = \"{token_file}\"\n\
         config_poll_interval = \"100ms\"\nmax_reconnect_interval = \"1s\"\n\
         [upstream]\ntarget = \"{upstream}\"\nplaintext = true\ninject_token = false\n"
    )
}

struct Process {
    child: KillOnDrop,
    notify: Notifications,
}

async fn start_process(binary: &str, dir: &Path, name: &str, toml: &str) -> (Process, String) {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let mut notify = Notifications::bind(dir, name);
    let child = start(binary, &config, &notify);
    let ready = status_of(&notify.until("READY=1").await);
    (Process { child, notify }, ready)
}

async fn watches_open(kube: &FakeKubeApi, count: usize) {
    within("watches open upstream", async {
        while kube.open_watches() != count {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn event_named(events: &mut UnboundedReceiver<String>, name: &str) {
    within(&format!("watch event {name}"), async {
        loop {
            let chunk = events.recv().await.expect("watch still open");
            if chunk.contains(name) {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn server_reload_adds_removes_and_rotates_without_dropping_other_tunnels() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    for (file, token) in [
        ("c1.token", "one"),
        ("c2.token", "two"),
        ("c3.token", "three"),
    ] {
        support::write_atomic(&dir.0.join(file), token);
    }
    let (mut server, ready) = start_process(
        SERVER,
        &dir.0,
        "server",
        &server_toml(&[("c1", "c1.token"), ("c2", "c2.token")]),
    )
    .await;
    let (public, internal, ops) = (
        addr_in(&ready, "public"),
        addr_in(&ready, "internal"),
        addr_in(&ready, "ops"),
    );
    let (_agent1, _) = start_process(
        AGENT,
        &dir.0,
        "agent1",
        &agent_toml(public, "c1.token", kube.addr),
    )
    .await;
    let (mut agent2, _) = start_process(
        AGENT,
        &dir.0,
        "agent2",
        &agent_toml(public, "c2.token", kube.addr),
    )
    .await;
    wait_routed(ops, "c1").await;
    wait_routed(ops, "c2").await;
    server
        .notify
        .until("STATUS=2 agents connected (2 clusters configured)")
        .await;
    let (mut c1_events, c1_watch) = open_watch(internal, "c1");
    watches_open(&kube, 1).await;

    // One edit: c1's token rotated (a new file), c2 removed, c3 added.
    support::write_atomic(&dir.0.join("c1-rotated.token"), "one-rotated");
    support::write_atomic(
        &dir.0.join("server.toml"),
        server_toml(&[("c1", "c1-rotated.token"), ("c3", "c3.token")]),
    );
    let status = server.notify.reload_done().await;
    assert!(status.starts_with("reloaded: 2 clusters"), "{status}");

    // c1's tunnel stayed up: the watch opened before the reload still streams, and new
    // requests go through it.
    kube.push_pod_event("ADDED", "after-reload");
    event_named(&mut c1_events, "after-reload").await;
    assert_eq!(get(internal, "/tunnel/c1/api", &[]).await.0, 200);
    // c2 is gone: unknown to the router, its tunnel closed, its agent refused when it redials.
    assert_eq!(get(internal, "/tunnel/c2/api", &[]).await.0, 502);
    let status = status_of(&agent2.notify.until("STATUS=reconnecting in").await);
    assert!(status.contains("401"), "{status}");
    // c3 is known (no agent yet: 503, not 502).
    assert_eq!(get(internal, "/tunnel/c3/api", &[]).await.0, 503);
    assert!(!c1_watch.is_finished(), "c1's watch must still be open");

    signal(&server.child, "TERM");
    server.notify.until("STOPPING=1").await;
    let _ = agent2.child.0.kill();
}

#[tokio::test]
async fn agent_reload_moves_new_requests_to_the_new_upstream() {
    let dir = TempDir::new();
    let (old_kube, new_kube) = (
        FakeKubeApi::start(None).await,
        FakeKubeApi::start(None).await,
    );
    support::write_atomic(&dir.0.join("c1.token"), "one");
    let (_server, ready) = start_process(
        SERVER,
        &dir.0,
        "server",
        &server_toml(&[("c1", "c1.token")]),
    )
    .await;
    let (public, internal, ops) = (
        addr_in(&ready, "public"),
        addr_in(&ready, "internal"),
        addr_in(&ready, "ops"),
    );
    let (mut agent, _) = start_process(
        AGENT,
        &dir.0,
        "agent",
        &agent_toml(public, "c1.token", old_kube.addr),
    )
    .await;
    wait_routed(ops, "c1").await;
    let (mut events, watch) = open_watch(internal, "c1");
    watches_open(&old_kube, 1).await;
    // A request before the reload leaves an idle pooled stream that the next one reuses.
    assert_eq!(get(internal, "/tunnel/c1/api", &[]).await.0, 200);

    support::write_atomic(
        &dir.0.join("agent.toml"),
        agent_toml(public, "c1.token", new_kube.addr),
    );
    let status = agent.notify.reload_done().await;
    assert!(status.starts_with("reloaded; tunnel up to"), "{status}");

    assert_eq!(get(internal, "/tunnel/c1/api/v1/pods", &[]).await.0, 200);
    assert!(
        new_kube
            .requests()
            .iter()
            .any(|request| request.path_and_query.starts_with("/api/v1/pods")),
        "the request after the reload reached the new upstream"
    );
    old_kube.push_pod_event("ADDED", "still-streaming");
    event_named(&mut events, "still-streaming").await;
    assert!(!watch.is_finished());
}
