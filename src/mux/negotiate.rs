//! The I/O half of version negotiation (rules in `protocol::handshake`): after the WebSocket
//! upgrade, exchange v2 Settings or settle on v1, before the session starts.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use super::{Limits, MemoryBudget, Role, SessionConfig, Transport};
use crate::protocol::{self, handshake, settings::VERSION_2, Frame, Settings, Version};

/// Why negotiation failed. The session never started.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// The transport failed or closed.
    #[error("tunnel transport failed during negotiation: {0}")]
    Transport(#[from] std::io::Error),
    /// The peer did not answer in time.
    #[error("peer did not send its settings within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer answered with something other than its settings.
    #[error("server echoed protocol v2 but did not answer with settings: {0}")]
    Protocol(String),
}

/// The outcome of negotiation: what the session is configured with.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The version both ends speak.
    pub version: Version,
    /// The peer's settings (empty under v1).
    pub peer: Settings,
    /// A message read while deciding that belongs to the session (a v1 agent's Ping).
    pub first_message: Option<Bytes>,
}

impl Negotiated {
    /// The session configuration for this outcome.
    pub fn into_config(
        self,
        role: Role,
        limits: Limits,
        budget: std::sync::Arc<MemoryBudget>,
    ) -> SessionConfig {
        SessionConfig {
            role,
            version: self.version,
            limits,
            peer: self.peer,
            process_budget: budget,
            first_message: self.first_message,
        }
    }
}

/// The server's identity, announced to v2 agents (DESIGN.md §3 item 7).
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// This replica's id.
    pub server_id: String,
    /// How many replicas serve this address.
    pub replica_count: u32,
}

fn our_settings(limits: &Limits) -> Settings {
    let millis = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    Settings {
        version: Some(VERSION_2),
        stream_window: Some(limits.stream_window),
        max_streams: Some(u32::try_from(limits.max_streams).unwrap_or(u32::MAX)),
        heartbeat_interval_ms: Some(millis(limits.heartbeat_interval)),
        heartbeat_timeout_ms: Some(millis(limits.heartbeat_timeout)),
        max_frame_payload: Some(
            u32::try_from(protocol::MAX_MESSAGE - protocol::HEADER_LEN).unwrap_or(u32::MAX),
        ),
        server_id: None,
        replica_count: None,
    }
}

async fn first_message<T: Transport>(
    transport: &mut T,
    limits: &Limits,
) -> Result<Option<Bytes>, NegotiateError> {
    match tokio::time::timeout(limits.negotiate_timeout, transport.next()).await {
        Err(_) => Ok(None),
        Ok(Some(Ok(message))) => Ok(Some(message)),
        Ok(Some(Err(error))) => Err(error.into()),
        Ok(None) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
    }
}

/// Agent side. `offered`: we sent the header; `echoed`: the 101 carried it back.
pub async fn agent<T: Transport>(
    transport: &mut T,
    offered: bool,
    echoed: bool,
    limits: &Limits,
) -> Result<Negotiated, NegotiateError> {
    let v1 = Negotiated {
        version: Version::V1,
        peer: Settings::default(),
        first_message: None,
    };
    if !(offered && echoed) {
        if offered {
            // Tell a server that echoed (and a middlebox stripped) that we stay on v1, at once.
            let ping = Frame::Ping {
                payload: Bytes::new(),
            };
            transport.send((&ping).into()).await?;
        }
        return Ok(v1);
    }
    transport
        .send((&Frame::Settings(our_settings(limits))).into())
        .await?;
    let Some(message) = first_message(transport, limits).await? else {
        return Err(NegotiateError::Timeout(limits.negotiate_timeout));
    };
    match protocol::decode(message) {
        Ok(Frame::Settings(peer)) => Ok(Negotiated {
            version: Version::V2,
            peer,
            first_message: None,
        }),
        other => Err(NegotiateError::Protocol(format!("{other:?}"))),
    }
}

/// Server side. `echoed`: we echoed the agent's offer on the 101. Only then do we wait for the
/// agent's first message; a Go agent never offers, so it costs nothing.
pub async fn server<T: Transport>(
    transport: &mut T,
    echoed: bool,
    limits: &Limits,
    identity: &ServerIdentity,
) -> Result<Negotiated, NegotiateError> {
    let mut outcome = Negotiated {
        version: Version::V1,
        peer: Settings::default(),
        first_message: None,
    };
    if !echoed {
        return Ok(outcome);
    }
    let Some(message) = first_message(transport, limits).await? else {
        tracing::debug!("agent sent nothing after the v2 echo; staying on v1");
        return Ok(outcome);
    };
    match protocol::decode(message.clone()) {
        Ok(first) if handshake::server_version(&first) == Version::V2 => {
            let Frame::Settings(peer) = first else {
                unreachable!("server_version only selects v2 for Settings")
            };
            let ours = Settings {
                server_id: Some(identity.server_id.clone()),
                replica_count: Some(identity.replica_count),
                ..our_settings(limits)
            };
            transport.send((&Frame::Settings(ours)).into()).await?;
            outcome.version = Version::V2;
            outcome.peer = peer;
        }
        _ => outcome.first_message = Some(message),
    }
    Ok(outcome)
}
