//! `floors idle`: RSS per idle watch-like stream, plain tasks vs hyper connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::{rss_kib, Error, CONNECTS_IN_FLIGHT, EVENT, REQUEST};

pub(super) async fn idle(kind: &'static str, streams: usize) -> Result<String, Error> {
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
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(streams.max(1));
    let in_flight = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    // HTTP/2: every stream on one connection.
    let h2 = match kind {
        "h2" => Some(h2_connect(addr).await?),
        _ => None,
    };
    // Measured as a slope: RSS after the first half and after the second, so what does not
    // grow with the streams (the runtime, the allocator's high-water mark from connecting
    // CONNECTS_IN_FLIGHT at once) cancels out.
    let first_half = streams / 2;
    let mut rss = vec![rss_kib()?];
    for count in [first_half, streams - first_half] {
        for _ in 0..count {
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
        // Every stream has had its event once all permits are back (each client holds its
        // permit until the event arrives). A client that fails gives its permit back too, so
        // errors are looked at first, and again once all are back.
        tokio::select! {
            biased;
            Some(Err(error)) = ready_rx.recv() => return Err(error.into()),
            all_up = in_flight.acquire_many(CONNECTS_IN_FLIGHT as u32) => drop(all_up?),
        }
        if let Ok(Err(error)) = ready_rx.try_recv() {
            return Err(error.into());
        }
        rss.push(rss_kib()?);
    }
    let second_half = (streams - first_half).max(1) as f64;
    let per_stream = rss[2].saturating_sub(rss[1]) as f64 / second_half;
    Ok(format!(
        r#"{{"floor":"idle","kind":"{kind}","streams":{streams},"rss_kib":[{},{},{}],"kib_per_stream":{per_stream:.2}}}"#,
        rss[0], rss[1], rss[2]
    ))
}

/// The chunked head and first event a raw server writes.
fn raw_watch_response() -> Vec<u8> {
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
        .write_all(&raw_watch_response())
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
    hold_watch(sender.send_request(request), permit).await
}

/// Waits for a watch's response and its first event, gives the connect slot back, then holds
/// the stream open until it ends (an idle one never does).
async fn hold_watch(
    response: impl std::future::Future<
        Output = Result<hyper::Response<hyper::body::Incoming>, hyper::Error>,
    >,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let mut body = response.await.map_err(|e| e.to_string())?.into_body();
    body.frame()
        .await
        .ok_or("no event")?
        .map_err(|e| e.to_string())?;
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
    hold_watch(sender.send_request(request), permit).await
}
