//! The public listener: agents' `GET /connect` (token, then the WebSocket upgrade checks in
//! the Go server's order: 401, 400, 405, 400, 403 for any Origin, 400), and `/healthz`.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::auth::authenticate;
use super::standby::{self, Applicant};
use super::ServerState;
use crate::http::{full, text_response, Body};
use crate::mux::negotiate;
use crate::mux::{Role, Session, SessionHandle};
use crate::protocol::handshake;
use crate::transport::tls_server::ClientCert;
use crate::transport::websocket;

/// Routes one request on the public listener.
pub async fn handle(state: Arc<ServerState>, request: Request<Body>) -> Response<Body> {
    match request.uri().path() {
        "/connect" => connect(state, request),
        "/healthz" => text_response(StatusCode::OK, "ok"),
        _ => text_response(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn connect(state: Arc<ServerState>, mut request: Request<Body>) -> Response<Body> {
    let headers = request.headers();
    // The Go server strips a case-sensitive "Bearer " and otherwise uses the whole value.
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .map(|value| value.strip_prefix(b"Bearer ").unwrap_or(value))
        .unwrap_or_default();
    let config = state.config();
    let tokens = config.clusters.iter().map(|cluster| cluster.token.as_ref());
    let Some(index) = authenticate(tokens, presented) else {
        state.metrics.auth_failures.inc(&["connect"]);
        return text_response(StatusCode::UNAUTHORIZED, "unauthorized\n");
    };
    let cluster = config.clusters[index].id.clone();
    // The token names the cluster; with binding on, the certificate must name it too, so a
    // leaked token alone (or one agent's certificate) cannot take over another cluster.
    if config.bind_client_cert
        && !request
            .extensions()
            .get::<ClientCert>()
            .is_some_and(|cert| cert.names(&cluster))
    {
        state.metrics.auth_failures.inc(&["connect_cert"]);
        tracing::warn!(%cluster, "agent's client certificate does not name its cluster");
        return text_response(StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    let upgrade_ok = crate::http::wants_upgrade(headers)
        && headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let refusal = if !upgrade_ok {
        Some((StatusCode::BAD_REQUEST, "Bad Request\n"))
    } else if request.method() != Method::GET {
        Some((StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"))
    } else if headers
        .get("sec-websocket-version")
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        Some((StatusCode::BAD_REQUEST, "Bad Request\n"))
    } else if headers.contains_key(header::ORIGIN) {
        // Agents never send Origin; a browser does. Refuse it as the Go server does.
        Some((StatusCode::FORBIDDEN, "Forbidden\n"))
    } else if !headers.contains_key("sec-websocket-key") {
        Some((StatusCode::BAD_REQUEST, "Bad Request\n"))
    } else {
        None
    };
    if let Some((status, text)) = refusal {
        let mut response = text_response(status, text);
        if status == StatusCode::BAD_REQUEST {
            response
                .headers_mut()
                .insert("sec-websocket-version", HeaderValue::from_static("13"));
        }
        return response;
    }
    let instance = standby::instance_of(headers.get(handshake::AGENT_INSTANCE_HEADER));
    // Authenticated, so the cluster has a token hash: the applicant's credential generation.
    let credential = config.clusters[index]
        .token
        .as_ref()
        .map(|hash| hash.0)
        .unwrap_or_default();
    let applicant = Applicant {
        instance: instance.as_deref(),
        credential: &credential,
    };
    if state.registry.stands_by(&cluster, applicant) {
        return stand_by(&state, &cluster, applicant);
    }
    let key = headers
        .get("sec-websocket-key")
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let accept = websocket::accept_key(key);
    let offered = headers.get_all(handshake::PROTOCOL_HEADER);
    let echoed = handshake::server_echoes(true, offered.iter().map(HeaderValue::as_bytes));
    let upgrade = hyper::upgrade::on(&mut request);
    let tracker = state.tracker.clone();
    tracker.spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => return tracing::debug!(%error, "agent upgrade failed"),
        };
        let mut transport = websocket::from_upgraded(TokioIo::new(upgraded)).await;
        let limits = &state.limits().tunnel;
        let negotiated =
            match negotiate::server(&mut transport, echoed, limits, &state.identity).await {
                Ok(negotiated) => negotiated,
                Err(error) => return tracing::warn!(%cluster, %error, "agent negotiation failed"),
            };
        let version = negotiated.version;
        let session = Session::start(
            transport,
            negotiated.into_config(Role::Server, limits.clone(), state.budget.clone()),
        );
        let applicant = Applicant {
            instance: instance.as_deref(),
            credential: &credential,
        };
        serve_agent(state, cluster, applicant, session, version).await;
    });
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        response_headers.insert("sec-websocket-accept", accept);
    }
    if echoed {
        response_headers.insert(
            handshake::PROTOCOL_HEADER,
            HeaderValue::from_static(handshake::PROTOCOL_V2),
        );
    }
    response
}

/// `systemctl status` shows how many agents are connected (called on every connect and
/// disconnect, after the registration changed, so the count in O(1) is the live one).
fn agents_status(state: &ServerState) {
    let connected = state.registry.registered();
    let clusters = state.config().clusters.len();
    crate::systemd::status(&format!(
        "{connected} agents connected ({clusters} clusters configured)"
    ));
}

/// Takes no new streams on `session` (v2 agents are told), lets those in flight finish
/// within `grace`, then closes it.
pub(crate) fn retire(state: &ServerState, session: SessionHandle, grace: std::time::Duration) {
    session.drain(grace);
    state.tracker.spawn(async move {
        let deadline = tokio::time::Instant::now() + grace;
        while session.stats().streams > 0
            && tokio::time::Instant::now() < deadline
            && !session.is_closed()
        {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        session.close();
    });
}

/// Another agent displaced this one and still serves: taking the route back would only make
/// the two trade it on every redial (`standby`). The agent stands by and asks again later.
fn stand_by(state: &ServerState, cluster: &str, applicant: Applicant<'_>) -> Response<Body> {
    state.metrics.agents_standing_by.inc(&[cluster]);
    let instance = applicant.instance;
    tracing::debug!(%cluster, instance, "a displaced agent stands by");
    text_response(StatusCode::CONFLICT, handshake::STANDBY_REFUSAL)
}

/// Registers the agent's tunnel for its cluster until the tunnel ends or the server stops.
async fn serve_agent(
    state: Arc<ServerState>,
    cluster: String,
    applicant: Applicant<'_>,
    session: Session,
    version: crate::protocol::Version,
) {
    let Session { handle, incoming } = session;
    drop(incoming); // agents never open streams towards the server
    let Ok((guard, replaced)) = state.registry.register(&cluster, handle.clone(), applicant) else {
        // Another agent registered during this one's handshake and displaced it. Closing the
        // tunnel makes the agent redial, and that attempt gets the 409.
        stand_by(&state, &cluster, applicant);
        handle.close();
        return;
    };
    if state.config().cluster(&cluster).is_none() {
        // A reload removed the cluster while this agent was negotiating: it must not stay.
        tracing::info!(%cluster, "cluster removed during the agent's handshake; closing");
        retire(&state, handle.clone(), std::time::Duration::ZERO);
    }
    let instance = applicant.instance;
    tracing::info!(%cluster, protocol = version.as_str(), instance, "agent connected");
    agents_status(&state);
    if let Some(old) = replaced {
        // The new agent takes new streams now; the old one finishes what it has, then goes.
        // An instance redialling over its own stale tunnel replaces no other agent (agents
        // that name none cannot be told apart, and count).
        let same_agent = instance.is_some() && old.instance.as_deref() == instance;
        if !old.session.is_closed() && !same_agent {
            state.metrics.agents_replaced.inc(&[&cluster]);
            let replaced = old.instance.as_deref();
            tracing::info!(%cluster, instance, replaced, "a newer agent replaced the live one");
        }
        retire(&state, old.session, state.limits().tunnel.open_timeout);
    }
    let end = tokio::select! {
        end = handle.closed() => end.to_string(),
        _ = state.close_tunnels.cancelled() => {
            handle.close();
            "server shutting down".to_owned()
        }
    };
    drop(guard);
    tracing::info!(%cluster, reason = %end, "agent disconnected");
    agents_status(&state);
}
