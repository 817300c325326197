//! `h1::serve` against a connection that, like TLS, sends only what is flushed.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

use std::sync::{Arc, Mutex};

use super::*;
use crate::h1::Pieces;

/// A connection that, like TLS, takes writes into a buffer and sends them only when
/// flushed; it notes the size of every write (on a tunnel stream, a Data frame each) and
/// where its bytes were (a piece written as it is was not copied).
struct FlushGate {
    wire: DuplexStream,
    held: Vec<u8>,
    writes: Arc<Mutex<Vec<usize>>>,
    written_from: Arc<Mutex<Vec<usize>>>,
}

impl FlushGate {
    fn new(wire: DuplexStream) -> Self {
        Self {
            wire,
            held: Vec::new(),
            writes: Arc::default(),
            written_from: Arc::default(),
        }
    }
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
        self.writes.lock().unwrap().push(buf.len());
        self.written_from
            .lock()
            .unwrap()
            .push(buf.as_ptr() as usize);
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
    let gate = Pieces::new(FlushGate::new(wire));
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

/// A response with `body`, announcing `content_length` if given (else it goes chunked).
fn answering(body: crate::http::Body, content_length: Option<u64>) -> Response<crate::http::Body> {
    let mut response = Response::new(body);
    if let Some(len) = content_length {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len.into());
    }
    response
}

/// What a connection was given to write: each write's size, and where its bytes were.
struct Writes {
    sizes: Vec<usize>,
    from: Vec<usize>,
}

/// The answer to one request (read to its end) whose response body is `frames`, all ready at
/// once (with `content_length`, in that framing; else chunked), and its writes.
async fn answer_with(
    frames: Vec<Result<hyper::body::Frame<Bytes>, crate::http::BoxError>>,
    content_length: Option<u64>,
) -> (String, Writes) {
    use http_body_util::{BodyExt, StreamBody};

    let (mut client, wire) = tokio::io::duplex(1024 * 1024);
    let gate = FlushGate::new(wire);
    let (sizes, from) = (gate.writes.clone(), gate.written_from.clone());
    let limits = ServeLimits {
        max_head: 64 * 1024,
        head_timeout: None,
        keep_alive: false,
    };
    let mut frames = Some(frames);
    tokio::spawn(serve(
        Pieces::new(gate),
        limits,
        CancellationToken::new(),
        None,
        move |_| {
            let frames = frames.take().expect("one request");
            async move {
                answering(
                    StreamBody::new(futures_util::stream::iter(frames)).boxed(),
                    content_length,
                )
            }
        },
    ));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_to_end(&mut answer),
    )
    .await
    .expect("the answer never ended")
    .unwrap();
    let writes = Writes {
        sizes: sizes.lock().unwrap().clone(),
        from: from.lock().unwrap().clone(),
    };
    (String::from_utf8(answer).unwrap(), writes)
}

/// Serves one response whose body is `count` chunks of 1,000 bytes, all ready at once, checks
/// its chunked encoding, and returns the bytes after the head and the size of every write.
async fn serve_ready_chunks(count: u8) -> (String, Vec<usize>) {
    let frames = (0..count)
        .map(|i| {
            Ok(hyper::body::Frame::data(Bytes::from(vec![
                b'a' + i % 26;
                1000
            ])))
        })
        .collect();
    let (answer, writes) = answer_with(frames, None).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let expected: String = (0..count)
        .map(|i| {
            format!(
                "3e8\r\n{}\r\n",
                char::from(b'a' + i % 26).to_string().repeat(1000)
            )
        })
        .chain(["0\r\n\r\n".to_string()])
        .collect();
    assert_eq!(body, expected);
    (body.to_string(), writes.sizes)
}

/// A chunked body's chunks that are ready together leave in one write with the head and the
/// last chunk (each was a write, and on a tunnel stream a frame, of its own), in order.
#[tokio::test]
async fn chunks_ready_together_leave_together() {
    let (_, writes) = serve_ready_chunks(10).await;
    assert_eq!(writes.len(), 1, "writes: {writes:?}");
}

/// An upstream whose chunks are always ready is written at most 64 KiB (a tunnel frame) at a
/// time, not gathered whole: what waits to be written stays bounded.
#[tokio::test]
async fn chunks_always_ready_are_written_64_kib_at_a_time() {
    let (body, writes) = serve_ready_chunks(200).await;
    assert!(
        writes.len() >= body.len() / (65 * 1024),
        "writes: {writes:?}"
    );
    assert!(
        writes.iter().all(|&len| len <= 64 * 1024),
        "writes: {writes:?}"
    );
}

/// A chunk the body has ready goes out while the body waits for its next (a watch's event
/// never waits for the one after it), over a kept-alive connection; and a piece of a body with
/// a `Content-Length` (an HTTP/2 upstream's watch) likewise.
#[tokio::test]
async fn a_ready_chunk_goes_out_while_the_body_waits() {
    a_ready_piece_goes_out_while_the_body_waits(None, "5\r\nevent\r\n").await;
    a_ready_piece_goes_out_while_the_body_waits(Some(1 << 20), "\r\n\r\nevent").await;
}

async fn a_ready_piece_goes_out_while_the_body_waits(
    content_length: Option<u64>,
    shows_as: &'static str,
) {
    use http_body_util::{BodyExt, StreamBody};

    let (mut client, wire) = tokio::io::duplex(64 * 1024);
    let (events, next_event) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let next_event = Arc::new(Mutex::new(Some(next_event)));
    let limits = ServeLimits {
        max_head: 64 * 1024,
        head_timeout: None,
        keep_alive: true,
    };
    tokio::spawn(serve(
        Pieces::new(FlushGate::new(wire)),
        limits,
        CancellationToken::new(),
        None,
        move |_| {
            let mut receiver = next_event.lock().unwrap().take().expect("one watch");
            async move {
                let frames = futures_util::stream::poll_fn(move |cx| {
                    receiver.poll_recv(cx).map(|event| {
                        event.map(|data| {
                            Ok::<_, crate::http::BoxError>(hyper::body::Frame::data(data))
                        })
                    })
                });
                answering(StreamBody::new(frames).boxed(), content_length)
            }
        },
    ));
    client
        .write_all(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    events.send(Bytes::from_static(b"event")).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !answer.ends_with(shows_as.as_bytes()) {
            let len = client.read(&mut buf).await.unwrap();
            assert!(len > 0, "the connection ended");
            answer.extend_from_slice(&buf[..len]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the event waited for the body's next");
    drop(events);
}

/// Chunks the body had ready before it failed still reach the peer, and then the connection
/// ends without the last chunk: a cut, never a clean end.
#[tokio::test]
async fn chunks_before_a_body_error_still_go_out() {
    let frames = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"event"))),
        Err("the upstream broke".into()),
    ];
    let (answer, _) = answer_with(frames, None).await;
    assert!(answer.ends_with("\r\n\r\n5\r\nevent\r\n"), "{answer:?}");
}

/// Likewise for a body with a `Content-Length`: the pieces gathered before the failure (or
/// before the body ends short of its length) reach the peer, then the cut.
#[tokio::test]
async fn pieces_before_a_length_body_ends_badly_still_go_out() {
    let failing = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"event"))),
        Err("the upstream broke".into()),
    ];
    let short = vec![Ok(hyper::body::Frame::data(Bytes::from_static(b"event")))];
    for frames in [failing, short] {
        let (answer, _) = answer_with(frames, Some(100)).await;
        assert!(answer.ends_with("\r\n\r\nevent"), "{answer:?}");
    }
}

/// An HTTP/2 upstream's DATA frames (8-16 KiB each, held by nothing else once hyper hands
/// them on) that are ready together leave 64 KiB at a time, in order: each was a write, and a
/// tunnel frame, of its own.
#[tokio::test]
async fn small_pieces_of_a_length_body_leave_64_kib_at_a_time() {
    let whole: Vec<u8> = (0..24 * 8192).map(|i| b'a' + (i % 26) as u8).collect();
    let frames = whole
        .chunks(8192)
        .map(|piece| Ok(hyper::body::Frame::data(Bytes::from(piece.to_vec()))))
        .collect();
    let (answer, writes) = answer_with(frames, Some(whole.len() as u64)).await;
    let body = &answer.as_bytes()[answer.find("\r\n\r\n").unwrap() + 4..];
    assert!(body == &whole[..], "the body arrived changed");
    assert!(
        writes.sizes.len() <= 4 && writes.sizes.iter().all(|&len| len <= 64 * 1024),
        "writes: {:?}",
        writes.sizes
    );
}

/// A piece of a frame's size or more (a whole read of the agent's own client) is written from
/// where it is, not copied into a batch.
#[tokio::test]
async fn a_large_piece_is_written_from_where_it_is() {
    let large = Bytes::from(vec![b'b'; 100 * 1024]);
    let at = large.as_ptr() as usize;
    let frames = vec![
        Ok(hyper::body::Frame::data(Bytes::from_static(b"small"))),
        Ok(hyper::body::Frame::data(large)),
    ];
    let (answer, writes) = answer_with(frames, Some(5 + 100 * 1024)).await;
    assert!(
        answer.ends_with(&"b".repeat(100 * 1024)),
        "the body arrived changed"
    );
    assert!(writes.from.contains(&at), "the large piece was copied");
}
