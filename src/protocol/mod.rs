//! Bytes on the wire, and nothing else: frames, the v2 settings payload and the version
//! negotiation rules. No sockets, no tasks, nothing from the rest of the crate.
//!
//! v1 is the Go implementation's protocol (seed-protocol.md §1), kept byte-compatible; v2 is
//! ours (DESIGN.md §3), chosen per session by [`handshake`] and used only when both ends agree.

pub mod frame;
pub mod handshake;
pub mod message;
pub mod settings;

pub use frame::{
    decode, encode, Frame, FrameError, ResetReason, StreamId, HEADER_LEN, MAX_MESSAGE,
};
pub use handshake::Version;
pub use message::{data_message, Message, Payload};
pub use settings::Settings;
