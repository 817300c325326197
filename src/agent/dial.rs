//! One tunnel attempt: TCP (to the server, or to an egress proxy and `CONNECT` through it) →
//! TLS (unless `ws://` was allowed) → WebSocket upgrade with the token and the v2 offer →
//! negotiation → a mux session. Each step is bounded by the handshake timeout and says which
//! step failed.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::AgentConfig;
use crate::mux::negotiate::{self, Negotiated};
use crate::mux::{MemoryBudget, Role, Session};
use crate::protocol::handshake;
use crate::transport::{proxy, tcp, tls, websocket};

/// A connected byte stream, TLS or not.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Why an attempt failed; the text goes to the log and the sd_notify status.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The URL could not be used.
    #[error("server_url: {0}")]
    Url(String),
    /// TCP connect failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// host:port.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The egress proxy failed: a bad proxy URL, no connection, or a refused `CONNECT`.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// TLS failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The server refused the upgrade (401 for a bad token, 503…).
    #[error("server answered {status}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Seconds from `Retry-After`, if any.
        retry_after: Option<u64>,
    },
    /// Another agent of this cluster displaced this one and still serves (the server's 409
    /// with `handshake::STANDBY_REFUSAL`): stand by.
    #[error("another agent serves this cluster; standing by")]
    StandingBy,
    /// The connection failed or closed during the upgrade, before any answer.
    #[error("WebSocket upgrade: connection lost: {0}")]
    UpgradeLost(std::io::Error),
    /// The upgrade failed otherwise.
    #[error("WebSocket upgrade: {0}")]
    Upgrade(String),
    /// Negotiation failed.
    #[error(transparent)]
    Negotiate(#[from] negotiate::NegotiateError),
    /// A step took longer than the handshake timeout.
    #[error("timed out during {0}")]
    Timeout(&'static str),
}

impl DialError {
    /// The attempt never got an answer from the server (URL, TCP, egress proxy, TLS, a
    /// timeout), so it says nothing about the server's view of this agent.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Url(_)
                | Self::Connect { .. }
                | Self::Proxy(_)
                | Self::Tls(_)
                | Self::Timeout(_)
                | Self::UpgradeLost(_)
                | Self::Negotiate(
                    negotiate::NegotiateError::Transport(_) | negotiate::NegotiateError::Timeout(_)
                )
        )
    }
}

/// The server's own 409 for a displaced agent (contained, not prefixed: a proxy may re-frame
/// the body), as opposed to a 409 of an ingress or firewall on the way.
fn is_standby_refusal(body: &[u8]) -> bool {
    let marker = handshake::STANDBY_REFUSAL.trim_end().as_bytes();
    body.windows(marker.len()).any(|window| window == marker)
}

/// A negotiated tunnel.
pub struct Dialed {
    /// The session.
    pub session: Session,
    /// What negotiation decided.
    pub negotiated: Negotiated,
}

async fn bounded<T>(
    timeout: std::time::Duration,
    step: &'static str,
    future: impl std::future::Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| DialError::Timeout(step))?
}

/// Dials the server once, as agent `instance` (see `handshake::AGENT_INSTANCE_HEADER`).
pub async fn dial(
    config: &AgentConfig,
    budget: Arc<MemoryBudget>,
    instance: &str,
) -> Result<Dialed, DialError> {
    let timeout = config.limits.handshake_timeout;
    let uri: http::Uri = config
        .server_url
        .parse()
        .map_err(|e: http::uri::InvalidUri| DialError::Url(e.to_string()))?;
    let secure = uri
        .scheme_str()
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss"));
    let host = uri
        .host()
        .ok_or_else(|| DialError::Url("no host".into()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let addr = format!("{host}:{port}");
    let tcp = match proxy::choose_with_env(
        config.proxy_url.as_ref().map(|url| url.expose()),
        config.no_proxy.as_deref(),
        &host,
    )? {
        None => {
            // Bounded by `timeout` itself, shared by the addresses the name resolves to.
            tcp::connect(&addr, timeout)
                .await
                .map_err(|source| DialError::Connect {
                    addr: addr.clone(),
                    source,
                })?
        }
        Some(via) => {
            tracing::info!(proxy = %via, server = %addr, "dialing the server through an egress proxy");
            let tcp = tcp::connect(via.addr(), timeout).await.map_err(|source| {
                proxy::ProxyError::Connect {
                    proxy: via.to_string(),
                    source,
                }
            })?;
            bounded(timeout, "proxy CONNECT", async {
                Ok(proxy::connect(tcp, &via, &addr).await?)
            })
            .await?
        }
    };
    // The tunnel's queued bytes wait in the mux, where a small answer overtakes a bulk one.
    let _ = tcp::hold_unsent_in_process(&tcp);
    let io: Box<dyn Io> = if secure {
        let roots = tls::roots(config.server_ca.as_deref())?;
        let identity = config
            .client_identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        let client = tls::client_config_with_identity(roots, &[b"http/1.1"], identity)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Box::new(
            bounded(timeout, "TLS handshake", async {
                Ok(tls::connect(client, &host, tcp).await?)
            })
            .await?,
        )
    } else {
        Box::new(tcp)
    };
    let url = config.server_url.clone();
    let token = config.token.expose().to_owned();
    let extra = [(handshake::AGENT_INSTANCE_HEADER, instance)];
    let connected = bounded(timeout, "WebSocket upgrade", async move {
        websocket::connect_with_headers(io, &url, Some(&token), true, &extra)
            .await
            .map_err(|error| match error {
                websocket::HandshakeError::Refused {
                    status: 409,
                    ref body,
                    ..
                } if is_standby_refusal(body) => DialError::StandingBy,
                websocket::HandshakeError::Refused {
                    status,
                    retry_after,
                    ..
                } => DialError::Refused {
                    status,
                    retry_after,
                },
                websocket::HandshakeError::Io(error) => DialError::UpgradeLost(error),
                other => DialError::Upgrade(other.to_string()),
            })
    })
    .await?;
    let mut transport = connected.transport;
    let limits = config.limits.tunnel.clone();
    let negotiated = bounded(timeout, "negotiation", async {
        Ok(negotiate::agent(&mut transport, connected.offered, connected.echoed, &limits).await?)
    })
    .await?;
    let session = Session::start(
        transport,
        negotiated.clone().into_config(Role::Agent, limits, budget),
    );
    Ok(Dialed {
        session,
        negotiated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_409_means_standing_by() {
        assert!(is_standby_refusal(handshake::STANDBY_REFUSAL.as_bytes()));
        // Re-framed by a proxy on the way (chunked), the text is still there.
        assert!(is_standby_refusal(
            b"22\r\nanother agent serves this cluster\n\r\n0\r\n\r\n"
        ));
        assert!(!is_standby_refusal(b"<html>409 Conflict</html>"));
        assert!(!is_standby_refusal(b""));
    }

    #[test]
    fn only_failures_without_an_answer_are_transport() {
        let lost = || std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(DialError::UpgradeLost(lost()).is_transport());
        assert!(DialError::Negotiate(negotiate::NegotiateError::Transport(lost())).is_transport());
        assert!(DialError::Timeout("connect").is_transport());
        let refused = DialError::Refused {
            status: 401,
            retry_after: None,
        };
        assert!(!refused.is_transport());
        assert!(!DialError::StandingBy.is_transport());
        assert!(!DialError::Upgrade("not a WebSocket answer".into()).is_transport());
    }
}
