//! Frame codec micro-benchmarks: `cargo bench --bench codec` (docs/benchmarks.md).
//!
//! Data frames of 64 B, 16 KiB and 64 KiB (the default `max_frame_payload`) through
//! `data_message` (the mux's write path: the payload is not copied), `encode` and `decode`; and a Settings and a Connect
//! frame, the control frames a session and a stream start with.

use std::hint::black_box;

use argocd_proxy::protocol::{data_message, decode, encode, Frame, Settings};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const DATA_SIZES: [(usize, &str); 3] = [(64, "64B"), (16 * 1024, "16KiB"), (64 * 1024, "64KiB")];

fn settings() -> Frame {
    // What a server announces: every key, a server id included.
    Frame::Settings(Settings {
        version: Some(2),
        stream_window: Some(64 * 1024),
        max_streams: Some(1024),
        heartbeat_interval_ms: Some(10_000),
        heartbeat_timeout_ms: Some(30_000),
        server_id: Some("argocd-proxy-server-0".to_owned()),
        replica_count: Some(1),
        max_frame_payload: Some(64 * 1024),
    })
}

fn connect() -> Frame {
    Frame::Connect {
        id: 4711,
        target: Bytes::from_static(b"kubernetes"),
    }
}

fn data_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("data");
    for (size, label) in DATA_SIZES {
        let payload = Bytes::from(vec![0xA5u8; size]);
        let frame = Frame::Data {
            id: 7,
            payload: payload.clone(),
        };
        let wire = encode(&frame);
        assert_eq!(wire, data_message(7, payload.clone()).to_bytes());
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("data_message", label), &payload, |b, p| {
            b.iter(|| data_message(black_box(7), black_box(p).clone()))
        });
        group.bench_with_input(BenchmarkId::new("encode", label), &frame, |b, f| {
            b.iter(|| encode(black_box(f)))
        });
        // `decode` takes the message by value; a `Bytes` clone is a reference-count increment.
        group.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, w| {
            b.iter(|| decode(black_box(w.clone())).expect("valid frame"))
        });
    }
    group.finish();
}

fn control_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("control");
    for (label, frame) in [("settings", settings()), ("connect", connect())] {
        let wire = encode(&frame);
        assert_eq!(decode(wire.clone()).expect("valid frame"), frame);
        group.bench_with_input(BenchmarkId::new("encode", label), &frame, |b, f| {
            b.iter(|| encode(black_box(f)))
        });
        group.bench_with_input(BenchmarkId::new("decode", label), &wire, |b, w| {
            b.iter(|| decode(black_box(w.clone())).expect("valid frame"))
        });
    }
    group.finish();
}

criterion_group!(benches, data_frames, control_frames);
criterion_main!(benches);
