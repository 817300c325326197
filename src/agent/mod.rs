//! argocd-proxy-agent: dials out to the server, keeps one tunnel up (reconnecting with
//! backoff), and serves every stream the server opens by forwarding HTTP to its upstream.
//!
//! Flow: [`run`] → `dial` (TCP → TLS → WebSocket → negotiation) → accept streams →
//! `forward::serve_stream` per stream → upstream. `health` serves `/healthz`, `/readyz`,
//! `/metrics` on `health_listen`.

mod backoff;
mod destination;
pub mod dial;
mod forward;
mod reload;
mod token;
mod upstream_h1;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use http::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AgentConfig;
use crate::http::{text_response, Body};
use crate::listen;
use crate::metrics::AgentMetrics;
use crate::mux::MemoryBudget;
use crate::transport::tls;

pub use reload::Reloader;

/// What the agent's tasks share.
pub(crate) struct AgentState {
    /// Replaced whole by a reload; each dial and each stream takes a snapshot.
    config: RwLock<Arc<AgentConfig>>,
    /// The Kubernetes API and the extension backends, rebuilt by a reload (a CA may have
    /// changed).
    destinations: RwLock<Arc<destination::Destinations>>,
    pub(crate) metrics: AgentMetrics,
    connected: AtomicBool,
    /// Set while the server refuses this agent because a newer agent of its cluster serves.
    standing_by: AtomicBool,
    /// This agent's id on the upgrade request, new per start (`handshake::AGENT_INSTANCE_HEADER`).
    instance: String,
    /// The tunnel's session while it is up (its heartbeat round trip is read at scrape time).
    session: std::sync::Mutex<Option<crate::mux::SessionHandle>>,
}

impl AgentState {
    pub(crate) fn config(&self) -> Arc<AgentConfig> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn destinations(&self) -> Arc<destination::Destinations> {
        self.destinations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A configured agent whose health listener (if any) is bound.
pub struct Agent {
    state: Arc<AgentState>,
    health: Option<tokio::net::TcpListener>,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The health listener cannot bind.
    #[error(transparent)]
    Bind(#[from] listen::BindError),
    /// The upstream CA cannot be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Agent {
    /// Loads the upstream TLS settings and binds the health listener.
    pub async fn bind(config: AgentConfig) -> Result<Agent, StartError> {
        let destinations = destination::Destinations::build(&config)?;
        let health = match config.health_listen {
            Some(addr) => Some(listen::bind("health", addr).await?),
            None => None,
        };
        Ok(Agent {
            state: Arc::new(AgentState {
                config: RwLock::new(Arc::new(config)),
                destinations: RwLock::new(Arc::new(destinations)),
                metrics: AgentMetrics::new(),
                connected: AtomicBool::new(false),
                standing_by: AtomicBool::new(false),
                instance: new_instance(),
                session: std::sync::Mutex::new(None),
            }),
            health,
        })
    }

    /// A handle that reloads this agent's config while it runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// The bound health address.
    pub fn health_addr(&self) -> Option<std::net::SocketAddr> {
        self.health
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Keeps the tunnel up until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let state = self.state;
        let tracker = TaskTracker::new();
        if let Some(listener) = self.health {
            let header_read_timeout = state.config().limits.header_read_timeout;
            let state = state.clone();
            let handler = move |request, _peer| health(state.clone(), request);
            let options = listen::ServeOptions {
                max_header_bytes: 64 * 1024,
                header_read_timeout,
                max_connections: 256, // probes and a Prometheus scraper
                max_h2_streams: 1,
                tls: None,
                own_http1: false,
                carries_tunnels: false,
            };
            tracker.spawn(listen::serve(
                listener,
                handler,
                shutdown.clone(),
                tracker.clone(),
                options,
            ));
        }
        let budget = Arc::new(MemoryBudget::new(state.config().limits.process_buffer));
        let mut backoff = backoff::Backoff::new(state.config().max_reconnect_interval);
        let mut announced = false;
        loop {
            // A reload's server, token and CA apply from the next dial on.
            let config = state.config();
            backoff.set_cap(config.max_reconnect_interval);
            let attempt = tokio::select! {
                attempt = dial::dial(&config, budget.clone(), &state.instance) => attempt,
                _ = shutdown.cancelled() => break,
            };
            let server = &config.server_url;
            if !std::mem::replace(&mut announced, true) {
                // Ready after the first attempt, whatever its outcome: a server outage must not
                // make systemd restart every agent in lock-step.
                crate::systemd::ready(&format!("dialing {server}"));
            }
            if attempt.is_ok() && state.standing_by.load(Ordering::Acquire) {
                // Taking over: the backoff grew with the refused polls, not with failures, and
                // must not slow this agent's redial if its new tunnel drops (the server keeps
                // the route from the standby for only 5 s after the serving tunnel ends).
                backoff.reset();
            }
            state.set_standing_by(match &attempt {
                Err(dial::DialError::StandingBy) => true,
                // Not reaching the server says nothing about the other agent; any other answer
                // of the server (a tunnel, 401 after a rotation, 503) ends standing by.
                Err(error) if error.is_transport() => state.standing_by.load(Ordering::Acquire),
                _ => false,
            });
            let delay = match attempt {
                Ok(dialed) => {
                    let connected_at = Instant::now();
                    let protocol = dialed.negotiated.version.as_str();
                    crate::systemd::status(&format!("connected to {server} ({protocol})"));
                    tunnel(&state, dialed, &shutdown).await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                    if connected_at.elapsed() >= backoff::STABLE {
                        backoff.reset();
                    }
                    backoff.next_delay()
                }
                Err(dial::DialError::StandingBy) => {
                    // Polled at the backoff's pace (up to its cap): the serving agent leaving
                    // is seen within `max_reconnect_interval`, and a standby costs the server
                    // one refused handshake per interval.
                    let delay = backoff.next_delay();
                    crate::systemd::status(&format!(
                        "standing by: another agent serves this cluster (asking again in {:.1} s)",
                        delay.as_secs_f64()
                    ));
                    delay
                }
                Err(error) => {
                    // A server's Retry-After is a floor under the jittered backoff, never a
                    // reason to skip it (Retry-After: 0 must not make a hot loop).
                    let jittered = backoff.next_delay();
                    let delay = match &error {
                        dial::DialError::Refused {
                            retry_after: Some(seconds),
                            ..
                        } => jittered.max(std::time::Duration::from_secs((*seconds).min(300))),
                        _ => jittered,
                    };
                    tracing::warn!(%error, server = %server, retry_in_ms = delay.as_millis() as u64, "cannot reach the server");
                    crate::systemd::status(&format!(
                        "reconnecting in {:.1} s: {error}",
                        delay.as_secs_f64()
                    ));
                    delay
                }
            };
            state.metrics.reconnects.inc(&[]);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tracker.wait()).await;
    }
}

impl AgentState {
    /// Enters or leaves standby, logging the change (not every refused attempt).
    fn set_standing_by(&self, standing_by: bool) {
        if self.standing_by.swap(standing_by, Ordering::AcqRel) == standing_by {
            return;
        }
        self.metrics
            .standby
            .set(&[], f64::from(u8::from(standing_by)));
        if standing_by {
            let instance = self.instance.as_str();
            tracing::warn!(
                instance,
                "another agent serves this cluster (its token is in use twice); standing by"
            );
        } else {
            tracing::info!(instance = %self.instance, "no longer standing by");
        }
    }
}

/// A fresh instance id: 16 hex digits from the kernel's CSPRNG (time and pid if it fails).
fn new_instance() -> String {
    let bytes = crate::host::random_bytes(8).unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        (nanos ^ u64::from(std::process::id()) << 40)
            .to_be_bytes()
            .to_vec()
    });
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Serves one tunnel until it ends or the agent stops.
async fn tunnel(state: &Arc<AgentState>, dialed: dial::Dialed, shutdown: &CancellationToken) {
    let version = dialed.negotiated.version;
    let crate::mux::Session {
        handle,
        mut incoming,
    } = dialed.session;
    let (server, instance) = (&state.config().server_url, state.instance.as_str());
    tracing::info!(%server, protocol = version.as_str(), instance, "tunnel up");
    state.connected.store(true, Ordering::Release);
    *lock(&state.session) = Some(handle.clone());
    state.metrics.connected.add(&[], 1.0);
    let streams = TaskTracker::new();
    loop {
        tokio::select! {
            next = incoming.accept() => match next {
                Some(stream) => {
                    streams.spawn(forward::serve_stream(
                        state.clone(),
                        stream,
                        version,
                        shutdown.clone(),
                    ));
                }
                None => break,
            },
            _ = shutdown.cancelled() => {
                // B17: take no new streams (v2 servers are told), let the ones in flight
                // finish within the grace, then close.
                let grace = state.config().limits.shutdown_grace;
                handle.drain(grace);
                drop(incoming);
                streams.close();
                if tokio::time::timeout(grace, streams.wait()).await.is_err() {
                    tracing::warn!("shutdown grace expired with streams in flight; closing the tunnel");
                }
                handle.close();
                break;
            }
        }
    }
    let end = handle.closed().await;
    state.connected.store(false, Ordering::Release);
    *lock(&state.session) = None;
    state.metrics.connected.add(&[], -1.0);
    tracing::warn!(reason = %end, "tunnel down");
}

async fn health(state: Arc<AgentState>, request: Request<Body>) -> Response<Body> {
    match request.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok"),
        "/readyz" if state.connected.load(Ordering::Acquire) => text_response(StatusCode::OK, "ok"),
        "/readyz" if state.standing_by.load(Ordering::Acquire) => text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "standing by: another agent serves this cluster\n",
        ),
        "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "not connected\n"),
        "/metrics" => {
            if let Some(rtt) = lock(&state.session)
                .as_ref()
                .and_then(|session| session.stats().rtt)
            {
                state.metrics.rtt.set(&[], rtt.as_secs_f64());
            }
            crate::http::metrics_response(state.metrics.render())
        }
        _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
