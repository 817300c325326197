//! The server's listeners under TLS with a test PKI generated at test time: agents' client
//! certificates (missing, wrong CA, expired, naming another cluster), certificate rotation on
//! disk while tunnels stay up, caller authentication on the internal listener, and Argo CD's
//! watches multiplexed over one HTTP/2 connection.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argocd_proxy::agent::dial::{dial, DialError};
use argocd_proxy::config::{AgentConfig, Check};
use argocd_proxy::mux::MemoryBudget;
use argocd_proxy::transport::tls;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::kubeapi::FakeKubeApi;
use support::pki::TestCa;
use support::stack::{agent_from_toml, get, server_from_toml, wait_routed, SA_TOKEN};
use support::{within, TempDir};

/// A TLS client (server name `localhost`) trusting `ca`, presenting `identity`.
fn client(
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let identity = identity.map(|(cert, key)| (cert.as_path(), key.as_path()));
    tls::client_config_with_identity(tls::roots(Some(ca)).unwrap(), alpn, identity).unwrap()
}

/// One HTTP/1.1 GET over TLS; `Err` when the handshake or the exchange fails.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls::connect(config, "localhost", tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}

fn agent_toml(
    public: SocketAddr,
    server_ca: &Path,
    token_file: &str,
    identity: Option<&(PathBuf, PathBuf)>,
    upstream: SocketAddr,
) -> String {
    let identity = identity.map_or(String::new(), |(cert, key)| {
        format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    format!(
        "server_url = \"wss://localhost:{}/connect\"\nserver_ca = \"{}\"\ntoken_file = \"{token_file}\"\n{identity}\
         health_listen = \"127.0.0.1:0\"\nmax_reconnect_interval = \"1s\"\n\
         [upstream]\ntarget = \"{upstream}\"\nplaintext = true\ninject_token = false\n",
        public.port(),
        server_ca.display()
    )
}

/// One dial attempt with this agent config (what the agent does in its loop).
async fn dial_once(dir: &Path, name: &str, toml: &str) -> Result<(), DialError> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    let config = AgentConfig::load(&path, Check::Files).unwrap();
    within(
        "dial",
        dial(
            &config,
            Arc::new(MemoryBudget::default_process()),
            "mtls-test",
        ),
    )
    .await
    .map(drop)
}

#[tokio::test]
async fn agents_need_a_client_certificate_that_names_their_cluster() {
    let dir = TempDir::new();
    let (server_ca, client_ca, stranger) = (
        TestCa::new("server CA"),
        TestCa::new("agents CA"),
        TestCa::new("someone else"),
    );
    let (cert, key) = server_ca.issue(&dir.0, "server", &["localhost"], false);
    let ca_file = server_ca.write(&dir.0, "server-ca.pem");
    let client_ca_file = client_ca.write(&dir.0, "agents-ca.pem");
    let c1 = client_ca.issue(&dir.0, "c1", &["c1"], false);
    let c2 = client_ca.issue(&dir.0, "c2", &["c2"], false);
    let c1_expired = client_ca.issue(&dir.0, "c1-expired", &["c1"], true);
    let c1_forged = stranger.issue(&dir.0, "c1-forged", &["c1"], false);
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    std::fs::write(dir.0.join("c2.token"), "t2").unwrap();
    let kube = FakeKubeApi::start(None).await;
    let server = server_from_toml(
        &dir.0,
        &format!(
            "[public]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\nbind_client_cert = true\n\
             [internal]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n[[cluster]]\nid = \"c2\"\ntoken_file = \"c2.token\"\n",
            cert.display(),
            key.display(),
            client_ca_file.display()
        ),
    )
    .await;
    let public = server.addrs.public;
    let toml = |identity| agent_toml(public, &ca_file, "c1.token", identity, kube.addr);

    // The right certificate and token: the tunnel comes up and carries requests.
    let _agent = agent_from_toml(&dir.0, "a1", &toml(Some(&c1))).await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    assert_eq!(
        get(server.addrs.internal, "/tunnel/c1/api", &[]).await.0,
        StatusCode::OK
    );

    // Refused at the handshake: no certificate, another CA's, an expired one.
    for (name, identity) in [
        ("none", None),
        ("forged", Some(&c1_forged)),
        ("expired", Some(&c1_expired)),
    ] {
        let result = dial_once(&dir.0, name, &toml(identity)).await;
        assert!(
            matches!(&result, Err(error) if !matches!(error, DialError::Refused { .. })),
            "{name}: {result:?}"
        );
    }
    // A valid certificate for another cluster with c1's token: 401 after the handshake.
    let result = dial_once(&dir.0, "swapped", &toml(Some(&c2))).await;
    assert!(
        matches!(result, Err(DialError::Refused { status: 401, .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn rotated_certificates_apply_to_new_connections_while_tunnels_stay() {
    let dir = TempDir::new();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let (cert, key) = old_ca.issue(&dir.0, "server", &["localhost"], false);
    let (old_ca_file, new_ca_file) = (
        old_ca.write(&dir.0, "old.pem"),
        new_ca.write(&dir.0, "new.pem"),
    );
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let kube = FakeKubeApi::start(None).await;
    let server = server_from_toml(
        &dir.0,
        &format!(
            "[public]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [internal]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
             [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let public = server.addrs.public;
    // This agent trusts only the old CA: if its tunnel dropped, it could never come back.
    let _agent = agent_from_toml(
        &dir.0,
        "a1",
        &agent_toml(public, &old_ca_file, "c1.token", None, kube.addr),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;

    // cert-manager rewrites the files in place with a certificate from the new CA.
    new_ca.issue(&dir.0, "server", &["localhost"], false);
    server
        .reloader
        .reload()
        .expect("reload with the rotated certificate");
    let trusts_new = client(&new_ca_file, None, &[b"http/1.1"]);
    let trusts_old = client(&old_ca_file, None, &[b"http/1.1"]);
    assert_eq!(
        https_get(public, trusts_new.clone(), "/healthz").await,
        Ok(StatusCode::OK)
    );
    assert!(
        https_get(public, trusts_old, "/healthz").await.is_err(),
        "old certificate still served"
    );
    assert_eq!(
        get(server.addrs.internal, "/tunnel/c1/api", &[]).await.0,
        StatusCode::OK,
        "tunnel kept"
    );

    // Turning TLS on for a running plain listener needs a restart: refused as a whole, so a
    // setting that depends on it (client certificates) cannot take effect half-way.
    let config_path = dir.0.join("server.toml");
    let running = std::fs::read_to_string(&config_path).unwrap();
    let with_internal_tls = running.replace(
        "[internal]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[internal]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    assert_ne!(with_internal_tls, running);
    std::fs::write(&config_path, with_internal_tls).unwrap();
    let error = server.reloader.reload().err().expect("TLS on/off refused");
    assert!(error.contains("[internal] TLS turned on or off"), "{error}");
    std::fs::write(&config_path, running).unwrap();

    // A broken key on disk: the reload fails, says why, and the served certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    let error = server
        .reloader
        .reload()
        .err()
        .expect("a broken key fails the reload");
    assert!(
        error.contains("[public] TLS") && error.contains("server.key"),
        "{error}"
    );
    assert!(
        !error.contains("not a key"),
        "key material in an error: {error}"
    );
    assert_eq!(
        https_get(public, trusts_new, "/healthz").await,
        Ok(StatusCode::OK)
    );
}

fn stack_toml(internal: &str, callers: &str) -> String {
    format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\n{internal}[ops]\nlisten = \"127.0.0.1:0\"\n\
         [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n[[cluster]]\nid = \"c2\"\ntoken_file = \"c2.token\"\n{callers}"
    )
}

/// A server (from `toml`) with c1's agent injecting the SA token into a fake API.
async fn stack(
    dir: &Path,
    toml: &str,
) -> (
    support::stack::TestServer,
    support::stack::TestAgent,
    FakeKubeApi,
) {
    std::fs::write(dir.join("c1.token"), "t1").unwrap();
    std::fs::write(dir.join("c2.token"), "t2").unwrap();
    std::fs::write(dir.join("sa.token"), SA_TOKEN).unwrap();
    let kube = FakeKubeApi::start(Some(SA_TOKEN)).await;
    let server = server_from_toml(dir, toml).await;
    let agent = agent_from_toml(
        dir,
        "a1",
        &format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"c1.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{}\"\nplaintext = true\ntoken_file = \"sa.token\"\n",
            server.addrs.public, kube.addr
        ),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    (server, agent, kube)
}

#[tokio::test]
async fn callers_are_authenticated_scoped_and_their_credential_stripped() {
    let dir = TempDir::new();
    let callers = "[[caller]]\nname = \"argocd-a\"\ntoken = \"caller-a\"\nclusters = [\"c1\"]\n\
                   [[caller]]\nname = \"argocd-b\"\ntoken_sha256 = \"%B%\"\nclusters = [\"c2\"]\n"
        .replace(
            "%B%",
            &argocd_proxy::config::TokenHash::of(b"caller-b").to_hex(),
        );
    let (server, _agent, kube) = stack(&dir.0, &stack_toml("", &callers)).await;
    let internal = server.addrs.internal;
    let status = |token: Option<&'static str>, cluster: &'static str| async move {
        let header = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        get(internal, &format!("/tunnel/{cluster}/api"), &headers)
            .await
            .0
    };
    assert_eq!(status(None, "c1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(Some("wrong"), "c1").await, StatusCode::UNAUTHORIZED);
    // Unauthenticated callers cannot tell a real cluster from a made-up one.
    assert_eq!(
        status(None, "no-such-cluster").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(Some("caller-b"), "c1").await, StatusCode::FORBIDDEN);
    assert_eq!(
        status(Some("caller-a"), "no-such-cluster").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(Some("caller-a"), "c1").await, StatusCode::OK);
    // The API saw the agent's credential, never the caller's.
    let seen = kube.requests();
    let last = seen.last().expect("the allowed request reached the API");
    assert_eq!(
        last.header("authorization"),
        Some(&*format!("Bearer {SA_TOKEN}"))
    );
}

#[tokio::test]
async fn argo_cd_multiplexes_watches_over_one_http2_connection_with_a_client_certificate() {
    let dir = TempDir::new();
    let (ca, callers_ca) = (TestCa::new("internal CA"), TestCa::new("callers CA"));
    let (cert, key) = ca.issue(&dir.0, "internal", &["localhost"], false);
    let ca_file = ca.write(&dir.0, "ca.pem");
    let callers_ca_file = callers_ca.write(&dir.0, "callers-ca.pem");
    let argocd = callers_ca.issue(&dir.0, "argocd", &["argocd.argocd.svc"], false);
    let internal_tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        callers_ca_file.display()
    );
    let callers =
        "[[caller]]\nname = \"argocd\"\ncert_name = \"argocd.argocd.svc\"\nclusters = [\"*\"]\n";
    let (server, _agent, kube) = stack(&dir.0, &stack_toml(&internal_tls, callers)).await;
    let internal = server.addrs.internal;

    // Without a client certificate the handshake (or the first exchange) fails.
    // (HTTP/1.1 only, so the failure can only be the missing certificate.)
    let anonymous = client(&ca_file, None, &[b"http/1.1"]);
    assert!(https_get(internal, anonymous, "/tunnel/c1/api")
        .await
        .is_err());

    let tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    let stream = tls::connect(
        client(&ca_file, Some(&argocd), &[b"h2", b"http/1.1"]),
        "localhost",
        tcp,
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    const WATCHES: usize = 20;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..WATCHES {
        let mut sender = sender.clone();
        let events_tx = events_tx.clone();
        tokio::spawn(async move {
            let request = http::Request::get("https://localhost/tunnel/c1/api/v1/pods?watch=1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let mut body = response.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if frame
                    .data_ref()
                    .is_some_and(|data| data.windows(9).any(|w| w == b"over-one2"))
                {
                    let _ = events_tx.send(());
                }
            }
        });
    }
    within("every watch open upstream", async {
        while kube.open_watches() < WATCHES {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    kube.push_pod_event("ADDED", "over-one2");
    for _ in 0..WATCHES {
        within("the event on every watch", events.recv())
            .await
            .unwrap();
    }
}

/// HTTP/1.1 over TLS on the internal listener (our own HTTP/1.1 server): a large answer to a
/// reader that pauses (so the server meets a full socket) arrives whole and intact. (That the
/// server flushes what TLS buffered is shown without timing by `h1::serve`'s own test.)
#[tokio::test]
async fn a_large_answer_over_tls_http1_reaches_a_pausing_reader_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LEN: usize = 8 * 1024 * 1024;
    let dir = TempDir::new();
    let ca = TestCa::new("internal CA");
    let (cert, key) = ca.issue(&dir.0, "internal", &["localhost"], false);
    let ca_file = ca.write(&dir.0, "ca.pem");
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let server = server_from_toml(
        &dir.0,
        &format!(
            "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\n\
             tls_key = \"{}\"\n[ops]\nlisten = \"127.0.0.1:0\"\n[limits]\nheader_read_timeout = \"2s\"\n\
             [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
            cert.display(),
            key.display()
        ),
    )
    .await;
    let upstream = support::pattern_upstream().await;
    let _agent = agent_from_toml(
        &dir.0,
        "a1",
        &format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"c1.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{upstream}\"\nplaintext = true\ninject_token = false\n",
            server.addrs.public
        ),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let tcp = tokio::net::TcpStream::connect(server.addrs.internal)
        .await
        .unwrap();
    let mut tls = tls::connect(client(&ca_file, None, &[b"http/1.1"]), "localhost", tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET /tunnel/c1/bytes/{LEN} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut received = Vec::with_capacity(LEN + 1024);
    let mut buf = vec![0u8; 64 * 1024];
    // The pause: the server fills the socket and its TLS buffer meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    within("the whole answer", async {
        loop {
            let read = tls.read(&mut buf).await.expect("the connection stays up");
            assert!(
                read > 0,
                "the connection ended after {} bytes",
                received.len()
            );
            received.extend_from_slice(&buf[..read]);
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                if received.len() - end - 4 >= LEN {
                    return;
                }
            }
        }
    })
    .await;
    let end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        received[end..] == support::pattern(7, LEN)[..],
        "body intact"
    );
}
