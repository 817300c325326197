//! The internal listener: `/tunnel/{cluster-id}/{rest}` → that cluster's agent, and the one
//! place where forwarding errors become HTTP statuses.

use super::callers::Refusal;
use crate::transport::tls_server::ClientCert;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode, Version as HttpVersion};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::pool::Pooled;
use super::route::{route, RouteError};
use super::ServerState;
use crate::config::Impersonation;
use crate::http::{append_forwarded_for, status_response, strip_hop_by_hop, wants_upgrade, Body};
use crate::metrics::method_label;
use crate::mux::MuxError;
use crate::protocol::Version;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Not a `/tunnel/…` path.
    #[error("not found")]
    NotTunnel,
    /// `/tunnel//…`.
    #[error("no cluster id in the path")]
    EmptyId,
    /// No such cluster in the config.
    #[error("unknown cluster")]
    UnknownCluster,
    /// Callers are configured and this request carries no known credential.
    #[error("caller not authenticated")]
    Unauthenticated,
    /// The caller may not reach this cluster.
    #[error("caller {0:?} may not reach this cluster")]
    Forbidden(String),
    /// The cluster's agent is not connected (and did not come back within `reconnect_wait`).
    #[error("agent not connected")]
    AgentOffline,
    /// The cluster's request rate is over its limit.
    #[error("rate limited")]
    RateLimited,
    /// The tunnel could not open a stream.
    #[error("tunnel: {0}")]
    Open(MuxError),
    /// `Connection: upgrade` without an `Upgrade` header.
    #[error("upgrade request without an Upgrade header")]
    Upgrade,
    /// The agent or its upstream failed after the request left.
    #[error("upstream: {0}")]
    Upstream(hyper::Error),
}

/// The single error → status table (DESIGN.md §4). Every body is a Kubernetes `Status`.
fn rescue(error: &ForwardError) -> Response<Body> {
    use ForwardError::*;
    match error {
        NotTunnel => status_response(StatusCode::NOT_FOUND, "NotFound", "not found"),
        Unauthenticated => {
            status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
        }
        Forbidden(_) => status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forbidden: this caller may not reach this cluster",
        ),
        EmptyId => status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "bad request: no cluster id",
        ),
        // The same text for unknown and offline would hide which ids exist, but an offline
        // agent must be a 503 (client-go retries it); the id is never echoed.
        UnknownCluster => status_response(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            "cluster not available",
        ),
        // Nothing was sent to an agent: safe for any verb to retry.
        AgentOffline
        | Open(
            MuxError::SessionLost(_)
            | MuxError::Draining
            | MuxError::TooManyStreams
            | MuxError::OverBudget,
        ) => {
            let mut response = status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "cluster agent not connected or busy; retry",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        // Rejected at once, never queued (B13); nothing reached the agent.
        RateLimited => {
            let mut response = status_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "rate limit for this cluster exceeded",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Open(MuxError::OpenTimeout) => status_response(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            "the cluster agent did not answer in time",
        ),
        Open(MuxError::Refused(_) | MuxError::NotOpener) => status_response(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            "the cluster agent refused the request",
        ),
        Upgrade => status_response(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotAllowed",
            "protocol upgrades (exec, port-forward) are not supported by this server version",
        ),
        Upstream(_) => {
            status_response(StatusCode::BAD_GATEWAY, "ServiceUnavailable", "bad gateway")
        }
    }
}

/// Handles one request on the internal listener.
pub async fn handle(
    state: Arc<ServerState>,
    request: Request<Incoming>,
    client: SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let cluster = route(&path).map(|(id, _)| id.to_owned()).ok();
    let response = match forward(&state, request, client, &path).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(cluster = cluster.as_deref().unwrap_or("-"), %error, "request not forwarded");
            rescue(&error)
        }
    };
    // Only configured clusters become label values; a client cannot mint series.
    if let Some(cluster) = cluster.filter(|id| state.cluster(id).is_some()) {
        let code = response.status().as_u16().to_string();
        state
            .metrics
            .requests
            .inc(&[&cluster, method_label(&method), &code]);
        tracing::info!(%cluster, %method, path = %path, status = response.status().as_u16(), duration_ms = started.elapsed().as_millis() as u64, remote = %client, "proxy");
    }
    response
}

async fn forward(
    state: &Arc<ServerState>,
    request: Request<Incoming>,
    client: SocketAddr,
    path: &str,
) -> Result<Response<Body>, ForwardError> {
    let (cluster_id, rest) = route(path).map_err(|error| match error {
        RouteError::NotTunnel => ForwardError::NotTunnel,
        RouteError::EmptyId => ForwardError::EmptyId,
    })?;
    let cert = request.extensions().get::<ClientCert>();
    let callers = &state.config().callers;
    if let Err(refusal) = super::callers::check(callers, request.headers(), cert, cluster_id) {
        state.metrics.auth_failures.inc(&["tunnel"]);
        return Err(match refusal {
            Refusal::Unauthenticated => ForwardError::Unauthenticated,
            Refusal::Forbidden(caller) => ForwardError::Forbidden(caller),
        });
    }
    let cluster = state
        .cluster(cluster_id)
        .ok_or(ForwardError::UnknownCluster)?;
    if !state.rate_limiter.allow(&cluster) {
        state.metrics.rate_limited.inc(&[cluster_id]);
        return Err(ForwardError::RateLimited);
    }
    let wait = state.limits().reconnect_wait;
    let session = state
        .registry
        .wait_for(cluster_id, wait)
        .await
        .ok_or(ForwardError::AgentOffline)?;
    // An upgrade (exec, attach, port-forward): relayed as a raw pipe once the upstream's 101
    // is relayed; any other answer goes back as a normal response (clients fall back to SPDY).
    let mut request = request;
    let upgrade = match (
        wants_upgrade(request.headers()),
        request.headers().get(header::UPGRADE),
    ) {
        (true, Some(value)) => Some((value.clone(), hyper::upgrade::on(&mut request))),
        (true, None) => return Err(ForwardError::Upgrade),
        (false, _) => None,
    };
    let active = ActiveGuard::new(state.clone(), cluster_id);
    // v1: the Go agent compares the Connect payload with its -target; v2 names the target.
    let target = match session.version() {
        Version::V1 => cluster.target.as_bytes().to_vec(),
        Version::V2 => b"kubernetes".to_vec(),
    };
    // v2 requests reuse an idle keep-alive stream when there is one; upgrades take their
    // stream for good, and v1 (Go agents) is one request per stream.
    let pooling = session.version() == Version::V2 && upgrade.is_none();
    let mut pooled = pooling
        .then(|| state.pool.checkout(cluster_id, &session))
        .flatten();
    if let Some(idle) = pooled.as_mut() {
        if idle.sender.ready().await.is_err() {
            pooled = None;
        }
    }
    let mut conn = match pooled {
        Some(pooled) => pooled,
        None => {
            let stream = session.open(&target).await.map_err(ForwardError::Open)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(ForwardError::Upstream)?;
            state.tracker.spawn(async move {
                if let Err(error) = connection.with_upgrades().await {
                    tracing::debug!(%error, "tunnel stream connection ended with an error");
                }
            });
            Pooled::new(sender, session.clone())
        }
    };
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    apply_impersonation(&mut parts.headers, cluster.impersonation);
    append_forwarded_for(&mut parts.headers, client.ip());
    if let Ok(host) = HeaderValue::from_str(&cluster.target) {
        parts.headers.insert(header::HOST, host);
    }
    let client_upgrade = match upgrade {
        Some((value, on_upgrade)) => {
            crate::http::keep_upgrade(&mut parts.headers, value);
            Some(on_upgrade)
        }
        // v2: keep-alive (HTTP/1.1's default). v1: one request per stream, as the Go agent
        // expects.
        None if pooling => None,
        None => {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            None
        }
    };
    parts.version = HttpVersion::HTTP_11;
    parts.uri = rest.parse().map_err(|_| ForwardError::NotTunnel)?;
    let outgoing = Request::from_parts(parts, body);
    let mut response = conn
        .sender
        .send_request(outgoing)
        .await
        .map_err(ForwardError::Upstream)?;
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
        (client_upgrade, response.status())
    {
        // The 101 goes back verbatim (every value of repeated headers, the accepted
        // subprotocol); then the client's connection and the tunnel stream are spliced.
        let stream_upgrade = hyper::upgrade::on(&mut response);
        state.tracker.spawn(async move {
            crate::http::splice(client_upgrade, stream_upgrade).await;
            drop(active);
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, crate::http::full("")));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The request stays "active" until its body ends (a watch lasts as long as it streams).
    let body = Guarded {
        body,
        _active: active,
        reuse: pooling.then(|| (state.clone(), cluster_id.to_owned(), conn)),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Removes the `Impersonate-*` headers the cluster's policy does not let through. The agent's
/// credential is typically allowed to impersonate anyone, so what passes here decides whose
/// rights a request runs with.
fn apply_impersonation(headers: &mut http::HeaderMap, policy: Impersonation) {
    let strip: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("impersonate-")
                && match policy {
                    Impersonation::All => false,
                    Impersonation::User => name != "impersonate-user",
                    Impersonation::None => true,
                }
        })
        .cloned()
        .collect();
    for name in strip {
        headers.remove(name);
    }
}

/// A response body that holds a guard until it is finished or dropped.
struct Guarded {
    body: Incoming,
    _active: ActiveGuard,
    /// A pooled connection goes back when the body ended cleanly; dropped otherwise (an
    /// abandoned response leaves the connection unusable, and dropping it closes the stream).
    reuse: Option<(Arc<ServerState>, String, Pooled)>,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Guarded {
    /// hyper stops polling a body once its length is reached, so "ended cleanly" is judged
    /// here: a body that reports its end goes back to the pool, any other is dropped (closed).
    fn drop(&mut self) {
        if let Some((state, cluster, pooled)) = self.reuse.take() {
            if hyper::body::Body::is_end_stream(&self.body) {
                state.pool.checkin(&cluster, pooled);
            }
        }
    }
}

/// `tunnel_active_connections{cluster}` for the life of one request.
struct ActiveGuard {
    state: Arc<ServerState>,
    cluster: String,
}

impl ActiveGuard {
    fn new(state: Arc<ServerState>, cluster: &str) -> Self {
        state.metrics.active.add(&[cluster], 1.0);
        Self {
            state,
            cluster: cluster.to_owned(),
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.state.metrics.active.add(&[&self.cluster], -1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn impersonating() -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("impersonate-user", "system:serviceaccount:argocd:sync"),
            ("impersonate-group", "system:masters"),
            ("impersonate-uid", "0"),
            ("impersonate-extra-scopes", "all"),
            ("accept", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers
    }

    fn names(headers: &http::HeaderMap) -> Vec<&str> {
        let mut names: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        names.sort();
        names
    }

    /// S2: the policy decides which Impersonate-* headers reach the cluster.
    #[test]
    fn impersonation_policy_filters_headers() {
        let mut user = impersonating();
        apply_impersonation(&mut user, Impersonation::User);
        assert_eq!(names(&user), ["accept", "impersonate-user"]);
        let mut none = impersonating();
        apply_impersonation(&mut none, Impersonation::None);
        assert_eq!(names(&none), ["accept"]);
        let mut all = impersonating();
        apply_impersonation(&mut all, Impersonation::All);
        assert_eq!(names(&all).len(), 5);
    }
}
