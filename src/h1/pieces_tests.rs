//! `Pieces`, the default `Conn::poll_send` and `send_all`: what a socket read in pieces hands
//! out and keeps, a writer that takes nothing, and bytes nothing else holds sent as owned.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Pieces, PIECE, TCP_BURST_PIECE};
use crate::h1::{send_all, Conn};
use crate::protocol::Payload;

/// Reads: `reads` in turn, then waits forever. Writes: takes nothing.
struct Script {
    reads: Vec<Vec<u8>>,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reads.is_empty() {
            return Poll::Pending;
        }
        let next = self.reads.remove(0);
        buf.put_slice(&next[..next.len().min(buf.remaining())]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(0))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn recv(conn: &mut Pieces<Script>, max: usize) -> Bytes {
    std::future::poll_fn(|cx| conn.poll_recv(cx, max))
        .await
        .unwrap()
        .unwrap()
}

/// A burst is read into buffers it hands out whole; its small tail gets a buffer of its own
/// size, so a few bytes kept somewhere never hold 64 KiB.
#[tokio::test]
async fn a_burst_is_handed_out_whole_and_its_tail_in_its_own_buffer() {
    let mut conn = Pieces::new(Script {
        reads: vec![vec![1; PIECE], vec![2; 64 * 1024], vec![3; 10]],
    });
    assert_eq!(recv(&mut conn, 64 * 1024).await.len(), PIECE);
    let bulk = recv(&mut conn, 64 * 1024).await;
    assert_eq!(bulk, vec![2u8; 64 * 1024]);
    let tail = recv(&mut conn, 64 * 1024).await;
    assert_eq!(tail, vec![3u8; 10]);
    let tail = tail.try_into_mut().expect("nobody else holds the tail");
    assert!(
        tail.capacity() < 1024,
        "the tail holds {} bytes",
        tail.capacity()
    );
}

/// A burst read that comes up short keeps only what it read: the room it did not use goes
/// back to the allocator, so a piece queued somewhere never holds a whole read buffer for a
/// part of it.
#[tokio::test]
async fn a_short_burst_read_holds_only_its_bytes() {
    let script = Script {
        reads: vec![vec![1; PIECE], vec![2; 100 * 1024]],
    };
    let mut conn = Pieces::with_burst_piece(script, TCP_BURST_PIECE);
    assert_eq!(recv(&mut conn, TCP_BURST_PIECE).await.len(), PIECE);
    let short = recv(&mut conn, TCP_BURST_PIECE).await;
    assert_eq!(short, vec![2u8; 100 * 1024]);
    let short = short.try_into_mut().expect("nobody else holds the piece");
    assert!(
        short.capacity() < 101 * 1024,
        "100 KiB read into a {} KiB buffer holds {} bytes",
        TCP_BURST_PIECE / 1024,
        short.capacity()
    );
}

/// A writer that takes nothing fails the send instead of having it loop forever. The send
/// runs on a thread of its own: a loop that never yields would also stall a timeout on the
/// test's own runtime.
#[test]
fn a_writer_that_takes_nothing_fails_the_send() {
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut conn = Pieces::new(Script { reads: Vec::new() });
        // Shared bytes, and bytes nothing else holds (sent as owned).
        for data in [Bytes::from_static(b"x"), Bytes::from(vec![1u8; 10])] {
            let sent = runtime.block_on(send_all(&mut conn, data));
            let _ = done.send(sent);
        }
    });
    for _ in 0..2 {
        let error = outcome
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the send never returned")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WriteZero);
    }
}

/// Takes everything it is sent and notes how: the addresses of owned bytes, a count of
/// shared sends.
#[derive(Default)]
struct Taker {
    owned_at: Vec<usize>,
    shared: usize,
}

impl AsyncWrite for Taker {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Conn for Taker {
    fn poll_recv(&mut self, _: &mut Context<'_>, _: usize) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Pending
    }
    fn poll_send(&mut self, _: &mut Context<'_>, data: &mut Payload) -> Poll<io::Result<usize>> {
        let len = data.len();
        match data {
            Payload::Owned(data) => {
                self.owned_at.push(data.as_ptr() as usize);
                data.clear();
            }
            Payload::Shared(data) => {
                self.shared += 1;
                data.clear();
            }
        }
        Poll::Ready(Ok(len))
    }
}

/// Bytes nothing else holds (a body's whole piece) go to a tunnel stream as owned, in place,
/// for the agent's WebSocket writer to mask where they are (S1); bytes still held elsewhere
/// go as shared.
#[tokio::test]
async fn bytes_held_nowhere_else_are_sent_owned_in_place() {
    let mut conn = Taker::default();
    let alone = Bytes::from(vec![1u8; 1000]);
    let at = alone.as_ptr() as usize;
    send_all(&mut conn, alone).await.unwrap();
    assert_eq!((conn.owned_at.as_slice(), conn.shared), (&[at][..], 0));
    let held = Bytes::from(vec![2u8; 1000]);
    send_all(&mut conn, held.clone()).await.unwrap();
    assert_eq!(conn.shared, 1);
    assert_eq!(held, vec![2u8; 1000]);
}
