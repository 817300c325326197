//! HTTP hygiene shared by the server and the agent: hop-by-hop header stripping (tokenised,
//! both directions), Kubernetes `Status` error bodies, and the body type both use.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The response/request body type of both binaries: a stream of bytes that may fail (a tunnel
/// lost mid-body fails the body, so the client sees an error, never a clean end).
pub type Body = BoxBody<Bytes, BoxError>;

/// Any body error: hyper's, or a tunnel stream's (the relay reads those itself).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The read buffer of an HTTP/1 connection that carries bodies in bulk (hyper's default grows
/// to ~400 KiB). hyper moves up to 16 buffers per poll of a connection, and every process runs
/// on one thread: with 400 KiB a download held the event loop for milliseconds at a time, and
/// every other request on it waited that long at each of its hops (S4 in docs/benchmarks.md).
pub const BULK_READ_BUFFER: usize = 64 * 1024;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, plus the de-facto ones).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` describes one hop (never forwarded, never configured for a request).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Every token of every `Connection` header, as sent (compare without case). Borrowed: no
/// allocation for the message that has none, which is nearly every one.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    // On raw bytes: a value with non-UTF-8 bytes must not hide the names next to them.
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// True when `Connection` names the `upgrade` token anywhere (B11: `keep-alive, Upgrade` counts).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|token| token.eq_ignore_ascii_case(b"upgrade"))
}

/// Removes hop-by-hop headers and every header `Connection` names (for a request or a
/// response alike: a response's `Connection: close, X-Foo` must not leak `X-Foo`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `from_bytes` lower-cases the name; a token that is not a header name names nothing.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    // One pass over the few headers a message has, instead of eight lookups that mostly miss.
    if headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// Appends the client's address to `X-Forwarded-For` (keeping what the client sent).
pub fn append_forwarded_for(headers: &mut HeaderMap, client: std::net::IpAddr) {
    use std::fmt::Write;
    // Every line the client sent, joined, then ours (a value that is not text is dropped).
    let mut hops = String::new();
    for sent in headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
    {
        hops.push_str(sent);
        hops.push_str(", ");
    }
    let _ = write!(hops, "{client}");
    match HeaderValue::from_maybe_shared(Bytes::from(hops)) {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        Err(_) => {
            headers.remove(X_FORWARDED_FOR);
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Splices an upgraded connection (the client's at the server, the upstream's at the agent)
/// with a tunnel stream that carries the upgraded protocol after a 101: bytes are copied both
/// ways; an end that finishes sending shuts the other's write side (so an exec's stdin EOF
/// and exit travel), and an error on either ends both. `pending` (what followed the head on
/// the stream) goes to the connection first.
pub async fn splice_stream(
    client: hyper::upgrade::OnUpgrade,
    mut stream: crate::mux::MuxStream,
    pending: Bytes,
) {
    let client = match client.await {
        Ok(client) => client,
        Err(error) => return tracing::debug!(%error, "upgrade did not complete"),
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    if !pending.is_empty() {
        if let Err(error) = tokio::io::AsyncWriteExt::write_all(&mut client, &pending).await {
            return tracing::debug!(%error, "upgraded connection ended with an error");
        }
    }
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut stream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// Restores the upgrade headers `strip_hop_by_hop` removed, for a request being relayed as an
/// upgrade (`upgrade`: the client's `Upgrade` value).
pub fn keep_upgrade(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// A body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A Kubernetes `Status` error response, so kubectl and Argo CD print something useful.
pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A Prometheus text exposition response.
pub fn metrics_response(text: String) -> Response<Body> {
    let mut response = Response::new(full(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// A small plain-text response (health endpoints, refusals on the public listener).
pub fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_stripped_tokenised() {
        let mut headers = HeaderMap::new();
        headers.append("connection", HeaderValue::from_static("close, X-Foo"));
        headers.append("connection", HeaderValue::from_static(" x-bar "));
        headers.insert("x-foo", HeaderValue::from_static("1"));
        headers.insert("x-bar", HeaderValue::from_static("2"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-keep", HeaderValue::from_static("3"));
        headers.append(
            "connection",
            HeaderValue::from_bytes(b"\xff, X-Baz").unwrap(),
        );
        headers.insert("x-baz", HeaderValue::from_static("4"));
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_alone() {
        for name in [
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("x-keep", HeaderValue::from_static("1"));
            let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.insert(header, HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut headers);
            let names: Vec<_> = headers.keys().map(|name| name.as_str()).collect();
            assert_eq!(names, ["x-keep"], "{name}");
        }
    }

    #[test]
    fn upgrade_is_found_in_any_position_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(wants_upgrade(&headers));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        assert!(!wants_upgrade(&headers));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut headers, "10.0.0.2".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.3"));
        append_forwarded_for(&mut headers, "10.0.0.4".parse().unwrap());
        assert_eq!(
            headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4"
        );
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        append_forwarded_for(&mut headers, "::1".parse().unwrap());
        assert_eq!(headers["x-forwarded-for"], "::1");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    }
}
