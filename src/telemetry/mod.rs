//! Logging for both binaries (the only module that imports `tracing-subscriber`): the `[log]`
//! format — journald's native protocol when stderr is the journal, JSON when asked (pods), text
//! otherwise — and a level that a reload can change.

mod journald;
pub mod lines;
mod utc;
mod stderr;

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogFormat, RuntimeConfig};

pub use journald::{stderr_is_journal, JournaldLayer, JOURNAL_SOCKET};
pub use stderr::{dropped as dropped_log_lines, flush, QUEUED_LINES};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Whether `filter` is a valid level/filter (`info`, `warn,argocd_proxy=debug`).
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::builder()
        .parse(filter)
        .map(drop)
        .map_err(|error| error.to_string())
}

/// `RUST_LOG`, when set, overrides `[log] level` (at start and on reload).
fn env_filter() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|filter| check_filter(filter).is_ok())
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init(config: &RuntimeConfig) {
    let level = env_filter().unwrap_or_else(|| config.log_level.clone());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(level));
    let format = match config.log_format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        chosen => chosen,
    };
    if matches!(format, LogFormat::Text | LogFormat::Json) {
        stderr::start();
    }
    // Colour only for a human at a terminal; files, pipes and journald get plain text.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(stderr::QueuedStderr)
            .with_ansi(terminal)
            .event_format(lines::TextLines::new(lines::Utc))
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(lines::JsonLines::new(lines::Utc))
            .with_writer(stderr::QueuedStderr)
    });
    let journal = (format == LogFormat::Journald)
        .then(|| JournaldLayer::new(JOURNAL_SOCKET.into(), program_name()));
    if tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(journal)
        .try_init()
        .is_ok()
    {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a reloaded `[log] level` (not when `RUST_LOG` overrides it).
pub fn set_level(level: &str) {
    if env_filter().is_some() {
        return;
    }
    if let Some(handle) = LEVEL.get() {
        if let Err(error) = handle.reload(EnvFilter::new(level)) {
            tracing::warn!(%error, "cannot change the log level");
        }
    }
}

fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "argocd-proxy".to_owned())
}
