//! Argo CD proxy extensions whose backends live inside customer clusters: requests shaped like
//! Argo CD's extension proxy sends them, through the server's extensions listener and the
//! cluster's tunnel, to a backend the agent allows by name.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use support::kubeapi::FakeKubeApi;
use support::stack::{agent_from_toml, get, server_from_toml, try_get, wait_routed, TestServer};
use support::{listener, within, TempDir};

const SECRET: &str = "argocd-extension-secret";

/// A backend that answers with its own name, the path it got and every header, as JSON.
async fn echo_backend(name: &'static str) -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(
                    move |request: http::Request<hyper::body::Incoming>| async move {
                        let headers: serde_json::Map<String, serde_json::Value> = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").into()))
                            .collect();
                        let body = serde_json::json!({
                            "backend": name,
                            "path": request.uri().path_and_query().map(|pq| pq.as_str()),
                            "headers": headers,
                        });
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                            body.to_string(),
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn server_toml(extensions: &str) -> String {
    format!(
        "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\n[ops]\nlisten = \"127.0.0.1:0\"\n\
         [extensions]\nlisten = \"127.0.0.1:0\"\nsecret_sha256 = \"{}\"\n\
         [limits]\nreconnect_wait = \"200ms\"\n\
         [[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n[[cluster]]\nid = \"c2\"\ntoken_file = \"c2.token\"\n{extensions}",
        argocd_proxy::config::TokenHash::of(SECRET.as_bytes()).to_hex()
    )
}

const EXTENSIONS: &str = "[[extension]]\nname = \"metrics\"\nclusters = [\"c1\", \"c2\"]\n\
    [[extension]]\nname = \"cost\"\nclusters = [\"c2\"]\n\
    [[extension]]\nname = \"logs\"\nclusters = [\"*\"]\n\
    [[extension]]\nname = \"kubewatch\"\nclusters = [\"c1\"]\nmax_concurrent = 2\n";

async fn agent(
    dir: &Path,
    cluster: &str,
    public: SocketAddr,
    kube: SocketAddr,
    backends: &str,
) -> support::stack::TestAgent {
    agent_from_toml(
        dir,
        cluster,
        &format!(
            "server_url = \"ws://{public}/connect\"\nallow_insecure_server = true\ntoken_file = \"{cluster}.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{kube}\"\nplaintext = true\ninject_token = false\n{backends}"
        ),
    )
    .await
}

struct Setup {
    _dir: TempDir,
    server: TestServer,
    extensions: SocketAddr,
    kube: FakeKubeApi,
    _agents: Vec<support::stack::TestAgent>,
}

async fn setup() -> Setup {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    std::fs::write(dir.0.join("c2.token"), "t2").unwrap();
    let kube = FakeKubeApi::start(None).await;
    let (c1_metrics, c2_metrics) = (
        echo_backend("c1-metrics").await,
        echo_backend("c2-metrics").await,
    );
    let server = server_from_toml(&dir.0, &server_toml(EXTENSIONS)).await;
    let public = server.addrs.public;
    let a1 = agent(
        &dir.0,
        "c1",
        public,
        kube.addr,
        &format!(
            "[[backend]]\nname = \"metrics\"\ntarget = \"{c1_metrics}\"\npath_prefix = \"/api\"\n\
             headers = {{ \"X-Scope-OrgID\" = \"tenant-a\" }}\n\
             [[backend]]\nname = \"kubewatch\"\ntarget = \"{}\"\n",
            kube.addr
        ),
    )
    .await;
    let a2 = agent(
        &dir.0,
        "c2",
        public,
        kube.addr,
        &format!("[[backend]]\nname = \"metrics\"\ntarget = \"{c2_metrics}\"\n"),
    )
    .await;
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c1").await;
    wait_routed(ops, "c2").await;
    Setup {
        extensions: server.addrs.extensions.expect("extensions listener"),
        _dir: dir,
        server,
        kube,
        _agents: vec![a1, a2],
    }
}

/// Headers exactly as Argo CD's extension proxy sends them for user alice on app guestbook,
/// after the operator's configured headers (secret, extension, cluster) were applied last.
fn argo_cd_headers<'a>(
    secret: &'a str,
    extension: &'a str,
    cluster: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("argocd-namespace", "argocd"),
        ("argocd-application-name", "argocd:guestbook"),
        ("argocd-project-name", "default"),
        ("argocd-target-cluster-name", cluster),
        ("argocd-username", "alice"),
        ("argocd-user-groups", "devs"),
        ("x-forwarded-for", "10.0.0.7"),
        ("x-forwarded-host", "argocd.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-argocd-proxy-secret", secret),
        ("x-argocd-proxy-extension", extension),
        ("x-argocd-proxy-cluster", cluster),
    ]
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn an_argo_cd_request_reaches_the_allowed_backend_in_its_cluster() {
    let setup = setup().await;
    // Argo CD strips these; if one slipped through, it must still not cross the tunnel.
    let mut sent = argo_cd_headers(SECRET, "metrics", "c1");
    sent.push(("cookie", "argocd.token=session-jwt"));
    sent.push(("authorization", "Bearer user-token"));
    let (status, _, body) = get(setup.extensions, "/metrics?window=5m", &sent).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let echo = json(&body);
    assert_eq!(echo["backend"], "c1-metrics");
    assert_eq!(
        echo["path"], "/api/metrics?window=5m",
        "path_prefix applied, query kept"
    );
    let headers = &echo["headers"];
    assert_eq!(
        headers["x-scope-orgid"], "tenant-a",
        "the agent's configured header"
    );
    assert_eq!(
        headers["argocd-username"], "alice",
        "Argo CD's identity headers pass for the backend's logs"
    );
    for gone in [
        "x-argocd-proxy-secret",
        "x-argocd-proxy-extension",
        "x-argocd-proxy-cluster",
        "cookie",
        "authorization",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the backend: {headers}"
        );
    }
    // The same extension for the other cluster goes to that cluster's backend, never this one.
    let (status, _, body) = get(
        setup.extensions,
        "/metrics",
        &argo_cd_headers(SECRET, "metrics", "c2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["backend"], "c2-metrics");
    let metrics = get(setup.server.addrs.ops.unwrap(), "/metrics", &[])
        .await
        .2;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(
            "extension_requests_total{extension=\"metrics\",cluster=\"c1\",code=\"200\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn argo_cd_must_present_the_secret() {
    let setup = setup().await;
    let mut missing = argo_cd_headers(SECRET, "metrics", "c1");
    missing.retain(|(name, _)| *name != "x-argocd-proxy-secret");
    assert_eq!(
        get(setup.extensions, "/metrics", &missing).await.0,
        StatusCode::UNAUTHORIZED
    );
    let wrong = argo_cd_headers("guess", "metrics", "c1");
    assert_eq!(
        get(setup.extensions, "/metrics", &wrong).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A bearer token or a cookie is not the secret either.
    let mut other = missing.clone();
    other.push(("authorization", "Bearer argocd-extension-secret"));
    assert_eq!(
        get(setup.extensions, "/metrics", &other).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn extensions_reach_only_the_clusters_they_are_allowed() {
    let setup = setup().await;
    // cost is allowed for c2 only; an unknown extension for nothing.
    let (status, _, body) = get(
        setup.extensions,
        "/",
        &argo_cd_headers(SECRET, "cost", "c1"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json(&body)["kind"], "Status");
    assert_eq!(
        get(
            setup.extensions,
            "/",
            &argo_cd_headers(SECRET, "nope", "c1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(
            setup.extensions,
            "/",
            &argo_cd_headers(SECRET, "metrics", "c9")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn injected_headers_cannot_reach_another_cluster() {
    let setup = setup().await;
    // A user without groups injects Argocd-User-Groups and a target cluster header: routing
    // follows only the configured cluster header, so the request stays on c1.
    let mut injected = argo_cd_headers(SECRET, "metrics", "c1");
    injected
        .retain(|(name, _)| *name != "argocd-user-groups" && *name != "argocd-target-cluster-name");
    injected.push(("argocd-user-groups", "system:masters"));
    injected.push(("argocd-target-cluster-name", "c2"));
    let (status, _, body) = get(setup.extensions, "/metrics", &injected).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["backend"], "c1-metrics");
    // A forged second cluster header next to Argo CD's: refused, not guessed.
    let mut forged = argo_cd_headers(SECRET, "metrics", "c1");
    forged.push(("x-argocd-proxy-cluster", "c2"));
    assert_eq!(
        get(setup.extensions, "/metrics", &forged).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn upgrades_are_refused_on_the_extensions_listener() {
    let setup = setup().await;
    let mut headers = argo_cd_headers(SECRET, "kubewatch", "c1");
    headers.push(("connection", "upgrade"));
    headers.push(("upgrade", "websocket"));
    assert_eq!(
        get(setup.extensions, "/api", &headers).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_backend_the_agent_does_not_allow_is_refused_at_the_agent() {
    let setup = setup().await;
    // The server allows logs everywhere; c1's agent has no [[backend]] named logs.
    let (status, _, body) = get(
        setup.extensions,
        "/",
        &argo_cd_headers(SECRET, "logs", "c1"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = json(&body)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("not allowed by this cluster's agent"),
        "{message}"
    );
}

#[tokio::test]
async fn an_extension_past_its_concurrency_gets_429_and_cluster_traffic_flows() {
    let setup = setup().await;
    let extensions = setup.extensions;
    let watch = || {
        tokio::spawn(async move {
            try_get(
                extensions,
                "/api/v1/pods?watch=1",
                &argo_cd_headers(SECRET, "kubewatch", "c1"),
            )
            .await
        })
    };
    let held = [watch(), watch()];
    within("both extension watches open upstream", async {
        while setup.kube.open_watches() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, headers, _) = get(
        extensions,
        "/api/v1/pods",
        &argo_cd_headers(SECRET, "kubewatch", "c1"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get("retry-after").unwrap(), "1");
    // Argo CD's own traffic to the same cluster is not held up by the extension's.
    assert_eq!(
        get(setup.server.addrs.internal, "/tunnel/c1/api", &[])
            .await
            .0,
        StatusCode::OK
    );
    for task in held {
        task.abort();
    }
    within("a slot frees when a watch ends", async {
        loop {
            let status = get(
                extensions,
                "/api",
                &argo_cd_headers(SECRET, "kubewatch", "c1"),
            )
            .await
            .0;
            if status == StatusCode::OK {
                return;
            }
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn extension_config_reloads_without_a_restart() {
    let setup = setup().await;
    assert_eq!(
        get(
            setup.extensions,
            "/",
            &argo_cd_headers(SECRET, "cost", "c1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let widened = EXTENSIONS.replace(
        "name = \"cost\"\nclusters = [\"c2\"]",
        "name = \"cost\"\nclusters = [\"c1\", \"c2\"]",
    );
    std::fs::write(setup._dir.0.join("server.toml"), server_toml(&widened)).unwrap();
    setup.server.reloader.reload().expect("reload");
    // Allowed now; c1's agent has no cost backend, so the agent refuses it (403 from there).
    let (status, _, body) = get(
        setup.extensions,
        "/",
        &argo_cd_headers(SECRET, "cost", "c1"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("not allowed by this cluster's agent"));
}
