//! The only modules that import network-protocol crates. [`websocket`] adapts a WebSocket to
//! the mux's frame transport and performs both sides of the upgrade with version negotiation.
//! (TLS joins it in `tls` with the server/agent work.)

pub mod tls;
pub mod tls_server;
pub mod websocket;
