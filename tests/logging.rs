//! Logging never stalls the tunnel. The server runs every connection on one thread; with its
//! stderr a pipe that nobody reads (a stuck container runtime), it keeps answering, drops the
//! log lines it cannot write, and says how many once stderr is read again.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};

use support::notify::{addr_in, exits_cleanly, signal, status_of, Notifications};
use support::stack::{try_get, LISTENERS};
use support::{within, KillOnDrop, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_argocd-proxy-server");

#[tokio::test]
async fn a_stalled_stderr_never_stalls_the_server() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join("c1.token"), "tok-logging-0123456789\n").unwrap();
    let config = dir.0.join("server.toml");
    let toml = format!(
        "{LISTENERS}[[cluster]]\nid = \"c1\"\ntoken_file = \"{}\"\n",
        dir.0.join("c1.token").display()
    );
    std::fs::write(&config, toml).unwrap();
    let mut notify = Notifications::bind(&dir.0, "server");
    let mut child = KillOnDrop(
        Command::new(SERVER)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = status_of(&notify.until("READY=1").await);
    let (internal, ops) = (addr_in(&status, "internal"), addr_in(&status, "ops"));

    // Each request for an unknown cluster (502) logs a debug line of ~150 bytes: 8,000 are
    // far more than a pipe (64 KiB) and the log queue (QUEUED_LINES, 4,096 lines) hold, and nobody
    // reads the pipe meanwhile.
    within("8,000 requests while stderr is not read", async {
        for n in 0..8000 {
            let (status, _, _) = try_get(internal, &format!("/tunnel/nope/{n}"), &[])
                .await
                .expect("the server answers");
            assert_eq!(status, 502);
        }
    })
    .await;

    let (_, _, metrics) = try_get(ops, "/metrics", &[]).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no log_lines_dropped_total in {metrics}"))
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "lines were dropped, and counted");

    // Reading stderr again lets the writer go on; it reports what it had to drop.
    let mut stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    signal(&child, "TERM");
    exits_cleanly(child).await;
    let text = reader.join().unwrap();
    assert!(
        text.contains("log lines dropped: stderr or the journal was not keeping up"),
        "no drop report in the last lines: {}",
        &text[text.len().saturating_sub(2000)..]
    );
    assert!(
        text.contains("request not forwarded"),
        "the lines that fit were written"
    );
}
