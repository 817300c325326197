//! Floors (issue 6): what the libraries the tunnel is built on cost before any of our code runs,
//! so that a bar sitting below one is found and argued with numbers. `bench/run` runs these as
//! scenario F, in the same run as the scenarios they bound; alone:
//!
//! ```text
//! cargo run --release --example floors -- idle raw|hyper-server|hyper-client|h2 [STREAMS]
//! cargo run --release --example floors -- wire tcp|tls|ws|tls-ws [MIB]
//! ```
//!
//! `idle`: RSS per idle watch-like stream (a request answered with a chunked head and one event,
//! then held open) over loopback TCP, both ends in this process. `raw` is the control: plain
//! tokio tasks and sockets on both ends, the least any design holds. `hyper-server` puts a hyper
//! HTTP/1 server connection on one end, `hyper-client` a hyper HTTP/1 client connection; each
//! minus `raw` is what one hyper connection costs an idle stream (S9's floor). `h2`: every
//! stream on one HTTP/2 connection, hyper at both ends (what Argo CD's client-go speaks over
//! TLS), per stream with both ends counted.
//!
//! `wire`: one direction's throughput between two threads (a single-threaded runtime each, as
//! the two binaries are) over one loopback connection: `tcp`, `tls` (rustls), `ws` (tungstenite,
//! 64 KiB binary messages, as the mux sends; client to server, masked, as a download crosses the
//! tunnel), `tls-ws` (both). The ceiling for the tunnel's data path (S1's floor). Each run prints
//! one JSON line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The watch event every stream gets once.
const EVENT: &[u8] = br#"{"type":"ADDED","object":{"kind":"ConfigMap","metadata":{"name":"x"}}}"#;
const REQUEST: &[u8] = b"GET /api/v1/configmaps?watch=true HTTP/1.1\r\nhost: floor\r\n\r\n";
/// Connects in flight at once (the listen backlog is finite).
const CONNECTS_IN_FLIGHT: usize = 200;
/// The bound on every wait: a floor that cannot finish fails with a message.
const DEADLINE: Duration = Duration::from_secs(120);
const WIRE_CHUNK: usize = 64 * 1024;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let count = |default: usize| arg(2).map_or(Ok(default), str::parse);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let kind: &'static str = match arg(1) {
        Some("raw") => "raw",
        Some("hyper-server") => "hyper-server",
        Some("hyper-client") => "hyper-client",
        Some("h2") => "h2",
        Some("tcp") => "tcp",
        Some("tls") => "tls",
        Some("ws") => "ws",
        Some("tls-ws") => "tls-ws",
        _ => "",
    };
    let line = match (arg(0), kind) {
        (Some("idle"), "raw" | "hyper-server" | "hyper-client" | "h2") => {
            let streams = count(2000)?;
            runtime()?
                .block_on(async { tokio::time::timeout(DEADLINE, idle(kind, streams)).await })
                .map_err(|_| "the streams did not all come up in time")??
        }
        (Some("wire"), "tcp" | "tls" | "ws" | "tls-ws") => wire(kind, count(1024)?)?,
        _ => {
            return Err(
                "usage: floors idle raw|hyper-server|hyper-client|h2 [STREAMS] \
                        | floors wire tcp|tls|ws|tls-ws [MIB]"
                    .into(),
            )
        }
    };
    println!("{line}");
    Ok(())
}

/// Resident set size of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn idle(kind: &'static str, streams: usize) -> Result<String, Error> {
    argocd_proxy::host::raise_nofile_limit()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            socket.set_nodelay(true).ok();
            match kind {
                "hyper-server" => drop(tokio::spawn(hyper_server(socket))),
                "h2" => drop(tokio::spawn(h2_server(socket, streams))),
                _ => drop(tokio::spawn(raw_server(socket))),
            }
        }
    });
    let before = rss_kib();
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(streams.max(1));
    let in_flight = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    // HTTP/2: every stream on one connection.
    let h2 = match kind {
        "h2" => Some(h2_connect(addr).await?),
        _ => None,
    };
    for _ in 0..streams {
        let permit = in_flight.clone().acquire_owned().await?;
        let ready = ready_tx.clone();
        let h2 = h2.clone();
        tokio::spawn(async move {
            let result = match (kind, h2) {
                (_, Some(sender)) => h2_stream(sender, permit).await,
                ("hyper-client", _) => hyper_client(addr, permit).await,
                _ => raw_client(addr, permit).await,
            };
            // Reached only if a stream failed or ended: an idle stream never returns.
            let _ = ready.send(result.and(Err("stream ended".into()))).await;
        });
    }
    drop(ready_tx);
    // Every stream has had its event once all permits are back (each client holds its permit
    // until the event arrives); a failure is reported instead.
    let all_up = in_flight.acquire_many(CONNECTS_IN_FLIGHT as u32);
    tokio::select! {
        _ = all_up => {}
        Some(Err(error)) = ready_rx.recv() => return Err(error.into()),
    }
    let after = rss_kib();
    let per_stream = (after.saturating_sub(before)) as f64 / streams.max(1) as f64;
    Ok(format!(
        r#"{{"floor":"idle","kind":"{kind}","streams":{streams},"rss_before_kib":{before},"rss_after_kib":{after},"kib_per_stream":{per_stream:.2}}}"#
    ))
}

/// The chunked head and first event a raw server writes.
fn response() -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n"
        .to_vec();
    out.extend_from_slice(format!("{:x}\r\n", EVENT.len()).as_bytes());
    out.extend_from_slice(EVENT);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads until `needle` has arrived (a small stack buffer: a raw end holds no heap buffer).
async fn read_until(socket: &mut TcpStream, needle: &[u8]) -> Result<(), String> {
    let mut window = [0u8; 512];
    let mut filled = 0;
    loop {
        if filled == window.len() {
            return Err("no end of head within 512 bytes".into());
        }
        let n = socket
            .read(&mut window[filled..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed early".into());
        }
        filled += n;
        if window[..filled].windows(needle.len()).any(|w| w == needle) {
            return Ok(());
        }
    }
}

/// Waits for the peer to close (an idle stream never does).
async fn hold(socket: &mut TcpStream) -> Result<(), String> {
    let mut byte = [0u8; 1];
    socket.read(&mut byte).await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn raw_server(mut socket: TcpStream) -> Result<(), String> {
    read_until(&mut socket, b"\r\n\r\n").await?;
    socket
        .write_all(&response())
        .await
        .map_err(|e| e.to_string())?;
    hold(&mut socket).await
}

async fn raw_client(
    addr: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let mut socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    socket.set_nodelay(true).ok();
    socket.write_all(REQUEST).await.map_err(|e| e.to_string())?;
    read_until(&mut socket, &EVENT[EVENT.len() - 8..]).await?;
    drop(permit);
    hold(&mut socket).await
}

/// The watch answer: a head, one event, then nothing, never ending.
async fn watch(
    _request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<impl hyper::body::Body<Data = Bytes, Error = Infallible>>, Infallible> {
    let first = stream::once(async { Ok::<_, Infallible>(Frame::data(Bytes::from_static(EVENT))) });
    let body = StreamBody::new(first.chain(stream::pending()));
    Ok(hyper::Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("static response"))
}

async fn h2_server(socket: TcpStream, streams: usize) {
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(u32::try_from(streams).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(socket), hyper::service::service_fn(watch))
        .await;
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>;

async fn h2_connect(addr: SocketAddr) -> Result<H2Sender, Error> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn h2_stream(
    mut sender: H2Sender,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::get("http://floor/api/v1/configmaps?watch=true")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("static request");
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    body.frame().await.ok_or("no event")?.map_err(|e| e.to_string())?;
    drop(permit);
    body.frame().await;
    Ok(())
}

async fn hyper_server(socket: TcpStream) {
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(socket), hyper::service::service_fn(watch))
        .await;
}

async fn hyper_client(
    addr: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let socket = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    socket.set_nodelay(true).ok();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(socket))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/api/v1/configmaps?watch=true")
        .header("host", "floor")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("static request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    body.frame()
        .await
        .ok_or("no event")?
        .map_err(|e| e.to_string())?;
    drop(permit);
    body.frame().await;
    Ok(())
}

/// One direction's throughput, MB/s, measured by the receiver from its first byte to its last.
fn wire(kind: &'static str, mib: usize) -> Result<String, Error> {
    let total = mib * 1024 * 1024;
    let (cert, key) = self_signed()?;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = std_listener.local_addr()?;
    let receiver_cert = cert.clone();
    let receiver = std::thread::spawn(move || -> Result<(usize, Duration), String> {
        let run = || -> Result<(usize, Duration), Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                tokio::time::timeout(DEADLINE, receive(kind, std_listener, receiver_cert, key))
                    .await
                    .map_err(|_| Error::from("the receiver timed out"))?
            })
        };
        run().map_err(|e| e.to_string())
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async { tokio::time::timeout(DEADLINE, send(kind, addr, cert, total)).await })
        .map_err(|_| "the sender timed out")??;
    let (received, elapsed) = receiver.join().map_err(|_| "the receiver panicked")??;
    if received != total {
        return Err(format!("received {received} of {total} bytes").into());
    }
    let mb_per_s = total as f64 / elapsed.as_secs_f64() / 1e6;
    Ok(format!(
        r#"{{"floor":"wire","kind":"{kind}","bytes":{total},"seconds":{:.3},"mb_per_s":{mb_per_s:.0}}}"#,
        elapsed.as_secs_f64()
    ))
}

fn self_signed() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), Error> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok((certified.cert.der().clone(), key.into()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn receive(
    kind: &str,
    listener: std::net::TcpListener,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(usize, Duration), Error> {
    listener.set_nonblocking(true)?;
    let (socket, _) = TcpListener::from_std(listener)?.accept().await?;
    socket.set_nodelay(true)?;
    match kind {
        "tcp" => return drain(socket).await,
        "ws" => return drain_ws(tokio_tungstenite::accept_async(socket).await?).await,
        _ => {}
    }
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
        .accept(socket)
        .await?;
    if kind == "tls" {
        return drain(tls).await;
    }
    drain_ws(tokio_tungstenite::accept_async(tls).await?).await
}

async fn drain_ws(
    mut ws: tokio_tungstenite::WebSocketStream<impl AsyncRead + AsyncWrite + Unpin>,
) -> Result<(usize, Duration), Error> {
    let (mut received, mut started) = (0, None);
    while let Some(message) = ws.next().await {
        if let Message::Binary(bytes) = message? {
            started.get_or_insert_with(Instant::now);
            received += bytes.len();
        }
    }
    Ok((received, started.map_or(Duration::ZERO, |at| at.elapsed())))
}

async fn drain(mut io: impl AsyncRead + Unpin) -> Result<(usize, Duration), Error> {
    let mut buf = vec![0u8; WIRE_CHUNK];
    let (mut received, mut started) = (0, None);
    loop {
        let n = io.read(&mut buf).await?;
        if n == 0 {
            return Ok((
                received,
                started.map_or(Duration::ZERO, |at: Instant| at.elapsed()),
            ));
        }
        started.get_or_insert_with(Instant::now);
        received += n;
    }
}

async fn send(
    kind: &str,
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    total: usize,
) -> Result<(), Error> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let chunk = Bytes::from(vec![0x5a; WIRE_CHUNK]);
    match kind {
        "tcp" => return pump(socket, &chunk, total).await,
        "ws" => return pump_ws(socket, chunk, total).await,
        _ => {}
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, socket)
        .await?;
    if kind == "tls" {
        return pump(tls, &chunk, total).await;
    }
    pump_ws(tls, chunk, total).await
}

async fn pump_ws(
    io: impl AsyncRead + AsyncWrite + Unpin,
    chunk: Bytes,
    total: usize,
) -> Result<(), Error> {
    let (mut ws, _) = tokio_tungstenite::client_async("ws://localhost/floor", io).await?;
    for sent in 1..=total / WIRE_CHUNK {
        ws.feed(Message::Binary(chunk.clone())).await?;
        // Flushed every 256 KiB, as the mux writer flushes a batch.
        if sent % 4 == 0 {
            ws.flush().await?;
        }
    }
    ws.close(None).await?;
    // The receiver's close reply ends the stream.
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

async fn pump(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    chunk: &[u8],
    total: usize,
) -> Result<(), Error> {
    for _ in 0..total / chunk.len() {
        io.write_all(chunk).await?;
    }
    io.shutdown().await?;
    // Read what the receiver sent (TLS 1.3 session tickets) until it closes: a socket closed
    // with unread bytes resets the connection, and the receiver would lose the tail.
    let mut sink = [0u8; 1024];
    while let Ok(n) = io.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
    Ok(())
}
