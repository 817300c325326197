//! `h1::serve` against a connection that, like TLS, sends only what is flushed.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use super::*;
use crate::h1::Pieces;

/// A connection that, like TLS, takes writes into a buffer and sends them only when
/// flushed.
struct FlushGate {
    wire: DuplexStream,
    held: Vec<u8>,
}

impl AsyncRead for FlushGate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.wire).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlushGate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.held.is_empty() {
            let sent = std::task::ready!(Pin::new(&mut this.wire).poll_write(cx, &this.held))?;
            this.held.drain(..sent);
        }
        Pin::new(&mut this.wire).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[tokio::test]
async fn every_answer_is_flushed_before_the_next_request_is_awaited() {
    let (mut client, wire) = tokio::io::duplex(64 * 1024);
    let gate = Pieces::new(FlushGate {
        wire,
        held: Vec::new(),
    });
    let limits = ServeLimits {
        max_head: 64 * 1024,
        head_timeout: None,
        keep_alive: true,
    };
    tokio::spawn(serve(
        gate,
        limits,
        CancellationToken::new(),
        None,
        |_| async { crate::http::text_response(StatusCode::OK, "hello") },
    ));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !answer.ends_with(b"hello") {
            let len = client.read(&mut buf).await.unwrap();
            assert!(len > 0, "the connection ended");
            answer.extend_from_slice(&buf[..len]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the answer was held unflushed while the server waited for a request");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
}
