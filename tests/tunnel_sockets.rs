//! Both ends of a tunnel keep its socket's unsent bytes low (`TCP_NOTSENT_LOWAT`), so what a
//! bulk stream has queued waits in the mux, where a small answer overtakes it, not in a kernel
//! send buffer (S4 in docs/benchmarks.md). The server and the agent's dial run in this process,
//! so the test finds both tunnel sockets among its own descriptors and reads the option back.
//! One test in its own binary: no other test opens or closes descriptors meanwhile.

mod support;

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use argocd_proxy::agent::dial;
use argocd_proxy::config::{AgentConfig, Check};
use argocd_proxy::mux::MemoryBudget;
use argocd_proxy::transport::tcp::TUNNEL_UNSENT_LOWAT;
use support::kubeapi::FakeKubeApi;
use support::stack::{server, wait_routed};
use support::{within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP socket of this process: its addresses and its `TCP_NOTSENT_LOWAT` (0 when unset).
#[derive(Debug)]
struct OwnSocket {
    local: SocketAddr,
    peer: SocketAddr,
    unsent_lowat: u32,
}

/// Every connected TCP socket this process holds.
fn own_tcp_sockets() -> Vec<OwnSocket> {
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        // SAFETY: the descriptor is only read from while this single test's descriptors are
        // open, and a descriptor closed meanwhile fails the calls below (EBADF), which skip it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else {
            continue;
        };
        let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
            continue;
        };
        let Ok(unsent_lowat) = socket.tcp_notsent_lowat() else {
            continue;
        };
        sockets.push(OwnSocket {
            local,
            peer,
            unsent_lowat,
        });
    }
    sockets
}

#[tokio::test]
async fn both_ends_of_a_tunnel_hold_little_unsent_and_other_connections_do_not() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let public = server.addrs.public;
    let toml = format!(
        "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\n\
         token_file = \"agent.token\"\n\
         [upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n",
        kube.addr
    );
    let path = dir.0.join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    let config = AgentConfig::load(&path, Check::Files).expect("agent config");
    let budget = Arc::new(MemoryBudget::default_process());
    let dialed = within("dial", dial::dial(&config, budget, "test-instance"))
        .await
        .expect("the tunnel comes up");
    wait_routed(server.addrs.ops.unwrap(), "c1").await;

    let sockets = own_tcp_sockets();
    let agent_end = sockets
        .iter()
        .find(|socket| socket.peer == public)
        .unwrap_or_else(|| panic!("no socket dialled to {public} among {sockets:?}"));
    let server_end = sockets
        .iter()
        .find(|socket| socket.local == public && socket.peer == agent_end.local)
        .unwrap_or_else(|| {
            panic!(
                "no socket accepted from {} among {sockets:?}",
                agent_end.local
            )
        });
    assert_eq!(
        agent_end.unsent_lowat, TUNNEL_UNSENT_LOWAT,
        "the agent's end"
    );
    assert_eq!(
        server_end.unsent_lowat, TUNNEL_UNSENT_LOWAT,
        "the server's end"
    );

    // A client's connection to the internal listener is not a tunnel and keeps the kernel's
    // default: one request answered on it, so the server has accepted it.
    let internal = server.addrs.internal;
    let mut held = tokio::net::TcpStream::connect(internal).await.unwrap();
    held.write_all(b"GET /no-such-path HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    within("an answer", held.read_exact(&mut answer))
        .await
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
    let sockets = own_tcp_sockets();
    let accepted = sockets
        .iter()
        .find(|socket| socket.local == internal && socket.peer == held.local_addr().unwrap())
        .unwrap_or_else(|| panic!("no socket accepted on {internal} among {sockets:?}"));
    assert_eq!(
        accepted.unsent_lowat, 0,
        "a client connection is not a tunnel"
    );
    drop(dialed);
}
