//! A fake kube-apiserver: plain HTTP/1.1 on loopback, serving just enough of the Kubernetes API
//! (legacy discovery, `/version`, namespaces and pods, server-side Tables, pods watches,
//! `pods/log` (followed or not), `pods/exec` over WebSocket or SPDY and `pods/portforward` over
//! SPDY, tunnelled in a WebSocket or not) for the real `kubectl` to run `get namespaces`,
//! `get pods --watch`, `logs -f`, `exec [-i] <pod> -- ...` and `port-forward` against it.
//!
//! Tests put it behind the tunnel to check that what `kubectl` sends arrives intact (every
//! request is recorded exactly as received) and that long-lived streams stream through: watch
//! events and log lines are pushed on demand with [`FakeKubeApi::push_pod_event`] and
//! [`FakeKubeApi::push_log_line`], and [`FakeKubeApi::open_watches`],
//! [`FakeKubeApi::open_log_streams`] and [`FakeKubeApi::open_port_forwards`] say when one is
//! established or has ended, so no test has to sleep.
//!
//! Exec speaks the Kubernetes WebSocket streaming protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io` if that is all the client offers): every binary message starts with its
//! channel byte (0 stdin, 1 stdout, 2 stderr, 3 the final `Status` as JSON, 4 resize; v5 adds
//! 255, "close this channel"). The commands it knows: `echo ARGS...`, `cat` (stdin back on
//! stdout until stdin ends: v5's channel-255 close of channel 0, or SPDY's half-close of the
//! stdin stream) and `sh -c 'exit N'` (a `NonZeroExitCode` Failure whose `ExitCode` cause is
//! the code kubectl exits with); anything else ends as a process that was not found would
//! (exit code 127).
//!
//! When a client cannot have the WebSocket it asks for, kubectl 1.32 falls back to SPDY/3.1
//! (a `POST` with `Upgrade: SPDY/3.1`): [`FakeKubeApi::refuse_websocket_upgrades`] makes the fake
//! answer WebSocket upgrades with a 400 so that path is taken, and
//! [`FakeKubeApi::refuse_spdy_upgrades`] refuses that too. The upgrades are served in
//! `kubeapi_streaming.rs`; SPDY itself, with the zlib its header blocks need (no crate here has
//! one), in `kubeapi_spdy.rs` and `kubeapi_zlib.rs`.
//!
//! Port-forward (`portforward.k8s.io`: per connection an `error` and a `data` stream with the
//! same `requestid`) is served by an echo: what the client sends on a data stream comes back on
//! it, and its half-close is answered with ours.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

#[path = "kubeapi_spdy.rs"]
mod spdy;
#[path = "kubeapi_streaming.rs"]
mod streaming;
#[path = "kubeapi_zlib.rs"]
mod zlib;

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
    /// Every log line pushed so far (each ending in a newline), and the same lines as pushed.
    log_lines: Mutex<Vec<String>>,
    logs: broadcast::Sender<String>,
    open_log_streams: AtomicUsize,
    refuse_websocket: AtomicBool,
    refuse_spdy: AtomicBool,
    /// The remote port of every port-forward data stream so far.
    forwarded_ports: Mutex<Vec<u16>>,
    open_port_forwards: AtomicUsize,
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
            log_lines: Mutex::new(Vec::new()),
            logs: broadcast::channel(64).0,
            open_log_streams: AtomicUsize::new(0),
            refuse_websocket: AtomicBool::new(false),
            refuse_spdy: AtomicBool::new(false),
            forwarded_ports: Mutex::new(Vec::new()),
            open_port_forwards: AtomicUsize::new(0),
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

    /// Appends `line` to pod `web-0`'s log: every followed log stream open now gets it, and
    /// every log read later starts with it.
    pub fn push_log_line(&self, line: &str) {
        let mut lines = lock(&self.shared.log_lines);
        let line = format!("{}\n", line.trim_end_matches('\n'));
        lines.push(line.clone());
        // Sent under the lock, so a stream opening meanwhile gets it exactly once. No
        // receivers means no followed stream: nothing to deliver.
        let _ = self.shared.logs.send(line);
    }

    /// How many followed (`follow=true`) log streams are open right now.
    pub fn open_log_streams(&self) -> usize {
        self.shared.open_log_streams.load(Ordering::SeqCst)
    }

    /// From now on, WebSocket upgrades (exec, port-forward) get a 400 Status whose message says
    /// the fake refuses them: kubectl then falls back to SPDY.
    pub fn refuse_websocket_upgrades(&self) {
        self.shared.refuse_websocket.store(true, Ordering::SeqCst);
    }

    /// From now on, SPDY upgrades get a 400 Status whose message says the fake refuses them.
    pub fn refuse_spdy_upgrades(&self) {
        self.shared.refuse_spdy.store(true, Ordering::SeqCst);
    }

    /// The remote port of every port-forward connection so far, in order.
    pub fn forwarded_ports(&self) -> Vec<u16> {
        lock(&self.shared.forwarded_ports).clone()
    }

    /// How many port-forward connections are open right now (a data stream the client has
    /// not half-closed).
    pub fn open_port_forwards(&self) -> usize {
        self.shared.open_port_forwards.load(Ordering::SeqCst)
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

    // Streaming upgrades: kubectl's SPDY fallback is a POST.
    match segments.as_slice() {
        ["api", "v1", "namespaces", _, "pods", "web-0", "exec"] => {
            return streaming::exec(shared, &mut request, &seen, query);
        }
        ["api", "v1", "namespaces", _, "pods", "web-0", "portforward"] => {
            return streaming::port_forward(shared, &mut request, &seen);
        }
        _ => {}
    }
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
        ["api", "v1", "namespaces", _, "pods", "web-0", "log"] => {
            return logs(shared, param("follow=true") || param("follow=1"));
        }
        _ => return not_found(path),
    };
    json_response(StatusCode::OK, &body)
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
    let guard = Open::new(shared.clone(), |s| &s.open_watches);
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
    respond(StatusCode::OK, chunked(rx))
}

/// Pod `web-0`'s log as plain text: the lines pushed so far, then (when `follow`) each line as
/// it is pushed, one chunk each, until the client goes away.
fn logs(shared: &Arc<Shared>, follow: bool) -> Reply {
    let (history, mut lines) = {
        // Under the lock [`FakeKubeApi::push_log_line`] sends with: every line exactly once.
        let history = lock(&shared.log_lines);
        (history.concat(), shared.logs.subscribe())
    };
    if !follow {
        return respond_as(
            StatusCode::OK,
            "text/plain",
            Full::new(Bytes::from(history)).boxed_unsync(),
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let guard = Open::new(shared.clone(), |s| &s.open_log_streams);
    tokio::spawn(async move {
        let _guard = guard;
        if !history.is_empty() && tx.send(Bytes::from(history)).await.is_err() {
            return;
        }
        loop {
            let line = tokio::select! {
                _ = tx.closed() => return,
                line = lines.recv() => match line {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    respond_as(StatusCode::OK, "text/plain", chunked(rx))
}

/// A body of whatever `rx` gets, as it gets it; it has no known length, so hyper sends it
/// chunked. It ends when every sender is gone, and dropping it (the client went away) is what
/// the senders see as `closed()`.
fn chunked(rx: mpsc::Receiver<Bytes>) -> UnsyncBoxBody<Bytes, Infallible> {
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(Frame::data(chunk)), rx))
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// Counts something open (a watch, a followed log, a forwarded connection) for as long as it
/// lives.
struct Open(Arc<Shared>, fn(&Shared) -> &AtomicUsize);

impl Open {
    fn new(shared: Arc<Shared>, counter: fn(&Shared) -> &AtomicUsize) -> Open {
        counter(&shared).fetch_add(1, Ordering::SeqCst);
        Open(shared, counter)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_sub(1, Ordering::SeqCst);
    }
}

fn json_response(code: StatusCode, body: &Value) -> Reply {
    respond(
        code,
        Full::new(Bytes::from(body.to_string())).boxed_unsync(),
    )
}

fn respond(code: StatusCode, body: UnsyncBoxBody<Bytes, Infallible>) -> Reply {
    respond_as(code, "application/json", body)
}

fn respond_as(
    code: StatusCode,
    content_type: &'static str,
    body: UnsyncBoxBody<Bytes, Infallible>,
) -> Reply {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
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
