//! Per tunnel stream: decide where it goes — the Kubernetes API, or an extension backend this
//! agent allows by name (the agent never dials an address from the wire) — then serve HTTP/1.1
//! on it (our own server, `h1::serve`): each request gets the agent's own credentials for that
//! destination and goes there over hyper's pooled client, or over our own (`upstream_h1`) for
//! watches and followed logs, and for bodiless requests to a destination known to speak only
//! HTTP/1.1; the response streams back.

use std::sync::Arc;
use std::time::Instant;

use http::{header, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::destination::Destination;
use super::AgentState;
use crate::h1::RequestBody;
use crate::http::{status_response, strip_hop_by_hop, wants_upgrade, Body};
use crate::mux::IncomingStream;
use crate::protocol::{ResetReason, Version};

/// Largest request head the agent reads off a tunnel stream: the server's default
/// `max_request_header_bytes`, which bounds what it relays (hyper's server, here before, took
/// ~408 KiB).
const TUNNEL_MAX_HEAD: usize = 1024 * 1024;

/// The v2 target name of the Kubernetes API.
pub const KUBERNETES: &[u8] = b"kubernetes";

/// The v2 target prefix of an extension backend: `extension/<name>`.
pub const EXTENSION_PREFIX: &[u8] = b"extension/";

/// What a stream was opened for; resolved to a [`Destination`] per request, so a reload's
/// upstream or backend change reaches pooled keep-alive streams too.
#[derive(Clone)]
enum Target {
    Kubernetes,
    Backend(String),
}

impl Target {
    /// The current destination, or why requests on this stream are refused (403).
    fn resolve(&self, state: &AgentState) -> Result<Arc<Destination>, String> {
        let destinations = state.destinations();
        match self {
            Target::Kubernetes => Ok(destinations.kubernetes.clone()),
            Target::Backend(name) => destinations.backends.get(name).cloned().ok_or_else(|| {
                tracing::warn!(backend = %name, "the server asked for an extension backend this agent does not allow");
                state.metrics.upstream_errors.inc(&["backend_not_allowed"]);
                format!("extension backend \"{name}\" is not allowed by this cluster's agent")
            }),
        }
    }
}

/// Serves one stream the server opened.
///
/// On `shutdown` the stream's HTTP connection finishes the request in flight and closes; an
/// idle keep-alive stream (the server pools them) closes at once, so it never holds the
/// agent's shutdown for the whole grace.
pub async fn serve_stream(
    state: Arc<AgentState>,
    incoming: IncomingStream,
    version: Version,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let Some(target) = stream_target(&state, &incoming, version) else {
        state.metrics.upstream_errors.inc(&["unknown_target"]);
        return incoming.refuse(ResetReason::Refused, "target not configured on this agent");
    };
    let stream = incoming.accept();
    state.metrics.upstream_requests.inc(&[]);
    let limits = crate::h1::ServeLimits {
        max_head: TUNNEL_MAX_HEAD,
        // The peer is the server, and a stream waiting for a head costs only its slot.
        head_timeout: None,
        // v1 streams carry exactly one request (the Go server sends `Connection: close`).
        keep_alive: version == Version::V2,
    };
    crate::h1::serve(stream, limits, shutdown, None, |request| {
        let state = state.clone();
        let destination = target.resolve(&state);
        // Boxed: the stream's task would otherwise be the size of the forwarding state for
        // its whole life; boxed, an idle watch holds a pointer (S9).
        Box::pin(async move {
            match destination {
                Ok(destination) => forward(state, destination, request).await,
                Err(why) => status_response(StatusCode::FORBIDDEN, "Forbidden", &why),
            }
        })
    })
    .await;
}

/// What an opened stream is for; `None` for a v2 target this agent does not know.
fn stream_target(
    state: &AgentState,
    incoming: &IncomingStream,
    version: Version,
) -> Option<Target> {
    let config = state.config();
    let upstream = &config.upstream;
    Some(match version {
        // S6: a v1 Connect names an address; we serve our configured upstream whatever it says.
        Version::V1 => {
            if incoming.target() != upstream.target.as_bytes() {
                tracing::warn!(
                    requested = %String::from_utf8_lossy(incoming.target()),
                    configured = %upstream.target,
                    "server asked for a different target; serving the configured upstream"
                );
                state.metrics.upstream_errors.inc(&["target_mismatch"]);
            }
            Target::Kubernetes
        }
        Version::V2 if incoming.target() == KUBERNETES => Target::Kubernetes,
        Version::V2 if incoming.target().starts_with(EXTENSION_PREFIX) => Target::Backend(
            String::from_utf8_lossy(&incoming.target()[EXTENSION_PREFIX.len()..]).into_owned(),
        ),
        Version::V2 => return None,
    })
}

async fn forward(
    state: Arc<AgentState>,
    destination: Arc<Destination>,
    request: Request<RequestBody>,
) -> Response<Body> {
    let started = Instant::now();
    let upgrade = match (
        wants_upgrade(request.headers()),
        request.headers().get(header::UPGRADE),
    ) {
        (true, Some(value)) => Some(value.clone()),
        _ => None,
    };
    let (mut parts, body) = request.into_parts();
    let method = parts.method.clone();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let impersonate = parts
        .headers
        .get("impersonate-user")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let upstream = &destination;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    let tunnel_upgrade = upgrade.map(|value| crate::http::keep_upgrade(&mut parts.headers, value));
    if let Some(token_file) = &upstream.token_file {
        // Checked now: projected service-account tokens rotate. Never forward without it (B18).
        match token_file.authorization().await {
            Ok(value) => {
                parts.headers.insert(header::AUTHORIZATION, value);
            }
            Err(why) => {
                tracing::warn!(file = %token_file.path().display(), error = %why, "cannot read the upstream token; request refused");
                state.metrics.upstream_errors.inc(&["token_unreadable"]);
                return status_response(
                    StatusCode::BAD_GATEWAY,
                    "ServiceUnavailable",
                    &format!(
                        "the cluster agent cannot read its credentials for {}",
                        upstream.label
                    ),
                );
            }
        }
    }
    // Only paths go upstream, always to the configured authority (an absolute-form target's
    // authority was dropped above with the rest of the URI): no `*`, no CONNECT — the agent
    // never dials an address that came through the tunnel. Under a `path_prefix`, dot
    // segments are refused too: a backend that normalises `/api/../x` would serve outside it.
    let escapes_prefix = !upstream.path_prefix.is_empty() && has_dot_segment(&path);
    if parts.method == http::Method::CONNECT || !path.starts_with('/') || escapes_prefix {
        state.metrics.upstream_errors.inc(&["bad_request"]);
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "only origin-form requests are forwarded",
        );
    }
    for (name, value) in &upstream.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    let scheme = if upstream.plaintext { "http" } else { "https" };
    let uri = upstream.authority.clone().map(|authority| {
        Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(format!("{}{path}", upstream.path_prefix))
            .build()
    });
    let Some(Ok(uri)) = uri else {
        return status_response(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "request path is not valid",
        );
    };
    parts.uri = uri;
    let mut request = Request::from_parts(parts, body);
    // A request with a body stays on hyper's client when it need not be ours: an upstream may
    // answer before it read the body (a 413), and hyper reads that answer while it still
    // sends, where our exchange sends the whole body first.
    let bodiless = hyper::body::Body::is_end_stream(request.body());
    if tunnel_upgrade.is_none() && ((upstream.speaks_h1_only() && bodiless) || long_lived(&path)) {
        if let Some(host) = &upstream.host {
            request.headers_mut().insert(header::HOST, host.clone());
        }
        let response = match upstream.own_h1.send(request).await {
            Ok(response) => relayed(response),
            Err(error) => upstream_failed(&state, upstream, &error),
        };
        log_proxied(&method, &path, &response, started, impersonate.as_deref());
        return response;
    }
    // hyper's clients name the authority themselves, from the URI: a `Host` header over
    // HTTP/1.1, `:authority` over HTTP/2, where a `Host` beside it is a duplicate that strict
    // servers refuse (nginx answers 400). Which one a request takes is known only once the
    // pooled connection negotiated it, so no `Host` goes to them. (hyper's `Host` leaves out a
    // default port, as `:authority` and our own client's do not; all three name the target.)
    request.headers_mut().remove(header::HOST);
    let client = match tunnel_upgrade {
        Some(_) => &upstream.upgrade_client,
        None => &upstream.client,
    };
    let response = match client.request(request).await {
        Ok(mut response)
            if tunnel_upgrade.is_some() && response.status() == StatusCode::SWITCHING_PROTOCOLS =>
        {
            // `h1::serve` splices the tunnel stream with it after writing the 101.
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (parts, _) = response.into_parts();
            let mut response = Response::from_parts(parts, crate::http::full(""));
            response
                .extensions_mut()
                .insert(crate::h1::UpgradeTo::hyper(upstream_upgrade));
            response
        }
        Ok(response) => {
            if tunnel_upgrade.is_none() {
                upstream.answered_over(response.version());
            }
            relayed(response)
        }
        Err(error) => upstream_failed(&state, upstream, &error),
    };
    log_proxied(&method, &path, &response, started, impersonate.as_deref());
    response
}

/// The destination's answer as it goes back: its hop-by-hop headers are this hop's.
fn relayed<B>(response: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<crate::http::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(Into::into).boxed())
}

/// The 502 for a request the destination did not answer.
fn upstream_failed(
    state: &AgentState,
    upstream: &Destination,
    error: &dyn std::fmt::Display,
) -> Response<Body> {
    tracing::warn!(%error, target = %upstream.target, "upstream request failed");
    state.metrics.upstream_errors.inc(&["upstream"]);
    status_response(
        StatusCode::BAD_GATEWAY,
        "ServiceUnavailable",
        &format!("the cluster agent could not reach {}", upstream.label),
    )
}

/// The customer's audit trail of what the management side did.
fn log_proxied(
    method: &http::Method,
    path: &str,
    response: &Response<Body>,
    started: Instant,
    impersonate: Option<&str>,
) {
    tracing::info!(
        %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        impersonate_user = impersonate.unwrap_or("-"),
        "proxied"
    );
}

/// Watches and followed logs stay open for minutes: they go over HTTP/1.1 connections of their
/// own (our own client, `upstream_h1`, which holds little while a watch idles), so they never
/// fill the one HTTP/2 connection's stream limit (the API server's
/// `--http2-max-streams-per-connection`) and stall short requests behind it — hyper opens no
/// second HTTP/2 connection when the first is full.
fn long_lived(path: &str) -> bool {
    let Some((_, query)) = path.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        matches!(
            pair.split_once('=').unwrap_or((pair, "")),
            ("watch" | "follow", "true" | "1")
        )
    })
}

/// Whether a path has a `.` or `..` segment, also percent-encoded (`%2e`, `%2E`).
fn has_dot_segment(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn dot_segments_are_found_encoded_or_not() {
        for path in ["/..", "/a/../b", "/a/./b", "/%2e%2E/x", "/a/.%2e?x=1"] {
            assert!(super::has_dot_segment(path), "{path}");
        }
        for path in ["/", "/a/b", "/a..b/c", "/.well-known/x", "/a?x=/../"] {
            assert!(!super::has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn watches_and_followed_logs_are_long_lived() {
        for path in [
            "/api/v1/pods?watch=1",
            "/api/v1/pods?limit=5&watch=true",
            "/api/v1/namespaces/a/pods/b/log?follow=true",
        ] {
            assert!(super::long_lived(path), "{path}");
        }
        for path in [
            "/api/v1/pods",
            "/api/v1/pods?watch=false",
            "/api/v1/pods?watcher=1",
            "/log?follow=0",
        ] {
            assert!(!super::long_lived(path), "{path}");
        }
    }
}
