//! Version negotiation (DESIGN.md §3), as pure rules the transport and mux apply:
//!
//! 1. The agent offers v2 with `X-Argocd-Proxy-Protocol: 2` on the WebSocket upgrade request.
//! 2. A server that speaks v2 echoes the header on its 101. A Go server ignores it: v1.
//! 3. An agent that sees the echo sends a v2 Settings frame as its first message; one that does
//!    not (a Go server, or a middlebox that stripped the echo) stays on v1 and sends a v1 Ping
//!    first, so a server that echoed learns "v1" at once instead of waiting.
//! 4. The server switches to v2 only when that first message is Settings. Both ends therefore
//!    always agree, and a Go agent (which never offers) costs no extra round trip.
//!
//! `Sec-WebSocket-Protocol` is deliberately not used: a client offering a subprotocol fails the
//! handshake when a Go server answers with none.

use super::frame::Frame;
use super::settings::VERSION_2;

/// The negotiation header (lower case, as HTTP/1.1 header names compare case-insensitively).
pub const PROTOCOL_HEADER: &str = "x-argocd-proxy-protocol";

/// The value an agent offers and a v2 server echoes.
pub const PROTOCOL_V2: &str = "2";

/// The agent names its process here on the upgrade request: an opaque id of at most 64
/// visible ASCII bytes, new each time the agent starts. The server refuses (409) an instance
/// that a newer agent of the same cluster displaced while that one still serves, so two agents
/// of one cluster do not take the route from each other on every redial. Any version; a Go
/// agent sends none and keeps newest-wins.
pub const AGENT_INSTANCE_HEADER: &str = "x-argocd-proxy-agent-instance";

/// The body of the server's 409 to a displaced agent; the agent stands by only on a 409 with
/// this body (an ingress or firewall answering 409 is an error like any other).
pub const STANDBY_REFUSAL: &str = "another agent serves this cluster\n";

/// The protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The Go implementation's protocol: no credits, no half-close, one request per stream.
    V1,
    /// Ours: credits, half-close and reset, drain, settings.
    V2,
}

impl Version {
    /// "v1" / "v2", for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// True when a header value lists version 2 (comma-separated tokens, so a later "2, 3" still
/// selects 2). Whitespace around tokens is ignored.
pub fn lists_v2(value: &[u8]) -> bool {
    value
        .split(|byte| *byte == b',')
        .any(|token| token.trim_ascii() == PROTOCOL_V2.as_bytes())
}

/// Server side, step 2: whether to echo the header on the 101. `offered` holds every value of
/// the header on the upgrade request.
pub fn server_echoes<'a>(v2_enabled: bool, mut offered: impl Iterator<Item = &'a [u8]>) -> bool {
    v2_enabled && offered.any(lists_v2)
}

/// Agent side, step 3: the version the agent speaks given the 101's header values.
pub fn agent_version<'a>(offered: bool, mut echoed: impl Iterator<Item = &'a [u8]>) -> Version {
    if offered && echoed.any(lists_v2) {
        Version::V2
    } else {
        Version::V1
    }
}

/// Server side, step 4: the version selected by the agent's first message, when the server
/// echoed. Anything but a v2 Settings frame means v1.
pub fn server_version(first: &Frame) -> Version {
    match first {
        Frame::Settings(settings) if settings.version == Some(VERSION_2) => Version::V2,
        _ => Version::V1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Settings;
    use bytes::Bytes;

    #[test]
    fn echo_requires_an_offer_and_v2_enabled() {
        assert!(server_echoes(true, [&b"2"[..]].into_iter()));
        assert!(server_echoes(true, [&b"1, 2 ,3"[..]].into_iter()));
        assert!(!server_echoes(false, [&b"2"[..]].into_iter()));
        assert!(!server_echoes(true, std::iter::empty()));
        assert!(!server_echoes(true, [&b"22"[..], &b"v2"[..]].into_iter()));
    }

    #[test]
    fn agent_stays_v1_without_an_echo() {
        assert_eq!(agent_version(true, [&b"2"[..]].into_iter()), Version::V2);
        assert_eq!(agent_version(true, std::iter::empty()), Version::V1);
        // An echo the agent did not ask for (it has v2 disabled) does not switch it.
        assert_eq!(agent_version(false, [&b"2"[..]].into_iter()), Version::V1);
    }

    #[test]
    fn only_a_v2_settings_frame_selects_v2() {
        let v2 = Settings {
            version: Some(2),
            ..Settings::default()
        };
        assert_eq!(server_version(&Frame::Settings(v2)), Version::V2);
        let future = Settings {
            version: Some(3),
            ..Settings::default()
        };
        assert_eq!(server_version(&Frame::Settings(future)), Version::V1);
        let ping = Frame::Ping {
            payload: Bytes::new(),
        };
        assert_eq!(server_version(&ping), Version::V1);
    }
}
