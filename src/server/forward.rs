//! The internal listener: `/tunnel/{cluster-id}/{rest}` → that cluster's agent, and the one
//! place where forwarding errors become HTTP statuses.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};

use super::callers::Refusal;
use super::relay::{relay, Route};
use super::route::{route, RouteError};
use super::ServerState;
use crate::config::Impersonation;
use crate::http::{status_response, Body};
use crate::metrics::method_label;
use crate::mux::MuxError;
use crate::protocol::Version;
use crate::transport::tls_server::ClientCert;

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
    /// A request on the extensions listener without its routing headers (or with repeats).
    #[error("missing or repeated header {0}")]
    ExtensionHeader(String),
    /// The extension is unknown, or may not reach this cluster (deny by default).
    #[error("extension may not reach this cluster")]
    ExtensionForbidden,
    /// The extension's concurrency or rate limit is reached.
    #[error("extension busy")]
    ExtensionBusy,
    /// An upgrade (WebSocket…) on the extensions listener.
    #[error("upgrades are not supported for extensions")]
    ExtensionUpgrade,
    /// The cluster's agent speaks v1 (a Go agent): it has no extension backends.
    #[error("the agent does not serve extensions")]
    ExtensionUnsupported,
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
    /// The exchange on the tunnel stream failed before a response head arrived.
    #[error("upstream: {0}")]
    Upstream(crate::h1::ExchangeError),
}

/// The single error → status table (DESIGN.md §4). Every body is a Kubernetes `Status`.
pub(crate) fn rescue(error: &ForwardError) -> Response<Body> {
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
        ExtensionHeader(name) => status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("exactly one {name} header is required"),
        ),
        ExtensionUpgrade => status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "upgrades are not supported for extensions",
        ),
        ExtensionForbidden => status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "forbidden: this extension may not reach this cluster",
        ),
        ExtensionUnsupported => status_response(
            StatusCode::BAD_GATEWAY,
            "ServiceUnavailable",
            "this cluster's agent does not serve extensions (a v1 agent)",
        ),
        ExtensionBusy => {
            let mut response = status_response(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "this extension's request limit is reached; retry",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
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
    request: Request<Body>,
    client: SocketAddr,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    // Routed once: `forward` gets the parts, the metric label below the id.
    let routed = route(&path);
    let cluster = routed.as_ref().ok().map(|(id, _)| *id);
    let response = match forward(&state, request, client, routed).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(cluster = cluster.unwrap_or("-"), %error, "request not forwarded");
            rescue(&error)
        }
    };
    // Only configured clusters become label values; a client cannot mint series.
    if let Some(cluster) = cluster.filter(|id| state.config().cluster(id).is_some()) {
        let code = response.status();
        state
            .metrics
            .requests
            .inc(&[cluster, method_label(&method), code.as_str()]);
        tracing::info!(%cluster, %method, path = %path, status = response.status().as_u16(), duration_ms = started.elapsed().as_millis() as u64, remote = %client, "proxy");
    }
    response
}

async fn forward(
    state: &Arc<ServerState>,
    request: Request<Body>,
    client: SocketAddr,
    routed: Result<(&str, Cow<'_, str>), RouteError>,
) -> Result<Response<Body>, ForwardError> {
    let (cluster_id, rest) = routed.map_err(|error| match error {
        RouteError::NotTunnel => ForwardError::NotTunnel,
        RouteError::EmptyId => ForwardError::EmptyId,
    })?;
    let cert = request.extensions().get::<ClientCert>();
    // One snapshot for the whole request: a reload mid-request does not mix two configs.
    let config = state.config();
    if let Err(refusal) =
        super::callers::check(&config.callers, request.headers(), cert, cluster_id)
    {
        state.metrics.auth_failures.inc(&["tunnel"]);
        return Err(match refusal {
            Refusal::Unauthenticated => ForwardError::Unauthenticated,
            Refusal::Forbidden(caller) => ForwardError::Forbidden(caller),
        });
    }
    let cluster = config
        .cluster(cluster_id)
        .ok_or(ForwardError::UnknownCluster)?;
    if !state.rate_limiter.allow(cluster) {
        state.metrics.rate_limited.inc(&[cluster_id]);
        return Err(ForwardError::RateLimited);
    }
    let wait = state.limits().reconnect_wait;
    let session = state
        .registry
        .wait_for(cluster_id, wait)
        .await
        .ok_or(ForwardError::AgentOffline)?;
    let target = match session.version() {
        Version::V1 => Cow::Owned(cluster.target.as_bytes().to_vec()),
        Version::V2 => Cow::Borrowed(&b"kubernetes"[..]),
    };
    let policy = cluster.impersonation;
    let route = Route {
        cluster: cluster_id,
        target: &cluster.target,
        open_target: target,
        // v2 requests reuse an idle keep-alive stream; v1 (Go agents) is one request per stream.
        pooling: session.version() == Version::V2,
    };
    relay(state, &session, route, request, client, &rest, |headers| {
        apply_impersonation(headers, policy)
    })
    .await
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
