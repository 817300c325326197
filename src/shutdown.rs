//! Process signals that start a shutdown.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    // SIGTERM: systemd's and Kubernetes' "stop": drain and exit.
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // SIGINT: Ctrl-C on a terminal: the same.
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
