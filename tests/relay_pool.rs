//! Which v2 tunnel streams the server's relay pools (DESIGN.md §3 item 4): only one whose
//! response ended exactly and cleanly. The agent here is a raw v2 mux session that answers with
//! bytes the test scripts, so what follows a response, and when, is up to the test.

mod support;

use std::net::SocketAddr;

use argocd_proxy::mux::{Incoming, MuxStream};
use http::StatusCode;
use support::stack::{get, scrape, server, wait_routed};
use support::{limits, our_agent, within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one request head off `stream`; what follows it stays unread (these are bodiless).
async fn read_head(stream: &mut MuxStream) -> String {
    let mut head = Vec::new();
    within("a request head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = stream.read(&mut byte).await.expect("stream readable");
            assert_eq!(n, 1, "stream ended before a request head");
            head.push(byte[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

async fn accept(incoming: &mut Incoming) -> MuxStream {
    within("a new tunnel stream", incoming.accept())
        .await
        .expect("session alive")
        .accept()
}

/// A GET through the tunnel on a fresh client connection: status and body.
fn ask(internal: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<(StatusCode, Vec<u8>)> {
    tokio::spawn(async move {
        let (status, _, body) = get(internal, path, &[]).await;
        (status, body.to_vec())
    })
}

/// `tunnel_buffered_bytes{cluster="c2"}` on the server.
async fn buffered(ops: SocketAddr) -> u64 {
    scrape(ops, "tunnel_buffered_bytes{cluster=\"c2\"}")
        .await
        .unwrap_or(0.0) as u64
}

#[tokio::test]
async fn only_a_stream_whose_answer_ended_exactly_is_reused() {
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c2", "token", "10.0.0.1:6443")]).await;
    let mut agent = within("v2 agent", our_agent(server.addrs.public, true, limits())).await;
    let ops = server.addrs.ops.unwrap();
    wait_routed(ops, "c2").await;
    let internal = server.addrs.internal;
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    // A clean, exact answer: the next request comes on the same stream.
    let client = ask(internal, "/tunnel/c2/one");
    let mut first = accept(&mut agent.session.incoming).await;
    assert!(read_head(&mut first).await.starts_with("GET /one "));
    first.write_all(OK).await.unwrap();
    assert_eq!(
        within("one", client).await.unwrap(),
        (StatusCode::OK, b"ok".to_vec())
    );
    let client = ask(internal, "/tunnel/c2/two");
    assert!(
        read_head(&mut first).await.starts_with("GET /two "),
        "reused"
    );

    // Bytes after the body, in the same Data frame: answered, but the stream is not reused
    // (the bytes would be read as the next answer's start). The next request opens a new one.
    first.write_all(&[OK, b"EXTRA"].concat()).await.unwrap();
    assert_eq!(
        within("two", client).await.unwrap(),
        (StatusCode::OK, b"ok".to_vec())
    );
    let client = ask(internal, "/tunnel/c2/three");
    let mut second = accept(&mut agent.session.incoming).await;
    assert!(read_head(&mut second).await.starts_with("GET /three "));
    let mut rest = Vec::new();
    let ended = within("the unpooled stream ends", first.read_to_end(&mut rest)).await;
    assert!(ended.is_err(), "reset, not a clean end: {ended:?}");

    // Bytes after the body in a later frame, while the stream idles in the pool: the next
    // checkout sees them and opens a new stream.
    second.write_all(OK).await.unwrap();
    assert_eq!(
        within("three", client).await.unwrap(),
        (StatusCode::OK, b"ok".to_vec())
    );
    second.write_all(b"LATE").await.unwrap();
    within("the late bytes reach the server", async {
        while buffered(ops).await != 4 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let client = ask(internal, "/tunnel/c2/four");
    let mut third = accept(&mut agent.session.incoming).await;
    assert!(read_head(&mut third).await.starts_with("GET /four "));
    third.write_all(OK).await.unwrap();
    assert_eq!(
        within("four", client).await.unwrap(),
        (StatusCode::OK, b"ok".to_vec())
    );

    // A client that leaves mid-body: the stream is reset (never pooled, never left open).
    let mut tcp = TcpStream::connect(internal).await.unwrap();
    tcp.write_all(b"GET /tunnel/c2/five HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_head(&mut third).await.starts_with("GET /five "),
        "reused"
    );
    third
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\npartial")
        .await
        .unwrap();
    let mut seen = Vec::new();
    within("the client gets the head", async {
        while !seen.windows(7).any(|w| w == b"partial") {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    drop(tcp);
    let ended = within("the abandoned stream ends", third.read_to_end(&mut rest)).await;
    assert_eq!(
        ended.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the server resets the stream it abandons"
    );
}
