//! The ops listener: `/healthz` (alive), `/readyz` (listeners up; `?cluster=<id>` answers for
//! one cluster's tunnel), `/metrics`. Plain HTTP, so probes need no client certificates.

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use super::ServerState;
use crate::http::{text_response, Body};

/// Routes one request on the ops listener.
pub async fn handle(state: Arc<ServerState>, request: Request<Body>) -> Response<Body> {
    match request.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok"),
        "/readyz" => readyz(&state, request.uri().query()),
        "/metrics" => {
            // Live tunnels, from the registry itself: replaced sessions still draining and dead
            // ones are not agents (B19).
            let metrics = &state.metrics;
            metrics
                .agents_connected
                .set(&[], state.registry.connected() as f64);
            for (cluster, session) in state.registry.sessions() {
                let stats = session.stats();
                let counters = &stats.counters;
                metrics.streams.set(&[&cluster], stats.streams as f64);
                if let Some(rtt) = stats.rtt {
                    metrics.rtt.set(&[&cluster], rtt.as_secs_f64());
                }
                metrics.buffered.set(&[&cluster], stats.buffered as f64);
                for ((direction, reason), count) in &counters.resets_by_reason {
                    metrics
                        .resets
                        .set(&[&cluster, direction, reason], *count as f64);
                }
                metrics
                    .overflows
                    .set(&[&cluster], counters.overflows as f64);
                metrics
                    .credit_stalls
                    .set(&[&cluster], counters.credit_stalls as f64);
                metrics
                    .bytes
                    .set(&[&cluster, "sent"], counters.bytes_sent as f64);
                metrics
                    .bytes
                    .set(&[&cluster, "received"], counters.bytes_received as f64);
                metrics
                    .pending_opens
                    .set(&[&cluster], stats.pending_opens as f64);
            }
            crate::http::metrics_response(state.metrics.render())
        }
        _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn readyz(state: &ServerState, query: Option<&str>) -> Response<Body> {
    let cluster = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("cluster="));
    match cluster {
        // Server readiness never depends on agents (D1): else no agent could ever connect.
        None => text_response(StatusCode::OK, "ok"),
        Some(id) if state.registry.lookup(id).is_some() => text_response(StatusCode::OK, "ok"),
        Some(_) => text_response(StatusCode::SERVICE_UNAVAILABLE, "cluster not connected\n"),
    }
}
