//! The real `kubectl` (1.32) streaming through the tunnel against the fake kube-apiserver:
//! `exec -i` (stdin in, stdout back, the exit code), `logs -f` (a chunked response that stays
//! open), `port-forward` (SPDY/3.1 tunnelled in a WebSocket, and plain SPDY), and exec's SPDY
//! fallback when the WebSocket upgrade is refused (a non-101 answer to an upgrade request).
//!
//! Each scenario also runs against the fake alone (`*_against_the_fake_alone`), so a failure
//! that shows only through the tunnel is the tunnel's.

mod support;

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::kubeapi::{FakeKubeApi, SeenRequest};
use support::stack::{Stack, SA_TOKEN};
use support::{pattern, within, KillOnDrop, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::kubectl;

/// A running kubectl whose stdout is read as it comes.
struct Kubectl {
    child: KillOnDrop,
    stdout: mpsc::UnboundedReceiver<Vec<u8>>,
    /// Everything read from stdout so far.
    seen: Vec<u8>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// What a finished kubectl did.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Kubectl {
    /// Starts `command`; with `stdin`, writes it to kubectl's stdin and then closes it.
    fn spawn(mut command: Command, stdin: Option<Vec<u8>>) -> Kubectl {
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(command.spawn().expect("spawn kubectl"));
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.0.stdin.take()) {
            // Dropping the pipe at the end is kubectl's stdin EOF.
            std::thread::spawn(move || pipe.write_all(&bytes));
        }
        let mut out = child.0.stdout.take().expect("piped stdout");
        let (tx, stdout) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buffer) {
                if tx.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut err = child.0.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let into = stderr.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buffer) {
                into.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Kubectl {
            child,
            stdout,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Reads stdout until what it printed so far satisfies `done`; returns that text.
    async fn stdout_until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let text = within(what, async {
            loop {
                let text = String::from_utf8_lossy(&self.seen).into_owned();
                if done(&text) {
                    return text;
                }
                let Some(chunk) = self.stdout.recv().await else {
                    panic!(
                        "kubectl closed stdout first: {what}\nstdout:\n{text}\nstderr:\n{}",
                        self.stderr()
                    );
                };
                self.seen.extend_from_slice(&chunk);
            }
        })
        .await;
        text
    }

    /// Waits for kubectl to exit by itself, with all it printed.
    async fn finish(mut self, what: &str) -> Finished {
        let exited = async {
            while let Some(chunk) = self.stdout.recv().await {
                self.seen.extend_from_slice(&chunk);
            }
            while self.child.0.try_wait().expect("wait").is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), exited)
            .await
            .is_err()
        {
            panic!(
                "timed out after 20 s: {what}\nstdout so far: {} bytes\nstderr:\n{}",
                self.seen.len(),
                self.stderr()
            );
        }
        let status = self.child.0.wait().expect("wait");
        // The stderr thread ends at EOF, which came with the exit.
        within("kubectl's stderr", async {
            while Arc::strong_count(&self.stderr) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Finished {
            status,
            stderr: self.stderr(),
            stdout: std::mem::take(&mut self.seen),
        }
    }

    /// Kills kubectl (as Ctrl-C would end it) and waits until it is gone.
    async fn kill(mut self) {
        self.child.0.kill().expect("kill kubectl");
        within("kubectl dies", async {
            while self.child.0.try_wait().expect("wait").is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

impl Finished {
    fn assert_success(&self, requests: &[SeenRequest]) {
        assert!(
            self.status.success(),
            "kubectl failed: {}\nstdout:\n{}\nstderr:\n{}\nrequests:\n{requests:#?}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr,
        );
    }
}

/// Polls `condition` (fake state) until it holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Where kubectl reaches the fake: through the tunnel, or directly.
struct Target {
    /// Holds the stack (and so the fake) when going through the tunnel.
    stack: Option<Stack>,
    direct: Option<FakeKubeApi>,
    server: String,
    home: TempDir,
}

impl Target {
    async fn tunnel() -> Target {
        let stack = Stack::start().await;
        let server = format!("http://{}/tunnel/c1", stack.internal());
        Target {
            stack: Some(stack),
            direct: None,
            server,
            home: TempDir::new(),
        }
    }

    async fn alone() -> Target {
        let api = FakeKubeApi::start(None).await;
        let server = format!("http://{}", api.addr);
        Target {
            stack: None,
            direct: Some(api),
            server,
            home: TempDir::new(),
        }
    }

    fn api(&self) -> &FakeKubeApi {
        match (&self.stack, &self.direct) {
            (Some(stack), _) => &stack.kube,
            (None, Some(api)) => api,
            (None, None) => unreachable!("a target has a fake"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        kubectl(&self.server, &self.home, args)
    }

    /// The one request whose path starts with `prefix` and that satisfies `matches`.
    fn request(&self, prefix: &str, matches: impl Fn(&SeenRequest) -> bool) -> SeenRequest {
        let requests = self.api().requests();
        let found: Vec<&SeenRequest> = requests
            .iter()
            .filter(|r| r.path_and_query.starts_with(prefix) && matches(r))
            .collect();
        match found.as_slice() {
            [one] => (*one).clone(),
            _ => panic!("not one request for {prefix} but {found:#?}\nall: {requests:#?}"),
        }
    }

    /// Through the tunnel, the agent's credential reaches the fake, and only that.
    fn assert_credential(&self, request: &SeenRequest) {
        let expected: &[String] = if self.stack.is_some() {
            &[format!("Bearer {SA_TOKEN}")]
        } else {
            // kubectl sends no credential over plain HTTP.
            &[]
        };
        assert_eq!(
            request.header_all("authorization"),
            expected,
            "{request:#?}"
        );
    }
}

fn websocket_upgrade(request: &SeenRequest) -> bool {
    request.method == "GET"
        && request
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
}

fn spdy_upgrade(request: &SeenRequest) -> bool {
    request.method == "POST" && request.header("upgrade") == Some("SPDY/3.1")
}

fn query_has(request: &SeenRequest, param: &str) -> bool {
    request.path_and_query.split(['?', '&']).any(|p| p == param)
}

const EXEC: &str = "/api/v1/namespaces/default/pods/web-0/exec?";
const PORT_FORWARD: &str = "/api/v1/namespaces/default/pods/web-0/portforward";

/// What `cat` gets on stdin: binary, every byte value, more than one read or message.
fn stdin_bytes() -> Vec<u8> {
    let mut bytes = b"hello through the tunnel\n".to_vec();
    bytes.extend((0..=255u8).collect::<Vec<_>>());
    bytes.extend(pattern(7, 200 * 1024));
    bytes
}

/// `exec -i web-0 -- cat` gives stdin back, and `exec -- sh -c 'exit 3'` exits 3; `transport`
/// says which upgrade carried them.
async fn exec_round_trip(target: &Target, transport: fn(&SeenRequest) -> bool) {
    let input = stdin_bytes();
    let cat = target.kubectl(&["exec", "-i", "web-0", "--", "cat"]);
    let output = Kubectl::spawn(cat, Some(input.clone()))
        .finish("kubectl exec -i cat")
        .await;
    output.assert_success(&target.api().requests());
    assert!(
        output.stdout == input,
        "stdout ({} bytes) is not stdin ({} bytes); stderr:\n{}",
        output.stdout.len(),
        input.len(),
        output.stderr
    );
    let exec = target.request(EXEC, |r| transport(r) && query_has(r, "command=cat"));
    for param in ["stdin=true", "stdout=true", "stderr=true"] {
        assert!(query_has(&exec, param), "{param} in {exec:#?}");
    }
    target.assert_credential(&exec);

    let exit = target.kubectl(&["exec", "web-0", "--", "sh", "-c", "exit 3"]);
    let output = Kubectl::spawn(exit, None)
        .finish("kubectl exec sh -c 'exit 3'")
        .await;
    assert_eq!(
        output.status.code(),
        Some(3),
        "kubectl exits with the command's code; stderr:\n{}",
        output.stderr
    );
    assert!(output.stderr.contains("exit code 3"), "{}", output.stderr);
    let exec = target.request(EXEC, |r| transport(r) && query_has(r, "command=sh"));
    assert!(
        query_has(&exec, "command=exit+3") || query_has(&exec, "command=exit%203"),
        "{exec:#?}"
    );
}

fn websocket_v5(request: &SeenRequest) -> bool {
    websocket_upgrade(request)
        && request
            .header_all("sec-websocket-protocol")
            .iter()
            .any(|p| p.split(',').any(|p| p.trim() == "v5.channel.k8s.io"))
}

#[tokio::test]
async fn kubectl_exec_with_stdin_round_trips_and_returns_the_exit_code() {
    exec_round_trip(&Target::tunnel().await, websocket_v5).await;
}

#[tokio::test]
async fn kubectl_exec_with_stdin_against_the_fake_alone() {
    exec_round_trip(&Target::alone().await, websocket_v5).await;
}

/// With the WebSocket upgrade refused (a 400 Status), kubectl 1.32 retries the exec as a POST
/// upgrading to SPDY/3.1, and the same round trip works over it.
async fn exec_falls_back_to_spdy(target: &Target) {
    target.api().refuse_websocket_upgrades();
    exec_round_trip(target, spdy_upgrade).await;
    let refused = target.request(EXEC, |r| {
        websocket_upgrade(r) && query_has(r, "command=cat")
    });
    target.assert_credential(&refused);
    let spdy = target.request(EXEC, |r| spdy_upgrade(r) && query_has(r, "command=cat"));
    assert!(
        spdy.header_all("x-stream-protocol-version")
            .contains(&"v4.channel.k8s.io"),
        "{spdy:#?}"
    );
}

#[tokio::test]
async fn kubectl_exec_falls_back_to_spdy_when_the_websocket_upgrade_is_refused() {
    exec_falls_back_to_spdy(&Target::tunnel().await).await;
}

#[tokio::test]
async fn kubectl_exec_spdy_fallback_against_the_fake_alone() {
    exec_falls_back_to_spdy(&Target::alone().await).await;
}

/// Both upgrades refused: kubectl fails with the fake's own message, so the non-101 answers
/// came back as the responses they were.
async fn refused_upgrades_reach_kubectl(target: &Target) {
    target.api().refuse_websocket_upgrades();
    target.api().refuse_spdy_upgrades();
    let echo = target.kubectl(&["exec", "web-0", "--", "echo", "hi"]);
    let output = Kubectl::spawn(echo, None)
        .finish("kubectl exec, refused")
        .await;
    assert!(!output.status.success(), "{:?}", output.status);
    assert!(
        output
            .stderr
            .contains("the fake kube-apiserver refuses SPDY upgrades"),
        "kubectl shows the fake's refusal: {}",
        output.stderr
    );
    assert!(output.stdout.is_empty());
    target.request(EXEC, websocket_upgrade);
    target.request(EXEC, spdy_upgrade);
}

#[tokio::test]
async fn kubectl_reports_refused_exec_upgrades() {
    refused_upgrades_reach_kubectl(&Target::tunnel().await).await;
}

#[tokio::test]
async fn kubectl_reports_refused_exec_upgrades_against_the_fake_alone() {
    refused_upgrades_reach_kubectl(&Target::alone().await).await;
}

/// `logs -f` prints what was logged, then each line as it is pushed; killing kubectl ends the
/// stream at the fake.
async fn logs_follow(target: &Target) {
    let api = target.api();
    api.push_log_line("logged before kubectl came");
    let mut kubectl = Kubectl::spawn(target.kubectl(&["logs", "-f", "web-0"]), None);
    until("kubectl follows the log", || api.open_log_streams() == 1).await;
    kubectl
        .stdout_until("the earlier line", |out| {
            out.contains("logged before kubectl came\n")
        })
        .await;
    for line in ["first line pushed while following", "and a second one"] {
        api.push_log_line(line);
        kubectl
            .stdout_until(line, |out| out.ends_with(&format!("{line}\n")))
            .await;
    }
    let log = target.request("/api/v1/namespaces/default/pods/web-0/log?", |_| true);
    assert!(query_has(&log, "follow=true"), "{log:#?}");
    target.assert_credential(&log);

    kubectl.kill().await;
    until("the fake sees the log stream end", || {
        api.open_log_streams() == 0
    })
    .await;
}

#[tokio::test]
async fn kubectl_logs_follow_streams() {
    logs_follow(&Target::tunnel().await).await;
}

#[tokio::test]
async fn kubectl_logs_follow_against_the_fake_alone() {
    logs_follow(&Target::alone().await).await;
}

/// `port-forward web-0 :8080`, then a TCP connection to the local port it prints: what is
/// written comes back (the fake echoes), and closing our side closes the forwarded connection.
/// `transport` says which upgrade carried it.
async fn port_forward(target: &Target, websockets: bool, transport: fn(&SeenRequest) -> bool) {
    let api = target.api();
    let mut command = target.kubectl(&["port-forward", "--address=127.0.0.1", "web-0", ":8080"]);
    command.env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets.to_string());
    let mut kubectl = Kubectl::spawn(command, None);
    const LISTENING: &str = "Forwarding from 127.0.0.1:";
    let out = kubectl
        .stdout_until("kubectl listens", |out| {
            out.lines().any(|l| l.starts_with(LISTENING))
        })
        .await;
    let port: u16 = out
        .lines()
        .find_map(|l| l.strip_prefix(LISTENING))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no local port in {out:?}"));
    assert!(out.contains("-> 8080"), "{out}");

    for round in 0..2u64 {
        let payload = pattern(round, 300 * 1024);
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (mut read, mut write) = tcp.into_split();
        let writer = tokio::spawn(async move {
            write.write_all(&payload).await.expect("write");
            write.shutdown().await.expect("shutdown");
            payload
        });
        let mut echoed = Vec::new();
        within("the echo, to its end", read.read_to_end(&mut echoed))
            .await
            .unwrap_or_else(|e| panic!("read: {e}; kubectl said:\n{}", kubectl.stderr()));
        let payload = writer.await.expect("writer");
        assert!(
            echoed == payload,
            "echoed {} bytes of {}; kubectl said:\n{}",
            echoed.len(),
            payload.len(),
            kubectl.stderr()
        );
    }
    until("the fake sees both connections end", || {
        api.open_port_forwards() == 0
    })
    .await;
    assert_eq!(api.forwarded_ports(), [8080, 8080]);
    let request = target.request(PORT_FORWARD, |_| true);
    assert!(transport(&request), "{request:#?}");
    target.assert_credential(&request);
    kubectl.kill().await;
}

fn spdy_tunnelled_in_websocket(request: &SeenRequest) -> bool {
    websocket_upgrade(request)
        && request.header("sec-websocket-protocol") == Some("SPDY/3.1+portforward.k8s.io")
}

fn plain_spdy_port_forward(request: &SeenRequest) -> bool {
    spdy_upgrade(request)
        && request.header("x-stream-protocol-version") == Some("portforward.k8s.io")
}

#[tokio::test]
async fn kubectl_port_forward_carries_a_tcp_connection() {
    port_forward(&Target::tunnel().await, true, spdy_tunnelled_in_websocket).await;
}

#[tokio::test]
async fn kubectl_port_forward_against_the_fake_alone() {
    port_forward(&Target::alone().await, true, spdy_tunnelled_in_websocket).await;
}

#[tokio::test]
async fn kubectl_port_forward_over_plain_spdy() {
    port_forward(&Target::tunnel().await, false, plain_spdy_port_forward).await;
}

#[tokio::test]
async fn kubectl_port_forward_over_plain_spdy_against_the_fake_alone() {
    port_forward(&Target::alone().await, false, plain_spdy_port_forward).await;
}
