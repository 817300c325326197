//! The server's own HTTP/1.1 client on tunnel streams (`h1`) against raw answers:
//! a Go (v1) agent pipes its upstream's bytes unchanged, so whatever an upstream writes reaches
//! the relay's parser. Each case scripts the answer byte by byte with the Go-peer emulator,
//! split across Data frames at awkward points, and checks what Argo CD's side gets; bad input
//! fails that one request (502 or a failed body), never the session.

mod support;

use argocd_proxy::protocol::Frame;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::gopeer::{go_agent_with_token, GoPeer};
use support::stack::{get, server, wait_routed};
use support::{within, TempDir};
use tokio::net::TcpStream;

/// One request to the server's internal listener: status, and the body or its error.
async fn send(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, Result<Bytes, String>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "x")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        // The server may cut the connection before the head is out when the body fails at once.
        Err(error) => {
            return (
                StatusCode::BAD_GATEWAY,
                Err(format!("no response head: {error}")),
            )
        }
    };
    let status = response.status();
    let body = response.into_body().collect().await;
    (
        status,
        body.map(|b| b.to_bytes()).map_err(|e| e.to_string()),
    )
}

/// Takes the next Connect, acknowledges it, reads the request head, then writes `answer` in
/// the given pieces and closes the stream.
async fn answer(go: &mut GoPeer<TcpStream>, pieces: &[&[u8]]) -> String {
    let (id, head) = answer_open(go, pieces).await;
    go.send(Frame::Close { id }).await;
    head
}

/// As [`answer`], but the stream stays open: only a limit can end the request early.
async fn answer_open(go: &mut GoPeer<TcpStream>, pieces: &[&[u8]]) -> (u32, String) {
    let id = loop {
        match within("Connect", go.recv()).await {
            Some(Frame::Connect { id, .. }) => break id,
            Some(_) => continue,
            None => panic!("go agent lost"),
        }
    };
    go.send(Frame::Connected { id }).await;
    let head = within("request head", go.read_until(id, b"\r\n\r\n")).await;
    for piece in pieces {
        go.send(Frame::Data {
            id,
            payload: Bytes::copy_from_slice(piece),
        })
        .await;
    }
    (id, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test]
async fn raw_answers_are_framed_right_and_bad_ones_fail_one_request() {
    let dir = TempDir::new();
    let server = server(&dir.0, &[("c1", "go-agent-token", "10.0.0.1:6443")]).await;
    let mut go = within(
        "go agent",
        go_agent_with_token(server.addrs.public, "go-agent-token"),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    let internal = server.addrs.internal;
    let ask = |method: Method, body: &'static [u8]| {
        tokio::spawn(async move { send(internal, method, "/tunnel/c1/api/x", body).await })
    };

    // Chunked, cut inside the size line, its extension and the CRLFs; a trailer at the end.
    let client = ask(Method::GET, b"");
    answer(
        &mut go,
        &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;ext=",
            b"1\r\nhel",
            b"lo\r",
            b"\n6\r\n wor",
            b"ld\r\n0\r\nX-Trailer: t\r",
            b"\n\r\n",
        ],
    )
    .await;
    let (status, body) = within("chunked", client).await.unwrap();
    assert_eq!(
        (status, body.as_deref()),
        (StatusCode::OK, Ok(&b"hello world"[..]))
    );

    // An interim 100 Continue, then the answer to a POST whose body went out first.
    let client = ask(Method::POST, b"{\"a\":1}");
    let head = answer(
        &mut go,
        &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"],
    )
    .await;
    assert!(
        head.to_ascii_lowercase().contains("content-length: 7"),
        "{head}"
    );
    let (status, body) = within("interim", client).await.unwrap();
    assert_eq!(
        (status, body.as_deref()),
        (StatusCode::CREATED, Ok(&b"ok"[..]))
    );

    // HEAD: a Content-Length, no body; the answer must not wait for one.
    let client = ask(Method::HEAD, b"");
    answer(&mut go, &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]).await;
    let (status, body) = within("head", client).await.unwrap();
    assert_eq!((status, body.as_deref()), (StatusCode::OK, Ok(&b""[..])));

    // A malformed head: 502 for this request.
    let client = ask(Method::GET, b"");
    answer(&mut go, &[b"HTTP/1.1 abc\r\n\r\n"]).await;
    assert_eq!(
        within("malformed", client).await.unwrap().0,
        StatusCode::BAD_GATEWAY
    );

    // Limits the agent's side could push past, each on a stream left open so that only the
    // limit can end the request: a head that never ends (one long value, a byte at a time at
    // first, so a dribbled head is gathered too), endless interim answers.
    let long_value = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(70 * 1024));
    let interims = "HTTP/1.1 100 Continue\r\n\r\n".repeat(40);
    let dribbled: Vec<&[u8]> = long_value
        .as_bytes()
        .chunks(1)
        .take(64)
        .chain(long_value.as_bytes()[64..].chunks(8 * 1024))
        .collect();
    let mut left_open = Vec::new();
    for (what, pieces) in [
        ("head over MAX_HEAD", dribbled),
        ("over MAX_INTERIM", vec![interims.as_bytes()]),
    ] {
        let client = ask(Method::GET, b"");
        left_open.push(answer_open(&mut go, &pieces).await.0);
        assert_eq!(
            within(what, client).await.unwrap().0,
            StatusCode::BAD_GATEWAY,
            "{what}"
        );
    }
    for id in left_open {
        go.send(Frame::Close { id }).await;
    }

    // A 101 to a request that asked for no upgrade: what follows is not HTTP; 502.
    let client = ask(Method::GET, b"");
    answer(
        &mut go,
        &[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
    )
    .await;
    assert_eq!(
        within("unasked 101", client).await.unwrap().0,
        StatusCode::BAD_GATEWAY
    );

    // Transfer-Encoding beside Content-Length: the coding wins and the client gets the whole
    // body (a kept Content-Length: 3 would have cut it to "hel").
    let client = ask(Method::GET, b"");
    answer(
        &mut go,
        &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
    )
    .await;
    let (status, body) = within("TE and CL", client).await.unwrap();
    assert_eq!(
        (status, body.as_deref()),
        (StatusCode::OK, Ok(&b"hello"[..]))
    );

    // A bad chunk size mid-body, and a Content-Length body cut short: the body fails, it
    // never looks complete.
    for pieces in [
        &[&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n"[..]][..],
        &[&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..]][..],
    ] {
        let client = ask(Method::GET, b"");
        answer(&mut go, pieces).await;
        let (_, body) = within("bad body", client).await.unwrap();
        assert!(
            body.is_err(),
            "a broken body must fail, never end cleanly: {body:?}"
        );
    }

    assert_eq!(
        get(server.addrs.ops.unwrap(), "/readyz?cluster=c1", &[])
            .await
            .0,
        StatusCode::OK,
        "the session survived every case"
    );
}
