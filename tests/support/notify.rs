//! Our binaries as processes, watched through sd_notify: a datagram socket at `$NOTIFY_SOCKET`
//! (no systemd manager involved), signals by PID, and a bounded wait for the exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::net::UnixDatagram;

use super::{within, KillOnDrop};

/// The receiving end of `$NOTIFY_SOCKET`, with everything seen so far. A task reads the
/// socket as it fills, as a manager does: the queue holds only `net.unix.max_dgram_qlen`
/// datagrams (10 by default), and a test that paused between waits would otherwise see the
/// binary's notifications wait behind a full socket.
pub struct Notifications {
    pub path: PathBuf,
    received: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Notifications {
    /// Binds `<name>.sock` in `dir`.
    pub fn bind(dir: &Path, name: &str) -> Notifications {
        let path = dir.join(format!("{name}.sock"));
        let socket = UnixDatagram::bind(&path).unwrap();
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok(len) = socket.recv(&mut buffer).await {
                let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
                if sender.send(message).is_err() {
                    return;
                }
            }
        });
        Notifications {
            path,
            received,
            seen: Vec::new(),
        }
    }

    /// Receives until a message contains `wanted`; returns that message.
    pub async fn until(&mut self, wanted: &str) -> String {
        let (seen, received) = (&mut self.seen, &mut self.received);
        let found = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            while let Some(message) = received.recv().await {
                seen.push(message.clone());
                if message.contains(wanted) {
                    return Some(message);
                }
            }
            None
        })
        .await;
        found.ok().flatten().unwrap_or_else(|| {
            let recent: Vec<_> = seen.iter().filter(|m| !m.starts_with("WATCHDOG")).collect();
            panic!("timed out after 20 s: sd_notify {wanted:?}; seen (no WATCHDOG): {recent:?}")
        })
    }

    /// A reload's sequence: `RELOADING=1` with `MONOTONIC_USEC`, then `READY=1`; returns the
    /// `STATUS=` of the `READY=1`.
    pub async fn reload_done(&mut self) -> String {
        let reloading = self.until("RELOADING=1").await;
        let usec = reloading
            .lines()
            .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
        assert!(
            usec.parse::<u64>().is_ok_and(|usec| usec > 0),
            "{reloading:?}"
        );
        let ready = self.until("READY=1").await;
        status_of(&ready)
    }
}

/// The `STATUS=` line of a notification.
pub fn status_of(message: &str) -> String {
    message
        .lines()
        .find_map(|line| line.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {message:?}"))
        .to_owned()
}

/// Starts `binary --config config` with `$NOTIFY_SOCKET` and a 200 ms watchdog; stderr goes to
/// `<config>.log` (read it when a test fails).
pub fn start(binary: &str, config: &Path, notify: &Notifications) -> KillOnDrop {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Sends `signal` (`TERM`, `HUP`) to the process.
pub fn signal(child: &KillOnDrop, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded) for the process to exit and asserts it exited 0.
pub async fn exits_cleanly(mut child: KillOnDrop) {
    let status = within("process exits", async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

/// The address after `label ` in a status line such as `listening: public 127.0.0.1:1, …`.
pub fn addr_in(status: &str, label: &str) -> std::net::SocketAddr {
    let after = status
        .split(&format!("{label} "))
        .nth(1)
        .unwrap_or_else(|| panic!("no {label} in {status:?}"));
    after
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no address after {label} in {status:?}"))
}
