//! sd_notify from the real binaries, received on a datagram socket at `$NOTIFY_SOCKET` (no
//! systemd manager involved), across a whole life: READY when serving (the agent's never waits
//! for the tunnel), STATUS a human can read, WATCHDOG from the event loop, RELOADING then READY
//! for each reload — valid or not, by SIGHUP or by editing the file — STOPPING on SIGTERM, then
//! exit 0.

mod support;

use support::notify::{addr_in, exits_cleanly, signal, start, status_of, Notifications};
use support::stack::{get, LISTENERS};
use support::TempDir;

const SERVER: &str = env!("CARGO_BIN_EXE_argocd-proxy-server");
const AGENT: &str = env!("CARGO_BIN_EXE_argocd-proxy-agent");

fn server_toml(clusters: &[&str]) -> String {
    let mut toml = format!(
        "config_poll_interval = \"100ms\"\n{LISTENERS}[limits]\nreconnect_wait = \"100ms\"\n"
    );
    for id in clusters {
        toml += &format!("[[cluster]]\nid = \"{id}\"\ntoken_file = \"{id}.token\"\n");
    }
    toml
}

#[tokio::test]
async fn server_lifecycle_start_reloads_and_stop() {
    let dir = TempDir::new();
    let mut notify = Notifications::bind(&dir.0, "notify");
    for id in ["c1", "c2"] {
        std::fs::write(dir.0.join(format!("{id}.token")), format!("token-{id}")).unwrap();
    }
    let config = dir.0.join("server.toml");
    std::fs::write(&config, server_toml(&["c1"])).unwrap();
    let server = start(SERVER, &config, &notify);

    let ready = status_of(&notify.until("READY=1").await);
    assert!(ready.starts_with("listening:"), "{ready}");
    let internal = addr_in(&ready, "internal");
    notify.until("WATCHDOG=1").await;
    let cluster_status =
        |id: &'static str| async move { get(internal, &format!("/tunnel/{id}/api"), &[]).await.0 };
    // Configured but no agent: 503. Unknown: 502.
    assert_eq!(cluster_status("c1").await, 503);
    assert_eq!(cluster_status("c2").await, 502);

    // A valid edit of the file: the poll sees it and reloads.
    support::write_atomic(&config, server_toml(&["c1", "c2"]));
    let status = notify.reload_done().await;
    assert!(status.contains("reloaded: 2 clusters"), "{status}");
    assert_eq!(cluster_status("c2").await, 503, "c2 added by the reload");
    // SIGHUP with the file unchanged (so only the signal can cause this reload).
    signal(&server, "HUP");
    let status = notify.reload_done().await;
    assert!(status.contains("reloaded: 2 clusters"), "{status}");

    // An invalid config by editing the file: kept the running one, and says why.
    let broken = server_toml(&["c1", "c2"]).replacen("127.0.0.1:0", "nonsense", 1);
    support::write_atomic(&config, broken);
    let status = notify.reload_done().await;
    assert!(
        status.starts_with("reload failed, keeping the running config"),
        "{status}"
    );
    assert!(status.contains("nonsense"), "{status}");
    assert_eq!(cluster_status("c2").await, 503, "old config still in force");
    // The same broken file on SIGHUP fails the same way.
    signal(&server, "HUP");
    let status = notify.reload_done().await;
    assert!(status.starts_with("reload failed"), "{status}");

    // A config naming a token file that is not there yet fails; the file arriving later (a
    // Secret volume updates apart from its ConfigMap) is picked up by the retry.
    support::write_atomic(&config, server_toml(&["c1", "c2", "c3"]));
    let status = notify.reload_done().await;
    assert!(
        status.starts_with("reload failed") && status.contains("c3.token"),
        "{status}"
    );
    support::write_atomic(&dir.0.join("c3.token"), "token-c3");
    let status = notify.reload_done().await;
    assert!(status.contains("reloaded: 3 clusters"), "{status}");

    // A valid edit removing c2.
    support::write_atomic(&config, server_toml(&["c1"]));
    let status = notify.reload_done().await;
    assert!(status.contains("reloaded: 1 clusters"), "{status}");
    assert_eq!(cluster_status("c2").await, 502, "c2 removed by the reload");

    signal(&server, "TERM");
    notify.until("STOPPING=1").await;
    exits_cleanly(server).await;
}

/// The agent is ready after its first dial attempt even though no server answers (a server
/// outage must not make systemd restart every agent), says why it is reconnecting, reloads
/// while it has no tunnel, and stops cleanly.
#[tokio::test]
async fn agent_lifecycle_without_a_server() {
    let dir = TempDir::new();
    let mut notify = Notifications::bind(&dir.0, "notify");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    support::write_atomic(&dir.0.join("agent.token"), "t1");
    let config = dir.0.join("agent.toml");
    let toml = format!(
        "server_url = \"ws://{closed}/connect\"\nallow_insecure_server = true\ntoken_file = \"agent.token\"\n\
         config_poll_interval = \"100ms\"\n\
         [upstream]\ntarget = \"127.0.0.1:1\"\nplaintext = true\ninject_token = false\n"
    );
    support::write_atomic(&config, &toml);
    let agent = start(AGENT, &config, &notify);
    notify.until("READY=1").await;
    let status = status_of(&notify.until("STATUS=reconnecting in").await);
    assert!(status.contains(&closed.to_string()), "{status}");
    notify.until("WATCHDOG=1").await;

    signal(&agent, "HUP");
    let status = notify.reload_done().await;
    assert_eq!(
        status,
        format!("reloaded; no tunnel yet to ws://{closed}/connect")
    );

    // Rotating the token file reloads too (it is watched with the config).
    support::write_atomic(&dir.0.join("agent.token"), "t2");
    let status = notify.reload_done().await;
    assert!(status.starts_with("reloaded;"), "{status}");

    // A config that breaks a rule (plaintext without the opt-in), by editing the file.
    support::write_atomic(&config, toml.replace("allow_insecure_server = true\n", ""));
    let status = notify.reload_done().await;
    assert!(
        status.starts_with("reload failed, keeping the running config"),
        "{status}"
    );
    assert!(status.contains("plaintext"), "{status}");
    // Still dialing with the old config.
    notify.until("STATUS=reconnecting in").await;

    signal(&agent, "TERM");
    notify.until("STOPPING=1").await;
    exits_cleanly(agent).await;
}

/// Two agent processes with one cluster's token: the second serves, the first says on its
/// STATUS line that it stands by (not "reconnecting": nothing is wrong with the server), and
/// goes back to serving when the second stops.
#[tokio::test]
async fn a_displaced_agent_says_it_stands_by() {
    let dir = TempDir::new();
    let mut server_notify = Notifications::bind(&dir.0, "server-notify");
    std::fs::write(dir.0.join("c1.token"), "token-c1").unwrap();
    let config = dir.0.join("server.toml");
    std::fs::write(&config, server_toml(&["c1"])).unwrap();
    let server = start(SERVER, &config, &server_notify);
    let public = addr_in(&status_of(&server_notify.until("READY=1").await), "public");
    support::write_atomic(&dir.0.join("agent.token"), "token-c1");
    let agent_process = |name: &str| {
        let config = dir.0.join(format!("{name}.toml"));
        let toml = format!(
            "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\n\
             token_file = \"agent.token\"\nmax_reconnect_interval = \"1s\"\n\
             [upstream]\ntarget = \"127.0.0.1:1\"\nplaintext = true\ninject_token = false\n"
        );
        support::write_atomic(&config, toml);
        let mut notify = Notifications::bind(&dir.0, &format!("{name}-notify"));
        let child = start(AGENT, &config, &notify);
        (child, async move {
            notify.until("STATUS=connected to").await;
            notify
        })
    };
    let (first, connected) = agent_process("first");
    let mut first_notify = connected.await;
    let (second, connected) = agent_process("second");
    let _second_notify = connected.await;
    let status = status_of(&first_notify.until("STATUS=standing by").await);
    assert!(
        status.contains("another agent serves this cluster"),
        "{status}"
    );
    signal(&second, "TERM");
    exits_cleanly(second).await;
    first_notify.until("STATUS=connected to").await;
    for process in [first, server] {
        signal(&process, "TERM");
        exits_cleanly(process).await;
    }
}

/// A manager that stops reading its notify socket must not freeze the service: sd_notify runs
/// on the event loop, and a blocking send to a full datagram queue stopped every tunnel (the
/// server froze ~20 s into a test that did not read its notifications). Here WATCHDOG=1 every
/// millisecond fills the queue at once; the server must go on answering.
#[tokio::test]
async fn a_manager_that_stops_reading_never_freezes_the_server() {
    let dir = TempDir::new();
    let stalled_path = dir.0.join("stalled-notify");
    let stalled = std::os::unix::net::UnixDatagram::bind(&stalled_path).unwrap();
    std::fs::write(dir.0.join("c1.token"), "token-c1").unwrap();
    let config = dir.0.join("server.toml");
    std::fs::write(&config, server_toml(&["c1"])).unwrap();
    let log = dir.0.join("server.log");
    let server = support::KillOnDrop(
        std::process::Command::new(SERVER)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &stalled_path)
            .env("WATCHDOG_USEC", "2000")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let internal: std::net::SocketAddr = support::within("the server listens", async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // A line still being written does not parse yet: poll again.
            let parsed = text
                .split(" internal=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
            if let Some(addr) = parsed {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // The queue is full: a send of our own would block.
    support::within("the notify queue fills", async {
        let probe = std::os::unix::net::UnixDatagram::unbound().unwrap();
        probe.set_nonblocking(true).unwrap();
        while probe.send_to(b"PROBE=1", &stalled_path).is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    for _ in 0..20 {
        let (status, _, _) = get(internal, "/tunnel/c1/api", &[]).await;
        assert_eq!(
            status, 503,
            "configured, no agent: answered by a live event loop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(stalled);
    signal(&server, "TERM");
    exits_cleanly(server).await;
}
