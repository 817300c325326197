//! The agent behind an egress HTTP proxy: a real `tinyproxy` (Debian's package) between agent
//! and server, reached with `CONNECT` — from the config, with Basic credentials, bypassed by
//! `no_proxy`, and from `$HTTPS_PROXY` in the agent binary's environment.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argocd_proxy::agent::dial;
use argocd_proxy::config::{AgentConfig, Check};
use argocd_proxy::mux::MemoryBudget;
use http::StatusCode;
use support::kubeapi::FakeKubeApi;
use support::pki::{tls_terminator, TestCa};
use support::stack::{agent_from_toml, get, server, wait_routed, TestServer};
use support::{within, KillOnDrop, TempDir};

/// How CI gets the proxy; the tests run it themselves when it is missing (they run as root).
const INSTALL: &[&str] = &[
    "apt-get",
    "install",
    "-y",
    "--no-install-recommends",
    "tinyproxy",
];

/// A tinyproxy process on 127.0.0.1, killed on drop.
struct TinyProxy {
    addr: SocketAddr,
    log: PathBuf,
    _child: KillOnDrop,
    _dir: TempDir,
}

impl TinyProxy {
    /// Starts tinyproxy allowing `CONNECT` to `ports` only, requiring `basic_auth` if given.
    async fn start(ports: &[u16], basic_auth: Option<(&str, &str)>) -> TinyProxy {
        ensure_installed();
        let dir = TempDir::new();
        // tinyproxy cannot listen on port 0, so a free port is picked and released first; if
        // something takes it meanwhile, tinyproxy exits and another port is tried. Only its
        // own log says the port is its own: a connect alone may reach whichever listener (a
        // parallel test's) took the port, and the agent would then dial that one for ever.
        const ATTEMPTS: usize = 5;
        for attempt in 0..ATTEMPTS {
            let log = dir.0.join(format!("tinyproxy-{attempt}.log"));
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|probe| probe.local_addr())
                .expect("probe a free port")
                .port();
            let mut conf = format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 20\n\
                 LogFile \"{}\"\nLogLevel Info\n",
                log.display()
            );
            for allowed in ports {
                conf += &format!("ConnectPort {allowed}\n");
            }
            if let Some((user, password)) = basic_auth {
                conf += &format!("BasicAuth {user} {password}\n");
            }
            let conf_path = dir.0.join("tinyproxy.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = KillOnDrop(
                Command::new("tinyproxy")
                    .arg("-d")
                    .arg("-c")
                    .arg(&conf_path)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn tinyproxy"),
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let listening = within("tinyproxy listens", async {
                loop {
                    if child.0.try_wait().expect("tinyproxy status").is_some() {
                        return false;
                    }
                    let accepting = std::fs::read_to_string(&log)
                        .is_ok_and(|text| text.contains("Accepting connections"));
                    if accepting && tokio::net::TcpStream::connect(addr).await.is_ok() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            if listening && child.0.try_wait().expect("tinyproxy status").is_none() {
                return TinyProxy {
                    addr,
                    log,
                    _child: child,
                    _dir: dir,
                };
            }
        }
        panic!(
            "tinyproxy did not start in {ATTEMPTS} attempts; its last log:\n{}",
            std::fs::read_to_string(dir.0.join(format!("tinyproxy-{}.log", ATTEMPTS - 1)))
                .unwrap_or_default()
        );
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines tinyproxy has logged, e.g. `CONNECT 127.0.0.1:4000 HTTP/1.1`.
    fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("Request (file descriptor"))
            .filter_map(|line| line.split_once("): "))
            .map(|(_, request)| request.to_owned())
            .collect()
    }

    /// Waits until tinyproxy has logged `CONNECT <authority>`.
    async fn wait_connect(&self, authority: &str) {
        let expected = format!("CONNECT {authority} HTTP/1.1");
        within("tinyproxy logs the CONNECT", async {
            while !self.requests().contains(&expected) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// Installs tinyproxy once per test binary if it is missing.
fn ensure_installed() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let present = |program: &str| {
            Command::new(program)
                .arg("-v")
                .output()
                .is_ok_and(|output| output.status.success())
        };
        if present("tinyproxy") {
            return;
        }
        let installed = Command::new(INSTALL[0])
            .args(&INSTALL[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed && present("tinyproxy"),
            "these tests need tinyproxy; install it with `{}`",
            INSTALL.join(" ")
        );
    });
}

/// A server with cluster `c1` (agent token in `dir/agent.token`) in front of a fake kube API.
async fn cluster(dir: &TempDir) -> (TestServer, FakeKubeApi) {
    let kube = FakeKubeApi::start(None).await;
    let server = server(&dir.0, &[("c1", "agent-token", &kube.addr.to_string())]).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    (server, kube)
}

/// An agent config for `server_url` plus `extra` lines (proxy settings, TLS).
fn agent_toml(server_url: &str, extra: &str, kube: &FakeKubeApi) -> String {
    format!(
        "server_url = \"{server_url}\"\ntoken_file = \"agent.token\"\nhealth_listen = \"127.0.0.1:0\"\n\
         max_reconnect_interval = \"1s\"\n{extra}\n\
         [upstream]\ntarget = \"{}\"\nplaintext = true\ninject_token = false\n",
        kube.addr
    )
}

/// Proxy settings over plain ws://. `no_proxy = []` keeps a `$NO_PROXY` in the test
/// environment from bypassing the proxy.
fn via(proxy_url: &str, no_proxy: &str) -> String {
    format!("allow_insecure_server = true\nproxy_url = \"{proxy_url}\"\nno_proxy = {no_proxy}")
}

async fn assert_tunnel_works(server: &TestServer) {
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let (status, _, _) = get(server.addrs.internal, "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// With `proxy_url` set, the tunnel is a CONNECT through the proxy: tinyproxy logs it, requests
/// flow, and killing the proxy takes the tunnel down with it.
#[tokio::test]
async fn agent_reaches_the_server_only_through_the_proxy() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let public = server.addrs.public;
    let proxy = TinyProxy::start(&[public.port()], None).await;
    let url = format!("ws://{public}/connect");
    let _agent = agent_from_toml(
        &dir.0,
        "a",
        &agent_toml(&url, &via(&proxy.url(), "[]"), &kube),
    )
    .await;
    assert_tunnel_works(&server).await;
    proxy.wait_connect(&public.to_string()).await;
    drop(proxy);
    within("the tunnel ends with the proxy", async {
        let ops = server.addrs.ops.unwrap();
        while get(ops, "/readyz?cluster=c1", &[]).await.0 == StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// wss:// through the proxy: TLS runs inside the CONNECT tunnel and the server name is
/// resolved by the proxy (`CONNECT localhost:port`).
#[tokio::test]
async fn agent_runs_tls_inside_the_connect_tunnel() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let ca = TestCa::new("proxy CA");
    let public_tls = tls_terminator(ca.server_config(&["localhost"]), server.addrs.public).await;
    let proxy = TinyProxy::start(&[public_tls.port()], None).await;
    let extra = format!(
        "server_ca = \"{}\"\nproxy_url = \"{}\"\nno_proxy = []",
        ca.write(&dir.0, "ca.pem").display(),
        proxy.url()
    );
    let url = format!("wss://localhost:{}/connect", public_tls.port());
    let _agent = agent_from_toml(&dir.0, "a", &agent_toml(&url, &extra, &kube)).await;
    assert_tunnel_works(&server).await;
    proxy
        .wait_connect(&format!("localhost:{}", public_tls.port()))
        .await;
}

/// A proxy that requires Basic credentials admits the agent that has them in `proxy_url`.
#[tokio::test]
async fn proxy_credentials_from_the_url_are_accepted() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let public = server.addrs.public;
    let proxy = TinyProxy::start(&[public.port()], Some(("agent", "s3cret"))).await;
    let proxy_url = format!("http://agent:s3cret@{}", proxy.addr);
    let url = format!("ws://{public}/connect");
    let _agent = agent_from_toml(
        &dir.0,
        "a",
        &agent_toml(&url, &via(&proxy_url, "[]"), &kube),
    )
    .await;
    assert_tunnel_works(&server).await;
    proxy.wait_connect(&public.to_string()).await;
}

/// Missing or wrong credentials: the dial fails with the proxy's refusal (tinyproxy answers
/// 407 without credentials and 401 for wrong ones), and the error, which goes to logs and the
/// sd_notify status, never shows the password.
#[tokio::test]
async fn missing_or_wrong_proxy_credentials_fail_the_dial() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let public = server.addrs.public;
    let proxy = TinyProxy::start(&[public.port()], Some(("agent", "s3cret"))).await;
    let url = format!("ws://{public}/connect");
    for (proxy_url, refusal) in [
        (proxy.url(), "407 Proxy Authentication Required"),
        (
            format!("http://agent:wrong-pass@{}", proxy.addr),
            "401 Unauthorized",
        ),
    ] {
        let path = dir.0.join("agent.toml");
        std::fs::write(&path, agent_toml(&url, &via(&proxy_url, "[]"), &kube)).unwrap();
        let config = AgentConfig::load(&path, Check::Files).expect("agent config");
        let budget = Arc::new(MemoryBudget::default_process());
        let Err(error) = within("dial", dial::dial(&config, budget, "test-instance")).await else {
            panic!("dialled through {proxy_url} without the right credentials");
        };
        let text = error.to_string();
        assert_eq!(
            text,
            format!("proxy CONNECT to {} refused: {refusal}", proxy.addr)
        );
        assert!(!format!("{text} {error:?}").contains("wrong-pass"));
    }
    assert_eq!(proxy.requests().len(), 2, "{:?}", proxy.requests());
}

/// A server host listed in `no_proxy` (here with a port, which is ignored) is dialled
/// directly: the tunnel comes up and the proxy sees no request at all.
#[tokio::test]
async fn no_proxy_sends_the_server_host_direct() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let public = server.addrs.public;
    let proxy = TinyProxy::start(&[public.port()], None).await;
    let url = format!("ws://{public}/connect");
    let extra = via(&proxy.url(), "[\"example.com\", \"127.0.0.1:9\"]");
    let _agent = agent_from_toml(&dir.0, "a", &agent_toml(&url, &extra, &kube)).await;
    assert_tunnel_works(&server).await;
    assert_eq!(proxy.requests(), Vec::<String>::new());
}

/// The agent binary with no `proxy_url` and `$HTTPS_PROXY` in its environment (a process of
/// its own: the environment is process-global and tests run in parallel).
fn agent_binary(dir: &TempDir, config: &str, https_proxy: &str) -> (KillOnDrop, PathBuf) {
    let path = dir.0.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let stderr = dir.0.join("agent.stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_argocd-proxy-agent"))
        .arg("--config")
        .arg(&path)
        .env("HTTPS_PROXY", https_proxy)
        .env_remove("https_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn the agent binary");
    (KillOnDrop(child), stderr)
}

/// `$HTTPS_PROXY` stands in for an unset `proxy_url`: the binary tunnels through the proxy and
/// logs which one (host:port) it uses.
#[tokio::test]
async fn https_proxy_from_the_environment_is_used() {
    let dir = TempDir::new();
    let (server, kube) = cluster(&dir).await;
    let public = server.addrs.public;
    let proxy = TinyProxy::start(&[public.port()], None).await;
    let config = agent_toml(
        &format!("ws://{public}/connect"),
        "allow_insecure_server = true",
        &kube,
    );
    let (_agent, stderr) = agent_binary(&dir, &config, &proxy.url());
    assert_tunnel_works(&server).await;
    proxy.wait_connect(&public.to_string()).await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains("through an egress proxy") && log.contains(&proxy.addr.to_string()),
        "{log}"
    );
}

/// An `$HTTPS_PROXY` that is not `http://` is a clear, repeated dial error naming the
/// variable (never its credentials), and the agent keeps running.
#[tokio::test]
async fn an_invalid_https_proxy_is_a_dial_error() {
    let dir = TempDir::new();
    let kube = FakeKubeApi::start(None).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let config = agent_toml(
        "ws://127.0.0.1:9/connect",
        "allow_insecure_server = true",
        &kube,
    );
    let (mut agent, stderr) = agent_binary(&dir, &config, "socks5://agent:s3cret@127.0.0.1:1080");
    let expected = "$HTTPS_PROXY is not a usable proxy URL";
    let log = within("the agent reports the bad variable", async {
        loop {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            if log.contains(expected) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!log.contains("s3cret"), "{log}");
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent exited: {log}"
    );
}
