//! Mux hot-path micro-benchmarks: `cargo bench --bench mux` (docs/benchmarks.md).
//!
//! A v2 server session and agent session joined by the in-memory transport
//! (`mux::testing::session_pair`, default `Limits`), on a `current_thread` Tokio runtime as in
//! the binaries. No sockets, no HTTP, no WebSocket framing: what is left is the mux itself
//! (frame encode/decode, credits, queues, wake-ups).
//!
//! - `bulk/8MiB`: the agent writes 8 MiB (64 KiB writes) on a freshly opened stream and shuts
//!   it down; the server reads to EOF (a download through the tunnel).
//! - `pooled/1000x100B/sequential`: 1,000 request/response exchanges of 100 bytes each way, one
//!   at a time, round-robin over 8 streams opened once and kept (a keep-alive pool).
//! - `pooled/1000x100B/8-concurrent`: the same 1,000 exchanges, 125 on each of the 8 streams at
//!   once.

use std::time::{Duration, Instant};

use argocd_proxy::mux::testing::session_pair;
use argocd_proxy::mux::{Incoming, Limits, MuxStream, SessionHandle};
use argocd_proxy::protocol::Version;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const BULK: usize = 8 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const EXCHANGES: usize = 1000;
const POOL: usize = 8;
const MESSAGE: usize = 100;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The agent: `bulk` streams get BULK bytes and EOF; `echo` streams answer every MESSAGE-byte
/// request with MESSAGE bytes until EOF.
async fn agent(mut incoming: Incoming) {
    while let Some(stream) = incoming.accept().await {
        let bulk = stream.target() == b"bulk";
        let mut stream = stream.accept();
        tokio::spawn(async move {
            if bulk {
                let chunk = vec![0x5Au8; CHUNK];
                for _ in 0..BULK / CHUNK {
                    stream.write_all(&chunk).await.expect("bulk write");
                }
                stream.shutdown().await.expect("bulk shutdown");
            } else {
                let mut request = [0u8; MESSAGE];
                let response = [0x33u8; MESSAGE];
                while stream.read_exact(&mut request).await.is_ok() {
                    stream.write_all(&response).await.expect("echo write");
                }
            }
        });
    }
}

fn start(rt: &Runtime) -> SessionHandle {
    rt.block_on(async {
        let (server, agent_session) =
            session_pair(Version::V2, Limits::default(), Limits::default());
        tokio::spawn(agent(agent_session.incoming));
        // The agent's handle must outlive the benchmark, or its session closes.
        std::mem::forget(agent_session.handle);
        server.handle
    })
}

fn bulk(c: &mut Criterion) {
    let rt = runtime();
    let server = start(&rt);
    let mut group = c.benchmark_group("bulk");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("8MiB", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                let mut buf = vec![0u8; CHUNK];
                for _ in 0..iters {
                    let mut stream = server.open(b"bulk").await.expect("open");
                    let mut total = 0;
                    loop {
                        let n = stream.read(&mut buf).await.expect("bulk read");
                        if n == 0 {
                            break;
                        }
                        total += n;
                    }
                    assert_eq!(total, BULK);
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

async fn exchange(stream: &mut MuxStream, request: &[u8], response: &mut [u8]) {
    stream.write_all(request).await.expect("request");
    stream.read_exact(response).await.expect("response");
}

fn pooled(c: &mut Criterion) {
    let rt = runtime();
    let server = start(&rt);
    let mut streams: Vec<MuxStream> = rt.block_on(async {
        let mut streams = Vec::new();
        for _ in 0..POOL {
            streams.push(server.open(b"echo").await.expect("open"));
        }
        streams
    });
    let request = [0x11u8; MESSAGE];
    let mut group = c.benchmark_group("pooled");
    group.throughput(Throughput::Elements(EXCHANGES as u64));
    group.bench_function("1000x100B/sequential", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut response = [0u8; MESSAGE];
                let started = Instant::now();
                for _ in 0..iters {
                    for i in 0..EXCHANGES {
                        exchange(&mut streams[i % POOL], &request, &mut response).await;
                    }
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("1000x100B/8-concurrent", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    join_all(streams.iter_mut().map(|stream| async {
                        let mut response = [0u8; MESSAGE];
                        for _ in 0..EXCHANGES / POOL {
                            exchange(stream, &request, &mut response).await;
                        }
                    }))
                    .await;
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bulk, pooled);
criterion_main!(benches);
