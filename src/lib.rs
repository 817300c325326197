//! argocd-proxy: lets a managed Argo CD reach Kubernetes clusters that accept no inbound
//! connections.
//!
//! # Layout
//!
//! Two binaries over one library. `argocd-proxy-agent` runs beside a customer's Kubernetes API
//! and dials **out** over one WebSocket to `argocd-proxy-server`; Argo CD's requests to
//! `/tunnel/<cluster-id>/…` on the server travel through that WebSocket as byte streams.
//!
//! ```text
//! server: Argo CD ─HTTP─► server ─► mux::SessionHandle::open ─► transport (WebSocket) ─┐
//! agent:  upstream ◄─HTTP─ agent ◄─ mux::Incoming::accept    ◄─ transport (WebSocket) ◄┘
//! ```
//!
//! Modules, in data-flow order from the wire up:
//! - [`protocol`]: bytes on the wire only: v1 frames (the Go implementation's, byte for byte),
//!   v2 frames, settings and the version negotiation rules. Imports nothing from the crate.
//! - [`mux`]: many byte streams over one frame transport, with per-stream credits (v2), bounded
//!   buffers, heartbeats and reset-vs-EOF semantics. Imports only `protocol`.
//! - [`transport`]: the only module that imports the WebSocket crate; adapts a WebSocket to the
//!   mux's frame transport and performs both sides of the upgrade with negotiation.
//!
//! The HTTP server and agent (routing, forwarding, credentials) build on these and come next.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod mux;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod transport;
