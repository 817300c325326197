//! Applying a reloaded `agent.toml` without dropping the tunnel: the upstream (target, CA,
//! token file) applies to the next stream; the server URL, tunnel token and `server_ca` apply
//! from the next dial (the running tunnel stays up: restart to move it now); `[log] level`
//! changes at once. `health_listen` and `process_buffer` are fixed at start.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::{AgentConfig, Check};
use crate::reload::Applied;

use super::AgentState;

/// Reloads the config of a running agent.
#[derive(Clone)]
pub struct Reloader {
    pub(super) state: Arc<AgentState>,
}

impl Reloader {
    /// Reads the config file again and applies it, or says why not (the running config stays).
    pub fn reload(&self) -> Result<Applied, String> {
        let state = &self.state;
        let old = state.config();
        let mut new =
            AgentConfig::load(&old.path, Check::Files).map_err(|error| error.to_string())?;
        // Build everything that can fail before changing anything.
        let destinations = super::destination::Destinations::build(&new)
            .map_err(|error| format!("cannot load a CA: {error}"))?;
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        crate::telemetry::set_level(&new.runtime.log_level);
        if old.health_listen != new.health_listen {
            tracing::warn!("health_listen changed; it takes effect on restart");
        }
        if old.limits.process_buffer != new.limits.process_buffer {
            tracing::warn!("[limits] process_buffer changed; it takes effect on restart");
        }
        if old.runtime.log_format != new.runtime.log_format {
            tracing::warn!("[log] format changed; it takes effect on restart");
        }
        if old.runtime.idle_nap != new.runtime.idle_nap {
            tracing::warn!("idle_nap changed; it takes effect on restart");
        }
        if old.server_url != new.server_url
            || old.token != new.token
            || old.server_ca != new.server_ca
        {
            tracing::info!(
                "server_url, token or server_ca changed; the running tunnel stays, the next dial uses them"
            );
        }
        let server = new.server_url.clone();
        let watched = new.watched.clone();
        let seen = std::mem::take(&mut new.seen);
        let poll = new.runtime.config_poll_interval;
        *state
            .destinations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(destinations);
        *state
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(new);
        let tunnel = if state.connected.load(Ordering::Acquire) {
            "tunnel up"
        } else {
            "no tunnel yet"
        };
        Ok(Applied {
            status: format!("reloaded; {tunnel} to {server}"),
            watched,
            seen,
            poll,
        })
    }
}
