//! The accept loop every listener of both binaries uses: plain or TLS (rustls, optional mTLS),
//! HTTP/1.1 connections with upgrades (hyper's, or with `own_http1` our own `h1::serve`) or
//! hyper HTTP/2 when ALPN chose it, one task each, tracked, and shut down gracefully when the
//! token fires.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod idle;

use crate::h1::Pieces;
use crate::http::Body;
use crate::transport::tls_server::{ClientCert, TlsSlot};
use http_body_util::BodyExt;

/// A listener bound to a port (possibly 0) whose address is known before serving.
pub async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        what: what.to_owned(),
        addr,
        source,
    })
}

/// A listener could not bind; fatal before serving starts (B12).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// Which listener.
    pub what: String,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Per-listener bounds on what a client can hold, and its TLS.
#[derive(Clone)]
pub struct ServeOptions {
    /// Largest request head (HTTP/1.1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// Time a client has to finish the TLS handshake, and to send a whole request head
    /// (slow clients are dropped).
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams one connection may open (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_h2_streams: u32,
    /// TLS for new connections (swapped by a reload); `None`: plain HTTP/1.1.
    pub tls: Option<Arc<TlsSlot>>,
    /// HTTP/1.1 connections are served by our own server (`h1::serve`), which holds ~3 KiB per
    /// idle watch where hyper's holds ~12 (S9); upgrade requests it serves carry `ServedHere`,
    /// and an upgrade is answered by putting the connection to splice with in the response.
    pub own_http1: bool,
    /// Connections here become tunnels (the server's public listener): their unsent bytes are
    /// held in the process ([`crate::transport::tcp::hold_unsent_in_process`]).
    pub carries_tunnels: bool,
}

/// In the extensions of an upgrade request our own HTTP/1.1 server serves: the upgrade's other
/// end goes in the response's extensions (`h1::UpgradeTo`), not through `hyper::upgrade::on`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServedHere;

/// Serves one connection; on shutdown, finishes the request in flight, then closes (the
/// caller bounds the wait). A macro because hyper's HTTP/1.1-with-upgrades and HTTP/2
/// connections share `graceful_shutdown` by name only, not by a trait.
macro_rules! drive {
    ($connection:expr, $shutdown:expr, $peer:expr) => {{
        let mut connection = std::pin::pin!($connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = $shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, peer = %$peer, "connection ended with an error");
        }
    }};
}

/// Serves `listener` until `shutdown` fires, then lets open connections finish their current
/// request (the caller bounds that wait via `tracker`). `handle` gets each request and the
/// client's address; over TLS with a client certificate, the request's extensions carry a
/// [`ClientCert`]. HTTP/2 is served when TLS negotiated it by ALPN.
pub async fn serve<H, F>(
    listener: TcpListener,
    handle: H,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    options: ServeOptions,
) where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: say so and back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        crate::nap::note_activity();
        let _ = tcp.set_nodelay(true);
        if options.carries_tunnels {
            let _ = crate::transport::tcp::hold_unsent_in_process(&tcp);
        }
        let (handle, shutdown, options) = (handle.clone(), shutdown.clone(), options.clone());
        // One task per connection, each path a future of its own: an idle plain connection (a
        // watch holds one for hours) carries no TLS handshake or HTTP/2 state (S9).
        let splices = tracker.clone();
        if options.tls.is_none() && options.own_http1 {
            tracker.spawn(async move {
                let _slot = slot;
                serve_own(
                    Pieces::new(tcp),
                    peer,
                    None,
                    handle,
                    shutdown,
                    &options,
                    splices,
                )
                .await
            });
        } else if options.tls.is_none() {
            tracker.spawn(async move {
                let _slot = slot;
                let service = service(handle, peer, None, None);
                drive!(http1(&options, TokioIo::new(tcp), service), shutdown, peer)
            });
        } else {
            tracker.spawn(async move {
                let _slot = slot;
                serve_tls(tcp, peer, handle, shutdown, options, splices).await
            });
        }
    }
}

/// Serves one TLS connection: HTTP/2 when ALPN chose it, else HTTP/1.1.
async fn serve_tls<H, F>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    handle: H,
    shutdown: CancellationToken,
    options: ServeOptions,
    splices: TaskTracker,
) where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let Some(tls) = &options.tls else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    // Boxed, so the handshake's state is freed when it ends instead of sizing the connection's
    // task for its whole life.
    let accept = Box::pin(tokio::time::timeout(
        options.header_read_timeout,
        acceptor.accept(tcp),
    ));
    let stream = match accept.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // Wrong CA, no client certificate, plaintext on a TLS port: the client's problem,
            // visible at debug level only (scanners would flood the log).
            return tracing::debug!(%error, %peer, "TLS handshake failed");
        }
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| ClientCert(leaf.clone().into_owned()));
    if !h2 && options.own_http1 {
        return serve_own(
            Pieces::new(stream),
            peer,
            cert,
            handle,
            shutdown,
            &options,
            splices,
        )
        .await;
    }
    let io = TokioIo::new(stream);
    if !h2 {
        let service = service(handle, peer, cert, None);
        return drive!(http1(&options, io, service), shutdown, peer);
    }
    // Boxed for the same reason: an HTTP/1.1 connection does not carry HTTP/2's state.
    Box::pin(async move {
        let activity = idle::Activity::new();
        let service = service(handle, peer, cert, Some(activity.clone()));
        let connection = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(options.max_h2_streams)
            // A peer's unread response data stays bounded per stream (h2's default is
            // ~400 KiB, outside the tunnel's memory budget).
            .max_send_buf_size(H2_SEND_BUFFER)
            .serve_connection(io, service);
        tokio::select! {
            () = async { drive!(connection, shutdown, peer) } => {}
            () = idle::idle_for(&activity, options.header_read_timeout) => {
                tracing::debug!(%peer, "idle HTTP/2 connection closed");
            }
        }
    })
    .await
}

/// Serves one HTTP/1.1 connection with our own server.
async fn serve_own<S, H, F>(
    io: S,
    peer: SocketAddr,
    cert: Option<ClientCert>,
    handle: H,
    shutdown: CancellationToken,
    options: &ServeOptions,
    tracker: TaskTracker,
) where
    S: crate::h1::ServerIo,
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let limits = crate::h1::ServeLimits {
        max_head: options.max_header_bytes,
        head_timeout: Some(options.header_read_timeout),
        keep_alive: true,
    };
    crate::h1::serve(io, limits, shutdown, Some(tracker), move |request| {
        let mut request = request.map(|body| body.map_err(Into::into).boxed());
        if let Some(cert) = &cert {
            request.extensions_mut().insert(cert.clone());
        }
        // Only an upgrade looks for it; an extension costs two allocations per request.
        if crate::http::wants_upgrade(request.headers()) {
            request.extensions_mut().insert(ServedHere);
        }
        crate::nap::note_activity();
        // Boxed: freed when the response head is out (S9).
        Box::pin(handle(request, peer))
    })
    .await
}

/// Response bytes HTTP/2 buffers per stream for a slow reader.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// The request handler as a hyper service, adding the client certificate to each request and,
/// with `activity`, counting each request in flight until its response body ends.
fn service<H, F>(
    handle: H,
    peer: SocketAddr,
    cert: Option<ClientCert>,
    activity: Option<Arc<idle::Activity>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(|body| body.map_err(Into::into).boxed());
        if let Some(cert) = &cert {
            request.extensions_mut().insert(cert.clone());
        }
        crate::nap::note_activity();
        let in_flight = activity.as_ref().map(|activity| activity.start());
        let response = handle(request, peer);
        // Boxed: hyper keeps a slot the size of this future for the connection's whole life
        // (3 KiB per idle watch, S9); boxed, the slot is a pointer and the future is freed
        // when the response head is out.
        Box::pin(async move {
            let response = response.await;
            let Some(in_flight) = in_flight else {
                return Ok::<_, Infallible>(response);
            };
            Ok(response.map(|body| {
                body.map_frame(move |frame| {
                    let _ = &in_flight;
                    frame
                })
                .boxed()
            }))
        })
    })
}

fn http1<I, S>(
    options: &ServeOptions,
    io: I,
    service: S,
) -> hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
{
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .serve_connection(io, service)
        .with_upgrades()
}
