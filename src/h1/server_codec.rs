//! HTTP/1.1 as our own server speaks it (the agent, on tunnel streams), without I/O: request
//! heads in, response heads out. The body decoders are the client's (`codec`): a request body
//! is framed by the same rules minus "until close" (RFC 9112 §6.3 items 4–7).

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::codec::{CodecError, MAX_HEADERS};

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    /// The request target as sent (origin-form for every peer we serve).
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// Framed ambiguously (`Transfer-Encoding` beside `Content-Length`): served, then the
    /// connection closes (RFC 9112 §6.1).
    pub close_after: bool,
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestBodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

impl RequestHead {
    /// Whether the connection stays open after this exchange (HTTP/1.1 unless `close`;
    /// HTTP/1.0 only with `keep-alive`).
    pub(crate) fn keep_alive(&self) -> bool {
        super::codec::keep_alive(self.version, &self.headers)
    }

    /// The body's framing (RFC 9112 §6.3): a `Transfer-Encoding` must be `chunked` alone (we
    /// decode no other coding, and the header is hop-by-hop: 501 otherwise; HTTP/1.0 has none:
    /// 400), and wins over a `Content-Length`, which is then removed and the connection closed
    /// after the exchange; several differing lengths are an error.
    pub(crate) fn body_framing(&mut self) -> Result<RequestBodyFraming, CodecError> {
        let codings: Vec<String> = self
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(|value| value.to_str().map(str::to_owned))
            .collect::<Result<_, _>>()
            .map_err(|_| CodecError::Head("invalid Transfer-Encoding".into()))?;
        if !codings.is_empty() {
            if self.version != Version::HTTP_11 {
                return Err(CodecError::Head(
                    "Transfer-Encoding in an HTTP/1.0 request".into(),
                ));
            }
            let mut listed = codings
                .iter()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|coding| !coding.is_empty());
            let only_chunked = listed
                .next()
                .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
                && listed.next().is_none();
            if !only_chunked {
                return Err(CodecError::UnsupportedCoding);
            }
            if self.headers.remove(header::CONTENT_LENGTH).is_some() {
                self.close_after = true;
            }
            return Ok(RequestBodyFraming::Chunked);
        }
        match super::codec::content_length(&self.headers)? {
            None | Some(0) => Ok(RequestBodyFraming::Empty),
            Some(len) => Ok(RequestBodyFraming::Length(len)),
        }
    }
}

/// Parses a request head at the start of `buf`: `Ok(None)` when more bytes are needed, else
/// the head and how many bytes it took. Limits: `max_head` bytes, [`MAX_HEADERS`] headers
/// (both answered 431).
pub(crate) fn parse_request_head(
    buf: &[u8],
    max_head: usize,
) -> Result<Option<(RequestHead, usize)>, CodecError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let parsed = request.parse(buf);
    if matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        return Err(CodecError::TooManyHeaders);
    }
    let Some(len) = super::codec::head_length(parsed, buf.len(), max_head)? else {
        return Ok(None);
    };
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| CodecError::Head("invalid method".into()))?;
    let target = request.path.unwrap_or_default().to_owned();
    let version = match request.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let headers = super::codec::header_map(request.headers)?;
    Ok(Some((
        RequestHead {
            method,
            target,
            version,
            headers,
            close_after: false,
        },
        len,
    )))
}

/// How a response body goes on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// None may follow (HEAD, 1xx, 204, 304): the headers go as they are.
    NoBody,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// Whether a response to a `method` request with `status` carries no body.
pub(crate) fn bodiless(method: &Method, status: StatusCode) -> bool {
    method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// What a response head says about its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Nothing: HTTP/1.1 keeps a connection by default.
    Unsaid,
    /// `Connection: close`: the connection ends after this response.
    Close,
    /// `Connection: keep-alive`: an HTTP/1.0 client keeps its connection only when told (it
    /// would otherwise wait for a close the server does not send).
    KeepAlive,
}

/// Appends a response head. `headers` must be free of hop-by-hop headers; unless the framing
/// is `NoBody`, framing headers in it are replaced by `framing`'s. `persistence` says what
/// `Connection` carries; a `Date` is added when `headers` has none.
pub(crate) fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    persistence: Persistence,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        let framing_header = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        if framing_header && framing != ResponseFraming::NoBody {
            continue;
        }
        write_header(out, name, value);
    }
    if !headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a server with a clock sends one, and a proxy adds one to a
        // response that lacks it (hyper's server, on our other listeners, does the same).
        write_date(out);
    }
    match framing {
        ResponseFraming::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {}
    }
    match persistence {
        Persistence::Unsaid => {}
        Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
        Persistence::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>` for now, formatted at most once a second per thread.
fn write_date(out: &mut Vec<u8>) {
    write_date_at(SystemTime::now(), out);
}

fn write_date_at(now: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    // A clock before 1970 is no usable clock: no `Date` then (RFC 9110 §6.6.1).
    let Ok(since_epoch) = now.duration_since(UNIX_EPOCH) else {
        return;
    };
    DATE.with_borrow_mut(|(formatted_at, date)| {
        if *formatted_at != since_epoch.as_secs() {
            *formatted_at = since_epoch.as_secs();
            *date = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

fn write_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::codec::MAX_HEAD;

    fn parsed(head: &str) -> RequestHead {
        parse_request_head(head.as_bytes(), MAX_HEAD)
            .expect("valid")
            .expect("complete")
            .0
    }

    #[test]
    fn a_request_head_parses_once_complete_and_says_how_long_it_was() {
        let text = "GET /api?x=1 HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nBODY";
        for end in 0..text.len() - 4 {
            assert!(parse_request_head(&text.as_bytes()[..end], MAX_HEAD)
                .unwrap()
                .is_none());
        }
        let (head, len) = parse_request_head(text.as_bytes(), MAX_HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(len, text.len() - 4);
        assert_eq!(
            (head.method, head.target.as_str(), head.version),
            (Method::GET, "/api?x=1", Version::HTTP_11)
        );
        assert_eq!(head.headers.get_all("x-two").iter().count(), 2);
    }

    #[test]
    fn malformed_and_oversized_request_heads_are_errors() {
        for bad in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/9\r\n\r\n",
        ] {
            assert!(
                parse_request_head(bad.as_bytes(), MAX_HEAD).is_err(),
                "{bad:?}"
            );
        }
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request_head(long.as_bytes(), MAX_HEAD).unwrap_err(),
            CodecError::HeadTooLarge
        );
        // The limit is the caller's (a listener's `max_request_header_bytes`).
        assert!(parse_request_head(long.as_bytes(), 2 * MAX_HEAD)
            .unwrap()
            .is_none());
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(
            parse_request_head(many.as_bytes(), MAX_HEAD).unwrap_err(),
            CodecError::TooManyHeaders
        );
    }

    #[test]
    fn request_body_framing_follows_rfc_9112() {
        let framing = |head: &str| parsed(head).body_framing();
        assert_eq!(
            framing("GET / HTTP/1.1\r\n\r\n"),
            Ok(RequestBodyFraming::Empty)
        );
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(RequestBodyFraming::Empty)
        );
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n"),
            Ok(RequestBodyFraming::Length(7))
        );
        assert_eq!(
            framing("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(RequestBodyFraming::Chunked)
        );
        for bad in [
            "PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "PUT / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing(bad).is_err(), "{bad:?}");
        }
        // Codings we would have to decode (the header is hop-by-hop): refused as unsupported.
        for coding in ["gzip, chunked", "chunked, gzip", "chunked, chunked", ""] {
            let head = format!("PUT / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(
                framing(&head),
                Err(CodecError::UnsupportedCoding),
                "{coding:?}"
            );
        }
        // A length beside chunked is removed (it must not reach the upstream), and the
        // connection closes after the exchange.
        let mut head =
            parsed("PUT / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(head.body_framing(), Ok(RequestBodyFraming::Chunked));
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        assert!(head.close_after);
    }

    #[test]
    fn keep_alive_is_http_1_1s_default() {
        assert!(parsed("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!parsed("GET / HTTP/1.1\r\nConnection: x, Close\r\n\r\n").keep_alive());
        assert!(!parsed("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(parsed("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn a_response_head_carries_the_framing_it_is_written_with() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert("x-a", HeaderValue::from_static("b"));
        headers.insert(header::DATE, HeaderValue::from_static(DATE));
        let encode = |framing, persistence| {
            let mut out = Vec::new();
            encode_response_head(StatusCode::OK, &headers, framing, persistence, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            encode(ResponseFraming::Length(5), Persistence::Unsaid),
            format!("HTTP/1.1 200 OK\r\nx-a: b\r\ndate: {DATE}\r\ncontent-length: 5\r\n\r\n")
        );
        assert_eq!(
            encode(ResponseFraming::Chunked, Persistence::Close),
            format!("HTTP/1.1 200 OK\r\nx-a: b\r\ndate: {DATE}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        );
        // No body (a HEAD's answer): the upstream's length is the resource's, kept as it is.
        assert_eq!(
            encode(ResponseFraming::NoBody, Persistence::Unsaid),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 99\r\nx-a: b\r\ndate: {DATE}\r\n\r\n")
        );
        assert_eq!(
            encode(ResponseFraming::Length(5), Persistence::KeepAlive),
            format!("HTTP/1.1 200 OK\r\nx-a: b\r\ndate: {DATE}\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n")
        );
        assert!(bodiless(&Method::HEAD, StatusCode::OK));
        assert!(bodiless(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(!bodiless(&Method::GET, StatusCode::OK));
    }

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    /// A response without a `Date` gets the current one, once; one that has it keeps it.
    #[test]
    fn a_response_head_without_a_date_gets_now() {
        let before = SystemTime::now() - std::time::Duration::from_secs(1);
        let mut out = Vec::new();
        encode_response_head(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            ResponseFraming::Length(0),
            Persistence::Unsaid,
            &mut out,
        );
        let head = String::from_utf8(out).unwrap();
        let dates: Vec<&str> = head
            .lines()
            .filter_map(|line| line.strip_prefix("date: "))
            .collect();
        assert_eq!(dates.len(), 1, "{head}");
        let date = httpdate::parse_http_date(dates[0]).unwrap();
        let after = SystemTime::now() + std::time::Duration::from_secs(1);
        assert!(before <= date && date <= after, "{head}");
    }

    /// The cached text is that second's: the same within it, the next one's after it.
    #[test]
    fn the_cached_date_follows_the_clock() {
        let date_at = |now: SystemTime| {
            let mut out = Vec::new();
            write_date_at(now, &mut out);
            String::from_utf8(out).unwrap()
        };
        let second = UNIX_EPOCH + std::time::Duration::from_secs(784_111_777);
        let half = std::time::Duration::from_millis(500);
        assert_eq!(date_at(second), format!("date: {DATE}\r\n"));
        assert_eq!(date_at(second + half), format!("date: {DATE}\r\n"));
        assert_eq!(
            date_at(second + 2 * half),
            "date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"
        );
        assert_eq!(date_at(second), format!("date: {DATE}\r\n"));
        assert_eq!(date_at(UNIX_EPOCH - half), "");
    }
}
