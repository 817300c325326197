//! HTTP/1.1 as our own client speaks it (the server on tunnel streams, the agent to its
//! upstream for watches and HTTP/1.1-only destinations), without I/O: request heads out, response heads in, and how the
//! response body is framed (its decoders are in `decode`).
//! (Why not hyper's client here: one hyper HTTP/1 client connection holds ~14 KiB for as long
//! as a watch idles, the largest part of S9's per-stream memory; see docs/benchmarks.md, F.)
//!
//! Every limit a peer controls is a named constant; input past one is an error, never a panic
//! or an unbounded buffer.

use std::io::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Largest response head (status line and headers), as the hyper client allowed.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most response headers.
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (size, extensions, CRLF).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes after the last chunk (trailers are read and dropped).
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Most interim (1xx) responses before the final one: an endless `100 Continue` stream would
/// keep the request waiting for ever.
pub(crate) const MAX_INTERIM: usize = 32;

/// Malformed or oversized input from the peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CodecError {
    #[error("head over its size limit")]
    HeadTooLarge,
    #[error("malformed head: {0}")]
    Head(String),
    #[error("conflicting or invalid Content-Length")]
    ContentLength,
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("a transfer coding other than chunked alone")]
    UnsupportedCoding,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
}

/// How a request's body is framed on the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body, and no framing header (GET, HEAD, DELETE without one).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Appends the request head: `path` is the origin-form target; `headers` must already be free
/// of hop-by-hop and framing headers (the relay strips them), and the framing header is added
/// here.
pub(crate) fn encode_request_head(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked request body (`data` non-empty), or the last chunk when
/// `data` is empty.
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

impl ResponseHead {
    /// Whether the connection stays open after this response (HTTP/1.1 unless `close`;
    /// HTTP/1.0 only with `keep-alive`).
    pub(crate) fn keep_alive(&self) -> bool {
        keep_alive(self.version, &self.headers)
    }
}

/// Whether a message of `version` with `headers` keeps its connection open (HTTP/1.1 unless
/// `close`; HTTP/1.0 only with `keep-alive`).
pub(crate) fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    match version {
        Version::HTTP_11 => !tokens.any(|t| t.eq_ignore_ascii_case("close")),
        _ => tokens.any(|t| t.eq_ignore_ascii_case("keep-alive")),
    }
}

/// The headers of a parsed head; names and values are checked as `http` requires.
pub(crate) fn header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, CodecError> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for slot in parsed {
        let name = HeaderName::from_bytes(slot.name.as_bytes())
            .map_err(|_| CodecError::Head(format!("invalid header name {:?}", slot.name)))?;
        let value = HeaderValue::from_bytes(slot.value)
            .map_err(|_| CodecError::Head(format!("invalid value for {name}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The `Content-Length`, if any: every value (and every comma-separated part of one) must be
/// the same number of digits' value.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, CodecError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value
            .to_str()
            .map_err(|_| CodecError::ContentLength)?
            .split(',')
        {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CodecError::ContentLength);
            }
            let parsed: u64 = part.parse().map_err(|_| CodecError::ContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(CodecError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// What httparse made of the `buffered` bytes at a head's start, held to `max` bytes: the
/// head's length, or `None` while more may come.
pub(crate) fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max: usize,
) -> Result<Option<usize>, CodecError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > max => Err(CodecError::HeadTooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered >= max => Err(CodecError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(CodecError::Head(error.to_string())),
    }
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the head and how many bytes it took.
pub(crate) fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, CodecError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let Some(len) = head_length(response.parse(buf), buf.len(), MAX_HEAD)? else {
        return Ok(None);
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| CodecError::Head("invalid status code".into()))?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let headers = header_map(response.headers)?;
    Ok(Some((
        ResponseHead {
            status,
            version,
            headers,
        },
        len,
    )))
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body: a HEAD request, 1xx, 204, 304.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the stream ends (the stream cannot be reused).
    UntilClose,
}

/// The framing of a response to a `method` request, and whether the stream may carry another
/// exchange after it as far as framing goes. A `Transfer-Encoding` overrides a
/// `Content-Length` (RFC 9112 §6.3 item 3): the length is removed from `head`, or the client's
/// side would frame the relayed body by it and cut it short, and the stream is not reused
/// (such a message "ought to be handled as an error": a smuggling attempt, or a broken
/// upstream).
pub(crate) fn settle_framing(
    method: &Method,
    head: &mut ResponseHead,
) -> Result<(BodyFraming, bool), CodecError> {
    let framing = response_framing(method, head)?;
    let overridden = matches!(framing, BodyFraming::Chunked | BodyFraming::UntilClose)
        && head.headers.contains_key(header::CONTENT_LENGTH);
    if overridden {
        head.headers.remove(header::CONTENT_LENGTH);
    }
    Ok((framing, !overridden))
}

/// The framing of a response to a `method` request.
pub(crate) fn response_framing(
    method: &Method,
    head: &ResponseHead,
) -> Result<BodyFraming, CodecError> {
    let status = head.status;
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Empty);
    }
    if let Some(last) = head
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .rfind(|coding| !coding.is_empty())
    {
        // A transfer coding other than chunked last: the body runs to the end (§6.3 item 4).
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        });
    }
    Ok(content_length(&head.headers)?.map_or(BodyFraming::UntilClose, BodyFraming::Length))
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
