//! Log line micro-benchmark: `cargo bench --bench log` (docs/benchmarks.md, "The access line").
//!
//! The server's per-request `proxy` line through tracing-subscriber's own text and JSON
//! formatters and through ours (`telemetry::lines`, the same bytes), each writing to a sink: what
//! one request's log line costs the thread that runs the tunnels.

use std::net::SocketAddr;

use argocd_proxy::telemetry::lines::{JsonLines, TextLines, Utc};
use argocd_proxy::telemetry::JournaldLayer;
use criterion::{criterion_group, criterion_main, Criterion};
use tracing::Dispatch;
use tracing_subscriber::layer::SubscriberExt;

fn access_line(client: SocketAddr) {
    let method = http::Method::GET;
    tracing::info!(cluster = %"plain", %method, path = %"/api/v1/namespaces/default/pods?limit=500", status = 200u16, duration_ms = 3u64, remote = %client, "proxy");
}

fn lines(c: &mut Criterion) {
    let client: SocketAddr = "10.1.2.3:45678".parse().expect("address");
    let layer = || {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::io::sink)
    };
    let formats: [(&str, Dispatch); 4] = [
        (
            "text/library",
            Dispatch::new(tracing_subscriber::registry().with(layer())),
        ),
        (
            "text/ours",
            Dispatch::new(
                tracing_subscriber::registry().with(layer().event_format(TextLines::new(Utc))),
            ),
        ),
        (
            "json/library",
            Dispatch::new(tracing_subscriber::registry().with(layer().json())),
        ),
        (
            "json/ours",
            Dispatch::new(
                tracing_subscriber::registry()
                    .with(layer().json().event_format(JsonLines::new(Utc))),
            ),
        ),
    ];
    // journald's side: a datagram socket drained by a thread, as journald would read it.
    let dir = std::env::temp_dir().join(format!("log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket_path = dir.join("journal.socket");
    let journal = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("journal socket");
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65536];
        while journal.recv(&mut buffer).is_ok() {}
    });
    let journald = JournaldLayer::new(socket_path.clone(), "bench".into());
    let formats: Vec<(&str, Dispatch)> = formats
        .into_iter()
        .chain([(
            "journald/ours",
            Dispatch::new(tracing_subscriber::registry().with(journald)),
        )])
        .collect();
    let mut group = c.benchmark_group("access line");
    for (name, dispatch) in formats {
        tracing::dispatcher::with_default(&dispatch, || {
            group.bench_function(name, |b| b.iter(|| access_line(client)));
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, lines);
criterion_main!(benches);
