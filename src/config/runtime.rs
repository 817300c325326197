//! What both binaries share around their own work: `[log]` (level and format), how often
//! the config file is polled for changes (`config_poll_interval`), and the nap of a quiet
//! process before each sleep (`idle_nap`, `crate::nap`).

use std::time::Duration;

use serde::Deserialize;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald's native protocol when `$JOURNAL_STREAM` says stderr is the journal, else text.
    #[default]
    Auto,
    /// Human-readable lines on stderr (colour only on a terminal).
    Text,
    /// One JSON object per line on stderr (pods, log shippers).
    Json,
    /// journald's native protocol, with fields such as `CLUSTER=` and `PRIORITY=`.
    Journald,
}

/// The raw `[log]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    level: Option<String>,
    #[serde(default)]
    format: LogFormat,
}

/// Logging and reload settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// A tracing filter (`info`, `warn,argocd_proxy=debug`). `RUST_LOG`, when set, wins. Changes
    /// on reload.
    pub log_level: String,
    /// Set at start; a reload does not change it.
    pub log_format: LogFormat,
    /// How often the config file and the files it names are checked for changes; `None`
    /// (`"0s"`): only SIGHUP reloads. Default 2 s.
    pub config_poll_interval: Option<Duration>,
    /// How long the process naps before each sleep once it has done no work but heartbeats
    /// for a while (`crate::nap`); `None` (`"0s"`): never. Set at start.
    pub idle_nap: Option<Duration>,
}

/// The default `config_poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);

/// The longest `idle_nap`: the first request after a quiet spell waits up to one nap.
pub const MAX_IDLE_NAP: Duration = Duration::from_millis(20);

impl RawLog {
    /// `idle_nap` is `nap` if set, else `default_nap`.
    pub(crate) fn validate(
        self,
        poll: Option<Duration>,
        nap: Option<Duration>,
        default_nap: Duration,
    ) -> Result<RuntimeConfig, String> {
        let log_level = self.level.unwrap_or_else(|| "info".to_owned());
        crate::telemetry::check_filter(&log_level)
            .map_err(|error| format!("[log] level = \"{log_level}\": {error}"))?;
        let config_poll_interval = match poll.unwrap_or(DEFAULT_POLL) {
            zero if zero.is_zero() => None,
            // Reading a few small files is cheap, but not in a hot loop.
            short if short < Duration::from_millis(100) => {
                return Err("config_poll_interval must be 0s (off) or at least 100ms".into())
            }
            interval => Some(interval),
        };
        let idle_nap = match nap.unwrap_or(default_nap) {
            zero if zero.is_zero() => None,
            long if long > MAX_IDLE_NAP => {
                return Err(format!(
                    "idle_nap must be at most {}ms: the first request after a quiet spell waits up to one nap",
                    MAX_IDLE_NAP.as_millis()
                ))
            }
            nap => Some(nap),
        };
        Ok(RuntimeConfig {
            log_level,
            log_format: self.format,
            config_poll_interval,
            idle_nap,
        })
    }
}
