use std::collections::HashMap;

use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Parses a native-protocol datagram back into fields (both the text and the binary form).
fn parse(mut datagram: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !datagram.is_empty() {
        let line_end = datagram.iter().position(|&b| b == b'\n').expect("newline");
        let line = &datagram[..line_end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let (name, value) = (&line[..eq], &line[eq + 1..]);
            fields.insert(
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
            );
            datagram = &datagram[line_end + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).unwrap();
            let rest = &datagram[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8(rest[8..8 + len].to_vec()).unwrap();
            assert_eq!(rest[8 + len], b'\n', "binary field ends with a newline");
            fields.insert(name, value);
            datagram = &rest[8 + len + 1..];
        }
    }
    fields
}

/// Logs with a layer pointed at a real datagram socket and returns what journald would get.
fn logged(log: impl FnOnce()) -> HashMap<String, String> {
    let (_dir, path, receiver) = journal_socket(&format!("{:?}", std::thread::current().id()));
    // The layer's own thread sends, a few milliseconds later.
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let layer = JournaldLayer::new(path.clone(), "argocd-proxy-test".into());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
    let mut buffer = vec![0u8; 128 * 1024];
    let len = receiver
        .recv(&mut buffer)
        .expect("one datagram within 10 s");
    parse(&buffer[..len])
}

#[test]
fn an_event_becomes_journal_fields() {
    let fields = logged(|| tracing::warn!(cluster = "c1", stream = 7u32, "tunnel down"));
    assert_eq!(fields["PRIORITY"], "4");
    assert_eq!(fields["SYSLOG_IDENTIFIER"], "argocd-proxy-test");
    assert_eq!(fields["CLUSTER"], "c1");
    assert_eq!(fields["STREAM"], "7");
    assert!(fields["TARGET"].starts_with("argocd_proxy"), "{fields:?}");
    // journalctl shows only MESSAGE by default: it carries the fields too.
    assert_eq!(fields["MESSAGE"], "tunnel down cluster=c1 stream=7");
}

#[test]
fn levels_map_to_syslog_priorities() {
    assert_eq!(logged(|| tracing::error!("x"))["PRIORITY"], "3");
    assert_eq!(logged(|| tracing::info!("x"))["PRIORITY"], "6");
    assert_eq!(logged(|| tracing::debug!("x"))["PRIORITY"], "7");
}

#[test]
fn multiline_values_use_the_binary_form() {
    let fields = logged(|| tracing::info!(body = "line one\nline two", "multi"));
    assert_eq!(fields["BODY"], "line one\nline two");
}

#[test]
fn field_names_cannot_forge_trusted_fields() {
    let fields = logged(|| tracing::info!(priority = "0", _pid = 1, "x"));
    assert_eq!(fields["PRIORITY"], "6");
    assert_eq!(fields["F_PRIORITY"], "0");
    assert_eq!(fields["F__PID"], "1");
    assert!(!fields.contains_key("_PID"));
}

#[test]
fn huge_values_are_cut_to_fit_a_datagram() {
    let huge = "é".repeat(100_000);
    let fields = logged(|| tracing::info!(body = %huge, "big"));
    assert!(fields["BODY"].len() <= MAX_VALUE);
    assert!(fields["BODY"].starts_with("éé"));
}

#[test]
fn journal_stream_must_name_our_stderr() {
    // The test harness's stderr is whatever it is; a made-up device:inode never matches.
    std::env::set_var("JOURNAL_STREAM", "0:1");
    assert!(!stderr_is_journal());
    std::env::remove_var("JOURNAL_STREAM");
    assert!(!stderr_is_journal());
}

/// A directory of a test's own (`name`), removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("journald-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A journal socket in a directory of the test's own.
fn journal_socket(name: &str) -> (TestDir, PathBuf, UnixDatagram) {
    let dir = TestDir::new(name);
    let path = dir.0.join("journal.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (dir, path, socket)
}

/// With the journal's socket gone (journald restarting), a line still reaches stderr, which
/// systemd routes to the journal too: level, target and message, once each.
#[test]
fn a_missing_journal_falls_back_to_a_text_line() {
    let dir = TestDir::new("missing");
    let written = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = written.clone();
    let layer = JournaldLayer::with_fallback(
        dir.0.join("no-such.sock"),
        "argocd-proxy-test".into(),
        Box::new(move |line| sink.lock().unwrap().extend_from_slice(line)),
    );
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::warn!(cluster = "c1", "tunnel down");
    });
    crate::telemetry::flush(std::time::Duration::from_secs(10));
    let written = String::from_utf8(written.lock().unwrap().clone()).unwrap();
    assert_eq!(
        written,
        format!("WARN {}: tunnel down cluster=c1\n", module_path!())
    );
}

#[test]
fn the_event_s_thread_does_not_send() {
    let (_dir, path, receiver) = journal_socket("later");
    receiver.set_nonblocking(true).unwrap();
    let layer = JournaldLayer::new(path.clone(), "argocd-proxy-test".into());
    let mut buffer = vec![0u8; 64 * 1024];
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        let logged = std::time::Instant::now();
        tracing::info!("sent by the layer's thread");
        // Sent where the event happened, the datagram would be there now; the layer's thread
        // waits its batch window first.
        if receiver.recv(&mut buffer).is_ok() {
            assert!(
                logged.elapsed() >= super::super::stderr::BATCH_WINDOW,
                "the datagram was sent on the event's thread"
            );
        }
    });
    // Sent before the socket goes with the test's directory (else it lands on stderr).
    crate::telemetry::flush(std::time::Duration::from_secs(10));
}

#[test]
fn a_journal_that_stops_reading_costs_counted_lines() {
    let (_dir, path, _stuck) = journal_socket("stuck");
    let layer = JournaldLayer::new(path.clone(), "argocd-proxy-test".into());
    let before = crate::telemetry::dropped_log_lines();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        // 16 KiB each: the socket's buffer is full after a dozen, whatever its queue length.
        let big = "x".repeat(16 * 1024);
        for line in 0..40 {
            tracing::info!(line, %big, "to a journal that never reads");
        }
    });
    crate::telemetry::flush(std::time::Duration::from_secs(10));
    assert!(crate::telemetry::dropped_log_lines() > before);
}

#[test]
fn a_burst_to_a_journal_that_reads_loses_nothing() {
    let (_dir, path, receiver) = journal_socket("burst");
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut received = 0;
        while received < 200 && receiver.recv(&mut buffer).is_ok() {
            received += 1;
        }
        received
    });
    let layer = JournaldLayer::new(path.clone(), "argocd-proxy-test".into());
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        // One batch window's worth, queued at once: sent back to back, it overruns the
        // socket's queue (10 datagrams by default) unless the sender waits for room.
        for line in 0..200 {
            tracing::info!(line, "a burst");
        }
    });
    let flushing = std::time::Instant::now();
    crate::telemetry::flush(std::time::Duration::from_secs(10));
    assert!(
        flushing.elapsed() < std::time::Duration::from_secs(5),
        "flush waited for lines nobody counts as written"
    );
    assert_eq!(reader.join().unwrap(), 200);
}

#[test]
fn a_message_recorded_twice_is_the_last_recorded() {
    // tracing records the format string's message before the named one; the last one wins,
    // as it did when each overwrote the other (not the two run together).
    let fields = logged(|| tracing::info!(message = "first", "second {}", 2));
    assert_eq!(fields["MESSAGE"], "first");
}
