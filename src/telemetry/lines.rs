//! The text and JSON lines of `[log] format`, written without tracing-subscriber's general
//! formatting machinery: byte for byte what its `Full` (without colour) and `Json` formats write
//! (tests compare the two), at about half the CPU (`cargo bench --bench log`).
//!
//! Why: both binaries log one line per request at `info` (the server's `proxy`, the agent's
//! `proxied` audit line), on the thread that runs every tunnel. The library's formatters spent
//! 2.6 µs (text) and 4.4 µs (JSON, the server chart's default) per such line on the bench host,
//! mostly in nested `Display` wrappers for colours that are off; S2's requests cost ~30 µs in
//! each process (docs/benchmarks.md, "S2's floor, and the access line at half the CPU"). An
//! event inside a span (none of ours; a dependency's at `debug`) goes to the library's
//! formatter, which prints the span context.

use std::fmt::{self, Debug, Display, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{
    self, Format, FormatEvent, FormatFields, Full, Json, Writer,
};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

pub use super::utc::Utc;

/// tracing-subscriber's `Full` text format without colour, for events outside spans, with the
/// layer's defaults: its own field formatting and ANSI sanitising of messages and errors
/// (`fmt::layer()` as `telemetry::init` builds it; a custom `fmt_fields` would be ignored).
pub struct TextLines<T> {
    timer: T,
    library: Format<Full, T>,
}

/// tracing-subscriber's `Json` format, for events outside spans.
pub struct JsonLines<T> {
    timer: T,
    library: Format<Json, T>,
}

impl<T: FormatTime + Clone> TextLines<T> {
    /// Lines stamped by `timer` (the library's formatter, for what it gets, too).
    pub fn new(timer: T) -> Self {
        let library = format::format().with_timer(timer.clone());
        Self { timer, library }
    }
}

impl<T: FormatTime + Clone> JsonLines<T> {
    /// Lines stamped by `timer` (the library's formatter, for what it gets, too).
    pub fn new(timer: T) -> Self {
        let library = format::format().json().with_timer(timer.clone());
        Self { timer, library }
    }
}

impl<S, N, T> FormatEvent<S, N> for TextLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if writer.has_ansi_escapes() || ctx.event_scope().is_some() {
            return self.library.format_event(ctx, writer, event);
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        let meta = event.metadata();
        writer.write_char(' ')?;
        writer.write_str(level_text(meta.level()))?;
        writer.write_char(' ')?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = TextFields {
            out: &mut writer,
            empty: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

impl<S, N, T> FormatEvent<S, N> for JsonLines<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The library's test for a span to print: the explicit parent if it still exists, else
        // the entered span (an event with `parent: None` inside a span gets it too).
        let span = event.parent().and_then(|id| ctx.span(id));
        if span.or_else(|| ctx.lookup_current()).is_some() {
            return self.library.format_event(ctx, writer, event);
        }
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        // Straight into the line, escaped as the library's string would be: no buffer per line.
        self.timer
            .format_time(&mut Writer::new(&mut JsonEscaping(&mut writer)))?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_str("\",\"fields\":{")?;
        let mut fields = JsonFields {
            out: &mut writer,
            empty: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("},\"target\":")?;
        json_string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// The library's level column: five wide, right-aligned.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// The library's `DefaultVisitor`: `message` first as it is (escaped), then `name=value`
/// with each value's `Debug` (a `%` value's `Display`), separated by spaces.
struct TextFields<'w, 'a> {
    out: &'w mut Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl TextFields<'_, '_> {
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::replace(&mut self.empty, false) {
            self.out.write_char(' ')?;
        }
        let name = field.name();
        self.out
            .write_str(name.strip_prefix("r#").unwrap_or(name))?;
        self.out.write_char('=')
    }

    /// An integer's `Debug` is its decimal digits; written without `fmt`.
    fn number(&mut self, field: &Field, value: impl itoa::Integer + Debug) {
        if field.name() == "message" {
            self.record_debug(field, &value);
        } else if self.result.is_ok() {
            self.result = self
                .name(field)
                .and_then(|()| self.out.write_str(itoa::Buffer::new().format(value)));
        }
    }
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_debug(field, &value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match value.source() {
            Some(source) => self.record_debug(
                field,
                &format_args!(
                    "{} {}.sources={}",
                    Escaped(format_args!("{value}")),
                    field.name(),
                    Sources(source)
                ),
            ),
            None => self.record_debug(field, &format_args!("{}", Escaped(format_args!("{value}")))),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            let pad = if std::mem::replace(&mut self.empty, false) {
                ""
            } else {
                " "
            };
            self.out
                .write_str(pad)
                .and_then(|()| write!(EscapingWriter(self.out), "{value:?}"))
        } else {
            self.name(field)
                .and_then(|()| write!(self.out, "{value:?}"))
        };
    }
}

/// The library's `EscapeGuard`: a message or an error's text cannot steer a terminal.
struct EscapingWriter<'w, W: Write>(&'w mut W);

impl<W: Write> Write for EscapingWriter<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, ch) in text.char_indices() {
            let escape: Option<&str> = match ch {
                '\x1b' => Some("\\x1b"),
                '\x07' => Some("\\x07"),
                '\x08' => Some("\\x08"),
                '\x0c' => Some("\\x0c"),
                '\x7f' => Some("\\x7f"),
                '\u{80}'..='\u{9f}' => None,
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            match escape {
                Some(escape) => self.0.write_str(escape)?,
                None => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
            }
            plain = at + ch.len_utf8();
        }
        self.0.write_str(&text[plain..])
    }
}

struct Escaped<T>(T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

impl<T: Display> Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

/// The library's `ErrorSourceList`: `[first, second]`, each escaped.
struct Sources<'e>(&'e (dyn std::error::Error + 'static));

impl Display for Sources<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        let mut next = Some(self.0);
        while let Some(error) = next {
            list.entry(&Escaped(format_args!("{error}")));
            next = error.source();
        }
        list.finish()
    }
}

/// tracing-serde's map visitor as serde_json writes it: strings and `Debug` values as JSON
/// strings, integers and booleans bare, a float as serde_json prints it.
struct JsonFields<'w, 'a> {
    out: &'w mut Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::replace(&mut self.empty, false) {
            ""
        } else {
            ","
        };
        self.result = self
            .out
            .write_str(separator)
            .and_then(|()| json_string(self.out, field.name()))
            .and_then(|()| self.out.write_char(':'))
            .and_then(|()| value(self.out));
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |out| json_string(out, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |out| {
            let text = serde_json::to_string(&value).map_err(|_| fmt::Error)?;
            out.write_str(&text)
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.entry(field, |out| {
            out.write_char('"')?;
            write!(JsonEscaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn json_string(out: &mut impl Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscaping(out).write_str(text)?;
    out.write_char('"')
}

/// serde_json's string escaping: `"`, `\` and the C0 controls; nothing else.
struct JsonEscaping<'w, W: Write>(&'w mut W);

impl<W: Write> Write for JsonEscaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\x08' => "\\b",
                b'\x0c' => "\\f",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.write_str("\\u00")?;
                self.0.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                self.0
                    .write_char(char::from(HEX[usize::from(byte & 0xf)]))?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
#[path = "lines_tests.rs"]
mod tests;
