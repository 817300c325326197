//! argocd-proxy-server: accepts agents' tunnels on the public listener and routes Argo CD's
//! `/tunnel/<cluster-id>/…` requests on the internal listener through them.
//!
//! Flow: [`Server::bind`] binds every listener (a bind failure is fatal before anything is
//! served, B12) and reports the bound addresses; [`Server::run`] serves until the shutdown
//! token fires. `public` handles `/connect` → negotiation → a mux session registered in the
//! [`registry::Registry`]; `forward` routes each request to the registered session, and
//! `relay` carries it there: a pooled or new stream, on which `h1` (our own
//! HTTP/1.1 client: a pure codec and a body that hands on slices of what the stream received)
//! writes the request and reads the response.

mod auth;
mod callers;
mod extensions;
mod forward;
mod ops;
mod pool;
mod public;
mod ratelimit;
mod relay;
pub mod registry;
pub mod standby;
mod reload;
mod route;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{LimitsConfig, ListenerTls, ServerConfig};
use crate::listen;
pub use crate::listen::BindError;
use crate::metrics::ServerMetrics;
use crate::mux::negotiate::ServerIdentity;
use crate::mux::MemoryBudget;
use crate::transport::tls::TlsError;
use crate::transport::tls_server::{self, TlsSlot};
pub use reload::Reloader;

/// What every handler shares.
pub(crate) struct ServerState {
    config: RwLock<Arc<ServerConfig>>,
    pub(crate) registry: Arc<registry::Registry>,
    pub(crate) rate_limiter: ratelimit::RateLimiter,
    pub(crate) pool: pool::StreamPool,
    pub(crate) metrics: ServerMetrics,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) identity: ServerIdentity,
    /// Tunnel-side tasks: agent sessions, per-request stream connections, drains.
    pub(crate) tracker: TaskTracker,
    /// Fired once requests in flight had their grace: agent sessions close.
    pub(crate) close_tunnels: CancellationToken,
    /// The public listener's TLS, rotated by reloads.
    pub(crate) public_tls: Option<Arc<TlsSlot>>,
    /// The internal listener's TLS, rotated by reloads.
    pub(crate) internal_tls: Option<Arc<TlsSlot>>,
    /// The extensions listener's TLS, rotated by reloads.
    pub(crate) extensions_tls: Option<Arc<TlsSlot>>,
    /// Concurrency slots per extension.
    pub(crate) extension_slots: extensions::Slots,
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener cannot bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A listener's certificate, key or client CA cannot be loaded.
    #[error("[{listener}] TLS: {source}")]
    Tls {
        /// `public` or `internal`.
        listener: &'static str,
        /// Why.
        source: TlsError,
    },
}

/// ALPN per listener: agents upgrade to WebSocket over HTTP/1.1; Argo CD may multiplex over h2.
const PUBLIC_ALPN: &[&[u8]] = &[b"http/1.1"];
const INTERNAL_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The rustls config of a listener, from its files (read now).
pub(crate) fn listener_tls(
    listener: &'static str,
    tls: &ListenerTls,
) -> Result<tls_server::ServerTlsConfig, StartError> {
    // Extensions: Argo CD's extension proxy speaks HTTP/1.1 to backends.
    let alpn = if listener == "internal" {
        INTERNAL_ALPN
    } else {
        PUBLIC_ALPN
    };
    tls_server::server_config(&tls.cert, &tls.key, tls.client_ca.as_deref(), alpn)
        .map_err(|source| StartError::Tls { listener, source })
}

impl ServerState {
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn limits(&self) -> LimitsConfig {
        self.config().limits.clone()
    }
}

/// The addresses the server actually listens on (ports may have been 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// Agents' `/connect`.
    pub public: SocketAddr,
    /// Argo CD's `/tunnel/…`.
    pub internal: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub ops: Option<SocketAddr>,
    /// Argo CD's proxy extensions, when `[extensions]` is configured.
    pub extensions: Option<SocketAddr>,
}

/// A bound, not yet serving, server.
pub struct Server {
    public: TcpListener,
    internal: TcpListener,
    ops: Option<TcpListener>,
    extensions: Option<TcpListener>,
    state: Arc<ServerState>,
}

impl Server {
    /// Binds every listener; fails (naming the address) if any cannot be bound.
    pub async fn bind(config: ServerConfig) -> Result<Server, StartError> {
        let slot = |listener, tls: &Option<ListenerTls>| {
            tls.as_ref()
                .map(|tls| {
                    Ok::<_, StartError>(Arc::new(TlsSlot::new(listener_tls(listener, tls)?)))
                })
                .transpose()
        };
        let public_tls = slot("public", &config.public_tls)?;
        let internal_tls = slot("internal", &config.internal_tls)?;
        let public = listen::bind("public", config.public_listen).await?;
        let internal = listen::bind("internal", config.internal_listen).await?;
        let extensions_tls = slot(
            "extensions",
            &config
                .extensions
                .as_ref()
                .and_then(|extensions| extensions.tls.clone()),
        )?;
        let extensions = match &config.extensions {
            Some(settings) => Some(listen::bind("extensions", settings.listen).await?),
            None => None,
        };
        let ops = match config.ops_listen {
            Some(addr) => Some(listen::bind("ops", addr).await?),
            None => None,
        };
        let budget = Arc::new(MemoryBudget::new(config.limits.process_buffer));
        let identity = ServerIdentity {
            server_id: hostname(),
            replica_count: 1,
        };
        Ok(Server {
            public,
            internal,
            ops,
            extensions,
            state: Arc::new(ServerState {
                config: RwLock::new(Arc::new(config)),
                registry: Arc::new(registry::Registry::default()),
                rate_limiter: ratelimit::RateLimiter::default(),
                pool: pool::StreamPool::default(),
                metrics: ServerMetrics::new(),
                budget,
                identity,
                tracker: TaskTracker::new(),
                close_tunnels: CancellationToken::new(),
                public_tls,
                internal_tls,
                extensions_tls,
                extension_slots: extensions::Slots::default(),
            }),
        })
    }

    /// A handle that reloads this server's config while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        let addr = |listener: &TcpListener| {
            listener
                .local_addr()
                .expect("bound listener has an address")
        };
        BoundAddrs {
            public: addr(&self.public),
            internal: addr(&self.internal),
            ops: self.ops.as_ref().map(addr),
            extensions: self.extensions.as_ref().map(addr),
        }
    }

    /// Serves until `shutdown` fires. Then, in order (B17): stop accepting; let requests in
    /// flight finish within `shutdown_grace`; close the agents' tunnels (a request still open is
    /// cut with an error, never a clean end); wait for the tasks to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        let state = self.state;
        let limits = state.limits();
        let options = |tls: &Option<Arc<TlsSlot>>| listen::ServeOptions {
            max_header_bytes: limits.max_request_header_bytes,
            header_read_timeout: limits.header_read_timeout,
            max_connections: limits.max_connections_per_listener,
            max_h2_streams: limits.max_h2_streams_per_connection,
            tls: tls.clone(),
            own_http1: false,
            carries_tunnels: false,
        };
        // Argo CD's requests (watches among them) are served by our own HTTP/1.1 server on
        // the listeners that relay them (S9); hyper's serves the agents' WebSocket upgrades
        // and the ops endpoints.
        let relaying = |tls: &Option<Arc<TlsSlot>>| listen::ServeOptions {
            own_http1: true,
            ..options(tls)
        };
        let connections = TaskTracker::new();
        let stop = CancellationToken::new();
        let mut servers = Vec::new();
        {
            let serve_options = listen::ServeOptions {
                carries_tunnels: true,
                ..options(&state.public_tls)
            };
            let state = state.clone();
            let handler = move |request, _peer| public::handle(state.clone(), request);
            let public = listen::serve(
                self.public,
                handler,
                stop.clone(),
                connections.clone(),
                serve_options,
            );
            servers.push(tokio::spawn(public));
        }
        {
            let serve_options = relaying(&state.internal_tls);
            let state = state.clone();
            let handler = move |request, peer| forward::handle(state.clone(), request, peer);
            let internal = listen::serve(
                self.internal,
                handler,
                stop.clone(),
                connections.clone(),
                serve_options,
            );
            servers.push(tokio::spawn(internal));
        }
        if let Some(ops) = self.ops {
            let state = state.clone();
            let handler = move |request, _peer| ops::handle(state.clone(), request);
            servers.push(tokio::spawn(listen::serve(
                ops,
                handler,
                stop.clone(),
                connections.clone(),
                options(&None),
            )));
        }
        if let Some(listener) = self.extensions {
            let serve_options = relaying(&state.extensions_tls);
            let state = state.clone();
            let handler = move |request, peer| extensions::handle(state.clone(), request, peer);
            servers.push(tokio::spawn(listen::serve(
                listener,
                handler,
                stop.clone(),
                connections.clone(),
                serve_options,
            )));
        }
        shutdown.cancelled().await;
        tracing::info!(grace = ?limits.shutdown_grace, "shutting down: no new connections; finishing requests in flight");
        stop.cancel();
        // v2 agents learn the server is going away (Drain); no new streams are opened anyway.
        for (_, session) in state.registry.sessions() {
            session.drain(limits.shutdown_grace);
        }
        for server in servers {
            let _ = server.await;
        }
        connections.close();
        if tokio::time::timeout(limits.shutdown_grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace expired with requests in flight; cutting them");
        }
        state.close_tunnels.cancel();
        state.tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            state.tracker.wait().await;
            connections.wait().await;
        })
        .await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "argocd-proxy-server".to_owned())
}
