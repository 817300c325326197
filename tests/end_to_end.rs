//! Argo CD's side to the cluster API and back, through our server and agent over real sockets.

mod support;

use std::process::{Command, Stdio};

use http::StatusCode;
use support::stack::{agent, get, server, try_get, wait_routed, Inject, Stack, SA_TOKEN};
use support::{within, KillOnDrop, TempDir};

#[tokio::test]
async fn request_reaches_the_cluster_api_with_the_agents_credentials() {
    let stack = Stack::start().await;
    let headers = [
        ("authorization", "Bearer argo-cd-credential"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("connection", "X-Custom"),
        ("x-custom", "hop"),
        ("x-end-to-end", "kept"),
        ("impersonate-user", "system:serviceaccount:argocd:sync"),
        ("impersonate-group", "system:masters"),
    ];
    let (status, _, body) = get(
        stack.internal(),
        "/tunnel/c1/api/v1/namespaces?limit=500&x=%2F",
        &headers,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(String::from_utf8_lossy(&body).contains("NamespaceList"));
    let seen = stack
        .kube
        .requests()
        .pop()
        .expect("the upstream saw the request");
    assert_eq!(
        seen.path_and_query, "/api/v1/namespaces?limit=500&x=%2F",
        "path and query byte for byte"
    );
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {SA_TOKEN}").as_str()],
        "only the agent's credential"
    );
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(
        seen.header("x-custom"),
        None,
        "Connection-named header stripped"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    // S2, default policy "user": Argo CD's sync impersonation passes, a group does not.
    assert_eq!(
        seen.header("impersonate-user"),
        Some("system:serviceaccount:argocd:sync")
    );
    assert_eq!(seen.header("impersonate-group"), None);
}

/// Real kubectl through the tunnel: discovery, a typed list, and a watch that streams events.
#[tokio::test]
async fn kubectl_works_through_the_tunnel() {
    let stack = Stack::start().await;
    let home = TempDir::new();
    let kubectl = |args: &[&str]| {
        let mut command = Command::new("kubectl");
        command
            .env("KUBECONFIG", "/dev/null")
            .env("HOME", &home.0)
            .arg(format!("--server=http://{}/tunnel/c1", stack.internal()))
            .arg(format!("--cache-dir={}", home.0.join("cache").display()))
            .args(args)
            .stdin(Stdio::null());
        command
    };
    let mut list = kubectl(&["get", "namespaces"]);
    let output = within(
        "kubectl get namespaces",
        tokio::task::spawn_blocking(move || list.output()),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("default") && stdout.contains("kube-system"),
        "{stdout}"
    );

    let mut watch = kubectl(&["get", "pods", "--watch", "-n", "default"]);
    watch.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = KillOnDrop(watch.spawn().expect("kubectl"));
    let stdout = child.0.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    within("watch established through the tunnel", async {
        while stack.kube.open_watches() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stack.kube.push_pod_event("ADDED", "web-7");
    within("kubectl prints the event", async {
        while let Some(line) = lines.recv().await {
            if line.contains("web-7") {
                return;
            }
        }
        panic!("kubectl exited before printing the event");
    })
    .await;
    drop(child);
    within("watch ends upstream when kubectl goes away", async {
        while stack.kube.open_watches() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Unknown cluster: 502 without echoing the id; known but not connected: 503 + Retry-After.
#[tokio::test]
async fn clusters_without_a_tunnel_get_kubernetes_status_errors() {
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c1", "t1", "127.0.0.1:1")]).await;
    let (status, _, body) = get(server.addrs.internal, "/tunnel/secret-name/api", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("\"kind\":\"Status\"") && !text.contains("secret-name"),
        "{text}"
    );
    let (status, headers, _) = get(server.addrs.internal, "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    // Our own HTTP/1.1 server dates what it answers itself, as hyper's does.
    let date = headers["date"].to_str().unwrap();
    let now = std::time::SystemTime::now();
    // Whole seconds: never ahead of now, and made a moment ago.
    match now.duration_since(httpdate::parse_http_date(date).unwrap()) {
        Ok(age) => assert!(age < std::time::Duration::from_secs(5), "{date}"),
        Err(ahead) => panic!("{date} is {:?} ahead of now", ahead.duration()),
    }
    let (status, _, _) = get(server.addrs.internal, "/tunnel//api", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(server.addrs.internal, "/connect", &[]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the internal listener never serves /connect"
    );
    let (status, _, _) = get(server.addrs.public, "/tunnel/c1/api", &[]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the public listener never serves /tunnel"
    );
}

/// An agent with a wrong token is refused with 401 and counted; nothing gets routed.
#[tokio::test]
async fn agent_with_a_wrong_token_is_refused() {
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c1", "right", "127.0.0.1:1")]).await;
    let tcp = tokio::net::TcpStream::connect(server.addrs.public)
        .await
        .unwrap();
    let url = format!("ws://{}/connect", server.addrs.public);
    let error = argocd_proxy::transport::websocket::connect(tcp, &url, Some("wrong"), true)
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("401"), "{error}");
    let tcp = tokio::net::TcpStream::connect(server.addrs.public)
        .await
        .unwrap();
    let error = argocd_proxy::transport::websocket::connect(tcp, &url, None, true)
        .await
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("401"),
        "S3: no token, no tunnel: {error}"
    );
    let (_, _, metrics) = get(server.addrs.ops.unwrap(), "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("auth_failures_total{endpoint=\"connect\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("agents_connected 0"), "{metrics}");
    assert!(
        !metrics.contains("agent_"),
        "B19: no agent series on the server"
    );
}

/// B18: a missing token file fails the request; nothing reaches the upstream without it.
#[tokio::test]
async fn missing_token_file_fails_instead_of_going_unauthenticated() {
    let stack = Stack::start().await;
    // A request first, so the agent has read the token (cached unless the file is under 50 ms
    // old; the unit tests in agent::token pin the cached case): removing the file must still
    // fail the next request.
    let (status, _, body) = get(stack.internal(), "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    std::fs::remove_file(stack.dir.0.join("sa.token")).unwrap();
    let before = stack.kube.requests().len();
    let (status, _, body) = get(stack.internal(), "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(stack.kube.requests().len(), before, "nothing sent upstream");
    let (_, _, metrics) = get(stack.agent.health, "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics)
        .contains("agent_upstream_errors_total{reason=\"token_unreadable\"} 1"));
    // The token file is checked per request: restoring it heals the next request.
    std::fs::write(stack.dir.0.join("sa.token"), "rotated-token").unwrap();
    let (status, _, _) = get(stack.internal(), "/tunnel/c1/api", &[]).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the fake wants the old token: the new one was sent"
    );
    assert_eq!(
        stack.kube.requests().pop().unwrap().header("authorization"),
        Some("Bearer rotated-token")
    );
}

/// inject_token = false: the upstream sees no Authorization at all.
#[tokio::test]
async fn disabled_injection_sends_no_credentials() {
    let dir = TempDir::new();
    let kube = support::kubeapi::FakeKubeApi::start(None).await;
    let target = kube.addr.to_string();
    let server = server(&dir.0, &[("c1", "t1", &target)]).await;
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &target,
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let (status, _, _) = get(
        server.addrs.internal,
        "/tunnel/c1/api",
        &[("authorization", "Bearer caller")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kube.requests().pop().unwrap().header("authorization"), None);
}

/// B1: a second agent for a cluster takes over; the first one leaving does not unroute it.
#[tokio::test]
async fn replaced_agent_leaving_keeps_the_new_one_routed() {
    let stack = Stack::start().await;
    // The second agent serves its own API, so a request that reaches it proves the server has
    // registered its tunnel (its /readyz turns OK a moment before the server routes to it).
    let second_kube = support::kubeapi::FakeKubeApi::start(Some(SA_TOKEN)).await;
    let sa = stack.dir.0.join("sa.token");
    let _second = agent(
        &stack.dir.0,
        "a2",
        stack.server.addrs.public,
        "agent-token-1",
        &second_kube.addr.to_string(),
        Inject::TokenFile(sa),
    )
    .await;
    let internal = stack.internal();
    within("server routes to the second agent", async {
        while second_kube.requests().is_empty() {
            get(internal, "/tunnel/c1/api", &[]).await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let Stack {
        agent: first,
        kube: first_kube,
        server,
        dir: _dir,
    } = stack;
    first.shutdown().await;
    // The retired first agent stands by (tests/standby.rs) and now leaves. If its leaving
    // removed the live agent's route (B1), that agent is never disconnected, never registers
    // again, and this times out. (Polled: routes are checked through the ops listener.)
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c1").await;
    let (before_first, before_second) = (first_kube.requests().len(), second_kube.requests().len());
    let (status, _, _) = get(internal, "/tunnel/c1/api", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first_kube.requests().len(), before_first);
    assert_eq!(second_kube.requests().len(), before_second + 1);
    let (_, _, metrics) = get(ops, "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics).contains("agents_connected 1"));
}

/// B15: a tunnel lost mid-response is an error for the client, never a clean short body.
#[tokio::test]
async fn tunnel_loss_mid_response_is_an_error_for_the_client() {
    let stack = Stack::start().await;
    let internal = stack.internal();
    let watch =
        tokio::spawn(async move { try_get(internal, "/tunnel/c1/api/v1/pods?watch=1", &[]).await });
    within("watch open", async {
        while stack.kube.open_watches() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stack.kube.push_pod_event("ADDED", "web-1");
    let Stack { agent, .. } = stack;
    agent.shutdown().await;
    let result = within("client sees the end", watch).await.unwrap();
    assert!(
        result.is_err(),
        "a cut chunked body must fail, got {result:?}"
    );
}

/// B12: a listener that cannot bind is a non-zero exit naming the address, before serving.
#[test]
fn bind_failure_exits_non_zero_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new();
    let config = dir.0.join("server.toml");
    std::fs::write(
        &config,
        format!("[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_argocd-proxy-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("internal"),
        "{stderr}"
    );
}

/// --check-config: 0 for a good file, 64 with file/line/key for a bad one; --syntax-only does
/// not open named files.
#[test]
fn check_config_reports_and_exits_with_usage_errors() {
    let dir = TempDir::new();
    let good = dir.0.join("good.toml");
    std::fs::write(&good, "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\n[[cluster]]\nid = \"a\"\ntoken_file = \"absent.token\"\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_argocd-proxy-server"))
            .args(args)
            .output()
            .unwrap()
    };
    let good = good.to_str().unwrap();
    assert_eq!(
        run(&["--config", good, "--check-config", "--syntax-only"])
            .status
            .code(),
        Some(0)
    );
    let output = run(&["--config", good, "--check-config"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("absent.token"));
    let bad = dir.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
    )
    .unwrap();
    let output = run(&["--config", bad.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("line 5") && stderr.contains("bogus"),
        "{stderr}"
    );
    // --syntax-only never serves: it skips the token files.
    let output = run(&["--config", good, "--syntax-only"]);
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--check-config"));
    let output = Command::new(env!("CARGO_BIN_EXE_argocd-proxy-agent"))
        .args(["--config", "/nonexistent/agent.toml", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

/// A client that never finishes its request head is disconnected after header_read_timeout
/// (500ms in the test config), so slow clients cannot pile up on a listener.
#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c1", "t1", "127.0.0.1:1")]).await;
    for addr in [server.addrs.public, server.addrs.internal] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /tunnel/c1/api HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        // `within` fails the test if the server keeps the half-sent request open.
        let _ = within("the server hangs up", tcp.read_to_end(&mut rest)).await;
        let answer = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "the request was served: {answer}"
        );
    }
}

/// An idle keep-alive connection on the internal listener (our own HTTP/1.1 server) is closed
/// after header_read_timeout, as idle HTTP/2 connections are; one carrying a request is not.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let mut tcp = tokio::net::TcpStream::connect(stack.internal())
        .await
        .unwrap();
    tcp.write_all(b"GET /tunnel/c1/api HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The whole answer, then the close; `within` fails the test if the connection stays open.
    within("the idle connection is closed", async {
        loop {
            let read = tcp.read(&mut buf).await.unwrap();
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..read]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// B17: on SIGTERM new requests are refused at once, a watch in flight keeps streaming during
/// the grace (1s in the test config), is then cut with an error, and the server exits.
#[tokio::test]
async fn shutdown_finishes_in_flight_streams_within_the_grace() {
    let stack = Stack::start().await;
    let internal = stack.internal();
    let (mut events, watch) = support::stack::open_watch(internal, "c1");
    within("watch open", async {
        while stack.kube.open_watches() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stack.server.stop.cancel();
    within("new connections refused", async {
        while tokio::net::TcpStream::connect(internal).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    stack.kube.push_pod_event("ADDED", "after-sigterm");
    let event = within("event streamed during the grace", events.recv())
        .await
        .unwrap();
    assert!(event.contains("after-sigterm"), "{event}");
    let ended = within("watch cut after the grace", watch).await.unwrap();
    assert!(
        ended.is_err(),
        "a cut watch must not end cleanly: {ended:?}"
    );
    let Stack { mut server, .. } = stack;
    within("server exits", &mut server.task).await.unwrap();
}

/// A request for a cluster whose agent is away waits up to reconnect_wait for it to come back
/// instead of failing at once.
#[tokio::test]
async fn request_waits_for_a_reconnecting_agent() {
    let dir = TempDir::new();
    let kube = support::kubeapi::FakeKubeApi::start(None).await;
    std::fs::write(dir.0.join("c1.token"), "t1").unwrap();
    let toml = format!(
        "{}[limits]\nreconnect_wait = \"15s\"\n[[cluster]]\nid = \"c1\"\ntoken_file = \"c1.token\"\n",
        support::stack::LISTENERS
    );
    let server = support::stack::server_from_toml(&dir.0, &toml).await;
    let internal = server.addrs.internal;
    let request = tokio::spawn(async move { get(internal, "/tunnel/c1/api", &[]).await });
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &kube.addr.to_string(),
        Inject::Nothing,
    )
    .await;
    let (status, _, body) = within("request served once the agent is back", request)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

/// B13: a cluster over its rate limit gets 429 with Retry-After at once; another cluster's
/// requests are unaffected.
#[tokio::test]
async fn rate_limited_cluster_gets_429_at_once_and_others_do_not() {
    let dir = TempDir::new();
    let kube = support::kubeapi::FakeKubeApi::start(None).await;
    let target = kube.addr.to_string();
    std::fs::write(dir.0.join("slow.token"), "t-slow").unwrap();
    std::fs::write(dir.0.join("free.token"), "t-free").unwrap();
    let toml = format!(
        "{}[[cluster]]\nid = \"slow\"\ntoken_file = \"slow.token\"\nrate_limit = 2\n[[cluster]]\nid = \"free\"\ntoken_file = \"free.token\"\n",
        support::stack::LISTENERS
    );
    let server = support::stack::server_from_toml(&dir.0, &toml).await;
    let _slow = agent(
        &dir.0,
        "s",
        server.addrs.public,
        "t-slow",
        &target,
        Inject::Nothing,
    )
    .await;
    let _free = agent(
        &dir.0,
        "f",
        server.addrs.public,
        "t-free",
        &target,
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "slow").await;
    wait_routed(server.addrs.ops.unwrap(), "free").await;
    let internal = server.addrs.internal;
    let requests: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(internal, "/tunnel/slow/api", &[]).await }))
        .collect();
    let mut limited = 0;
    for request in requests {
        let (status, headers, _) = within("answer", request).await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers["retry-after"], "1");
            limited += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!(limited >= 6, "burst 3 of 10, got {limited} refusals");
    for _ in 0..10 {
        assert_eq!(
            get(internal, "/tunnel/free/api", &[]).await.0,
            StatusCode::OK
        );
    }
    let (_, _, metrics) = get(server.addrs.ops.unwrap(), "/metrics", &[]).await;
    assert!(String::from_utf8_lossy(&metrics).contains(&format!(
        "proxy_rate_limited_total{{cluster=\"slow\"}} {limited}"
    )));
}

/// v2 keep-alive: sequential requests reuse one tunnel stream (the tunnel holds exactly one,
/// idle, afterwards), and each still arrives with the agent's credentials.
#[tokio::test]
async fn sequential_requests_reuse_one_tunnel_stream() {
    let stack = Stack::start().await;
    for index in 0..5 {
        let (status, _, _) = get(stack.internal(), &format!("/tunnel/c1/api?i={index}"), &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let seen = stack.kube.requests();
    assert_eq!(seen.len(), 5);
    assert!(seen
        .iter()
        .all(|request| request.header("authorization") == Some(&format!("Bearer {SA_TOKEN}")[..])));
    let (_, _, metrics) = get(stack.ops(), "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("tunnel_streams{cluster=\"c1\"} 1"),
        "one pooled stream: {metrics}"
    );
}
