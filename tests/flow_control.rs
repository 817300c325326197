//! Flow control end to end (B14): a client reading slowly never makes the server buffer more
//! than a stream's window, and the body still arrives whole.

mod support;

use support::stack::{agent, get, server, wait_routed, Inject};
use support::{listener, pattern, within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: usize = 32 * 1024 * 1024;

/// An upstream that answers one request with `BODY` bytes of the test pattern.
async fn big_upstream() -> std::net::SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        tcp.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let _ = tcp.write_all(&pattern(7, BODY)).await;
    });
    addr
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn slow_reader_gets_the_whole_body_within_the_window() {
    let dir = TempDir::new();
    let upstream = big_upstream().await;
    let server = server(&dir.0, &[("c1", "t1", &upstream.to_string())]).await;
    let _agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "t1",
        &upstream.to_string(),
        Inject::Nothing,
    )
    .await;
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c1").await;

    let mut client = tokio::net::TcpStream::connect(server.addrs.internal)
        .await
        .unwrap();
    client
        .write_all(b"GET /tunnel/c1/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::with_capacity(BODY + 4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut most_buffered: f64 = 0.0;
    within("slow read of the whole body", async {
        let mut reads = 0u64;
        loop {
            let read = client.read(&mut chunk).await.unwrap();
            if read == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..read]);
            let head_end = received.windows(4).position(|w| w == b"\r\n\r\n");
            if head_end.is_some_and(|end| received.len() - end - 4 >= BODY) {
                break;
            }
            reads += 1;
            if reads % 16 == 0 {
                // The slow reader: a pause every 1 MiB, and a look at what the server holds.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let (_, _, text) = get(ops, "/metrics", &[]).await;
                most_buffered = most_buffered.max(metric(
                    &String::from_utf8_lossy(&text),
                    "tunnel_buffered_bytes{cluster=\"c1\"}",
                ));
            }
        }
    })
    .await;
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(received[head_end..] == pattern(7, BODY)[..], "body intact");
    assert!(
        most_buffered <= 16.0 * 1024.0 * 1024.0,
        "server held {most_buffered} bytes for one stream"
    );
    let (_, _, text) = get(ops, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&text);
    assert!(
        metric(
            &text,
            "tunnel_bytes_total{cluster=\"c1\",direction=\"received\"}"
        ) >= BODY as f64,
        "{text}"
    );
    assert_eq!(metric(&text, "tunnel_pending_opens{cluster=\"c1\"}"), 0.0);
}

/// A reader that stops (a stalled watch, a paused download) holds only its own stream's
/// window: a concurrent request on the same tunnel completes meanwhile, and the stalled one
/// still gets its whole body once it reads again.
#[tokio::test]
async fn a_stalled_reader_does_not_hold_up_a_concurrent_request() {
    const STALLED: usize = 64 * 1024 * 1024;
    const LIST: usize = 8 * 1024 * 1024;
    let dir = TempDir::new();
    let upstream = support::pattern_upstream().await;
    let target = upstream.to_string();
    let server = server(&dir.0, &[("c1", "agent-token", &target)]).await;
    let _agent = agent(
        &dir.0,
        "a1",
        server.addrs.public,
        "agent-token",
        &target,
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;

    let mut stalled = tokio::net::TcpStream::connect(server.addrs.internal)
        .await
        .unwrap();
    stalled
        .write_all(format!("GET /tunnel/c1/bytes/{STALLED} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    within("the stalled response starts", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stalled.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
    })
    .await;
    // Stop reading; the concurrent request must still complete, intact.
    let (status, _, body) = get(
        server.addrs.internal,
        &format!("/tunnel/c1/bytes/{LIST}"),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body == pattern(7, LIST),
        "the concurrent body arrived intact"
    );
    // The stalled one resumes and is whole.
    let mut rest = vec![0u8; STALLED];
    within("the stalled body, once read", stalled.read_exact(&mut rest))
        .await
        .unwrap();
    assert!(
        rest == pattern(7, STALLED),
        "the stalled body arrived intact"
    );
}
