//! `[limits]`: every bound a peer can push against, with its default (DESIGN.md §5 item 8).
//! Both binaries share the tunnel limits; the server adds its HTTP ones.

use std::time::Duration;

use serde::Deserialize;

use crate::mux::Limits;

/// The raw `[limits]` table; unset keys take [`Limits::default`] and the defaults below.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    max_streams_per_tunnel: Option<usize>,
    stream_window: Option<u32>,
    max_stream_window: Option<u32>,
    v1_stream_buffer: Option<usize>,
    tunnel_buffer: Option<usize>,
    process_buffer: Option<usize>,
    send_queue: Option<usize>,
    max_frame_payload: Option<usize>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    open_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    write_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    heartbeat_interval: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    heartbeat_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    handshake_timeout: Option<Duration>,
    max_request_header_bytes: Option<usize>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    header_read_timeout: Option<Duration>,
    max_connections_per_listener: Option<usize>,
    max_h2_streams_per_connection: Option<u32>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    shutdown_grace: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    reconnect_wait: Option<Duration>,
}

/// Validated limits.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// The tunnel (mux) limits.
    pub tunnel: Limits,
    /// Receive memory across all tunnels of the process. Default 1 GiB.
    pub process_buffer: usize,
    /// Time for a WebSocket upgrade plus negotiation. Default 15 s (the Go dialer's).
    pub handshake_timeout: Duration,
    /// Largest HTTP request head accepted from a client. Default 1 MiB (Go's default).
    pub max_request_header_bytes: usize,
    /// Time a client has to send a request head. Default 10 s (the Go server's).
    pub header_read_timeout: Duration,
    /// Connections one listener serves at once. Default 10,000.
    pub max_connections_per_listener: usize,
    /// Concurrent HTTP/2 streams one client connection may open (Argo CD's watches over one
    /// connection to the internal listener). Default 1,000.
    pub max_h2_streams_per_connection: u32,
    /// On SIGTERM, time requests in flight get to finish before tunnels close. Default 25 s
    /// (inside Kubernetes' default 30 s termination grace).
    pub shutdown_grace: Duration,
    /// How long a request for a cluster whose agent is away waits for it to reconnect before
    /// the 503. Default 3 s (an agent restart or a server-side replacement).
    pub reconnect_wait: Duration,
}

impl RawLimits {
    pub(crate) fn validate(self) -> Result<LimitsConfig, String> {
        let defaults = Limits::default();
        let process_buffer = self.process_buffer.unwrap_or(1024 * 1024 * 1024);
        // Unset, it follows a smaller `process_buffer` down (the agent chart sets 128 MiB), so
        // configs written when the default was 128 MiB stay valid.
        let session_buffer = self
            .tunnel_buffer
            .unwrap_or(defaults.session_buffer.min(process_buffer));
        let tunnel = Limits {
            max_streams: self.max_streams_per_tunnel.unwrap_or(defaults.max_streams),
            stream_window: self.stream_window.unwrap_or(defaults.stream_window),
            // Unset, it follows a smaller `tunnel_buffer` down, so a config that set only that
            // (valid when the default was 16 MiB) stays valid.
            max_stream_window: self.max_stream_window.unwrap_or(
                defaults
                    .max_stream_window
                    .min(u32::try_from(session_buffer).unwrap_or(u32::MAX)),
            ),
            v1_stream_buffer: self.v1_stream_buffer.unwrap_or(defaults.v1_stream_buffer),
            session_buffer,
            send_queue: self.send_queue.unwrap_or(defaults.send_queue),
            max_frame_payload: self.max_frame_payload.unwrap_or(defaults.max_frame_payload),
            open_timeout: self.open_timeout.unwrap_or(defaults.open_timeout),
            write_timeout: self.write_timeout.unwrap_or(defaults.write_timeout),
            heartbeat_interval: self
                .heartbeat_interval
                .unwrap_or(defaults.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.unwrap_or(defaults.heartbeat_timeout),
            negotiate_timeout: self.handshake_timeout.unwrap_or(defaults.negotiate_timeout),
        };
        tunnel
            .validate()
            .map_err(|message| format!("[limits]: {message}"))?;
        let handshake_timeout = self.handshake_timeout.unwrap_or(Duration::from_secs(15));
        // Zero would fail every request or tunnel; hours would hold resources a peer controls.
        let bounded = [
            ("open_timeout", tunnel.open_timeout),
            ("write_timeout", tunnel.write_timeout),
            ("heartbeat_interval", tunnel.heartbeat_interval),
            ("heartbeat_timeout", tunnel.heartbeat_timeout),
            ("handshake_timeout", handshake_timeout),
            (
                "header_read_timeout",
                self.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            ),
        ];
        for (key, value) in bounded {
            if value < Duration::from_millis(100) || value > Duration::from_secs(3600) {
                return Err(format!("[limits] {key} must be between 100ms and 1h"));
            }
        }
        if tunnel.heartbeat_interval > Duration::from_secs(15) {
            return Err("[limits] heartbeat_interval must be ≤ 15s: the tunnel protocol pings at least every 15 s (a Go peer pings every 15 s and drops a tunnel after 45 s without a Pong)".into());
        }
        if process_buffer < tunnel.session_buffer {
            return Err("[limits] process_buffer must be ≥ tunnel_buffer".into());
        }
        Ok(LimitsConfig {
            tunnel,
            process_buffer,
            handshake_timeout,
            max_request_header_bytes: self.max_request_header_bytes.unwrap_or(1024 * 1024),
            header_read_timeout: self.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            reconnect_wait: match self.reconnect_wait.unwrap_or(Duration::from_secs(3)) {
                wait if wait > Duration::from_secs(60) => {
                    return Err("[limits] reconnect_wait must be at most 60s".into())
                }
                wait => wait,
            },
            shutdown_grace: match self.shutdown_grace.unwrap_or(Duration::from_secs(25)) {
                grace if grace > Duration::from_secs(3600) => {
                    return Err("[limits] shutdown_grace must be at most 1h".into())
                }
                grace => grace,
            },
            max_h2_streams_per_connection: match self.max_h2_streams_per_connection.unwrap_or(1000)
            {
                0 => return Err("[limits] max_h2_streams_per_connection must be > 0".into()),
                max => max,
            },
            max_connections_per_listener: match self.max_connections_per_listener.unwrap_or(10_000)
            {
                0 => return Err("[limits] max_connections_per_listener must be > 0".into()),
                max => max,
            },
        })
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        RawLimits::default().validate().expect("defaults are valid")
    }
}
