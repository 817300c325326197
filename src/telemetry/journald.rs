//! journald's native protocol (`systemd.journal-fields(7)`, "Native Journal Protocol"): one
//! datagram per event to `/run/systemd/journal/socket`, `KEY=value` lines, so `journalctl`
//! can filter on `PRIORITY=`, `CLUSTER=`, `STREAM=` and the other fields of an event.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// Where journald listens for native messages.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A value longer than this is cut: a datagram has to fit the socket's send buffer.
const MAX_VALUE: usize = 16 * 1024;

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
pub struct JournaldLayer {
    socket: Option<UnixDatagram>,
    path: PathBuf,
    identifier: String,
}

impl JournaldLayer {
    /// A layer sending to `path` (journald's socket, or a test's) as `identifier`.
    pub fn new(path: PathBuf, identifier: String) -> Self {
        Self {
            // Non-blocking: a journal that stops reading costs dropped lines, never the tunnel.
            socket: UnixDatagram::unbound()
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                .ok(),
            path,
            identifier,
        }
    }
}

impl<S: Subscriber> Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let mut message = fields.message;
        for (name, value) in &fields.others {
            let _ = write!(message, " {}={value}", name.to_ascii_lowercase());
        }
        let mut datagram = Vec::with_capacity(256);
        append(&mut datagram, "PRIORITY", priority(*metadata.level()));
        append(&mut datagram, "SYSLOG_IDENTIFIER", &self.identifier);
        append(&mut datagram, "TARGET", metadata.target());
        append(&mut datagram, "MESSAGE", &message);
        for (name, value) in &fields.others {
            append(&mut datagram, name, value);
        }
        let sent = match &self.socket {
            Some(socket) => socket.send_to(&datagram, &self.path),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match sent {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                super::stderr::count_dropped();
            }
            Err(_) => {
                use std::io::Write;
                let mut line = super::stderr::line();
                let _ = writeln!(
                    line,
                    "{} {}: {message}",
                    metadata.level(),
                    metadata.target()
                );
            }
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
/// `KEY\n<u64 LE length><value>\n`.
fn append(datagram: &mut Vec<u8>, name: &str, value: &str) {
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
    datagram.extend_from_slice(value);
    datagram.push(b'\n');
}

/// A journal field name: `A-Z`, `0-9`, `_`, not starting with `_` or a digit, ≤ 64 bytes.
fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            upper @ ('A'..='Z' | '0'..='9') => upper,
            _ => '_',
        })
        .collect();
    if out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) || RESERVED.contains(&&*out) {
        out.insert_str(0, "F_");
    }
    out.truncate(64);
    out
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others
                .push((field_name(field.name()), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.others
                .push((field_name(field.name()), format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests;
