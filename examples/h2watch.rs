//! S9's HTTP/2 clients (`bench/run` runs S9 with these and with HTTP/1.1 ones): watch-like
//! requests held open over TLS, many per HTTP/2 connection, as Argo CD's client-go sends them
//! (one connection per server, a new one when the server's stream limit is reached). Prints
//! the same lines as `bench/watches.py clients`, which the harness reads:
//!
//! ```text
//! up <n> failed <n> [first_error: …]
//! live <n> of <n> closed <n> stale <n> chunks_min <n> chunks_median <n> [first_close: …]
//! done
//! ```
//!
//! `h2watch --target HOST:PORT --path P --ca CA.pem --count N --per-connection M --hold S
//! --interval S --concurrency C --lifetime S`. A stream is live when it is open and had a chunk
//! within two intervals. Exits on SIGTERM, or after `--lifetime` seconds.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argocd_proxy::transport::tls;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    target: String,
    path: String,
    ca: String,
    count: usize,
    per_connection: usize,
    hold: f64,
    interval: f64,
    concurrency: usize,
    lifetime: f64,
}

fn parse() -> Result<Args, Error> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Result<String, Error> {
        let at = argv
            .iter()
            .position(|a| a == name)
            .ok_or(format!("{name} is required"))?;
        Ok(argv
            .get(at + 1)
            .ok_or(format!("{name} needs a value"))?
            .clone())
    };
    Ok(Args {
        target: value("--target")?,
        path: value("--path")?,
        ca: value("--ca")?,
        count: value("--count")?.parse()?,
        per_connection: value("--per-connection")?.parse()?,
        hold: value("--hold")?.parse()?,
        interval: value("--interval")?.parse()?,
        concurrency: value("--concurrency")?.parse()?,
        lifetime: value("--lifetime")?.parse()?,
    })
}

/// One watch's progress, shared with the task that reads it.
#[derive(Default)]
struct Watch {
    chunks: AtomicU32,
    /// Milliseconds since the start at the last chunk.
    last_ms: AtomicU64,
    ended: AtomicBool,
}

fn main() -> Result<(), Error> {
    let args = parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let started = Instant::now();
    let mut terminate = signal(SignalKind::terminate())?;
    let lifetime = tokio::time::sleep(Duration::from_secs_f64(args.lifetime));
    tokio::pin!(lifetime);
    let config = tls::client_config(tls::roots(Some(args.ca.as_ref()))?, &[b"h2"]);
    let connector = tokio_rustls::TlsConnector::from(config);
    let connections = args.count.div_ceil(args.per_connection.max(1));
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = TcpStream::connect(&args.target).await?;
        tcp.set_nodelay(true)?;
        let stream = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let first_close = Arc::new(Mutex::new(None::<String>));
    let in_flight = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut watches = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let watch = Arc::new(Watch::default());
        watches.push(watch.clone());
        let permit = in_flight.clone().acquire_owned().await?;
        let sender = senders[i / args.per_connection.max(1)].clone();
        let (uri, up, first_close) = (
            format!("https://{}{}", args.target, args.path),
            up_tx.clone(),
            first_close.clone(),
        );
        tokio::spawn(async move {
            let ended = one(sender, uri, &watch, started, permit, &up).await;
            watch.ended.store(true, Ordering::Relaxed);
            if watch.chunks.load(Ordering::Relaxed) == 0 {
                let _ = up.send(Err(ended)); // never up: a failure to open
            } else {
                first_close.lock().unwrap().get_or_insert(ended);
            }
        });
    }
    drop(up_tx);
    // Every watch reports once when its first chunk arrives or it fails.
    let (mut up, mut failed, mut first_error) = (0, 0, None);
    while up + failed < args.count {
        match tokio::time::timeout(Duration::from_secs(60), up_rx.recv()).await {
            Ok(Some(Ok(()))) => up += 1,
            Ok(Some(Err(error))) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
            Ok(None) => break,
            Err(_) => {
                first_error.get_or_insert("no first chunk within 60 s".to_owned());
                failed = args.count - up;
            }
        }
    }
    match &first_error {
        Some(error) => println!("up {up} failed {failed} first_error: {error}"),
        None => println!("up {up} failed {failed}"),
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(args.hold)) => false,
        _ = terminate.recv() => true,
        _ = &mut lifetime => true,
    };
    if !stopped {
        let now = started.elapsed().as_millis() as u64;
        let fresh = (2.0 * args.interval * 1000.0) as u64;
        let closed = watches
            .iter()
            .filter(|w| w.ended.load(Ordering::Relaxed))
            .count();
        let live = watches
            .iter()
            .filter(|w| {
                !w.ended.load(Ordering::Relaxed)
                    && now.saturating_sub(w.last_ms.load(Ordering::Relaxed)) <= fresh
            })
            .count();
        let mut chunks: Vec<u32> = watches
            .iter()
            .map(|w| w.chunks.load(Ordering::Relaxed))
            .collect();
        chunks.sort_unstable();
        let (min, median) = (
            chunks.first().copied().unwrap_or(0),
            chunks.get(chunks.len() / 2).copied().unwrap_or(0),
        );
        let stale = watches.len() - live - closed;
        let mut line = format!(
            "live {live} of {} closed {closed} stale {stale} chunks_min {min} chunks_median {median}",
            watches.len()
        );
        if let Some(close) = first_close.lock().unwrap().as_ref() {
            line.push_str(&format!(" first_close: {close}"));
        }
        println!("{line}");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = &mut lifetime => {}
        }
    }
    println!("done");
    Ok(())
}

/// Runs one watch until it ends; returns why it ended.
async fn one(
    mut sender: SendRequest<Empty<Bytes>>,
    uri: String,
    watch: &Watch,
    started: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
    up: &mpsc::UnboundedSender<Result<(), String>>,
) -> String {
    let mut permit = Some(permit);
    let response = async {
        sender.ready().await?;
        let request = hyper::Request::get(uri)
            .header("accept", "application/json")
            .body(Empty::<Bytes>::new())
            .expect("static request");
        sender.send_request(request).await
    };
    let response = match response.await {
        Ok(response) if response.status() == 200 => response,
        Ok(response) => return format!("HTTP {}", response.status()),
        Err(error) => return format!("request failed: {error}"),
    };
    let mut body = response.into_body();
    loop {
        match body.frame().await {
            Some(Ok(frame)) if frame.is_data() => {
                watch.chunks.fetch_add(1, Ordering::Relaxed);
                watch
                    .last_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                if permit.take().is_some() {
                    let _ = up.send(Ok(()));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return format!("body error: {error}"),
            None => return "ended by the server".to_owned(),
        }
    }
}
