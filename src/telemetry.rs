//! Logging for both binaries: text on a terminal, JSON when `ARGOCD_PROXY_LOG_FORMAT=json`
//! (pods); the level from `RUST_LOG`, default `info`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("ARGOCD_PROXY_LOG_FORMAT").is_ok_and(|format| format == "json");
    // Colour only for a human at a terminal; files, pipes and journald get plain text.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
