//! The real `kubectl exec` (WebSocket streaming protocol, `v5.channel.k8s.io`) through the
//! tunnel against the fake kube-apiserver: the upgrade is relayed, the agent's credential is
//! injected on it, and the command's output and exit status come back.

mod support;

use std::process::{Command, Output, Stdio};

use support::kubeapi::{FakeKubeApi, SeenRequest};
use support::stack::{Stack, SA_TOKEN};
use support::{within, TempDir};

/// [`support::kubectl`] with stdin closed.
fn kubectl(server: &str, home: &TempDir, args: &[&str]) -> Command {
    let mut command = support::kubectl(server, home, args);
    command.stdin(Stdio::null());
    command
}

async fn run(what: &str, mut command: Command) -> Output {
    within(what, tokio::task::spawn_blocking(move || command.output()))
        .await
        .expect("join")
        .expect("run kubectl")
}

fn assert_success(output: &Output, requests: &[SeenRequest]) {
    assert!(
        output.status.success(),
        "kubectl failed: {}\nstdout:\n{}\nstderr:\n{}\nrequests:\n{requests:#?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// The exec upgrade request the fake received.
fn exec_request(api: &FakeKubeApi) -> SeenRequest {
    let requests = api.requests();
    requests
        .iter()
        .find(|r| {
            r.path_and_query
                .starts_with("/api/v1/namespaces/default/pods/web-0/exec?")
        })
        .unwrap_or_else(|| panic!("no exec request in {requests:#?}"))
        .clone()
}

const ARGS: &[&str] = &["exec", "web-0", "-n", "default", "--", "echo"];

#[tokio::test]
async fn kubectl_exec_against_the_fake_directly() {
    let api = FakeKubeApi::start(None).await;
    let home = TempDir::new();
    let server = format!("http://{}", api.addr);
    let output = run(
        "kubectl exec",
        kubectl(&server, &home, &[ARGS, &["hello", "fake"]].concat()),
    )
    .await;
    assert_success(&output, &api.requests());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello fake\n");
    let exec = exec_request(&api);
    assert_eq!(exec.method, "GET");
    assert_eq!(exec.header("upgrade"), Some("websocket"), "{exec:#?}");

    // A failing command's exit code comes back as kubectl's own.
    let output = run(
        "kubectl exec false",
        kubectl(&server, &home, &["exec", "web-0", "--", "false"]),
    )
    .await;
    assert_eq!(output.status.code(), Some(127), "{output:?}");
}

#[tokio::test]
async fn kubectl_exec_runs_through_the_tunnel() {
    let stack = Stack::start().await;
    let home = TempDir::new();
    let server = format!("http://{}/tunnel/c1", stack.internal());
    let output = run(
        "kubectl exec through the tunnel",
        kubectl(
            &server,
            &home,
            &[ARGS, &["hello", "through", "the", "tunnel"]].concat(),
        ),
    )
    .await;
    assert_success(&output, &stack.kube.requests());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello through the tunnel\n"
    );

    let exec = exec_request(&stack.kube);
    assert_eq!(exec.method, "GET");
    assert_eq!(exec.header("upgrade"), Some("websocket"), "{exec:#?}");
    assert!(
        exec.header_all("sec-websocket-protocol")
            .iter()
            .any(|p| p.contains("v5.channel.k8s.io")),
        "{exec:#?}"
    );
    for arg in [
        "command=echo",
        "command=hello",
        "command=tunnel",
        "stdout=true",
    ] {
        assert!(
            exec.path_and_query.split(['?', '&']).any(|p| p == arg),
            "{arg} in {exec:#?}"
        );
    }
    assert_eq!(
        exec.header_all("authorization"),
        [format!("Bearer {SA_TOKEN}").as_str()],
        "the agent's credential, not the caller's: {exec:#?}"
    );
}
