//! The fast lines against tracing-subscriber's own formatters: the same events through both
//! must give the same bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

#[derive(Clone)]
struct FixedTime;

impl FormatTime for FixedTime {
    fn format_time(&self, out: &mut Writer<'_>) -> fmt::Result {
        out.write_str("2026-11-24T07:56:48.217826Z")
    }
}

#[derive(Debug)]
struct Cause(&'static str);

impl Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Cause {}

#[derive(Debug)]
struct Wrapped(&'static str, Cause);

impl Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Shape {
    name: &'static str,
    sides: Vec<u8>,
}

/// Every kind of value the binaries (and their dependencies) log, with the characters each
/// format escapes.
fn emit() {
    let client: SocketAddr = "127.0.0.1:45678".parse().expect("address");
    let method = http::Method::GET;
    tracing::info!(cluster = %"plain", %method, path = %"/small", status = 200u16, duration_ms = 3u64, remote = %client, "proxy");
    tracing::info!(%method, path = %"/api", status = 502u16, impersonate_user = "-", "proxied");
    tracing::warn!(
        text = "quote \" backslash \\ newline \n tab \t",
        "str field"
    );
    tracing::error!(
        offset = -42i64,
        big = u64::MAX,
        small = i64::MIN,
        yes = true,
        no = false,
        "integers"
    );
    tracing::info!(
        ratio = 1.5f64,
        nan = f64::NAN,
        tiny = 1e-7,
        huge = 1e300,
        whole = 2.0f64,
        "floats"
    );
    tracing::debug!(shape = ?Shape { name: "tri\"angle", sides: vec![3, 4, 5] }, "debug value");
    tracing::trace!(
        "ANSI \x1b[31m red, bell \x07, bs \x08, ff \x0c, del \x7f, C1 \u{85}\u{9f}, NUL \0, é 😀"
    );
    tracing::info!(message = "explicit message field");
    tracing::info!(message = 42u64, other = 1u64);
    tracing::info!(r#type = "raw name", "raw identifier");
    let plain = Cause("no such file \x1b[0m");
    let wrapped = Wrapped("cannot read the token", Cause("permission denied"));
    tracing::warn!(
        error = &plain as &(dyn std::error::Error + 'static),
        "an error without a source"
    );
    tracing::warn!(
        error = &wrapped as &(dyn std::error::Error + 'static),
        "an error with a source"
    );
    tracing::info!(wide = 1u128, negative = -1i128, "wide integers");
    tracing::info!(value = 7u64);
    tracing::info!(%client);
    tracing::info!("");
    tracing::info!(count = 5u64, "message {} formatted {:?}", 3, "quoted");
    tracing::info!(
        control = "\u{1}\u{1f}\u{7f}\u{80}",
        "controls in a str field"
    );
    tracing::info!(display = %"ANSI \x1b[0m and \"quotes\" in a Display value", "display");
    tracing::info!(target: "custom::target", "another target");
    tracing::info!(target: "t\"arget\u{1}", "a target that needs escaping");
    tracing::info!(
        "we\"ird\\key" = 1u64,
        "a\u{1}b" = "c",
        "field names that need escaping"
    );
    let escaping = Wrapped("outer \x1b[1m", Cause("inner \x07 \u{85}"));
    tracing::warn!(
        error = &escaping as &(dyn std::error::Error + 'static),
        "sources to escape"
    );
    tracing::warn!(message = &wrapped as &(dyn std::error::Error + 'static));
    tracing::info!(message = true, other = -0.0f64);
    tracing::info!(
        inf = f64::INFINITY,
        minus = f64::NEG_INFINITY,
        zero = -0.0f64,
        "more floats"
    );
    tracing::info!(
        empty = tracing::field::Empty,
        after = 1u64,
        "an empty field"
    );
    tracing::info!(bytes = &b"ab\x01"[..], "bytes");
    tracing::info!(max = u128::MAX, min = i128::MIN, "extreme wide integers");
    let span = tracing::info_span!("outer", id = 7u64);
    let _inside = span.enter();
    tracing::info!(x = 1u64, "inside a span");
    tracing::info!(parent: None, "a root event inside a span");
    let gone = tracing::info_span!("gone").id();
    tracing::info!(parent: gone, "an event whose parent is gone");
}

fn capture<L>(layer: impl FnOnce(Sink) -> L) -> String
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    let sink = Sink::default();
    let subscriber = tracing_subscriber::registry().with(layer(sink.clone()));
    tracing::subscriber::with_default(subscriber, emit);
    let bytes = sink.0.lock().expect("sink").clone();
    String::from_utf8(bytes).expect("UTF-8 lines")
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn assert_same_lines(ours: &str, library: &str) {
    assert_eq!(ours.lines().count(), 32, "one line per event:\n{ours}");
    for (ours, library) in ours.lines().zip(library.lines()) {
        assert_eq!(ours, library);
    }
    assert_eq!(ours, library);
}

#[test]
fn text_lines_are_the_library_s_full_format_without_colour() {
    let library = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_timer(FixedTime)
            .with_writer(move || sink.clone())
    });
    let ours = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .event_format(TextLines::new(FixedTime))
            .with_writer(move || sink.clone())
    });
    assert!(library.contains(r#"outer{id=7}: "#), "{library}");
    assert_same_lines(&ours, &library);
}

#[test]
fn json_lines_are_the_library_s_json_format() {
    let library = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_timer(FixedTime)
            .with_writer(move || sink.clone())
    });
    let ours = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonLines::new(FixedTime))
            .with_writer(move || sink.clone())
    });
    for line in ours.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("each line is JSON");
    }
    assert_same_lines(&ours, &library);
}

#[test]
fn a_terminal_gets_the_library_s_colours() {
    let library = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .with_ansi(true)
            .with_timer(FixedTime)
            .with_writer(move || sink.clone())
    });
    let ours = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .with_ansi(true)
            .event_format(TextLines::new(FixedTime))
            .with_writer(move || sink.clone())
    });
    assert!(library.contains("\x1b["), "coloured: {library}");
    assert_same_lines(&ours, &library);
}

/// A clock whose text needs JSON escaping: the library escapes the timestamp as a string.
#[derive(Clone)]
struct QuotingTime;

impl FormatTime for QuotingTime {
    fn format_time(&self, out: &mut Writer<'_>) -> fmt::Result {
        out.write_str("at \"noon\" \\ \t")
    }
}

#[test]
fn a_json_timestamp_is_escaped_as_the_library_escapes_it() {
    let library = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_timer(QuotingTime)
            .with_writer(move || sink.clone())
    });
    let ours = capture(|sink| {
        tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonLines::new(QuotingTime))
            .with_writer(move || sink.clone())
    });
    assert!(
        ours.contains(r#""timestamp":"at \"noon\" \\ \t""#),
        "{ours}"
    );
    assert_same_lines(&ours, &library);
}
