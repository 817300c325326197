//! Applying a reloaded `server.toml` to a running server without dropping tunnels: clusters
//! added take agents at once; a removed cluster's tunnel drains and closes (its token no
//! longer authenticates); a rotated token applies to the next `/connect` while the connected
//! agent stays; `[log] level` changes at once. Listener addresses, listener limits and
//! `process_buffer` are fixed at start: a change is logged as needing a restart.

use std::sync::Arc;

use crate::config::{Check, ListenerTls, ServerConfig};
use crate::reload::Applied;
use crate::transport::tls_server::{ServerTlsConfig, TlsSlot};

use super::ServerState;

/// Reloads the config of a running server.
#[derive(Clone)]
pub struct Reloader {
    pub(super) state: Arc<ServerState>,
}

impl Reloader {
    /// Reads the config file again and applies it, or says why not (the running config stays).
    pub fn reload(&self) -> Result<Applied, String> {
        let old = self.state.config();
        let new = ServerConfig::load(&old.path, Check::Files).map_err(|error| error.to_string())?;
        // Security settings that depend on TLS (client certificates, cert-bound callers) must
        // not take effect on a listener that cannot carry them: such a change is refused.
        if let Some(listener) = tls_switched(&old, &new) {
            return Err(format!(
                "{listener} TLS turned on or off: that needs a restart (the running config stays)"
            ));
        }
        // Certificates first: a bad new file fails the whole reload and keeps everything.
        let public = rotated("public", &self.state.public_tls, &new.public_tls)?;
        let internal = rotated("internal", &self.state.internal_tls, &new.internal_tls)?;
        let new_extensions_tls = new
            .extensions
            .as_ref()
            .and_then(|extensions| extensions.tls.clone());
        let extensions = rotated(
            "extensions",
            &self.state.extensions_tls,
            &new_extensions_tls,
        )?;
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        let applied = self.apply(new);
        for (slot, config) in [
            (&self.state.public_tls, public),
            (&self.state.internal_tls, internal),
            (&self.state.extensions_tls, extensions),
        ] {
            if let (Some(slot), Some(config)) = (slot, config) {
                slot.replace(config);
            }
        }
        Ok(applied)
    }

    /// Applies an already validated config (certificates are rotated by [`Self::reload`]).
    pub(crate) fn apply(&self, mut new: ServerConfig) -> Applied {
        let state = &self.state;
        let old = state.config();
        crate::telemetry::set_level(&new.runtime.log_level);
        for note in restart_needed(&old, &new) {
            tracing::warn!("{note} changed; it takes effect on restart");
        }
        for cluster in &new.clusters {
            match old.cluster(&cluster.id) {
                None => tracing::info!(cluster = %cluster.id, "cluster added"),
                Some(before) if before.token != cluster.token => tracing::info!(
                    cluster = %cluster.id,
                    "token changed; the connected agent stays, the next connection needs the new token"
                ),
                Some(_) => {}
            }
        }
        let removed: Vec<String> = old
            .clusters
            .iter()
            .filter(|before| new.cluster(&before.id).is_none())
            .map(|cluster| cluster.id.clone())
            .collect();
        let grace = new.limits.tunnel.open_timeout;
        let clusters = new.clusters.len();
        let watched = new.watched.clone();
        let seen = std::mem::take(&mut new.seen);
        let poll = new.runtime.config_poll_interval;
        // Swap first: from here on requests for a removed cluster get 404 and its agent's
        // token no longer authenticates, so draining its tunnel cannot race a new stream in.
        *state
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(new);
        let config = state.config();
        state
            .registry
            .forget_unless(|cluster| config.cluster(cluster).is_some());
        for (cluster, session) in state.registry.sessions() {
            if removed.contains(&cluster) {
                tracing::info!(%cluster, "cluster removed; closing its tunnel");
                super::public::retire(state, session, grace);
            }
        }
        Applied {
            status: format!(
                "reloaded: {clusters} clusters, {} agents connected",
                state.registry.connected()
            ),
            watched,
            seen,
            poll,
        }
    }
}

/// The listener's new TLS config, read from the (possibly rotated) files; `None` when the
/// listener has no TLS now or would switch between plain and TLS (that needs a restart).
fn rotated(
    listener: &'static str,
    slot: &Option<Arc<TlsSlot>>,
    tls: &Option<ListenerTls>,
) -> Result<Option<ServerTlsConfig>, String> {
    match (slot, tls) {
        (Some(_), Some(tls)) => super::listener_tls(listener, tls)
            .map(Some)
            .map_err(|error| error.to_string()),
        _ => Ok(None),
    }
}

/// The listener whose TLS would be switched on or off by `new`, if any.
fn tls_switched(old: &ServerConfig, new: &ServerConfig) -> Option<&'static str> {
    let extensions_tls =
        |config: &ServerConfig| config.extensions.as_ref().map(|e| e.tls.is_some());
    if old.public_tls.is_some() != new.public_tls.is_some() {
        Some("[public]")
    } else if old.internal_tls.is_some() != new.internal_tls.is_some() {
        Some("[internal]")
    } else if extensions_tls(old).is_some_and(|on| Some(on) != extensions_tls(new)) {
        Some("[extensions]")
    } else {
        None
    }
}

/// What a reload cannot change in a running server.
fn restart_needed(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if old.public_listen != new.public_listen {
        fixed.push("[public] listen");
    }
    if old.internal_listen != new.internal_listen {
        fixed.push("[internal] listen");
    }
    if old.ops_listen != new.ops_listen {
        fixed.push("[ops] listen");
    }
    let extensions = |config: &ServerConfig| config.extensions.as_ref().map(|e| e.listen);
    if extensions(old) != extensions(new) {
        fixed.push("[extensions] listen (or the listener itself)");
    }
    let (before, after) = (&old.limits, &new.limits);
    if before.max_request_header_bytes != after.max_request_header_bytes
        || before.header_read_timeout != after.header_read_timeout
        || before.max_connections_per_listener != after.max_connections_per_listener
    {
        fixed.push("a listener limit");
    }
    if before.process_buffer != after.process_buffer {
        fixed.push("[limits] process_buffer");
    }
    if before.max_h2_streams_per_connection != after.max_h2_streams_per_connection {
        fixed.push("[limits] max_h2_streams_per_connection");
    }
    if before.shutdown_grace != after.shutdown_grace {
        fixed.push("[limits] shutdown_grace");
    }
    if old.runtime.log_format != new.runtime.log_format {
        fixed.push("[log] format");
    }
    if old.runtime.idle_nap != new.runtime.idle_nap {
        fixed.push("idle_nap");
    }
    fixed
}
