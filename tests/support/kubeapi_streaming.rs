//! Streaming upgrades of the fake kube-apiserver: `pods/exec` over WebSocket (the channel
//! protocol, v5 or v4) or SPDY/3.1 (stream protocol v4), and `pods/portforward` over SPDY/3.1,
//! tunnelled in a WebSocket (`SPDY/3.1+portforward.k8s.io`) or not. See the parent module for
//! what the commands do and how upgrades are refused.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{decode, lock, spdy, status, Open, Reply, SeenRequest, Shared};

/// How long the fake's exec takes to start its process (see `run_exec`).
const PROCESS_START: Duration = Duration::from_millis(200);

/// The subprotocols exec speaks over WebSocket, most preferred first.
const EXEC_PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The stream protocol exec speaks over SPDY. kubectl 1.32 offers v5 first, which over SPDY is
/// v4 by another name; v4 is what every kubelet speaks.
const EXEC_SPDY_PROTOCOLS: &[&str] = &["v4.channel.k8s.io"];
/// Port-forward's protocol over SPDY, and over SPDY tunnelled in a WebSocket.
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
const PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
/// Channel bytes of the WebSocket streaming protocol.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const ERROR: u8 = 3;
/// v5: a message on it closes the channel its one byte names.
const CLOSE: u8 = 255;
/// How long a finished session waits for the client to hang up before closing by itself.
const GRACE: Duration = Duration::from_secs(5);

/// What a streaming request was upgraded to.
enum Upgrade {
    WebSocket,
    Spdy,
}

/// Accepts the upgrade `seen` asks for: a WebSocket speaking one of the `websocket`
/// subprotocols, or (kubectl's fallback, a POST with `Upgrade: SPDY/3.1`) SPDY speaking one of
/// the `spdy` stream protocols, each list preferred first. Returns the 101 to send and the
/// connection to come, or the refusal to send instead.
fn accept_upgrade(
    shared: &Shared,
    request: &mut Request<Incoming>,
    seen: &SeenRequest,
    websocket: &[&str],
    spdy: &[&str],
) -> Result<(Reply, Upgrade, OnUpgrade), Box<Reply>> {
    let refuse = |message: &str| Box::new(status(StatusCode::BAD_REQUEST, "BadRequest", message));
    let wants = |what: &str| {
        seen.header_all("upgrade")
            .iter()
            .flat_map(|u| u.split(','))
            .any(|u| u.trim().eq_ignore_ascii_case(what))
    };
    let offered = |header: &str| -> Vec<String> {
        seen.header_all(header)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .collect()
    };
    let pick = |ours: &[&str], offered: &[String]| {
        ours.iter()
            .find(|p| offered.iter().any(|o| o == *p))
            .map(|p| (*p).to_owned())
    };
    let (upgrade, headers) = if wants("websocket") {
        if shared.refuse_websocket.load(Ordering::SeqCst) {
            return Err(refuse("the fake kube-apiserver refuses WebSocket upgrades"));
        }
        let Some(key) = seen.header("sec-websocket-key") else {
            return Err(refuse("a WebSocket upgrade needs a Sec-WebSocket-Key"));
        };
        let offered = offered("sec-websocket-protocol");
        let Some(protocol) = pick(websocket, &offered) else {
            let message = format!("none of the offered subprotocols {offered:?} is supported");
            return Err(refuse(&message));
        };
        let headers = [
            ("upgrade", "websocket".to_owned()),
            ("connection", "Upgrade".to_owned()),
            ("sec-websocket-accept", derive_accept_key(key.as_bytes())),
            ("sec-websocket-protocol", protocol),
        ];
        (Upgrade::WebSocket, headers.to_vec())
    } else if wants("SPDY/3.1") {
        if shared.refuse_spdy.load(Ordering::SeqCst) {
            return Err(refuse("the fake kube-apiserver refuses SPDY upgrades"));
        }
        let offered = offered("x-stream-protocol-version");
        let Some(protocol) = pick(spdy, &offered) else {
            let message = format!("none of the offered stream protocols {offered:?} is supported");
            return Err(refuse(&message));
        };
        let headers = [
            ("upgrade", "SPDY/3.1".to_owned()),
            ("connection", "Upgrade".to_owned()),
            ("x-stream-protocol-version", protocol),
        ];
        (Upgrade::Spdy, headers.to_vec())
    } else {
        return Err(refuse("Upgrade request required"));
    };
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        let value = http::HeaderValue::from_str(&value).expect("header value");
        response.headers_mut().insert(name, value);
    }
    Ok((response, upgrade, hyper::upgrade::on(request)))
}

/// Which of the command's streams the client attaches.
#[derive(Clone, Copy)]
struct Attach {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// `pods/exec`: an upgrade whose session runs the command once the 101 is sent.
pub(super) fn exec(
    shared: &Shared,
    request: &mut Request<Incoming>,
    seen: &SeenRequest,
    query: &str,
) -> Reply {
    let upgraded = accept_upgrade(shared, request, seen, EXEC_PROTOCOLS, EXEC_SPDY_PROTOCOLS);
    let (reply, upgrade, on_upgrade) = match upgraded {
        Ok(accepted) => accepted,
        Err(refusal) => return *refusal,
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
    let flag = |wanted: &str| {
        params
            .iter()
            .any(|(name, value)| name == wanted && (value == "true" || value == "1"))
    };
    let attach = Attach {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
    };

    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        match upgrade {
            Upgrade::WebSocket => {
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                // The client going away early is its business.
                let _ = run_exec(socket, &command, attach).await;
            }
            Upgrade::Spdy => run_spdy_exec(spdy::Session::start(io), &command, attach).await,
        }
    });
    reply
}

/// A command the fake can run.
enum Program {
    /// Prints this on stdout.
    Echo(String),
    /// Copies stdin to stdout until stdin ends.
    Cat,
    /// Exits with this code.
    Exit(i32),
    /// Anything else: exits as a command that was not found does (127).
    Unknown,
}

impl Program {
    fn parse(command: &[String]) -> Program {
        match command {
            [echo, args @ ..] if echo == "echo" => Program::Echo(format!("{}\n", args.join(" "))),
            [cat] if cat == "cat" => Program::Cat,
            [sh, c, script] if sh == "sh" && c == "-c" => script
                .trim()
                .strip_prefix("exit")
                .and_then(|code| code.trim().parse().ok())
                .map_or(Program::Unknown, Program::Exit),
            _ => Program::Unknown,
        }
    }
}

/// The `Status` an exec ends with, as the kubelet writes it: Success, or a Failure whose
/// `ExitCode` cause is the code kubectl exits with.
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    let message = if code == 127 {
        format!("command {command:?} not found in the fake")
    } else {
        format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}")
    };
    json!({
        "metadata": {}, "status": "Failure", "message": message, "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// Runs `command` on an established WebSocket exec session: its output on stdout (if
/// attached), its `Status` on the error channel, then a normal WebSocket close, answered or not
/// within [`GRACE`].
async fn run_exec<S>(
    mut socket: WebSocketStream<S>,
    command: &[String],
    attach: Attach,
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
    // A real exec starts a process in the container first. Without that moment, output sent
    // right behind the 101 can reach client-go before it has set up its streams, which it
    // discards ("Unknown stream id 1, discarding message"), and kubectl then fails with
    // "closed all streams" (2 runs in 20 with the two exec tests side by side).
    tokio::time::sleep(PROCESS_START).await;
    let code = match Program::parse(command) {
        Program::Echo(line) => {
            if attach.stdout {
                socket.send(channel(STDOUT, line.as_bytes())).await?;
            }
            0
        }
        // Stdin ends with v5's close of channel 0 (v4 cannot say it: cat never ends there).
        // Without stdin, cat has nothing to copy.
        Program::Cat if !attach.stdin => 0,
        // Stdin ends with v5's close of channel 0 (v4 cannot say it: cat never ends there).
        Program::Cat => loop {
            let message = match socket.next().await {
                Some(Ok(Message::Binary(message))) => message,
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error),
            };
            match message.split_first() {
                Some((&STDIN, data)) if attach.stdout && !data.is_empty() => {
                    socket.send(channel(STDOUT, data)).await?;
                }
                Some((&CLOSE, [STDIN])) => break 0,
                _ => {}
            }
        },
        Program::Exit(code) => code,
        Program::Unknown => 127,
    };
    let status = exit_status(command, code).to_string();
    socket.send(channel(ERROR, status.as_bytes())).await?;
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
    let _ = tokio::time::timeout(GRACE, drain).await;
    Ok(())
}

/// Runs `command` on a SPDY exec session (stream protocol v4): the client opens an `error`
/// stream and one per attached stream (`stdin`, `stdout`, `stderr`), one after another. The
/// output goes on stdout, every stream is half-closed, and the `Status` goes on the error stream.
async fn run_spdy_exec(mut session: spdy::Session, command: &[String], attach: Attach) {
    let (mut error, mut stdin, mut stdout, mut stderr) = (None, None, None, None);
    let missing = |error: &Option<_>, stdin: &Option<_>, stdout: &Option<_>, stderr: &Option<_>| {
        error.is_none()
            || (attach.stdin && stdin.is_none())
            || (attach.stdout && stdout.is_none())
            || (attach.stderr && stderr.is_none())
    };
    while missing(&error, &stdin, &stdout, &stderr) {
        // None: the client went away first.
        let Some(stream) = session.streams.recv().await else {
            return;
        };
        let slot = match stream.header("streamtype") {
            Some("error") => &mut error,
            Some("stdin") => &mut stdin,
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            // `resize`, which only a TTY has.
            _ => continue,
        };
        *slot = Some(stream);
    }
    let (Some(error), out) = (error, session.sender.clone()) else {
        return;
    };
    let stdout_id = stdout.as_ref().map(|s| s.id);
    let code = match Program::parse(command) {
        Program::Echo(line) => {
            if let Some(id) = stdout_id {
                out.data(id, line.as_bytes());
            }
            0
        }
        Program::Cat => {
            if let Some(stdin) = stdin.as_mut() {
                // Until the client half-closes stdin.
                while let Some(chunk) = stdin.data.recv().await {
                    if let Some(id) = stdout_id {
                        out.data(id, &chunk);
                    }
                }
            }
            0
        }
        Program::Exit(code) => code,
        Program::Unknown => 127,
    };
    for stream in [&stdin, &stdout, &stderr].into_iter().flatten() {
        out.fin(stream.id);
    }
    out.data(error.id, exit_status(command, code).to_string().as_bytes());
    out.fin(error.id);
    drop(out);
    session.finish(GRACE).await;
}

/// `pods/portforward`: SPDY, tunnelled in a WebSocket (kubectl 1.31+) or not (its fallback, or
/// with `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`), serving every forwarded connection with an
/// echo.
pub(super) fn port_forward(
    shared: &Arc<Shared>,
    request: &mut Request<Incoming>,
    seen: &SeenRequest,
) -> Reply {
    let upgraded = accept_upgrade(
        shared,
        request,
        seen,
        &[PORT_FORWARD_TUNNEL],
        &[PORT_FORWARD_PROTOCOL],
    );
    let (reply, upgrade, on_upgrade) = match upgraded {
        Ok(accepted) => accepted,
        Err(refusal) => return *refusal,
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let session = match upgrade {
            Upgrade::WebSocket => {
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                spdy::Session::start(spdy::bridge_websocket(socket))
            }
            Upgrade::Spdy => spdy::Session::start(io),
        };
        serve_port_forward(session, shared).await;
    });
    reply
}

/// Per forwarded connection the client opens an `error` stream, then a `data` stream, both with
/// the connection's `requestid` and the remote `port`. The data stream is echoed until the
/// client half-closes it; then both streams are closed (an error stream that ends empty means
/// nothing went wrong).
async fn serve_port_forward(mut session: spdy::Session, shared: Arc<Shared>) {
    let mut errors: HashMap<String, u32> = HashMap::new();
    while let Some(mut stream) = session.streams.recv().await {
        let request = stream.header("requestid").unwrap_or_default().to_owned();
        match stream.header("streamtype") {
            Some("error") => {
                errors.insert(request, stream.id);
            }
            Some("data") => {
                let port = stream.header("port").and_then(|p| p.parse().ok());
                lock(&shared.forwarded_ports).push(port.unwrap_or(0));
                let open = Open::new(shared.clone(), |s| &s.open_port_forwards);
                let error = errors.remove(&request);
                let out = session.sender.clone();
                tokio::spawn(async move {
                    while let Some(chunk) = stream.data.recv().await {
                        out.data(stream.id, &chunk);
                    }
                    drop(open);
                    out.fin(stream.id);
                    if let Some(error) = error {
                        out.fin(error);
                    }
                });
            }
            _ => session.sender.reset(stream.id),
        }
    }
    session.finish(GRACE).await;
}
