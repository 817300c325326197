//! Self-test of the fake kube-apiserver in `support::kubeapi`: the real `kubectl` (talking to it
//! directly, no tunnel) must list namespaces and follow a pods watch, so that tests which put the
//! fake behind the tunnel fail only for the tunnel's faults.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::kubeapi::FakeKubeApi;
use support::{within, KillOnDrop, TempDir};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const TOKEN: &str = "fake-token";

#[tokio::test]
async fn kubectl_lists_namespaces_from_the_fake() {
    let api = FakeKubeApi::start(None).await;
    let home = TempDir::new();
    let mut command = kubectl(&api, &home);
    command.args(["get", "namespaces"]);
    let output = within(
        "kubectl get namespaces",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("join")
    .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubectl failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in ["NAME", "STATUS", "AGE", "default", "kube-system", "Active"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let requests = api.requests();
    let list = requests
        .iter()
        .find(|r| r.path_and_query.starts_with("/api/v1/namespaces"))
        .expect("kubectl listed namespaces");
    assert!(
        list.header("accept")
            .is_some_and(|a| a.contains("as=Table")),
        "kubectl asked for a Table: {list:?}"
    );
}

#[tokio::test]
async fn kubectl_watch_receives_events() {
    let api = FakeKubeApi::start(None).await;
    let home = TempDir::new();
    let mut command = kubectl(&api, &home);
    command
        .args(["get", "pods", "--watch", "-n", "default"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(command.spawn().expect("spawn kubectl"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    within("kubectl opens a pods watch", async {
        while api.open_watches() < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    // The first watch event's Table carries column definitions, later ones do not: push two.
    let mut seen = Vec::new();
    for (kind, pod) in [("ADDED", "web-1"), ("MODIFIED", "web-2")] {
        api.push_pod_event(kind, pod);
        within("kubectl prints the pushed pod", async {
            while let Some(line) = lines.recv().await {
                let done = line.contains(pod);
                seen.push(line);
                if done {
                    return;
                }
            }
            panic!("kubectl exited; it printed:\n{}", seen.join("\n"));
        })
        .await;
    }
    assert!(seen[0].starts_with("NAME"), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("web-0")),
        "the list first: {seen:?}"
    );
    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.path_and_query.contains("watch="))
        .expect("a watch request");
    assert!(watch
        .path_and_query
        .starts_with("/api/v1/namespaces/default/pods?"));

    child.0.kill().expect("kill kubectl");
    within(
        "kubectl exits",
        tokio::task::spawn_blocking(move || child.0.wait()),
    )
    .await
    .expect("join")
    .expect("wait");
    within("the fake notices the watch ended", async {
        while api.open_watches() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn missing_token_is_refused() {
    let api = FakeKubeApi::start(Some(TOKEN)).await;
    let tcp = TcpStream::connect(api.addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::get("/api/v1/namespaces")
        .header(http::header::HOST, api.addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("401", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
    let body = within("401 body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 401);
    assert_eq!(status["reason"], "Unauthorized");
    let requests = api.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path_and_query, "/api/v1/namespaces");
    assert_eq!(requests[0].header("authorization"), None);

    // The same request with the token is served.
    let request = http::Request::get("/api/v1/namespaces")
        .header(http::header::HOST, api.addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = within("200", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    let body = within("200 body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    let list: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    assert_eq!(list["kind"], "NamespaceList");
}

/// `kubectl` pointed at `api`, with no user config, cache or home of its own.
///
/// The token is passed as a real invocation would, but client-go only sends credentials over
/// TLS, so against this plain-HTTP fake kubectl sends no `Authorization`: the kubectl tests
/// start the fake without a token. (`/usr/bin/kubectl` is gcloud's dispatcher: it first asks
/// `/version`, without credentials either, to pick the kubectl matching the server's minor.)
fn kubectl(api: &FakeKubeApi, home: &TempDir) -> Command {
    let mut command = Command::new("kubectl");
    command
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", &home.0)
        .arg(format!("--server=http://{}", api.addr))
        .arg(format!("--token={TOKEN}"))
        .arg("--insecure-skip-tls-verify=false")
        .arg(format!("--cache-dir={}", home.0.join("cache").display()))
        .stdin(Stdio::null());
    command
}
