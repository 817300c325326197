//! sd_notify from the real binaries, received on a datagram socket at `$NOTIFY_SOCKET` (no
//! systemd manager involved): READY when serving (the agent's never waits for the tunnel),
//! STATUS a human can read, WATCHDOG from the event loop, STOPPING on SIGTERM, then exit 0.

mod support;

use std::process::{Command, Stdio};

use support::{within, KillOnDrop, TempDir};
use tokio::net::UnixDatagram;

/// Receives notifications until one contains `wanted`; returns everything seen.
async fn until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) {
    let mut buffer = vec![0u8; 4096];
    within(wanted, async {
        loop {
            let len = socket.recv(&mut buffer).await.unwrap();
            let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
            let done = message.contains(wanted);
            seen.push(message);
            if done {
                return;
            }
        }
    })
    .await;
}

fn start(binary: &str, config: &std::path::Path, socket: &std::path::Path) -> KillOnDrop {
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "200000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn sigterm(child: &KillOnDrop) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn exits_cleanly(mut child: KillOnDrop) {
    let status = within("process exits", async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn server_notifies_ready_watchdog_and_stopping() {
    let dir = TempDir::new();
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let config = dir.0.join("server.toml");
    let toml = format!(
        "{}[[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
        support::stack::LISTENERS
    );
    std::fs::write(&config, toml).unwrap();
    let server = start(
        env!("CARGO_BIN_EXE_argocd-proxy-server"),
        &config,
        &socket_path,
    );
    let mut seen = Vec::new();
    until(&socket, "READY=1", &mut seen).await;
    assert!(
        seen.last().unwrap().contains("STATUS=listening"),
        "{seen:?}"
    );
    until(&socket, "WATCHDOG=1", &mut seen).await;
    sigterm(&server);
    until(&socket, "STOPPING=1", &mut seen).await;
    exits_cleanly(server).await;
}

/// The agent is ready after its first dial attempt even though no server answers (a server
/// outage must not make systemd restart every agent), and says why it is reconnecting.
#[tokio::test]
async fn agent_is_ready_without_a_tunnel_and_says_why() {
    let dir = TempDir::new();
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(dir.0.join("agent.token"), "t1").unwrap();
    let config = dir.0.join("agent.toml");
    let toml = format!(
        "server_url = \"ws://{closed}/connect\"\nallow_insecure_server = true\ntoken_file = \"agent.token\"\n\
         [upstream]\ntarget = \"127.0.0.1:1\"\nplaintext = true\ninject_token = false\n"
    );
    std::fs::write(&config, toml).unwrap();
    let agent = start(
        env!("CARGO_BIN_EXE_argocd-proxy-agent"),
        &config,
        &socket_path,
    );
    let mut seen = Vec::new();
    until(&socket, "READY=1", &mut seen).await;
    until(&socket, "STATUS=reconnecting in", &mut seen).await;
    assert!(
        seen.iter()
            .any(|message| message.contains(&closed.to_string())),
        "{seen:?}"
    );
    sigterm(&agent);
    until(&socket, "STOPPING=1", &mut seen).await;
    exits_cleanly(agent).await;
}
