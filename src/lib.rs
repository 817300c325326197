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
//! A downloaded byte is not copied in user space at either end while a transfer is in bulk: the
//! agent reads an upstream burst into the buffer that becomes a Data frame's payload (a
//! [`protocol::Message`] keeps the 5-byte header beside it), masks it there and writes it with
//! `writev`; the server's WebSocket reader splits payloads out of the buffer it read into, and
//! the relay writes them to the client from there.
//!
//! Modules, in data-flow order from the wire up:
//! - [`protocol`]: bytes on the wire only: v1 frames (the Go implementation's, byte for byte),
//!   v2 frames, settings and the version negotiation rules. Imports nothing from the crate.
//! - [`mux`]: many byte streams over one frame transport, with per-stream credits (v2), bounded
//!   buffers, heartbeats and reset-vs-EOF semantics. Imports only `protocol`, and the leaf
//!   [`nap`] to mark work (a quiet process naps before its sleeps, so the heartbeats of
//!   thousands of idle agents are answered in batches; `listen` marks its requests too).
//! - [`transport`]: the only modules importing the WebSocket and TLS crates: the WebSocket ⇄
//!   frame adapter with both sides of the upgrade, rustls client and server configurations
//!   (mTLS, rotation), and the agent's egress `CONNECT` through an HTTP proxy.
//! - [`http`]: HTTP hygiene both binaries share (hop-by-hop stripping, `Status` bodies);
//!   `h1`: our own HTTP/1.1 client and server (pure codecs; an exchange, or a serve loop, over
//!   any connection read in pieces; bodies that hold no buffer while they wait): the server's
//!   relay is its client on tunnel streams and its internal listener's HTTP/1.1 server, the
//!   agent is its server on tunnel streams and its client for watches and HTTP/1.1-only
//!   destinations — an idle watch costs
//!   ~3 KiB at each end (S9); [`listen`]: the accept loop of every listener.
//! - [`server`]: public `/connect` → negotiation → session in the registry; internal
//!   `/tunnel/<cluster-id>/…` → a stream on that cluster's session, on which the server writes
//!   the request and reads the answer with its own HTTP/1.1 client (an idle watch holds the
//!   stream and a decoder, ~2 KiB); ops endpoints.
//! - [`agent`]: dial → negotiate → accept streams → forward each request to the one configured
//!   upstream with the agent's own credentials (watches, followed logs, and bodiless requests
//!   to an HTTP/1.1-only destination over `h1` connections of their own; HTTP/2, bodies and
//!   upgrades over hyper's clients); health endpoints.
//! - [`config`] (TOML → validated typed config), [`cli`] (what both binaries share),
//!   [`reload`] (SIGHUP and config-file changes → the server's or agent's `Reloader`),
//!   [`metrics`], [`telemetry`] (text, JSON or journald; a reloadable level; text and JSON lines
//!   formatted by our own `lines`, the library's bytes at half the CPU per request; lines and
//!   journald datagrams leave the event loop through bounded queues to threads that write them,
//!   so a slow stderr or journal drops lines instead of stalling tunnels), [`shutdown`],
//!   [`systemd`] (sd_notify), [`host`] (fd limit and monotonic clock, via rustix), and the
//!   static builds' heap allocator (`allocator`: dlmalloc in place of musl's).
//!
//! `server` and `agent` never import each other; both stand on the modules above them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod protocol;
pub mod mux;
pub mod transport;
pub mod http;
mod h1;
pub mod listen;
pub mod server;
pub mod agent;
pub mod config;
pub mod cli;
pub mod metrics;
pub mod shutdown;
pub mod systemd;
pub mod reload;
pub mod host;
pub mod nap;
mod file_version;
pub mod telemetry;
mod allocator;
