//! Test harness: our server and agent sessions over real WebSockets on loopback, a Go-peer
//! emulator that speaks raw v1 bytes the way the Go implementation does, and middleboxes.
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod gopeer;
pub mod kubeapi;
pub mod middlebox;
pub mod notify;
pub mod pki;
pub mod stack;
pub mod wan;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use argocd_proxy::mux::negotiate::{self, Negotiated, ServerIdentity};
use argocd_proxy::mux::{Limits, MemoryBudget, Role, Session};
use argocd_proxy::transport::websocket;

#[allow(unused_imports)] // not every test file needs it
pub use argocd_proxy::mux::testing::pattern;
use tokio::net::{TcpListener, TcpStream};

/// Fails the test with a message instead of hanging it.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("timed out after 20 s: {what}"))
}

/// Replaces a file the way editors and Kubernetes volume updates do (write aside, rename), so a
/// poller never reads it half-written.
pub fn write_atomic(path: &std::path::Path, content: impl AsRef<[u8]>) {
    let aside = path.with_extension("tmp-write");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// A listener on an ephemeral loopback port.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Limits for tests: negotiation waits long enough that a wrongful wait shows up as a timeout.
pub fn limits() -> Limits {
    Limits {
        negotiate_timeout: Duration::from_secs(60),
        stream_window: 64 * 1024,
        session_buffer: 256 * 1024 * 1024,
        ..Limits::default()
    }
}

/// One accepted agent on our server: the session and what negotiation decided.
pub struct ServerSide {
    pub session: Session,
    pub negotiated: Negotiated,
}

/// Accepts one agent on `listener` as our server does.
pub async fn our_server(listener: &TcpListener, v2_enabled: bool, limits: Limits) -> ServerSide {
    let (tcp, _) = listener.accept().await.expect("accept");
    let accepted = websocket::accept(tcp, v2_enabled, |_| Ok(()))
        .await
        .expect("upgrade");
    let mut transport = accepted.transport;
    let identity = ServerIdentity {
        server_id: "replica-a".into(),
        replica_count: 1,
    };
    let negotiated = negotiate::server(&mut transport, accepted.echoed, &limits, &identity)
        .await
        .expect("negotiate");
    let config = negotiated
        .clone()
        .into_config(Role::Server, limits, budget());
    ServerSide {
        session: Session::start(transport, config),
        negotiated,
    }
}

/// One agent session dialled to `addr` as our agent does.
pub struct AgentSide {
    pub session: Session,
    pub negotiated: Negotiated,
}

/// Dials `addr` as our agent does; `offer_v2` sends the negotiation header.
pub async fn our_agent(addr: SocketAddr, offer_v2: bool, limits: Limits) -> AgentSide {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let url = format!("ws://{addr}/connect");
    let connected = websocket::connect(tcp, &url, Some("token"), offer_v2)
        .await
        .expect("upgrade");
    let mut transport = connected.transport;
    let negotiated = negotiate::agent(&mut transport, connected.offered, connected.echoed, &limits)
        .await
        .expect("negotiate");
    let config = negotiated
        .clone()
        .into_config(Role::Agent, limits, budget());
    AgentSide {
        session: Session::start(transport, config),
        negotiated,
    }
}

/// Our server and our agent connected over loopback, negotiated.
pub async fn connected_pair(server_v2: bool, agent_offers_v2: bool) -> (ServerSide, AgentSide) {
    let (listener, addr) = listener().await;
    let agent = tokio::spawn(our_agent(addr, agent_offers_v2, limits()));
    let server = within("server accepts", our_server(&listener, server_v2, limits())).await;
    let agent = within("agent connects", agent).await.expect("agent task");
    (server, agent)
}

fn budget() -> Arc<MemoryBudget> {
    Arc::new(MemoryBudget::default_process())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "argocd-proxy-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child if a test panics before it does.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl --server=<server> <args>` with no user config, cache or home of its own (callers
/// choose stdin).
pub fn kubectl(server: &str, home: &TempDir, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("kubectl");
    command
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", &home.0)
        .arg(format!("--server={server}"))
        .arg(format!("--cache-dir={}", home.0.join("cache").display()))
        .args(args);
    command
}

/// An upstream answering `GET /bytes/<n>` with `n` bytes of `pattern(7, n)` on every connection
/// (keep-alive), for bulk and concurrency tests.
pub async fn pattern_upstream() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = tokio::io::BufReader::new(read);
                loop {
                    let mut request_line = String::new();
                    if lines.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if lines.read_line(&mut header).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    let len: usize = request_line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|path| path.strip_prefix("/bytes/"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                    if write.write_all(head.as_bytes()).await.is_err()
                        || write.write_all(&pattern(7, len)).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}
