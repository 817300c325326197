//! sd_notify without libsystemd: datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). Every call is a no-op when the variable is unset, so the binaries
//! behave the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

/// Sends one notification (`READY=1`, `STATUS=…`, several lines at once). Errors are ignored:
/// a missing manager must never stop the service, and neither may a slow one. The send never
/// blocks: it runs on the event loop, and a datagram socket whose reader is busy (a queue of
/// `net.unix.max_dgram_qlen` datagrams, 10 by default, shared by every service on systemd's
/// socket) would otherwise freeze every tunnel. What does not fit is not lost, except
/// `WATCHDOG=1` (the next one follows): state changes (`READY=1`, `RELOADING=1`,
/// `STOPPING=1`) wait in order, and of plain `STATUS=` lines only the latest; they are retried
/// every [`RETRY`] on the runtime, before anything newer, until the socket takes them.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        notifier(&path).send(state);
    }
}

/// How often what did not fit is offered again.
const RETRY: Duration = Duration::from_millis(20);

/// State changes kept while the socket is full (the rest are dropped, oldest first).
const MAX_PENDING: usize = 16;

fn notifier(path: &std::ffi::OsStr) -> &'static Notifier {
    static NOTIFIER: std::sync::OnceLock<Notifier> = std::sync::OnceLock::new();
    NOTIFIER.get_or_init(|| Notifier::new(path))
}

/// One `$NOTIFY_SOCKET` and what waits to be sent to it.
struct Notifier {
    socket: Option<UnixDatagram>,
    path: std::ffi::OsString,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    states: std::collections::VecDeque<String>,
    status: Option<String>,
    retrying: bool,
}

impl Notifier {
    fn new(path: &std::ffi::OsStr) -> Self {
        let socket = UnixDatagram::unbound()
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
            .ok();
        Self {
            socket,
            path: path.to_owned(),
            pending: Mutex::new(Pending::default()),
        }
    }

    fn send(&'static self, message: &str) {
        let mut pending = self.lock();
        // Nothing may overtake what waits: send that first, then this one if it all went.
        let waiting = self.flush(&mut pending);
        if !waiting && self.try_send(message) {
            return;
        }
        if message.starts_with("WATCHDOG=") {
            return;
        }
        if message.starts_with("STATUS=") && !message.contains('\n') {
            pending.status = Some(message.to_owned());
        } else {
            if pending.states.len() == MAX_PENDING {
                pending.states.pop_front();
            }
            pending.states.push_back(message.to_owned());
        }
        self.retry_later(&mut pending);
    }

    /// Sends what waits, in order; true when something is still waiting.
    fn flush(&self, pending: &mut Pending) -> bool {
        while let Some(state) = pending.states.front() {
            if !self.try_send(state) {
                return true;
            }
            pending.states.pop_front();
        }
        if let Some(status) = &pending.status {
            if !self.try_send(status) {
                return true;
            }
            pending.status = None;
        }
        false
    }

    fn retry_later(&'static self, pending: &mut Pending) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime (startup or exit): the next notification flushes
        };
        if std::mem::replace(&mut pending.retrying, true) {
            return;
        }
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                let mut pending = self.lock();
                if !self.flush(&mut pending) {
                    pending.retrying = false;
                    return;
                }
            }
        });
    }

    fn try_send(&self, message: &str) -> bool {
        let Some(socket) = &self.socket else {
            return true; // no socket: nothing will ever be sent; do not keep anything
        };
        let bytes = self.path.as_encoded_bytes();
        let sent = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
            }
            None => socket.send_to(message.as_bytes(), &self.path),
        };
        match sent {
            Ok(_) => true,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(error) => {
                tracing::debug!(%error, "sd_notify failed");
                true // no manager listening: dropping is all there is to do
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={}", one_line(status)));
}

/// A status line for `systemctl status`.
pub fn status(status: &str) {
    notify(&format!("STATUS={}", one_line(status)));
}

/// A newline would end the `STATUS=` assignment: a multi-line message (a TOML error with its
/// source excerpt) becomes its first and last lines, which say where and what.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default();
    match lines.next_back() {
        Some(last) => format!("{first}: {last}"),
        None => first.to_owned(),
    }
}

/// `RELOADING=1` with the monotonic time systemd wants with it; `READY=1` follows when done.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        crate::host::monotonic_usec()
    ));
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining");
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` every half period from the event loop, proving it still runs.
pub async fn watchdog(interval: Duration) {
    let mut ticks = tokio::time::interval(interval / 2);
    loop {
        ticks.tick().await;
        notify("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that stops: the sender never blocks; WATCHDOG=1 is dropped, a state change
    /// waits and goes out, in order, once the reader drains, followed by the latest status only.
    #[tokio::test]
    async fn state_changes_wait_for_a_full_socket_and_watchdogs_do_not() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_nonblocking(true).unwrap();
        let notifier: &'static Notifier = Box::leak(Box::new(Notifier::new(path.as_os_str())));
        let mut queued = 0;
        while notifier.try_send("WATCHDOG=1") {
            queued += 1;
            assert!(queued < 1_000_000, "the socket never filled");
        }
        notifier.send("RELOADING=1");
        notifier.send("READY=1\nSTATUS=reloaded");
        notifier.send("STATUS=one");
        notifier.send("WATCHDOG=1");
        notifier.send("STATUS=two");
        let mut got = Vec::new();
        let mut buffer = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < queued + 3 {
            assert!(tokio::time::Instant::now() < deadline, "got {got:?}");
            match manager.recv(&mut buffer) {
                Ok(len) => got.push(String::from_utf8_lossy(&buffer[..len]).into_owned()),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => panic!("{error}"),
            }
        }
        assert!(got[..queued].iter().all(|message| message == "WATCHDOG=1"));
        assert_eq!(
            got[queued..],
            ["RELOADING=1", "READY=1\nSTATUS=reloaded", "STATUS=two"]
        );
        tokio::time::sleep(RETRY * 3).await;
        assert!(
            manager.recv(&mut buffer).is_err(),
            "nothing more: the watchdog was dropped"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_lines_never_carry_a_newline() {
        let toml_error = "file: TOML parse error at line 1, column 1\n  |\n1 | [public]\n  | ^\nmissing field `internal`\n";
        assert_eq!(
            super::one_line(toml_error),
            "file: TOML parse error at line 1, column 1: missing field `internal`"
        );
        assert_eq!(super::one_line("connected"), "connected");
    }
}
