//! A fake kube-apiserver: plain HTTP/1.1 on loopback, serving just enough of the Kubernetes API
//! (legacy discovery, `/version`, namespaces and pods, server-side Tables, pods watches and
//! `pods/exec` over WebSocket) for the real `kubectl` to run `get namespaces`,
//! `get pods --watch` and `exec <pod> -- echo ...` against it.
//!
//! Tests put it behind the tunnel to check that what `kubectl` sends arrives intact (every
//! request is recorded exactly as received) and that long-lived watches stream through: events
//! are pushed on demand with [`FakeKubeApi::push_pod_event`], and [`FakeKubeApi::open_watches`]
//! says when a watch is established, so no test has to sleep.
//!
//! Exec speaks the Kubernetes WebSocket streaming protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io` if that is all the client offers): every binary message starts with its
//! channel byte (0 stdin, 1 stdout, 2 stderr, 3 the final `Status` as JSON, 4 resize; v5 adds
//! 255, "close this channel"). The only command it knows is `echo`; anything else ends as a
//! process that was not found would (exit code 127).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// When every fake object was created (2024-01-01T00:00:00Z); ages are computed from it.
const CREATED: &str = "2024-01-01T00:00:00Z";
const CREATED_UNIX: u64 = 1_704_067_200;
/// The resourceVersion of every list; watches start from it.
const LIST_VERSION: &str = "1000";

/// A running fake kube-apiserver. Dropping it stops accepting connections.
pub struct FakeKubeApi {
    /// Where it listens (127.0.0.1, ephemeral port); use `http://{addr}` as the server URL.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The raw request target, e.g. `/api/v1/pods?watch=1&x=%2F`.
    pub path_and_query: String,
    /// Every header value with its lower-case name; repeated headers are kept (grouped by
    /// name, in the order each name first appeared).
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct Shared {
    token: Option<String>,
    requests: Mutex<Vec<SeenRequest>>,
    events: broadcast::Sender<(String, String)>,
    open_watches: AtomicUsize,
}

impl FakeKubeApi {
    /// Starts on an ephemeral port; it accepts connections as soon as this returns. When
    /// `token` is `Some`, requests must carry `Authorization: Bearer <token>` or get a 401
    /// with a Kubernetes Status body.
    pub async fn start(token: Option<&str>) -> FakeKubeApi {
        let (listener, addr) = super::listener().await;
        let shared = Arc::new(Shared {
            token: token.map(str::to_owned),
            requests: Mutex::new(Vec::new()),
            events: broadcast::channel(64).0,
            open_watches: AtomicUsize::new(0),
        });
        let for_accept = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let shared = for_accept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let response = handle(&shared, request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    // A client going away mid-response is normal (watches end that way).
                    // Upgrades (exec over WebSocket) hand the connection to the exec task.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        FakeKubeApi {
            addr,
            shared,
            accept,
        }
    }

    /// Every request received so far, in order (including refused ones).
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Sends one watch event of type `kind` (`ADDED`, `MODIFIED`, `DELETED`) for pod
    /// `pod_name` to every open pods watch. Watches opened later do not see it.
    pub fn push_pod_event(&self, kind: &str, pod_name: &str) {
        // No receivers means no open watch: nothing to deliver.
        let _ = self
            .shared
            .events
            .send((kind.to_owned(), pod_name.to_owned()));
    }

    /// How many pods watches are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type Reply = Response<UnsyncBoxBody<Bytes, Infallible>>;

fn handle(shared: &Arc<Shared>, mut request: Request<Incoming>) -> Reply {
    let seen = SeenRequest {
        method: request.method().to_string(),
        path_and_query: request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().to_string(), |pq| pq.as_str().to_owned()),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
    };
    lock(&shared.requests).push(seen.clone());

    if let Some(token) = &shared.token {
        if seen.header("authorization") != Some(&format!("Bearer {token}")) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    let (path, query) = match seen.path_and_query.split_once('?') {
        Some((path, query)) => (path, query),
        None => (seen.path_and_query.as_str(), ""),
    };
    let param = |wanted: &str| query.split('&').any(|p| p == wanted);
    let (watch, full_object) = (
        param("watch=true") || param("watch=1"),
        param("includeObject=Object"),
    );
    // The first media type is the preferred one; kubectl puts the Table first.
    let preferred = |accept: &&str| accept.split(',').next().unwrap_or_default().to_owned();
    let table = seen
        .header_all("accept")
        .iter()
        .map(preferred)
        .any(|t| t.contains("as=Table"));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();

    if seen.method != "GET" {
        return not_found(path);
    }
    let body = match segments.as_slice() {
        ["api"] => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs":
                [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}],
        }),
        ["apis"] => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
        ["api", "v1"] => api_resources(),
        ["version"] => json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": CREATED, "goVersion": "go1.23.0", "compiler": "gc",
            "platform": "linux/amd64",
        }),
        ["api", "v1", "namespaces"] if !watch => {
            let items = [namespace("default"), namespace("kube-system")];
            list("Namespace", &items, table, full_object)
        }
        ["api", "v1", "pods"] | ["api", "v1", "namespaces", _, "pods"] => {
            let namespace = match segments.as_slice() {
                [_, _, _, namespace, _] => *namespace,
                _ => "default",
            };
            if watch {
                return watch_pods(shared, namespace, table, full_object);
            }
            list("Pod", &[pod(namespace, "web-0")], table, full_object)
        }
        ["api", "v1", "namespaces", namespace, "pods", "web-0"] => pod(namespace, "web-0"),
        ["api", "v1", "namespaces", _, "pods", name] => {
            let message = format!("pods \"{name}\" not found");
            return status(StatusCode::NOT_FOUND, "NotFound", &message);
        }
        ["api", "v1", "namespaces", _, "pods", "web-0", "exec"] => {
            return exec(&mut request, &seen, query);
        }
        _ => return not_found(path),
    };
    json_response(StatusCode::OK, &body)
}

/// The subprotocols exec speaks, most preferred first.
const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Channel bytes of the streaming protocol.
const STDOUT: u8 = 1;
const ERROR: u8 = 3;

/// `pods/exec`: a WebSocket upgrade whose session runs the command once the 101 is sent.
fn exec(request: &mut Request<Incoming>, seen: &SeenRequest, query: &str) -> Reply {
    let websocket = seen
        .header_all("upgrade")
        .iter()
        .any(|u| u.eq_ignore_ascii_case("websocket"));
    let (true, Some(key)) = (websocket, seen.header("sec-websocket-key")) else {
        // Also what a SPDY attempt (a POST with `Upgrade: SPDY/3.1`) would need instead.
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Upgrade request required",
        );
    };
    let offered: Vec<&str> = seen
        .header_all("sec-websocket-protocol")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(protocol) = EXEC_PROTOCOLS.iter().find(|p| offered.contains(p)) else {
        let message = format!("none of the offered subprotocols {offered:?} is supported");
        return status(StatusCode::BAD_REQUEST, "BadRequest", &message);
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(name, value)| (decode(name), decode(value)))
        .collect();
    let command: Vec<String> = params
        .iter()
        .filter(|(name, _)| name == "command")
        .map(|(_, value)| value.clone())
        .collect();
    let stdout = params
        .iter()
        .any(|(name, value)| name == "stdout" && (value == "true" || value == "1"));

    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // The client going away early is its business.
        let _ = run_exec(socket, &command, stdout).await;
    });

    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let accept = derive_accept_key(key.as_bytes());
    for (name, value) in [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept.as_str()),
        ("sec-websocket-protocol", protocol),
    ] {
        headers.insert(
            name,
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// Runs `command` on an established exec session: its output on stdout (if wanted), its
/// `Status` on the error channel, then a normal WebSocket close, answered or not within 5 s.
async fn run_exec<S>(
    mut socket: WebSocketStream<S>,
    command: &[String],
    stdout: bool,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};

    let channel = |channel: u8, bytes: &[u8]| {
        let mut message = Vec::with_capacity(bytes.len() + 1);
        message.push(channel);
        message.extend_from_slice(bytes);
        Message::Binary(Bytes::from(message))
    };
    let result = match command.split_first() {
        Some((program, args)) if program == "echo" => {
            if stdout {
                let line = format!("{}\n", args.join(" "));
                socket.send(channel(STDOUT, line.as_bytes())).await?;
            }
            json!({"metadata": {}, "status": "Success"})
        }
        _ => json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command {command:?} not found in the fake"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "127"}]},
        }),
    };
    socket
        .send(channel(ERROR, result.to_string().as_bytes()))
        .await?;
    // client-go reads the error channel to its end, which only a Normal closure (1000) makes
    // a clean end: a close without a code fails with "close 1005 (no status)".
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await?;
    // Let the client answer the close (and drop whatever else it sends, e.g. v5's channel
    // closes), but never wait on it for long.
    let drain = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
    Ok(())
}

/// Decodes one `application/x-www-form-urlencoded` query component (`+` is a space).
fn decode(component: &str) -> String {
    let mut bytes = Vec::with_capacity(component.len());
    let mut rest = component.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' if rest.len() >= 2 => {
                match std::str::from_utf8(&rest[..2])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(decoded) => {
                        bytes.push(decoded);
                        rest = &rest[2..];
                    }
                    None => bytes.push(b'%'),
                }
            }
            _ => bytes.push(byte),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn api_resources() -> Value {
    let verbs = json!(["get", "list", "watch"]);
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": [
            {"name": "namespaces", "singularName": "namespace", "namespaced": false,
             "kind": "Namespace", "verbs": verbs, "shortNames": ["ns"]},
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": verbs, "shortNames": ["po"], "categories": ["all"]},
        ],
    })
}

fn metadata(namespace: Option<&str>, name: &str) -> Value {
    let mut metadata = json!({
        "name": name,
        "uid": format!("00000000-0000-4000-8000-{:012x}", fnv(name) & 0xffff_ffff_ffff),
        "resourceVersion": LIST_VERSION,
        "creationTimestamp": CREATED,
    });
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    metadata
}

fn namespace(name: &str) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": metadata(None, name),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn pod(namespace: &str, name: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": metadata(Some(namespace), name),
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}], "nodeName": "node-1"},
        "status": {
            "phase": "Running", "podIP": "10.0.0.5",
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0,
                                   "image": "nginx:1.27", "started": true}],
        },
    })
}

/// `items` as a plain `<Kind>List`, or as a `meta.k8s.io/v1` Table when `table`.
fn list(kind: &str, items: &[Value], table: bool, full_object: bool) -> Value {
    if table {
        let mut table = table_of(kind, true, full_object, items);
        table["metadata"] = json!({"resourceVersion": LIST_VERSION});
        return table;
    }
    json!({
        "kind": format!("{kind}List"), "apiVersion": "v1",
        "metadata": {"resourceVersion": LIST_VERSION},
        "items": items,
    })
}

/// A Table with one row per object, as the apiserver prints it (`kubectl get` shows the
/// priority-0 columns; `-o wide` adds the rest). Rows embed PartialObjectMetadata unless the
/// client asked for `includeObject=Object`.
fn table_of(kind: &str, with_columns: bool, full_object: bool, objects: &[Value]) -> Value {
    const NAMESPACE: &[&str] = &["Name", "Status", "Age"];
    const POD: &[&str] = &["Name", "Ready", "Status", "Restarts", "Age"];
    const POD_WIDE: &[&str] = &["IP", "Node", "Nominated Node", "Readiness Gates"];
    let age = age();
    let cells = |o: &Value| {
        let (name, phase) = (&o["metadata"]["name"], &o["status"]["phase"]);
        if kind == "Namespace" {
            return json!([name, phase, age]);
        }
        let (ip, node) = (&o["status"]["podIP"], &o["spec"]["nodeName"]);
        json!([name, "1/1", phase, "0", age, ip, node, "<none>", "<none>"])
    };
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let embedded = if full_object {
                object.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": object["metadata"]})
            };
            json!({"cells": cells(object), "object": embedded})
        })
        .collect();
    let columns = match (with_columns, kind) {
        (false, _) => Vec::new(),
        (true, "Namespace") => NAMESPACE.to_vec(),
        (true, _) => [POD, POD_WIDE].concat(),
    };
    let columns: Vec<Value> = columns
        .into_iter()
        .map(|name| {
            let format = if name == "Name" { "name" } else { "" };
            let priority = u8::from(POD_WIDE.contains(&name));
            json!({"name": name, "type": "string", "format": format, "description": name,
                   "priority": priority})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": columns, "rows": rows,
    })
}

/// A stable per-name number (FNV-1a), so objects get distinct, repeatable uids.
fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Days since [`CREATED`], as the apiserver's Age cell would say.
fn age() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}d", now.saturating_sub(CREATED_UNIX) / 86_400)
}

/// A streaming watch: one JSON event per chunk, each ending in a newline, until the client
/// goes away. Only the first Table event carries column definitions (kubectl 1.32 keeps the
/// list's columns and accepts either).
fn watch_pods(shared: &Arc<Shared>, namespace: &str, table: bool, full_object: bool) -> Reply {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    // Subscribe before counting the watch as open, so an event pushed once a test sees the
    // count cannot be missed.
    let mut events = shared.events.subscribe();
    let guard = OpenWatch::new(shared.clone());
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let _guard = guard;
        let mut first = true;
        loop {
            let (kind, name) = tokio::select! {
                _ = tx.closed() => return,
                event = events.recv() => match event {
                    Ok(event) => event,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let object = pod(&namespace, &name);
            let object = if table {
                table_of("Pod", first, full_object, &[object])
            } else {
                object
            };
            first = false;
            let mut line = json!({"type": kind, "object": object}).to_string();
            line.push('\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    // No known length, so hyper sends it chunked.
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    respond(StatusCode::OK, StreamBody::new(chunks).boxed_unsync())
}

/// Counts an open watch for as long as it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> OpenWatch {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(code: StatusCode, body: &Value) -> Reply {
    respond(
        code,
        Full::new(Bytes::from(body.to_string())).boxed_unsync(),
    )
}

fn respond(code: StatusCode, body: UnsyncBoxBody<Bytes, Infallible>) -> Reply {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Reply {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_response(code, &body)
}

fn not_found(path: &str) -> Reply {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("the server could not find the requested resource ({path})"),
    )
}

/// Locks `mutex`, ignoring poisoning: a panicking test must not wedge the server.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
