use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use proptest::prelude::*;

use super::*;
use crate::h1::decode::{ChunkedDecoder, Decoded, LengthDecoder};

/// Runs `decoder` over `input` cut at `cuts`; returns the body and what followed it.
fn chunked(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>), CodecError> {
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < input.len()).collect();
    ends.sort_unstable();
    ends.push(input.len());
    for end in ends {
        if end < start {
            continue;
        }
        let mut piece = Bytes::copy_from_slice(&input[start..end]);
        start = end;
        loop {
            match decoder.decode(&mut piece)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::NeedMore => break,
                Decoded::End => {
                    let mut rest = piece.to_vec();
                    rest.extend_from_slice(&input[start..]);
                    return Ok((body, rest));
                }
            }
        }
    }
    Err(CodecError::Chunked("ended early (test)"))
}

fn encode_chunked(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        encode_chunk(part, &mut out);
    }
    encode_chunk(b"", &mut out);
    out
}

#[test]
fn a_chunked_body_decodes_to_its_data_and_stops_at_its_end() {
    let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
    let (body, rest) = chunked(input, &[]).unwrap();
    assert_eq!(body, b"hello world");
    assert_eq!(
        rest, b"NEXT",
        "bytes after the body are left for the next response"
    );
}

#[test]
fn data_comes_out_as_slices_of_the_input() {
    let input = Bytes::from_static(b"5\r\nhello\r\n0\r\n\r\n");
    let mut piece = input.clone();
    let mut decoder = ChunkedDecoder::default();
    let Decoded::Data(data) = decoder.decode(&mut piece).unwrap() else {
        panic!("data first")
    };
    assert_eq!(&data[..], b"hello");
    assert_eq!(data.as_ptr(), input[3..].as_ptr(), "no copy");
}

/// A bare LF ends a line wherever a CRLF may (RFC 9112 §2.2): after the size, after an
/// extension, after data, and in trailers.
#[test]
fn bare_line_feeds_end_lines() {
    assert_eq!(
        chunked(b"5\nhello\n3;x\nabc\n0\nX-T: t\n\n", &[]),
        Ok((b"helloabc".to_vec(), Vec::new()))
    );
}

#[test]
fn malformed_chunked_input_is_an_error() {
    for (input, why) in [
        (&b"x\r\n"[..], "invalid chunk size"),
        (b"\r\n", "missing chunk size"),
        (b"5\rX", "expected LF after chunk size"),
        (b"2\r\nabXY", "expected CRLF after data"),
        (b"11111111111111111\r\n", "chunk size overflows"),
        (b"\n", "missing chunk size"),
    ] {
        assert_eq!(
            chunked(input, &[]),
            Err(CodecError::Chunked(why)),
            "{input:?}"
        );
    }
}

#[test]
fn size_lines_and_trailers_are_bounded() {
    // Neither input ever ends: only the limits can make them fail (the helper's own error for
    // an input that runs out is another one).
    let too_long = Err(CodecError::Chunked("size line or trailers too long"));
    let mut line = b"5;".to_vec();
    line.resize(MAX_CHUNK_LINE + 10, b'a');
    assert_eq!(chunked(&line, &[]), too_long);
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < MAX_TRAILERS + 100 {
        trailers.extend_from_slice(b"X-A: b\r\n");
    }
    assert_eq!(chunked(&trailers, &[]), too_long);
    // Just under the limits, both are fine.
    let mut line = b"5;".to_vec();
    line.resize(MAX_CHUNK_LINE - 2, b'a');
    line.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    assert_eq!(chunked(&line, &[]), Ok((b"hello".to_vec(), Vec::new())));
}

proptest! {
    /// Any body, chunked any way and cut anywhere, decodes to itself.
    #[test]
    fn chunked_round_trips_across_any_cuts(
        parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        cuts in proptest::collection::vec(0usize..2000, 0..8),
    ) {
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let input = encode_chunked(&slices);
        let (body, rest) = chunked(&input, &cuts).unwrap();
        prop_assert_eq!(body, parts.concat());
        prop_assert!(rest.is_empty());
    }

    /// Arbitrary input never panics and never yields more than it was given.
    #[test]
    fn chunked_decoding_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((body, _)) = chunked(&input, &[7, 50]) {
            prop_assert!(body.len() <= input.len());
        }
    }
}

#[test]
fn a_length_body_stops_at_its_length() {
    let mut decoder = LengthDecoder::new(5);
    let mut input = Bytes::from_static(b"helloNEXT");
    assert_eq!(
        decoder.decode(&mut input),
        Decoded::Data(Bytes::from_static(b"hello"))
    );
    assert_eq!(decoder.decode(&mut input), Decoded::End);
    assert_eq!(&input[..], b"NEXT");
}

fn head(text: &str) -> ResponseHead {
    parse_response_head(text.as_bytes()).unwrap().unwrap().0
}

#[test]
fn response_heads_parse_and_say_when_more_is_needed() {
    let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody";
    let (parsed, len) = parse_response_head(text.as_bytes()).unwrap().unwrap();
    assert_eq!(len, text.len() - 4);
    assert_eq!(parsed.status, StatusCode::OK);
    assert_eq!(parsed.headers.get_all("x-a").iter().count(), 2);
    assert!(parse_response_head(&text.as_bytes()[..20])
        .unwrap()
        .is_none());
    assert!(matches!(
        parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n"),
        Err(CodecError::Head(_))
    ));
    // Few headers, one long value: only MAX_HEAD can refuse it (not MAX_HEADERS).
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    assert!(matches!(
        parse_response_head(&big),
        Err(CodecError::HeadTooLarge)
    ));
    big.truncate(MAX_HEAD - 100);
    assert!(
        parse_response_head(&big).unwrap().is_none(),
        "under it: more"
    );
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    many.extend_from_slice(&b"X-A: b\r\n".repeat(MAX_HEADERS + 1));
    many.extend_from_slice(b"\r\n");
    assert!(matches!(
        parse_response_head(&many),
        Err(CodecError::Head(_))
    ));
}

#[test]
fn framing_follows_rfc_9112() {
    let get = Method::GET;
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
            BodyFraming::Length(12),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n",
            BodyFraming::Length(12),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            BodyFraming::Chunked,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
            BodyFraming::Chunked,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            BodyFraming::UntilClose,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", BodyFraming::UntilClose),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            BodyFraming::Empty,
        ),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", BodyFraming::Empty),
        ("HTTP/1.1 100 Continue\r\n\r\n", BodyFraming::Empty),
    ];
    for (text, framing) in cases {
        assert_eq!(response_framing(&get, &head(text)), Ok(framing), "{text}");
    }
    let with_length = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(
        response_framing(&Method::HEAD, &with_length),
        Ok(BodyFraming::Empty)
    );
    for bad in ["1, 2", "-1", "1e3", ""] {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
        assert_eq!(
            response_framing(&get, &head(&text)),
            Err(CodecError::ContentLength),
            "{bad}"
        );
    }
}

/// Transfer-Encoding overrides Content-Length: the length goes (the client's side would frame
/// the relayed body by it and cut it short) and the stream is not reused; alone, each stays.
#[test]
fn a_length_beside_a_transfer_coding_is_dropped_and_the_stream_not_reused() {
    let get = Method::GET;
    let mut both =
        head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(
        settle_framing(&get, &mut both),
        Ok((BodyFraming::Chunked, false))
    );
    assert!(!both.headers.contains_key("content-length"));
    let mut length = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(
        settle_framing(&get, &mut length),
        Ok((BodyFraming::Length(3), true))
    );
    assert!(length.headers.contains_key("content-length"));
    let mut chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(
        settle_framing(&get, &mut chunked),
        Ok((BodyFraming::Chunked, true))
    );
}

#[test]
fn keep_alive_follows_the_version_and_connection_header() {
    assert!(head("HTTP/1.1 200 OK\r\n\r\n").keep_alive());
    assert!(!head("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive());
    assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive());
    assert!(head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n").keep_alive());
}

#[test]
fn request_heads_carry_the_framing_header() {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("kubernetes"));
    let mut out = Vec::new();
    encode_request_head(
        &Method::POST,
        "/api/v1/x?y=1",
        &headers,
        RequestFraming::Length(3),
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /api/v1/x?y=1 HTTP/1.1\r\nhost: kubernetes\r\ncontent-length: 3\r\n\r\n"
    );
    let mut out = BytesMut::new().to_vec();
    encode_request_head(
        &Method::GET,
        "/",
        &headers,
        RequestFraming::Chunked,
        &mut out,
    );
    assert!(String::from_utf8(out)
        .unwrap()
        .ends_with("transfer-encoding: chunked\r\n\r\n"));
}
