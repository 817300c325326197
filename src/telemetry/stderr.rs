//! Text and JSON log lines leave the event loop through a bounded queue, and one thread writes
//! them to stderr.
//!
//! Each process runs its whole tunnel on one thread. Writing a log line there meant that a
//! slow reader of stderr — a container runtime's pipe that fills, a disk flushing the log file
//! (S11 in docs/benchmarks.md: a 30 s-old page cache made the probe's p99 3–4× worse) — stopped
//! every tunnel until it caught up. Now a line that finds the queue full is dropped and counted,
//! and the writer says how many it dropped once stderr takes lines again. The writer gathers
//! lines for a few milliseconds and writes them at once, so queuing a line seldom has to wake it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Log lines waiting for the writer thread; past this they are dropped.
pub const QUEUED_LINES: usize = 4096;
/// How long the writer lets lines gather before each write (the delay a line can see).
pub(super) const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Most bytes gathered into one write (bounded so a burst is not copied into one huge buffer;
/// a full batch is followed by the next without the wait).
const BATCH_BYTES: usize = 256 * 1024;

static QUEUE: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines queued and not yet written.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Log lines dropped because stderr (or the journal) was not keeping up, since the start.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Counts lines queued elsewhere (the journal's sender), for [`flush`] to wait for.
pub(super) fn queued(lines: usize) {
    PENDING.fetch_add(lines, Ordering::Relaxed);
}

/// Counts lines written (or given up) that [`queued`] counted.
pub(super) fn written(lines: usize) {
    PENDING.fetch_sub(lines, Ordering::Relaxed);
}

/// Counts a line the journal's socket had no room for.
pub(super) fn count_dropped() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// A line for the queue, written when dropped.
pub(super) fn line() -> Line {
    Line(Vec::with_capacity(256))
}

/// Starts the writer thread, at init (not on the first line, which may come under load). If the
/// thread cannot start, lines are written directly, as before.
pub(super) fn start() {
    if QUEUE.get().is_some() {
        return;
    }
    let (sender, receiver) = sync_channel::<Vec<u8>>(QUEUED_LINES);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut reported = 0;
            // A full batch left lines behind: the next one starts at once.
            let mut backlog = false;
            for mut batch in receiver.iter() {
                // Let the next lines gather: while the writer sleeps, queuing a line is a
                // plain push, while it waits on the queue every line costs the event loop a
                // futex wake (one per request at info level: S2 in docs/benchmarks.md).
                if !backlog {
                    std::thread::sleep(BATCH_WINDOW);
                }
                let mut lines = 1;
                while batch.len() < BATCH_BYTES {
                    let Ok(line) = receiver.try_recv() else { break };
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                backlog = batch.len() >= BATCH_BYTES;
                let _ = io::stderr().lock().write_all(&batch);
                reported = report_dropped(reported);
                PENDING.fetch_sub(lines, Ordering::Relaxed);
            }
        });
    match spawned {
        Ok(_) => {
            let _ = QUEUE.set(sender);
        }
        Err(error) => eprintln!("cannot start the log writer thread ({error}); logging directly"),
    }
}

/// Says on stderr how many lines were dropped since `reported` were; returns the new count.
pub(super) fn report_dropped(reported: u64) -> u64 {
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > reported {
        let _ = writeln!(
            io::stderr().lock(),
            "{} log lines dropped: stderr or the journal was not keeping up",
            dropped - reported
        );
    }
    dropped
}

/// Waits, at most `limit`, until every queued line is written: at exit, so the last lines
/// (why the process stops) are not lost, and never for long on a stuck stderr.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    while PENDING.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `MakeWriter` of the text and JSON layers: one event is formatted into a buffer, which
/// is queued whole when the layer drops the writer.
pub struct QueuedStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueuedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        line()
    }
}

/// One event's formatted bytes.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let Some(queue) = QUEUE.get() else {
            let _ = io::stderr().write_all(&self.0);
            return;
        };
        PENDING.fetch_add(1, Ordering::Relaxed);
        match queue.try_send(std::mem::take(&mut self.0)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                PENDING.fetch_sub(1, Ordering::Relaxed);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
