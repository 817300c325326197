//! Body decoders of our own HTTP/1.1 (client and server alike), over `Bytes` without copying:
//! `Content-Length` and chunked bodies, each handing out what it decoded and leaving what
//! follows the body to the connection. Limits a peer controls are `codec`'s constants.

use bytes::{Buf, Bytes};

use super::codec::{CodecError, MAX_CHUNK_LINE, MAX_TRAILERS};

/// What a decoder got from its input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes (a slice of the input, not a copy).
    Data(Bytes),
    /// The input is used up; the body goes on.
    NeedMore,
    /// The body ended; whatever is left in the input follows it.
    End,
}

/// Decodes a `Content-Length` body.
#[derive(Debug)]
pub(crate) struct LengthDecoder {
    remaining: u64,
}

impl LengthDecoder {
    pub(crate) fn new(len: u64) -> Self {
        Self { remaining: len }
    }

    /// Body bytes not yet decoded.
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    pub(crate) fn decode(&mut self, input: &mut Bytes) -> Decoded {
        if self.remaining == 0 {
            return Decoded::End;
        }
        if input.is_empty() {
            return Decoded::NeedMore;
        }
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        self.remaining -= take as u64;
        Decoded::Data(input.split_to(take))
    }
}

/// Decodes a chunked body: sizes, extensions (skipped), data, trailers (read and dropped).
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: Chunked,
    /// Bytes of the current size line or trailer section seen so far (bounded).
    line_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Hex digits of a size: the value so far, and whether a digit was seen.
    Size {
        value: u64,
        seen_digit: bool,
    },
    /// After the size: extensions up to the line's end.
    Extension(u64),
    /// The LF ending the size line.
    SizeLf(u64),
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// Trailer section; `at_line_start`: an empty line (CR ignored) ends it.
    Trailer {
        at_line_start: bool,
    },
    End,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: Chunked::Size {
                value: 0,
                seen_digit: false,
            },
            line_len: 0,
        }
    }
}

impl ChunkedDecoder {
    pub(crate) fn decode(&mut self, input: &mut Bytes) -> Result<Decoded, CodecError> {
        loop {
            if let Chunked::Data(remaining) = self.state {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                let rest = remaining - take as u64;
                self.state = if rest == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(rest)
                };
                return Ok(Decoded::Data(input.split_to(take)));
            }
            if self.state == Chunked::End {
                return Ok(Decoded::End);
            }
            let Some(&byte) = input.first() else {
                return Ok(Decoded::NeedMore);
            };
            input.advance(1);
            self.state = self.step(byte)?;
        }
    }

    fn step(&mut self, byte: u8) -> Result<Chunked, CodecError> {
        use Chunked::*;
        let counted = matches!(
            self.state,
            Size { .. } | Extension(_) | SizeLf(_) | Trailer { .. }
        );
        if counted {
            self.line_len += 1;
            let limit = match self.state {
                Trailer { .. } => MAX_TRAILERS,
                _ => MAX_CHUNK_LINE,
            };
            if self.line_len > limit {
                return Err(CodecError::Chunked("size line or trailers too long"));
            }
        }
        Ok(match (self.state, byte) {
            (Size { value, .. }, digit) if digit.is_ascii_hexdigit() => {
                let nibble = (digit as char).to_digit(16).expect("hex digit") as u64;
                let value = value
                    .checked_mul(16)
                    .and_then(|v| v.checked_add(nibble))
                    .ok_or(CodecError::Chunked("chunk size overflows"))?;
                Size {
                    value,
                    seen_digit: true,
                }
            }
            (
                Size {
                    value,
                    seen_digit: true,
                },
                b'\r',
            ) => SizeLf(value),
            // A bare LF ends a line, as after extensions and chunk data (RFC 9112 §2.2).
            (
                Size {
                    value,
                    seen_digit: true,
                },
                b'\n',
            ) => return self.size_line_done(value),
            (
                Size {
                    value,
                    seen_digit: true,
                },
                b';' | b' ' | b'\t',
            ) => Extension(value),
            (
                Size {
                    seen_digit: false, ..
                },
                b'\r' | b'\n' | b';',
            ) => return Err(CodecError::Chunked("missing chunk size")),
            (Size { .. }, _) => return Err(CodecError::Chunked("invalid chunk size")),
            (Extension(value), b'\r') => SizeLf(value),
            (Extension(value), b'\n') => return self.size_line_done(value),
            (Extension(value), _) => Extension(value),
            (SizeLf(value), b'\n') => return self.size_line_done(value),
            (SizeLf(_), _) => return Err(CodecError::Chunked("expected LF after chunk size")),
            (DataCr, b'\r') => DataLf,
            (DataCr | DataLf, b'\n') => Size {
                value: 0,
                seen_digit: false,
            },
            (DataCr | DataLf, _) => return Err(CodecError::Chunked("expected CRLF after data")),
            (Trailer { at_line_start }, b'\r') => Trailer { at_line_start },
            (
                Trailer {
                    at_line_start: true,
                },
                b'\n',
            ) => End,
            (Trailer { .. }, b'\n') => Trailer {
                at_line_start: true,
            },
            (Trailer { .. }, _) => Trailer {
                at_line_start: false,
            },
            (Data(_) | End, _) => unreachable!("handled by decode"),
        })
    }

    fn size_line_done(&mut self, size: u64) -> Result<Chunked, CodecError> {
        self.line_len = 0;
        Ok(if size == 0 {
            Chunked::Trailer {
                at_line_start: true,
            }
        } else {
            Chunked::Data(size)
        })
    }
}
