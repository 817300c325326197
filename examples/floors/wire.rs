//! `floors wire`: one direction's throughput over loopback, bare libraries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{Error, DEADLINE, WIRE_CHUNK};

/// One direction's throughput, MB/s, measured by the receiver from its first byte to its last.
pub(super) fn wire(kind: &'static str, mib: usize) -> Result<String, Error> {
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
    let target = match kind {
        "relay" => relay_to(relay_to(addr)?)?,
        _ => addr,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async { tokio::time::timeout(DEADLINE, send(kind, target, cert, total)).await })
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

/// A relay thread with its own single-threaded runtime (as each binary has): accepts one
/// connection and copies it to `to` through a 64 KiB buffer. Returns where it listens.
fn relay_to(to: SocketAddr) -> Result<SocketAddr, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let run = || -> Result<(), Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let copy = async {
                    let (mut from, _) = TcpListener::from_std(listener)?.accept().await?;
                    let mut out = TcpStream::connect(to).await?;
                    from.set_nodelay(true)?;
                    out.set_nodelay(true)?;
                    let mut buf = vec![0u8; WIRE_CHUNK];
                    loop {
                        let n = from.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n]).await?;
                    }
                    out.shutdown().await?;
                    Ok::<_, Error>(())
                };
                tokio::time::timeout(DEADLINE, copy)
                    .await
                    .map_err(|_| Error::from("the relay timed out"))?
            })
        };
        // The receiver's count shows a broken relay; say why too.
        if let Err(error) = run() {
            eprintln!("relay: {error}");
        }
    });
    Ok(addr)
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
        "tcp" | "relay" => return drain(socket).await,
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
        "tcp" | "relay" => return pump(socket, &chunk, total).await,
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
