//! journald's native protocol (`systemd.journal-fields(7)`, "Native Journal Protocol"): one
//! datagram per event to `/run/systemd/journal/socket`, `KEY=value` lines, so `journalctl`
//! can filter on `PRIORITY=`, `CLUSTER=`, `STREAM=` and the other fields of an event.

use std::fmt::Write as _;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Where journald listens for native messages.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A value longer than this is cut: a datagram has to fit the socket's send buffer.
const MAX_VALUE: usize = 16 * 1024;

/// How long the sender thread waits for room in the journal's socket before it drops a line.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

/// Fields the layer sets itself; an event field of the same name gets an `F_` prefix.
const RESERVED: &[&str] = &["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "TARGET"];

/// Whether `$JOURNAL_STREAM` (`device:inode`, set by systemd) names our stderr: then stderr
/// goes to the journal and native fields are worth sending.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    use std::os::fd::AsFd;
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(metadata) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream == format!("{}:{}", metadata.dev(), metadata.ino())
}

/// Sends every event to journald; if the socket is gone, writes a text line to stderr
/// instead (which systemd still routes to the journal).
///
/// The datagram is built on the event's thread (the one that runs the tunnels) and sent by a
/// thread of the layer's own: a `sendto` on the journal's socket wakes journald, which cost the
/// event loop ~7 µs per request line (`cargo bench --bench log`). The sender lets datagrams
/// gather for a few milliseconds, as the stderr writer does, so queuing one seldom wakes it.
pub struct JournaldLayer {
    /// `None` if the thread could not start: then each event is sent where it happens.
    queue: Option<SyncSender<Entry>>,
    journal: Arc<Journal>,
    identifier: String,
}

/// One event for the journal, and what its text fallback needs.
struct Entry {
    datagram: Vec<u8>,
    /// Where MESSAGE's value sits in `datagram`.
    message: Range<usize>,
    level: Level,
    target: &'static str,
}

struct Journal {
    socket: Option<UnixDatagram>,
    path: PathBuf,
    /// Where a line goes when the journal's socket is gone: stderr (a test's buffer).
    fallback: Fallback,
}

/// Writes a text line where the journal cannot take it.
type Fallback = Box<dyn Fn(&[u8]) + Send + Sync>;

impl JournaldLayer {
    /// A layer sending to `path` (journald's socket, or a test's) as `identifier`.
    pub fn new(path: PathBuf, identifier: String) -> Self {
        Self::with_fallback(
            path,
            identifier,
            Box::new(|line| {
                use std::io::Write;
                let _ = std::io::stderr().write_all(line);
            }),
        )
    }

    /// [`JournaldLayer::new`], with the text lines of a missing journal going to `fallback`.
    fn with_fallback(path: PathBuf, identifier: String, fallback: Fallback) -> Self {
        // The sender thread waits up to SEND_TIMEOUT for room in a journal that reads (a batch
        // sent back to back overruns its queue: a non-blocking socket dropped a third of a
        // burst to a healthy reader); a journal that stops reading costs dropped lines, counted
        // where the bounded queue refuses them, never the tunnel.
        let journal = Arc::new(Journal {
            socket: UnixDatagram::unbound()
                .and_then(|socket| {
                    socket
                        .set_write_timeout(Some(SEND_TIMEOUT))
                        .map(|()| socket)
                })
                .ok(),
            path,
            fallback,
        });
        let (sender, receiver) = sync_channel::<Entry>(super::QUEUED_LINES);
        let sending = journal.clone();
        let spawned = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                let mut reported = 0;
                while let Ok(first) = receiver.recv() {
                    // Let the next entries gather (see the stderr writer).
                    std::thread::sleep(super::stderr::BATCH_WINDOW);
                    sending.send(&first);
                    for entry in receiver.try_iter() {
                        sending.send(&entry);
                    }
                    reported = super::stderr::report_dropped(reported);
                }
            });
        let queue = match spawned {
            Ok(_) => Some(sender),
            Err(error) => {
                eprintln!("cannot start the journal writer thread ({error}); sending directly");
                // On the event loop: never wait for the journal.
                if let Some(socket) = &journal.socket {
                    let _ = socket.set_nonblocking(true);
                }
                None
            }
        };
        Self {
            queue,
            journal,
            identifier,
        }
    }
}

impl Journal {
    fn send(&self, entry: &Entry) {
        let sent = match &self.socket {
            Some(socket) => socket.send_to(&entry.datagram, &self.path),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match sent {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                super::stderr::count_dropped();
            }
            Err(_) => {
                let message = String::from_utf8_lossy(&entry.datagram[entry.message.clone()]);
                let line = format!("{} {}: {message}\n", entry.level, entry.target);
                (self.fallback)(line.as_bytes());
            }
        }
        super::stderr::written(1);
    }
}

impl<S: Subscriber> Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        // MESSAGE carries the fields too: journalctl shows only MESSAGE by default.
        let mut message = fields.message;
        // Each field's journal name, made once for MESSAGE (lower case) and its own field.
        let mut names = String::new();
        let named: Vec<_> = fields
            .others
            .iter()
            .map(|(field, value)| (journal_name(&mut names, field), value))
            .collect();
        for (name, value) in &named {
            message.push(' ');
            message.extend(names[name.clone()].chars().map(|c| c.to_ascii_lowercase()));
            message.push('=');
            message.push_str(&fields.values[(*value).clone()]);
        }
        let mut datagram = Vec::with_capacity(256 + 2 * message.len());
        append(&mut datagram, "PRIORITY", priority(*metadata.level()));
        append(&mut datagram, "SYSLOG_IDENTIFIER", &self.identifier);
        append(&mut datagram, "TARGET", metadata.target());
        let message = append(&mut datagram, "MESSAGE", &message);
        for (name, value) in &named {
            append(
                &mut datagram,
                &names[name.clone()],
                &fields.values[(*value).clone()],
            );
        }
        let entry = Entry {
            datagram,
            message,
            level: *metadata.level(),
            target: metadata.target(),
        };
        super::stderr::queued(1);
        match &self.queue {
            Some(queue) => {
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    queue.try_send(entry)
                {
                    super::stderr::written(1);
                    super::stderr::count_dropped();
                }
            }
            None => self.journal.send(&entry),
        }
    }
}

fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        _ => "7",
    }
}

/// Appends one field: `KEY=value\n`, or, when the value has a newline, the binary form
/// `KEY\n<u64 LE length><value>\n`. Returns where the value went.
fn append(datagram: &mut Vec<u8>, name: &str, value: &str) -> Range<usize> {
    let mut end = value.len().min(MAX_VALUE);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value.as_bytes()[..end];
    datagram.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        datagram.push(b'\n');
        datagram.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        datagram.push(b'=');
    }
    let start = datagram.len();
    datagram.extend_from_slice(value);
    datagram.push(b'\n');
    start..start + value.len()
}

/// Appends a journal field name to `out` and returns where it went: `A-Z`, `0-9`, `_`, not
/// starting with `_` or a digit, ≤ 64 bytes.
fn journal_name(out: &mut String, name: &str) -> Range<usize> {
    let start = out.len();
    out.extend(name.chars().map(|c| match c.to_ascii_uppercase() {
        upper @ ('A'..='Z' | '0'..='9') => upper,
        _ => '_',
    }));
    let written = &out[start..];
    if written.starts_with(|c: char| c == '_' || c.is_ascii_digit()) || RESERVED.contains(&written)
    {
        out.insert_str(start, "F_");
    }
    out.truncate(start + 64);
    start..out.len()
}

/// An event's fields: every value's text in one buffer.
#[derive(Default)]
struct Fields {
    message: String,
    values: String,
    others: Vec<(&'static str, Range<usize>)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            // A second `message` replaces the first, as it always has.
            self.message.clear();
            self.message.push_str(value);
        } else {
            let start = self.values.len();
            self.values.push_str(value);
            self.others.push((field.name(), start..self.values.len()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message.clear();
            let _ = write!(self.message, "{value:?}");
        } else {
            let start = self.values.len();
            let _ = write!(self.values, "{value:?}");
            self.others.push((field.name(), start..self.values.len()));
        }
    }
}

#[cfg(test)]
mod tests;
