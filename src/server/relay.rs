//! Sending one HTTP request through a cluster's tunnel and its response back: a pooled
//! keep-alive stream (v2) or a new one, header hygiene, upgrades spliced as raw pipes, and the
//! response body guarded so the stream goes back to the pool only after a clean end. Shared by
//! `/tunnel/` (Argo CD's Kubernetes API calls) and the extensions listener.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Request, Response, Version as HttpVersion};
use http_body_util::BodyExt;

use super::forward::ForwardError;
use super::pool::Pooled;
use super::ServerState;
use crate::h1::{self, Answer, Reuse};
use crate::http::{append_forwarded_for, strip_hop_by_hop, wants_upgrade, Body};
use crate::mux::SessionHandle;

/// Where a request goes on the agent's side.
pub(crate) struct Route<'a> {
    /// The cluster id (metrics, pool).
    pub cluster: &'a str,
    /// The `Host` the request carries (the upstream's authority).
    pub target: &'a str,
    /// The stream's open payload: v1 the Connect address, v2 the agent-side target name.
    pub open_target: std::borrow::Cow<'a, [u8]>,
    /// Reuse idle keep-alive streams (v2, same target only).
    pub pooling: bool,
}

/// Relays `request` (its path already rewritten to `rest`) through `session`. `prepare` edits
/// the outgoing headers after the common hygiene.
pub(crate) async fn relay(
    state: &Arc<ServerState>,
    session: &SessionHandle,
    route: Route<'_>,
    request: Request<Body>,
    client: SocketAddr,
    rest: &str,
    prepare: impl FnOnce(&mut HeaderMap),
) -> Result<Response<Body>, ForwardError> {
    let Route {
        cluster: cluster_id,
        target,
        open_target,
        pooling,
    } = route;
    // An upgrade (exec, attach, port-forward): relayed as a raw pipe once the upstream's 101
    // is relayed; any other answer goes back as a normal response (clients fall back to SPDY).
    let mut request = request;
    // Served by our own HTTP/1.1 server: it splices an upgrade itself, with what we put in
    // the response; else hyper's connection hands the client's side over.
    let served_here = request
        .extensions()
        .get::<crate::listen::ServedHere>()
        .is_some();
    let upgrade = match (
        wants_upgrade(request.headers()),
        request.headers().get(header::UPGRADE),
    ) {
        (true, Some(value)) => Some((value.clone(), hyper::upgrade::on(&mut request))),
        (true, None) => return Err(ForwardError::Upgrade),
        (false, _) => None,
    };
    let active = ActiveGuard::new(state.clone(), cluster_id);
    // Upgrades take their stream for good.
    let pooling = pooling && upgrade.is_none();
    let pooled = pooling
        .then(|| state.pool.checkout(cluster_id, session))
        .flatten();
    let conn = match pooled {
        Some(pooled) => pooled.conn,
        None => session
            .open(&open_target)
            .await
            .map_err(ForwardError::Open)?,
    };
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    prepare(&mut parts.headers);
    append_forwarded_for(&mut parts.headers, client.ip());
    if let Ok(host) = HeaderValue::from_str(target) {
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
    // A stream whose response ended cleanly goes back to the pool for the next request.
    let reuse = pooling.then(|| {
        let (state, cluster, session) = (state.clone(), active.cluster.clone(), session.clone());
        Box::new(move |conn| state.pool.checkin(&cluster, Pooled::new(conn, session))) as Reuse<_>
    });
    let answer = h1::exchange(conn, &mut parts, body, client_upgrade.is_some(), reuse)
        .await
        .map_err(ForwardError::Upstream)?;
    let response = match answer {
        Answer::Upgraded {
            head,
            conn: stream,
            pending,
        } => {
            // The 101 goes back verbatim (every value of repeated headers, the accepted
            // subprotocol); then the client's connection and the tunnel stream are spliced.
            let client_upgrade = client_upgrade.expect("a 101 is an upgrade only when asked");
            let (parts, ()) = head.into_parts();
            let mut response = Response::from_parts(parts, crate::http::full(""));
            if served_here {
                let to = crate::h1::UpgradeTo::stream(stream, pending, Box::new(active));
                response.extensions_mut().insert(to);
                return Ok(response);
            }
            state.tracker.spawn(async move {
                crate::http::splice_stream(client_upgrade, stream, pending).await;
                drop(active);
            });
            return Ok(response);
        }
        Answer::Response(response) => response,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The request stays "active" until its body ends (a watch lasts as long as it streams).
    let body = body.map_err(Into::into).map_frame(move |frame| {
        let _ = &active;
        frame
    });
    Ok(Response::from_parts(parts, body.boxed()))
}

/// `tunnel_active_connections{cluster}` for the life of one request. Holds the cluster id,
/// which the pool's check-in shares (one copy per request).
struct ActiveGuard {
    state: Arc<ServerState>,
    cluster: Arc<str>,
}

impl ActiveGuard {
    fn new(state: Arc<ServerState>, cluster: &str) -> Self {
        state.metrics.active.add(&[cluster], 1.0);
        Self {
            state,
            cluster: Arc::from(cluster),
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.state.metrics.active.add(&[&self.cluster], -1.0);
    }
}
