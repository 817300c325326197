//! sd_notify without libsystemd: datagrams to `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). Every call is a no-op when the variable is unset, so the binaries
//! behave the same outside systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (`READY=1`, `STATUS=…`, several lines at once). Errors are ignored:
/// a missing manager must never stop the service, and neither may a slow one. The send never
/// blocks: it runs on the event loop, and a datagram socket whose reader stalls (its queue
/// full: 512 datagrams or its receive buffer) would otherwise freeze every tunnel; such a
/// notification is dropped (a later `WATCHDOG=1` or `STATUS=` gets through once it reads).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
        }
        None => socket.send_to(state.as_bytes(), &path),
    };
    if let Err(error) = sent {
        tracing::debug!(%error, "sd_notify failed");
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
