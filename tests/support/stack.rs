//! The product in one test process: our server and agent through their library entry points
//! on real loopback sockets, a fake kube-apiserver behind the agent, and an HTTP client.

use std::net::SocketAddr;
use std::path::Path;

use argocd_proxy::agent::Agent;
use argocd_proxy::config::{AgentConfig, Check, ServerConfig};
use argocd_proxy::server::{BoundAddrs, Server};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::kubeapi::FakeKubeApi;
use super::{within, TempDir};

/// The service-account token the agent injects in every stack.
pub const SA_TOKEN: &str = "sa-token-XYZ";

/// A running server; stops when dropped.
pub struct TestServer {
    pub addrs: BoundAddrs,
    /// Reloads its config file (what SIGHUP or a file change does in the binary).
    pub reloader: argocd_proxy::server::Reloader,
    /// Firing it is the server's SIGTERM.
    pub stop: CancellationToken,
    /// Ends when the server has shut down.
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a server with `clusters` as (id, agent token, target).
pub async fn server(dir: &Path, clusters: &[(&str, &str, &str)]) -> TestServer {
    let mut toml = format!(
        "{LISTENERS}[limits]\nshutdown_grace = \"1s\"\nheader_read_timeout = \"500ms\"\nreconnect_wait = \"200ms\"\n"
    );
    for (id, token, target) in clusters {
        std::fs::write(dir.join(format!("{id}.token")), token).unwrap();
        toml += &format!(
            "[[cluster]]\nid = \"{id}\"\ntoken_file = \"{id}.token\"\ntarget = \"{target}\"\n"
        );
    }
    server_from_toml(dir, &toml).await
}

/// The three listeners on port 0, for configs written by hand.
pub const LISTENERS: &str =
    "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n";

/// Starts a server from a whole config text (token files it names must exist in `dir`).
pub async fn server_from_toml(dir: &Path, toml: &str) -> TestServer {
    let path = dir.join("server.toml");
    std::fs::write(&path, toml).unwrap();
    let config = ServerConfig::load(&path, Check::Files).expect("server config");
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.addrs();
    let reloader = server.reloader();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    TestServer {
        addrs,
        reloader,
        stop,
        task,
    }
}

/// How the agent authenticates upstream.
pub enum Inject {
    /// `Authorization: Bearer` from this file (re-read per request).
    TokenFile(std::path::PathBuf),
    /// `inject_token = false`.
    Nothing,
}

/// A running agent; stops when dropped.
pub struct TestAgent {
    pub health: SocketAddr,
    /// Reloads its config file (what SIGHUP or a file change does in the binary).
    pub reloader: argocd_proxy::agent::Reloader,
    pub stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestAgent {
    /// Stops the agent and waits until it has closed its tunnel.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        within("agent stops", task).await.unwrap();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts an agent from a whole config text (for TLS and other variants).
pub async fn agent_from_toml(dir: &Path, name: &str, toml: &str) -> TestAgent {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let config = AgentConfig::load(&path, Check::Files).expect("agent config");
    let agent = Agent::bind(config).await.expect("agent bind");
    let health = agent.health_addr().expect("health listener");
    let reloader = agent.reloader();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    TestAgent {
        health,
        reloader,
        stop,
        task: Some(task),
    }
}

/// Starts an agent dialing `public` with `token`, forwarding to `upstream` (plain HTTP).
pub async fn agent(
    dir: &Path,
    name: &str,
    public: SocketAddr,
    token: &str,
    upstream: &str,
    inject: Inject,
) -> TestAgent {
    std::fs::write(dir.join(format!("{name}.agent-token")), token).unwrap();
    let inject = match inject {
        Inject::TokenFile(file) => format!("token_file = \"{}\"\n", file.display()),
        Inject::Nothing => "inject_token = false\n".to_owned(),
    };
    let toml = format!(
        "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\ntoken_file = \"{name}.agent-token\"\n\
         health_listen = \"127.0.0.1:0\"\nmax_reconnect_interval = \"1s\"\n[upstream]\ntarget = \"{upstream}\"\nplaintext = true\n{inject}\
         [limits]\nshutdown_grace = \"300ms\"\n"
    );
    agent_from_toml(dir, name, &toml).await
}

/// Waits until the server routes `cluster` (its ops `/readyz?cluster=` answers 200).
pub async fn wait_routed(ops: SocketAddr, cluster: &str) {
    within("agent registered", async {
        loop {
            if get(ops, &format!("/readyz?cluster={cluster}"), &[]).await.0 == StatusCode::OK {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// One HTTP/1.1 GET: status, headers and the whole body (an error if the body fails).
pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, Bytes), hyper::Error> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// One series of `addr`'s `/metrics` (its name with labels, exactly as exported), if present.
pub async fn scrape(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, _, body) = get(addr, "/metrics", &[]).await;
    String::from_utf8_lossy(&body).lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// [`try_get`], bounded, panicking on a transport error.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    within(path, try_get(addr, path, headers))
        .await
        .expect("HTTP exchange")
}

/// A server with cluster `c1`, its agent, and a fake kube-apiserver behind the agent.
pub struct Stack {
    pub dir: TempDir,
    pub kube: FakeKubeApi,
    pub server: TestServer,
    pub agent: TestAgent,
}

impl Stack {
    /// Everything up and `c1` routed.
    pub async fn start() -> Stack {
        let dir = TempDir::new();
        let kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
        let target = kube.addr.to_string();
        let server = server(&dir.0, &[("c1", "agent-token-1", &target)]).await;
        let sa = dir.0.join("sa.token");
        std::fs::write(&sa, format!("{SA_TOKEN}\n")).unwrap();
        let agent = agent(
            &dir.0,
            "a1",
            server.addrs.public,
            "agent-token-1",
            &target,
            Inject::TokenFile(sa),
        )
        .await;
        wait_routed(server.addrs.ops.unwrap(), "c1").await;
        Stack {
            dir,
            kube,
            server,
            agent,
        }
    }

    /// The internal (Argo CD) address.
    pub fn internal(&self) -> SocketAddr {
        self.server.addrs.internal
    }

    /// The ops address.
    pub fn ops(&self) -> SocketAddr {
        self.server.addrs.ops.unwrap()
    }
}

/// Opens a pods watch through the tunnel; yields each chunk, then how the body ended.
pub fn open_watch(
    internal: SocketAddr,
    cluster: &str,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let path = format!("/tunnel/{cluster}/api/v1/pods?watch=1");
    let task = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header("host", "x")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let _ = events_tx.send(String::from_utf8_lossy(&data).into_owned());
                    }
                }
                Some(Err(error)) => return Err(error.to_string()),
                None => return Ok(()),
            }
        }
    });
    (events, task)
}
