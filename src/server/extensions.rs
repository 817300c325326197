//! The extensions listener (DESIGN.md §8): Argo CD's proxy-extension requests, authenticated
//! by a shared secret in a configured header (constant time), routed by the extension and
//! cluster headers Argo CD applies last, allowed only where `[[extension]]` says (deny by
//! default), limited per extension so they cannot starve the cluster's Kubernetes traffic,
//! and sent through the cluster's tunnel to the agent's `[[backend]]` of the same name.
//! `Argocd-Username` / `Argocd-User-Groups` are logged, never trusted: Argo CD leaves them
//! unset when it has no value, so a client can inject them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::authenticate;
use super::forward::{rescue, ForwardError};
use super::relay::{relay, Route};
use super::ServerState;
use crate::config::ExtensionConfig;
use crate::http::Body;
use crate::protocol::Version;

/// Per-extension concurrency slots, resized when a reload changes `max_concurrent`.
#[derive(Default)]
pub struct Slots(Mutex<HashMap<String, (usize, Arc<Semaphore>)>>);

impl Slots {
    fn try_take(&self, extension: &ExtensionConfig) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut slots = self
                .0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = slots
                .entry(extension.name.clone())
                .or_insert_with(|| (0, Arc::new(Semaphore::new(0))));
            if entry.0 != extension.max_concurrent {
                // Requests holding old permits finish on the old semaphore.
                *entry = (
                    extension.max_concurrent,
                    Arc::new(Semaphore::new(extension.max_concurrent)),
                );
            }
            entry.1.clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// Handles one request on the extensions listener.
pub async fn handle(
    state: Arc<ServerState>,
    request: Request<Body>,
    client: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let (mut extension, mut cluster) = ("-".to_owned(), "-".to_owned());
    let response = match forward(&state, request, client, &mut extension, &mut cluster).await {
        Ok(response) => response,
        // Unauthenticated noise stays at debug (the metric counts it); refusals of Argo CD's
        // own requests are worth an info line.
        Err(error @ ForwardError::Unauthenticated) => {
            tracing::debug!(%error, "extension request refused");
            rescue(&error)
        }
        Err(error) => {
            tracing::info!(%extension, %cluster, %error, "extension request refused");
            rescue(&error)
        }
    };
    let code = response.status().as_u16().to_string();
    let metrics = &state.metrics;
    metrics
        .extension_requests
        .inc(&[&extension, &cluster, &code]);
    metrics
        .extension_seconds
        .add(&[&extension, &cluster], started.elapsed().as_secs_f64());
    response
}

async fn forward(
    state: &Arc<ServerState>,
    request: Request<Body>,
    client: SocketAddr,
    extension_label: &mut String,
    cluster_label: &mut String,
) -> Result<Response<Body>, ForwardError> {
    let config = state.config();
    let Some(settings) = &config.extensions else {
        return Err(ForwardError::NotTunnel);
    };
    let headers = request.headers();
    let presented = headers
        .get(&settings.secret_header)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if authenticate([settings.secret.as_ref()], presented).is_none() {
        state.metrics.auth_failures.inc(&["extensions"]);
        return Err(ForwardError::Unauthenticated);
    }
    // Argo CD's extension proxy cannot carry upgrades from the UI, and an upgraded pipe would
    // outlive the extension's concurrency slot: refused.
    if crate::http::wants_upgrade(headers) {
        return Err(ForwardError::ExtensionUpgrade);
    }
    let name = single(headers, &settings.extension_header)?;
    let cluster_id = single(headers, &settings.cluster_header)?;
    // Only configured names become label values: a caller cannot mint series.
    let extension = settings
        .extensions
        .iter()
        .find(|extension| extension.name == name)
        .ok_or(ForwardError::ExtensionForbidden)?;
    *extension_label = extension.name.clone();
    let cluster = config
        .cluster(&cluster_id)
        .filter(|_| extension.allows(&cluster_id))
        .ok_or(ForwardError::ExtensionForbidden)?;
    *cluster_label = cluster.id.clone();
    if !state.rate_limiter.allow_key(
        &format!("extension:{}", extension.name),
        extension.rate_limit,
    ) {
        return Err(busy().await);
    }
    let permit = state
        .extension_slots
        .try_take(extension)
        .ok_or(ForwardError::ExtensionBusy);
    let permit = match permit {
        Ok(permit) => permit,
        Err(_) => return Err(busy().await),
    };
    let identity = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    tracing::info!(
        extension = %extension.name,
        cluster = %cluster.id,
        method = %request.method(),
        path = %request.uri().path(),
        // Logged for the audit trail, never used to decide anything.
        argocd_username = %identity("argocd-username"),
        argocd_user_groups = %identity("argocd-user-groups"),
        "extension request"
    );
    let session = state
        .registry
        .wait_for(&cluster.id, state.limits().reconnect_wait)
        .await
        .ok_or(ForwardError::AgentOffline)?;
    if session.version() == Version::V1 {
        return Err(ForwardError::ExtensionUnsupported);
    }
    let rest = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let route = Route {
        cluster: &cluster.id,
        target: &extension.name,
        open_target: format!("extension/{}", extension.name).into_bytes().into(),
        // One request per stream: pooled streams belong to the Kubernetes target.
        pooling: false,
    };
    let routing = [
        settings.secret_header.clone(),
        settings.extension_header.clone(),
        settings.cluster_header.clone(),
    ];
    let response = relay(state, &session, route, request, client, &rest, |headers| {
        // The secret and the routing stay on our side; Argo CD already removed Cookie and
        // Authorization, and a backend never needs them from the management side.
        for name in &routing {
            headers.remove(name);
        }
        headers.remove(http::header::COOKIE);
    })
    .await?;
    // The slot is held until the response body ends (a streamed answer counts as in flight).
    let active = ActiveExtension::new(state.clone(), &extension.name, permit);
    let (parts, body) = response.into_parts();
    let body = body.map_frame(move |frame| {
        let _ = &active;
        frame
    });
    Ok(Response::from_parts(parts, body.boxed()))
}

/// How long, on average, a refusal for being over an extension's limits waits before it is
/// sent: a client retrying in a tight loop then costs a few hundred cheap answers per second,
/// not the core that Argo CD's own traffic to the clusters needs.
pub const BUSY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

async fn busy() -> ForwardError {
    tokio::time::sleep(busy_delay()).await;
    ForwardError::ExtensionBusy
}

/// [`BUSY_DELAY`] ± 50%, uniformly. A fixed delay sent a flood's refused connections back
/// together, in waves the server then served back to back while Argo CD's own requests
/// waited behind them; spread out, they arrive as a trickle.
fn busy_delay() -> std::time::Duration {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(jitter_seed());
    }
    let draw = STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    });
    BUSY_DELAY / 2 + BUSY_DELAY.mul_f64((draw >> 11) as f64 / (1u64 << 53) as f64)
}

fn jitter_seed() -> u64 {
    let bytes = crate::host::random_bytes(8).unwrap_or_else(|_| vec![0x5D; 8]);
    u64::from_le_bytes(bytes.try_into().expect("8 bytes")) | 1
}

/// Exactly one value of `name`: two would leave which one counts to the proxies in between.
fn single(headers: &HeaderMap, name: &HeaderName) -> Result<String, ForwardError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .map(str::to_owned)
            .map_err(|_| ForwardError::ExtensionHeader(name.to_string())),
        _ => Err(ForwardError::ExtensionHeader(name.to_string())),
    }
}

/// An extension request in flight: its concurrency slot and its gauge.
struct ActiveExtension {
    state: Arc<ServerState>,
    extension: String,
    _permit: OwnedSemaphorePermit,
}

impl ActiveExtension {
    fn new(state: Arc<ServerState>, extension: &str, permit: OwnedSemaphorePermit) -> Self {
        state.metrics.extension_active.add(&[extension], 1.0);
        Self {
            state,
            extension: extension.to_owned(),
            _permit: permit,
        }
    }
}

impl Drop for ActiveExtension {
    fn drop(&mut self) {
        self.state
            .metrics
            .extension_active
            .add(&[&self.extension], -1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_delays_spread_over_half_to_one_and_a_half_times_the_mean() {
        let delays: Vec<_> = (0..1000).map(|_| busy_delay()).collect();
        let (low, high) = (BUSY_DELAY / 2, BUSY_DELAY * 3 / 2);
        assert!(delays.iter().all(|delay| (low..=high).contains(delay)));
        // Spread over the whole range, not bunched: the point is that refusals sent together
        // come back apart.
        let earliest = delays.iter().min().unwrap();
        let latest = delays.iter().max().unwrap();
        assert!(*earliest < low + BUSY_DELAY / 10, "{earliest:?}");
        assert!(*latest > high - BUSY_DELAY / 10, "{latest:?}");
    }
}
