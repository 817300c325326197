//! The agent's own HTTP/1.1 client (`agent::upstream_h1`: watches and followed logs, and every
//! bodiless request to a plain-HTTP upstream as here) against a scripted upstream on a raw
//! socket: the answer reaches Argo CD's side intact, a connection is reused only after a clean
//! end and while the upstream keeps it (one it closes while idle is closed here too), a cut or
//! malformed answer fails that one request, and only a safe request is sent again.

mod support;

use std::net::SocketAddr;

use http::StatusCode;
use support::stack::{agent, get, server, try_get, wait_routed, Inject, TestAgent, TestServer};
use support::{listener, within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WATCH: &str = "/tunnel/c1/api/v1/pods?watch=true";

/// A server with cluster `c1` and its agent, whose upstream is `upstream`.
async fn stack(dir: &TempDir, upstream: SocketAddr) -> (TestServer, TestAgent) {
    let target = upstream.to_string();
    let server = server(&dir.0, &[("c1", "agent-token", &target)]).await;
    let agent = agent(
        &dir.0,
        "a",
        server.addrs.public,
        "agent-token",
        &target,
        Inject::Nothing,
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    (server, agent)
}

/// Reads one request head from `conn`; `None` if the connection ended first.
async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if within("request head", conn.read(&mut byte)).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8(head).expect("UTF-8 head"))
}

async fn accept(listener: &TcpListener) -> TcpStream {
    within("upstream connection", listener.accept())
        .await
        .unwrap()
        .0
}

/// Runs one watch to a clean end; returns the upstream's side of the connection it leaves in
/// the agent's idle pool.
async fn pooled_watch(upstream: &TcpListener, internal: SocketAddr) -> TcpStream {
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut conn = accept(upstream).await;
    read_head(&mut conn).await.expect("the first watch");
    conn.write_all(CHUNKED_OK).await.unwrap();
    assert_eq!(
        within("first watch", client).await.unwrap().0,
        StatusCode::OK
    );
    conn
}

const CHUNKED_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";

#[tokio::test]
async fn a_watch_connection_is_reused_only_after_a_clean_end_and_while_open() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;

    // First watch: a chunked answer that ends cleanly.
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut first = accept(&upstream).await;
    let head = read_head(&mut first).await.expect("the watch request");
    assert!(
        head.starts_with("GET /api/v1/pods?watch=true HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: {addr}\r\n")),
        "{head}"
    );
    first.write_all(CHUNKED_OK).await.unwrap();
    let (status, _, body) = within("first watch", client).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"{\"a\":1}"[..]));

    // Second watch: the same connection carries it.
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    read_head(&mut first)
        .await
        .expect("the second watch on the first connection");
    first
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let (status, _, body) = within("second watch", client).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

    // The upstream closes the idle connection: the next watch dials a new one.
    drop(first);
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut second = accept(&upstream).await;
    read_head(&mut second).await.expect("the third watch");
    second.write_all(CHUNKED_OK).await.unwrap();
    let (status, _, _) = within("third watch", client).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // Bytes after the end of an answer: the connection is not used again.
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    read_head(&mut second).await.expect("the fourth watch");
    second
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
        .await
        .unwrap();
    let (status, _, body) = within("fourth watch", client).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut third = accept(&upstream).await;
    read_head(&mut third).await.expect("the fifth watch");
    third.write_all(CHUNKED_OK).await.unwrap();
    let (status, _, _) = within("fifth watch", client).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_watch_the_upstream_cuts_is_an_error_for_the_client_not_an_end() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;
    for cut_after in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\":"[..],
    ] {
        let client = tokio::spawn(async move { try_get(internal, WATCH, &[]).await });
        let mut conn = accept(&upstream).await;
        read_head(&mut conn).await.expect("the watch request");
        conn.write_all(cut_after).await.unwrap();
        drop(conn);
        // The agent's side may not have sent the head on before the cut: a 502 then.
        let result = within("the cut watch", client).await.unwrap();
        assert!(
            matches!(&result, Err(_) | Ok((StatusCode::BAD_GATEWAY, ..))),
            "a cut answer must fail the client's request, got {result:?}"
        );
    }
    // The tunnel still serves.
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut conn = accept(&upstream).await;
    read_head(&mut conn).await.expect("the watch request");
    conn.write_all(CHUNKED_OK).await.unwrap();
    assert_eq!(within("watch", client).await.unwrap().0, StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_or_oversized_watch_answer_is_a_502() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;
    let oversized = {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= 64 * 1024 {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head
    };
    for answer in [
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
        b"SPDY/3 200 OK\r\n\r\n".to_vec(),
        // Over the head limit, with no end: only the limit can end this request.
        oversized,
    ] {
        let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
        let mut conn = accept(&upstream).await;
        read_head(&mut conn).await.expect("the watch request");
        // The agent may stop reading once it has refused the head.
        let _ = conn.write_all(&answer).await;
        let (status, _, body) = within("the refused watch", client).await.unwrap();
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(&answer[..40])
        );
        assert!(
            String::from_utf8_lossy(&body).contains("could not reach"),
            "{body:?}"
        );
    }
}

#[tokio::test]
async fn a_watch_on_a_pooled_connection_the_upstream_closes_is_sent_again_on_a_new_one() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;
    let mut first = pooled_watch(&upstream, internal).await;
    // The pooled connection carries the next watch, and the upstream closes it unanswered
    // (its idle timeout raced the request).
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    read_head(&mut first)
        .await
        .expect("the second watch on the pooled connection");
    drop(first);
    let mut second = accept(&upstream).await;
    let head = read_head(&mut second).await.expect("the watch sent again");
    assert!(
        head.starts_with("GET /api/v1/pods?watch=true HTTP/1.1\r\n"),
        "{head}"
    );
    second.write_all(CHUNKED_OK).await.unwrap();
    let (status, _, body) = within("second watch", client).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"{\"a\":1}"[..]));
}

/// A bodiless request this client carries that is not idempotent (here a POST that names
/// `watch=true`) is not sent again when its pooled connection closes unanswered: it may have
/// been acted on (RFC 9112 §9.3.1, RFC 9110 §9.2.2). It is a 502, and the next request goes on a new connection.
#[tokio::test]
async fn a_post_on_a_pooled_connection_the_upstream_closes_is_not_sent_again() {
    not_sent_again(
        "POST /tunnel/c1/api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "POST /api/v1/pods?watch=true HTTP/1.1\r\n",
    )
    .await;
}

/// Nor is an idempotent but unsafe one once it was written: a DELETE the upstream acted on
/// before the connection broke would find nothing to delete the second time (a 404).
#[tokio::test]
async fn a_delete_on_a_pooled_connection_the_upstream_closes_is_not_sent_again() {
    not_sent_again(
        "DELETE /tunnel/c1/api/v1/namespaces/a/pods/p HTTP/1.1\r\nHost: x\r\n\r\n",
        "DELETE /api/v1/namespaces/a/pods/p HTTP/1.1\r\n",
    )
    .await;
}

/// `request` (raw, to the server) takes a pooled connection, which the upstream closes after
/// reading it (its head starts with `upstream_line`): a 502, nothing sent again, and the next
/// request goes on a new connection.
async fn not_sent_again(request: &'static str, upstream_line: &str) {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;
    let mut first = pooled_watch(&upstream, internal).await;

    // The request takes the pooled connection; the upstream closes it without an answer.
    let sent = tokio::spawn(async move {
        let mut conn = TcpStream::connect(internal).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 64];
        let read = conn.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..read]).into_owned()
    });
    let head = read_head(&mut first)
        .await
        .expect("the request on the pooled connection");
    assert!(head.starts_with(upstream_line), "{head}");
    drop(first);
    // Sent again, the request would arrive on a new connection before any answer.
    let answer = within("the request's answer or a new connection", async {
        tokio::select! {
            answer = sent => answer.unwrap(),
            accepted = upstream.accept() => {
                let mut again = accepted.unwrap().0;
                panic!("the request was sent again: {:?}", read_head(&mut again).await)
            }
        }
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");

    // The next request goes on a new connection, and is the first one on it.
    let client = tokio::spawn(async move { get(internal, WATCH, &[]).await });
    let mut second = accept(&upstream).await;
    let head = read_head(&mut second)
        .await
        .expect("a request on a new connection");
    assert!(
        head.starts_with("GET /api/v1/pods?watch=true HTTP/1.1\r\n"),
        "{head}"
    );
    second.write_all(CHUNKED_OK).await.unwrap();
    assert_eq!(
        within("the next watch", client).await.unwrap().0,
        StatusCode::OK
    );
}

/// An idle pooled connection the upstream closes (its keep-alive timeout, shorter than ours)
/// is closed by the agent too, within its sweep, not held half-closed until the next request.
#[tokio::test]
async fn an_idle_connection_the_upstream_closes_is_closed_by_the_agent_too() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let mut pooled = pooled_watch(&upstream, server.addrs.internal).await;
    pooled.shutdown().await.unwrap();
    let mut byte = [0u8; 1];
    let read = within("the agent closes its end", pooled.read(&mut byte))
        .await
        .unwrap();
    assert_eq!(read, 0, "the agent sent bytes on an idle connection");
}

/// B6 (seed-protocol.md): an answer with neither a length nor chunking ends when the upstream
/// closes. A plain GET (this client carries every bodiless request to a plain-HTTP upstream)
/// gets the whole body and completes, and the next one does too.
#[tokio::test]
async fn a_close_delimited_answer_completes() {
    let dir = TempDir::new();
    let (upstream, addr) = listener().await;
    let (server, _agent) = stack(&dir, addr).await;
    let internal = server.addrs.internal;
    for n in 0..2 {
        let path = format!("/tunnel/c1/api/v1/namespaces/n{n}");
        let client = tokio::spawn(async move { get(internal, &path, &[]).await });
        // The first one's connection ended with its answer: the next comes on a new one.
        let mut conn = accept(&upstream).await;
        let head = read_head(&mut conn).await.expect("the GET");
        assert!(
            head.starts_with(&format!("GET /api/v1/namespaces/n{n} HTTP/1.1\r\n")),
            "{head}"
        );
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"kind\":")
            .await
            .unwrap();
        conn.write_all(b"\"Namespace\"}").await.unwrap();
        drop(conn);
        let (status, _, body) = within("the close-delimited answer", client).await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"{\"kind\":\"Namespace\"}"[..])
        );
    }
}
