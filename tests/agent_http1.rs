//! The agent's own HTTP/1.1 server on tunnel streams (`h1::serve`) against raw requests: a
//! test server (our mux, v2) opens streams on a real agent and writes bytes as any server
//! might; the agent forwards to an echoing upstream or a scripted one. Bad input fails that
//! one stream with a 400 or 431 and a close, never the session.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use argocd_proxy::mux::MuxStream;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::stack::{agent, Inject, TestAgent};
use support::{listener, our_server, within, ServerSide, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that answers every request with its method, path and body:
/// `METHOD PATH\nBODY`, with a Content-Length.
async fn echo_upstream() -> SocketAddr {
    let (listener, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let head = format!("{} {}\n", request.method(), request.uri());
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let mut answer = head.into_bytes();
                        answer.extend_from_slice(&body);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(answer))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A real agent forwarding to `upstream`, dialled in by our test server (v2).
async fn agent_session(dir: &TempDir, upstream: SocketAddr) -> (ServerSide, TestAgent) {
    let (listener, addr) = listener().await;
    let agent = agent(
        &dir.0,
        "a",
        addr,
        "agent-token",
        &upstream.to_string(),
        Inject::Nothing,
    )
    .await;
    let server = within(
        "the agent dials in",
        our_server(&listener, true, support::limits()),
    )
    .await;
    (server, agent)
}

async fn open(server: &ServerSide) -> MuxStream {
    within("open", server.session.handle.open(b"kubernetes"))
        .await
        .expect("stream")
}

/// Reads one response (head, and a body framed by Content-Length) off `stream`.
async fn read_response(stream: &mut MuxStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    within("response", async {
        while !bytes.ends_with(b"\r\n\r\n") {
            assert_eq!(
                stream.read(&mut byte).await.unwrap(),
                1,
                "the stream ended in a head: {}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        if head.starts_with("http/1.1 100") {
            return; // an interim response alone
        }
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .map_or(0, |len| len.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        bytes.extend_from_slice(&body);
    })
    .await;
    String::from_utf8(bytes).unwrap()
}

/// The response announces that the stream ends after it.
fn assert_says_close(response: &str) {
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
}

/// The stream's end after a response: a clean EOF.
async fn assert_ends(stream: &mut MuxStream) {
    let mut rest = Vec::new();
    within("the stream ends", stream.read_to_end(&mut rest))
        .await
        .expect("a clean end");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn requests_one_after_another_on_a_stream_with_every_body_framing() {
    let dir = TempDir::new();
    let (server, _agent) = agent_session(&dir, echo_upstream().await).await;
    let mut stream = open(&server).await;
    // Chunked, split at awkward points, with a bare LF after a size and an extension.
    for piece in [
        &b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-"[..],
        b"Encoding: chunked\r\n\r\n5\nhel",
        b"lo\r\n3;ext=1\r\n wo\r\n0\r\n\r\n",
    ] {
        stream.write_all(piece).await.unwrap();
    }
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nPOST /a\nhello wo"),
        "{response}"
    );
    // A length, and then a bodiless GET, on the same stream.
    stream
        .write_all(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
        .await
        .unwrap();
    assert!(read_response(&mut stream)
        .await
        .ends_with("\r\n\r\nPUT /b\nbody"));
    stream
        .write_all(b"GET /c?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream)
        .await
        .ends_with("\r\n\r\nGET /c?x=1\n"));
    // Expect: 100-continue is answered before the body is sent.
    stream
        .write_all(
            b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut stream).await,
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    stream.write_all(b"ok").await.unwrap();
    assert!(read_response(&mut stream)
        .await
        .ends_with("\r\n\r\nPOST /d\nok"));
    // `Connection: close`: answered, then the stream ends. (Below, on a new stream: a length
    // beside chunked is ambiguous framing, served with chunked and then closed.)
    stream
        .write_all(b"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_says_close(&response);
    assert_ends(&mut stream).await;
    let mut stream = open(&server).await;
    stream
        .write_all(b"POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.ends_with("\r\n\r\nPOST /f\nabcd"), "{response}");
    assert_says_close(&response);
    assert_ends(&mut stream).await;
}

/// An HTTP/1.0 client keeps its connection only when the answer says so: one that asks for
/// keep-alive is told `Connection: keep-alive` and served again; one that does not is told
/// `close`, and the stream ends.
#[tokio::test]
async fn an_http_1_0_client_that_asks_to_keep_the_stream_is_told_it_may() {
    let dir = TempDir::new();
    let (server, _agent) = agent_session(&dir, echo_upstream().await).await;
    let mut stream = open(&server).await;
    stream
        .write_all(b"GET /g HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: keep-alive\r\n"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\nGET /g\n"), "{response}");
    stream
        .write_all(b"GET /h HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.ends_with("\r\n\r\nGET /h\n"), "{response}");
    assert_says_close(&response);
    assert_ends(&mut stream).await;
}

#[tokio::test]
async fn a_malformed_or_oversized_request_gets_an_error_and_a_closed_stream() {
    let dir = TempDir::new();
    let (server, _agent) = agent_session(&dir, echo_upstream().await).await;
    let oversized = {
        // Over the agent's head limit (1 MiB, the server's default `max_request_header_bytes`)
        // and under the header count limit (128): the byte limit must be what refuses it.
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        let filler = format!("X-Filler: {}\r\n", "a".repeat(10_000));
        while head.len() <= 1024 * 1024 {
            head.extend_from_slice(filler.as_bytes());
        }
        head
    };
    let cases: [(&[u8], &str); 6] = [
        (b"GARBAGE\r\n\r\n", "HTTP/1.1 400 "),
        // A coding the agent would have to decode: not implemented.
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 501 ",
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        // Over the head limit, with no end: only the limit can end this request.
        (&oversized, "HTTP/1.1 431 "),
    ];
    for (request, status) in cases {
        let mut stream = open(&server).await;
        // Dribbled in pieces that end lines, so the head is parsed again and again.
        for piece in request.chunks(4096) {
            if stream.write_all(piece).await.is_err() {
                break; // the agent answered and closed before it all went
            }
        }
        let response = read_response(&mut stream).await;
        assert!(
            response.starts_with(status),
            "{}: {response}",
            String::from_utf8_lossy(&request[..20])
        );
        assert!(response.contains("\"kind\":\"Status\""), "{response}");
        assert_says_close(&response);
        assert_ends(&mut stream).await;
    }
    // The session still serves.
    let mut stream = open(&server).await;
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut stream).await.ends_with("GET /ok\n"));
}

#[tokio::test]
async fn a_stream_reset_or_flooded_mid_watch_closes_the_upstream_connection() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = agent_session(&dir, addr).await;
    for flood in [false, true] {
        watch_then_leave(&server, &upstream, flood).await;
    }
}

/// A watch whose first event arrives; then the server's side resets the stream, or (`flood`)
/// sends more than a request head's worth ahead of the answer. Either way the agent must
/// drop the upstream connection.
async fn watch_then_leave(server: &ServerSide, upstream: &tokio::net::TcpListener, flood: bool) {
    let mut stream = open(server).await;
    stream
        .write_all(b"GET /api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (mut conn, _) = within("the watch reaches the upstream", upstream.accept())
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let read = within("request head", conn.read(&mut head)).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..read]).starts_with("GET /api/v1/pods?watch=1 "));
    conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nevent\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"event\n\r\n") {
        let len = within("the first event", stream.read(&mut buf))
            .await
            .unwrap();
        assert!(len > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..len]);
    }
    if flood {
        let junk = vec![b'x'; 70 * 1024];
        let _ = stream.write_all(&junk).await;
    } else {
        // The client went away: the server resets the stream.
        drop(stream);
    }
    within("the agent closes the upstream connection", async {
        loop {
            match conn.read(&mut head).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_request_body_the_upstream_leaves_unread_ends_the_stream_after_the_answer() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = agent_session(&dir, addr).await;
    let mut stream = open(&server).await;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nfirst")
        .await
        .unwrap();
    let (mut conn, _) = within("the request reaches the upstream", upstream.accept())
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    within("request head", conn.read(&mut head)).await.unwrap();
    conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        .await
        .unwrap();
    drop(conn);
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413 "), "{response}");
    assert!(response.ends_with("\r\n\r\nbig"), "{response}");
    // The rest of the body would read as the next request: the stream is not used again, and
    // the answer says so (the server must not pool it).
    assert_says_close(&response);
    assert_ends(&mut stream).await;
    // The same for a refusal the agent makes itself (a backend it does not allow); a client
    // that waits for `100 Continue` gets the refusal instead, and never sends its body.
    let mut stream = within("open", server.session.handle.open(b"extension/unknown"))
        .await
        .expect("stream");
    stream
        .write_all(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    assert_says_close(&response);
    assert_ends(&mut stream).await;
}
