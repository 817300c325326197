//! The only modules that import network-protocol crates. [`websocket`] adapts a WebSocket to
//! the mux's frame transport and performs both sides of the upgrade with version negotiation.
//! [`tls`] builds rustls client configs (the agent's view of its server and upstream),
//! [`tls_server`] the server listeners' (mTLS, rotation, client-certificate names).
//! [`proxy`] opens the agent's tunnel through an egress HTTP proxy (`CONNECT`), and [`tcp`]
//! dials a name that may resolve to several addresses (each gets a share of the timeout).

pub mod proxy;
pub mod tcp;
pub mod tls;
pub mod tls_server;
pub mod websocket;
