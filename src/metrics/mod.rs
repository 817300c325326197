//! Prometheus text exposition for the few series each binary exports. Each binary builds its
//! own set (the Go binaries exported each other's; B19), keeping the Go metric names so
//! existing dashboards work. Hand-rolled: a labelled counter/gauge family is all we need.

mod family;

pub use family::Family;

/// Both binaries: log lines dropped because stderr did not keep up (`telemetry`).
fn log_dropped() -> Family {
    Family::counter(
        "log_lines_dropped_total",
        "Log lines dropped because stderr or the journal was not keeping up.",
        &[],
    )
}

/// Both binaries: naps of a quiet process before a sleep (`nap`).
fn idle_naps() -> Family {
    Family::counter(
        "idle_naps_total",
        "Naps taken before a sleep after a while of no work but heartbeats (idle_nap).",
        &[],
    )
}

/// The process-wide counters both binaries export, kept by their own modules.
struct ProcessCounters {
    log_dropped: Family,
    idle_naps: Family,
}

impl ProcessCounters {
    fn new() -> Self {
        Self {
            log_dropped: log_dropped(),
            idle_naps: idle_naps(),
        }
    }
}

/// The exposition text: the process-wide counters, brought up to date first (the telemetry
/// writer counts drops on its own, `nap` its naps), then the binary's other `families`.
fn render(process: &ProcessCounters, families: &[&Family]) -> String {
    process
        .log_dropped
        .set(&[], crate::telemetry::dropped_log_lines() as f64);
    process.idle_naps.set(&[], crate::nap::naps() as f64);
    let mut out = String::new();
    for family in [&process.log_dropped, &process.idle_naps]
        .into_iter()
        .chain(families.iter().copied())
    {
        family.render(&mut out);
    }
    out
}

/// The methods Go's metrics name; anything else is `OTHER` (a client cannot mint label values).
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// The server's series.
pub struct ServerMetrics {
    /// `agents_connected`: live agent tunnels.
    pub agents_connected: Family,
    /// `auth_failures_total{endpoint}`.
    pub auth_failures: Family,
    /// `agents_replaced_total{cluster}`: live tunnels replaced by a newer agent.
    pub agents_replaced: Family,
    /// `agents_standing_by_total{cluster}`: displaced agents refused with 409.
    pub agents_standing_by: Family,
    /// `proxy_requests_total{cluster,method,code}`.
    pub requests: Family,
    /// `tunnel_active_connections{cluster}`: requests in flight.
    pub active: Family,
    /// `proxy_rate_limited_total{cluster}`: requests refused with 429.
    pub rate_limited: Family,
    /// `tunnel_streams{cluster}`: streams open on the cluster's tunnel (read at scrape time).
    pub streams: Family,
    /// `tunnel_buffered_bytes{cluster}`: received bytes waiting for their readers.
    pub buffered: Family,
    /// `tunnel_stream_resets_total{cluster,direction,reason}`: streams reset by us (`sent`) or
    /// the agent (`received`), by reason (`cancelled`, `refused`, `busy`, `open_timeout`…).
    pub resets: Family,
    /// `tunnel_stream_overflows_total{cluster}`: v1 streams reset at their buffer limit.
    pub overflows: Family,
    /// `tunnel_credit_stalls_total{cluster}`: times a writer waited for the agent's credit.
    pub credit_stalls: Family,
    /// `tunnel_bytes_total{cluster,direction}`: stream payload bytes to (`sent`) and from
    /// (`received`) the agent.
    pub bytes: Family,
    /// `tunnel_pending_opens{cluster}`: streams opened and not answered yet.
    pub pending_opens: Family,
    /// `extension_requests_total{extension,cluster,code}`: requests on the extensions listener
    /// (`extension` and `cluster` are `-` when the request named none that is configured).
    pub extension_requests: Family,
    /// `extension_request_duration_seconds_total{extension,cluster}`: time to the response
    /// head, summed (divide by `extension_requests_total` for the mean).
    pub extension_seconds: Family,
    /// `extension_active_requests{extension}`: extension requests in flight.
    pub extension_active: Family,
    /// `tunnel_heartbeat_rtt_seconds{cluster}`: Ping → Pong time of the last heartbeat.
    pub rtt: Family,
    /// `log_lines_dropped_total` and `idle_naps_total`: read at each scrape.
    process: ProcessCounters,
}

impl ServerMetrics {
    /// A fresh set.
    pub fn new() -> Self {
        Self {
            agents_connected: Family::gauge("agents_connected", "Agent tunnels connected.", &[]),
            auth_failures: Family::counter(
                "auth_failures_total",
                "Rejected agent credentials.",
                &["endpoint"],
            ),
            agents_replaced: Family::counter(
                "agents_replaced_total",
                "Live agent tunnels replaced by a newer agent of the same cluster.",
                &["cluster"],
            ),
            agents_standing_by: Family::counter(
                "agents_standing_by_total",
                "Connects refused with 409 because a newer agent of the cluster still serves.",
                &["cluster"],
            ),
            requests: Family::counter(
                "proxy_requests_total",
                "Requests proxied, by cluster, method and status.",
                &["cluster", "method", "code"],
            ),
            active: Family::gauge(
                "tunnel_active_connections",
                "Requests in flight, by cluster.",
                &["cluster"],
            ),
            rate_limited: Family::counter(
                "proxy_rate_limited_total",
                "Requests refused by a cluster's rate limit.",
                &["cluster"],
            ),
            streams: Family::gauge(
                "tunnel_streams",
                "Streams open on the cluster's tunnel.",
                &["cluster"],
            ),
            buffered: Family::gauge(
                "tunnel_buffered_bytes",
                "Received bytes waiting for their readers.",
                &["cluster"],
            ),
            resets: Family::counter(
                "tunnel_stream_resets_total",
                "Streams reset, by who reset them and why (on the current tunnel).",
                &["cluster", "direction", "reason"],
            ),
            overflows: Family::counter(
                "tunnel_stream_overflows_total",
                "v1 streams reset at their buffer limit (on the current tunnel).",
                &["cluster"],
            ),
            credit_stalls: Family::counter(
                "tunnel_credit_stalls_total",
                "Writes that waited for the agent's flow-control credit (on the current tunnel).",
                &["cluster"],
            ),
            bytes: Family::counter(
                "tunnel_bytes_total",
                "Stream payload bytes to and from the agent (on the current tunnel).",
                &["cluster", "direction"],
            ),
            pending_opens: Family::gauge(
                "tunnel_pending_opens",
                "Streams opened and not answered by the agent yet.",
                &["cluster"],
            ),
            extension_requests: Family::counter(
                "extension_requests_total",
                "Requests on the extensions listener.",
                &["extension", "cluster", "code"],
            ),
            extension_seconds: Family::counter(
                "extension_request_duration_seconds_total",
                "Seconds to the response head of extension requests, summed.",
                &["extension", "cluster"],
            ),
            extension_active: Family::gauge(
                "extension_active_requests",
                "Extension requests in flight.",
                &["extension"],
            ),
            rtt: Family::gauge(
                "tunnel_heartbeat_rtt_seconds",
                "Ping to Pong time of the tunnel's last heartbeat.",
                &["cluster"],
            ),
            process: ProcessCounters::new(),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        render(
            &self.process,
            &[
                &self.agents_connected,
                &self.auth_failures,
                &self.agents_replaced,
                &self.agents_standing_by,
                &self.requests,
                &self.active,
                &self.rate_limited,
                &self.streams,
                &self.buffered,
                &self.resets,
                &self.overflows,
                &self.credit_stalls,
                &self.bytes,
                &self.pending_opens,
                &self.extension_requests,
                &self.extension_seconds,
                &self.extension_active,
                &self.rtt,
            ],
        )
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The agent's series.
pub struct AgentMetrics {
    /// `agent_connected`: 1 while the tunnel is up.
    pub connected: Family,
    /// `agent_standby`: 1 while another agent serves the cluster and this one waits.
    pub standby: Family,
    /// `agent_reconnects_total`.
    pub reconnects: Family,
    /// `agent_upstream_requests_total`.
    pub upstream_requests: Family,
    /// `agent_upstream_errors_total{reason}`.
    pub upstream_errors: Family,
    /// `agent_tunnel_heartbeat_rtt_seconds`: Ping → Pong time of the tunnel's last heartbeat.
    pub rtt: Family,
    /// `log_lines_dropped_total` and `idle_naps_total`: read at each scrape.
    process: ProcessCounters,
}

impl AgentMetrics {
    /// A fresh set.
    pub fn new() -> Self {
        Self {
            connected: Family::gauge(
                "agent_connected",
                "1 while the tunnel to the server is up.",
                &[],
            ),
            standby: Family::gauge(
                "agent_standby",
                "1 while another agent serves this cluster and this one stands by.",
                &[],
            ),
            reconnects: Family::counter(
                "agent_reconnects_total",
                "Tunnel reconnect attempts.",
                &[],
            ),
            upstream_requests: Family::counter(
                "agent_upstream_requests_total",
                "Requests forwarded to the upstream.",
                &[],
            ),
            rtt: Family::gauge(
                "agent_tunnel_heartbeat_rtt_seconds",
                "Ping to Pong time of the tunnel's last heartbeat.",
                &[],
            ),
            upstream_errors: Family::counter(
                "agent_upstream_errors_total",
                "Requests that failed at the agent, by reason.",
                &["reason"],
            ),
            process: ProcessCounters::new(),
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        render(
            &self.process,
            &[
                &self.connected,
                &self.standby,
                &self.reconnects,
                &self.upstream_requests,
                &self.upstream_errors,
                &self.rtt,
            ],
        )
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod docs_tests {
    use super::*;

    /// docs/metrics.md lists every series either binary exports.
    #[test]
    fn every_series_is_documented() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"),
        )
        .unwrap();
        let text = ServerMetrics::new().render() + &AgentMetrics::new().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
}
