//! The v2 Settings frame payload: a list of `[key u8][len u8][value]` entries, so a newer peer
//! can add keys an older one skips. The agent's Settings selects v2; the server's answer carries
//! its identity (DESIGN.md §3 item 7) so a multi-replica mode needs no new protocol version.

use bytes::{BufMut, BytesMut};

use super::frame::FrameError;

/// The protocol version a v2 Settings frame announces.
pub const VERSION_2: u8 = 2;

const KEY_VERSION: u8 = 1;
const KEY_STREAM_WINDOW: u8 = 2;
const KEY_MAX_STREAMS: u8 = 3;
const KEY_HEARTBEAT_INTERVAL_MS: u8 = 4;
const KEY_HEARTBEAT_TIMEOUT_MS: u8 = 5;
const KEY_SERVER_ID: u8 = 6;
const KEY_REPLICA_COUNT: u8 = 7;
const KEY_MAX_FRAME_PAYLOAD: u8 = 8;

/// What one end tells the other at the start of a v2 session. `None` means "not said".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Protocol version (2).
    pub version: Option<u8>,
    /// Bytes the sender will buffer per stream: the other end's initial send credit.
    pub stream_window: Option<u32>,
    /// Concurrent streams the sender accepts.
    pub max_streams: Option<u32>,
    /// How often the sender pings.
    pub heartbeat_interval_ms: Option<u32>,
    /// How long the sender waits for a Pong before it drops the session.
    pub heartbeat_timeout_ms: Option<u32>,
    /// The server replica's id (server → agent).
    pub server_id: Option<String>,
    /// How many server replicas there are (server → agent).
    pub replica_count: Option<u32>,
    /// The largest Data payload the sender accepts.
    pub max_frame_payload: Option<u32>,
}

impl Settings {
    pub(crate) fn encoded_len(&self) -> usize {
        let u32s = [
            self.stream_window,
            self.max_streams,
            self.heartbeat_interval_ms,
            self.heartbeat_timeout_ms,
            self.replica_count,
            self.max_frame_payload,
        ];
        self.version.map_or(0, |_| 3)
            + u32s.iter().flatten().count() * 6
            + self
                .server_id
                .as_ref()
                .map_or(0, |id| 2 + id.len().min(255))
    }

    pub(crate) fn encode_into(&self, out: &mut BytesMut) {
        if let Some(version) = self.version {
            out.put_slice(&[KEY_VERSION, 1, version]);
        }
        let mut put_u32 = |key, value: Option<u32>| {
            if let Some(value) = value {
                out.put_slice(&[key, 4]);
                out.put_u32(value);
            }
        };
        put_u32(KEY_STREAM_WINDOW, self.stream_window);
        put_u32(KEY_MAX_STREAMS, self.max_streams);
        put_u32(KEY_HEARTBEAT_INTERVAL_MS, self.heartbeat_interval_ms);
        put_u32(KEY_HEARTBEAT_TIMEOUT_MS, self.heartbeat_timeout_ms);
        put_u32(KEY_REPLICA_COUNT, self.replica_count);
        put_u32(KEY_MAX_FRAME_PAYLOAD, self.max_frame_payload);
        if let Some(id) = &self.server_id {
            // A server id is an operator-chosen name; longer than 255 bytes is cut at a char boundary.
            let mut end = id.len().min(255);
            while !id.is_char_boundary(end) {
                end -= 1;
            }
            out.put_slice(&[KEY_SERVER_ID, end as u8]);
            out.put_slice(&id.as_bytes()[..end]);
        }
    }

    pub(crate) fn decode(mut input: &[u8]) -> Result<Self, FrameError> {
        let malformed = |reason| FrameError::Malformed {
            frame: "Settings",
            reason,
        };
        let mut settings = Settings::default();
        let mut seen = 0u32;
        while !input.is_empty() {
            let [key, len, rest @ ..] = input else {
                return Err(malformed("truncated entry header"));
            };
            let len = usize::from(*len);
            if rest.len() < len {
                return Err(malformed("entry longer than the payload"));
            }
            let (value, tail) = rest.split_at(len);
            input = tail;
            if (1..=31).contains(key) {
                if seen & (1 << key) != 0 {
                    return Err(malformed("duplicate key"));
                }
                seen |= 1 << key;
            }
            let as_u32 = || {
                <[u8; 4]>::try_from(value)
                    .map(u32::from_be_bytes)
                    .map_err(|_| malformed("integer entry is not 4 bytes"))
            };
            match *key {
                KEY_VERSION => match value {
                    [version] => settings.version = Some(*version),
                    _ => return Err(malformed("version entry is not 1 byte")),
                },
                KEY_STREAM_WINDOW => settings.stream_window = Some(as_u32()?),
                KEY_MAX_STREAMS => settings.max_streams = Some(as_u32()?),
                KEY_HEARTBEAT_INTERVAL_MS => settings.heartbeat_interval_ms = Some(as_u32()?),
                KEY_HEARTBEAT_TIMEOUT_MS => settings.heartbeat_timeout_ms = Some(as_u32()?),
                KEY_REPLICA_COUNT => settings.replica_count = Some(as_u32()?),
                KEY_MAX_FRAME_PAYLOAD => settings.max_frame_payload = Some(as_u32()?),
                KEY_SERVER_ID => {
                    let id = std::str::from_utf8(value)
                        .map_err(|_| malformed("server id is not UTF-8"))?;
                    settings.server_id = Some(id.to_owned());
                }
                _ => {} // a newer peer's key: skipped on purpose
            }
        }
        Ok(settings)
    }
}
