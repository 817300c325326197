//! Floors (issue 6): what the libraries the tunnel is built on cost before any of our code runs,
//! so that a bar sitting below one is found and argued with numbers. `bench/run` runs these as
//! scenario F, in the same run as the scenarios they bound; alone:
//!
//! ```text
//! cargo run --release --example floors -- idle raw|hyper-server|hyper-client|h2 [STREAMS]
//! cargo run --release --example floors -- wire tcp|tls|ws|tls-ws|relay [MIB]
//! cargo run --release --example floors -- heartbeat [SESSIONS] [WINDOW_S]
//! cargo run --release --example floors -- relay ADDR [LIFETIME_S]
//! ```
//!
//! `idle`: RSS per idle watch-like stream (a request answered with a chunked head and one event,
//! then held open) over loopback TCP, both ends in this process; the slope between the first
//! and the second half of the streams. `raw` is the control: plain
//! tokio tasks and sockets on both ends, the least any design holds. `hyper-server` puts a hyper
//! HTTP/1 server connection on one end, `hyper-client` a hyper HTTP/1 client connection; each
//! minus `raw` is what one hyper connection costs an idle stream (S9's floor). `h2`: every
//! stream on one HTTP/2 connection, hyper at both ends (what Argo CD's client-go speaks over
//! TLS), per stream with both ends counted.
//!
//! `wire`: one direction's throughput between two threads (a single-threaded runtime each, as
//! the two binaries are) over one loopback connection: `tcp`, `tls` (rustls), `ws` (tungstenite,
//! 64 KiB binary messages, as the mux sends; client to server, masked, as a download crosses the
//! tunnel), `tls-ws` (both); `relay`: plain TCP through two relays, each a thread copying
//! through a 64 KiB buffer, as a download crosses the agent and the server (three connections
//! instead of one). The ceilings for the tunnel's data path (S1's floor). `heartbeat`: S7's
//! floor, the CPU a single-threaded server spends answering one small message per connection
//! every 10 s on SESSIONS plain connections (heartbeat.rs). `relay`: S2's floor, a process
//! relaying every connection to ADDR unparsed (relay.rs); the harness chains two in front of
//! nginx. Each run prints one JSON line.

mod heartbeat;
mod idle;
mod relay;
mod wire;

use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The watch event every stream gets once.
const EVENT: &[u8] = br#"{"type":"ADDED","object":{"kind":"ConfigMap","metadata":{"name":"x"}}}"#;
const REQUEST: &[u8] = b"GET /api/v1/configmaps?watch=true HTTP/1.1\r\nhost: floor\r\n\r\n";
/// Connects in flight at once (the listen backlog is finite).
const CONNECTS_IN_FLIGHT: usize = 200;
/// The bound on every wait: a floor that cannot finish fails with a message.
const DEADLINE: Duration = Duration::from_secs(120);
const WIRE_CHUNK: usize = 64 * 1024;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    let count = |default: usize| arg(2).map_or(Ok(default), str::parse);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let kind: &'static str = match arg(1) {
        Some("raw") => "raw",
        Some("hyper-server") => "hyper-server",
        Some("hyper-client") => "hyper-client",
        Some("h2") => "h2",
        Some("tcp") => "tcp",
        Some("tls") => "tls",
        Some("ws") => "ws",
        Some("relay") => "relay",
        Some("tls-ws") => "tls-ws",
        _ => "",
    };
    let line = match (arg(0), kind) {
        (Some("idle"), "raw" | "hyper-server" | "hyper-client" | "h2") => {
            let streams = count(2000)?;
            runtime()?
                .block_on(async { tokio::time::timeout(DEADLINE, idle::idle(kind, streams)).await })
                .map_err(|_| "the streams did not all come up in time")??
        }
        (Some("wire"), "tcp" | "tls" | "ws" | "tls-ws" | "relay") => {
            wire::wire(kind, count(1024)?)?
        }
        (Some("relay"), _) => {
            let to = arg(1).ok_or("relay needs an address")?.parse()?;
            let lifetime = arg(2).map_or(Ok(3600.0), str::parse::<f64>)?;
            relay::relay(to, Duration::from_secs_f64(lifetime))?
        }
        (Some("heartbeat"), _) => {
            let sessions = arg(1).map_or(Ok(10_000), str::parse)?;
            let window = arg(2).map_or(Ok(20.0), str::parse::<f64>)?;
            heartbeat::heartbeat(sessions, Duration::from_secs_f64(window))?
        }
        _ => {
            return Err(
                "usage: floors idle raw|hyper-server|hyper-client|h2 [STREAMS] \
                        | floors wire tcp|tls|ws|tls-ws|relay [MIB] \
                        | floors heartbeat [SESSIONS] [WINDOW_S] \
                        | floors relay ADDR [LIFETIME_S]"
                    .into(),
            )
        }
    };
    println!("{line}");
    Ok(())
}

/// Resident set size of this process, KiB.
fn rss_kib() -> Result<u64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}
