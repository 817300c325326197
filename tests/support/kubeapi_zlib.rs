//! Just enough zlib for SPDY/3 header blocks, with no crate to lean on: an inflater (stored,
//! fixed and dynamic Huffman blocks, RFC 1950/1951) that keeps one stream's history across
//! frames and starts from SPDY/3's preset dictionary, and a "compressor" that wraps bytes in
//! stored blocks (valid zlib that any inflater reads, compression or not).
//!
//! SPDY compresses every header block of one direction of a connection as one zlib stream, each
//! block ending in a sync flush (an empty stored block), so every frame's compressed bytes end
//! on a block boundary: [`Inflater::inflate`] decodes whole blocks, one frame at a time.

/// The preset dictionary of SPDY/3 header compression (1423 bytes, Adler-32 `0xe3c6a7c2`):
/// these words, each after its length as a big-endian u32, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504",
    "505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, ",
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// SPDY/3's header-compression dictionary.
pub fn spdy_dictionary() -> Vec<u8> {
    let mut dictionary = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        let len = u32::try_from(word.len()).expect("short word");
        dictionary.extend_from_slice(&len.to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dictionary
}

/// Adler-32, zlib's checksum (here: of the dictionary, which a zlib header names).
pub fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// One direction's zlib stream, decoded frame by frame.
pub struct Inflater {
    dictionary: Vec<u8>,
    /// Everything decoded so far, preceded by the dictionary (back-references reach into it).
    history: Vec<u8>,
    started: bool,
}

impl Inflater {
    pub fn new(dictionary: Vec<u8>) -> Inflater {
        Inflater {
            history: dictionary.clone(),
            dictionary,
            started: false,
        }
    }

    /// Decodes the next piece of the stream, which must end on a block boundary (as every SPDY
    /// header block does, by its sync flush).
    pub fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, String> {
        if !self.started {
            let [cmf, flg, rest @ ..] = input else {
                return Err("zlib header cut short".into());
            };
            if cmf & 0x0f != 8 || (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 != 0 {
                return Err(format!("not a zlib header: {cmf:02x} {flg:02x}"));
            }
            input = rest;
            if flg & 0x20 != 0 {
                let Some((id, rest)) = input.split_first_chunk::<4>() else {
                    return Err("zlib dictionary id cut short".into());
                };
                let (wanted, ours) = (u32::from_be_bytes(*id), adler32(&self.dictionary));
                if wanted != ours {
                    return Err(format!(
                        "the stream wants dictionary {wanted:08x}, ours is {ours:08x}"
                    ));
                }
                input = rest;
            }
            self.started = true;
        }
        let start = self.history.len();
        let mut bits = Bits { input, at: 0 };
        // A block needs more than 7 bits, so a partly used last byte is only padding.
        while bits.at.div_ceil(8) < input.len() {
            let last = bits.take(1)?;
            match bits.take(2)? {
                0 => self.stored(&mut bits)?,
                1 => {
                    let (lengths, distances) = fixed_codes();
                    self.codes(&mut bits, &lengths, &distances)?;
                }
                2 => {
                    let (lengths, distances) = dynamic_codes(&mut bits)?;
                    self.codes(&mut bits, &lengths, &distances)?;
                }
                kind => return Err(format!("invalid block type {kind}")),
            }
            if last == 1 {
                break;
            }
        }
        let output = self.history[start..].to_vec();
        // Back-references reach 32 KiB back at most.
        if self.history.len() > 256 * 1024 {
            let excess = self.history.len() - 32 * 1024;
            self.history.drain(..excess);
        }
        Ok(output)
    }

    fn stored(&mut self, bits: &mut Bits<'_>) -> Result<(), String> {
        bits.at = bits.at.div_ceil(8) * 8;
        let len = bits.take(16)?;
        let nlen = bits.take(16)?;
        if len != !nlen & 0xffff {
            return Err("stored block length check failed".into());
        }
        let from = bits.at / 8;
        let data = bits
            .input
            .get(from..from + len as usize)
            .ok_or("stored block cut short")?;
        self.history.extend_from_slice(data);
        bits.at += 8 * len as usize;
        Ok(())
    }

    fn codes(
        &mut self,
        bits: &mut Bits<'_>,
        lengths: &Huffman,
        distances: &Huffman,
    ) -> Result<(), String> {
        const LENGTH_BASE: [u16; 29] = [
            3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99,
            115, 131, 163, 195, 227, 258,
        ];
        const LENGTH_EXTRA: [u8; 29] = [
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
        ];
        const DISTANCE_BASE: [u16; 30] = [
            1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
            1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
        ];
        const DISTANCE_EXTRA: [u8; 30] = [
            0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12,
            12, 13, 13,
        ];
        loop {
            let symbol = lengths.decode(bits)?;
            match symbol {
                0..=255 => self.history.push(symbol as u8),
                256 => return Ok(()),
                _ => {
                    let at = usize::from(symbol - 257);
                    if at >= LENGTH_BASE.len() {
                        return Err(format!("invalid length symbol {symbol}"));
                    }
                    let len = usize::from(LENGTH_BASE[at]) + bits.take(LENGTH_EXTRA[at])? as usize;
                    let at = usize::from(distances.decode(bits)?);
                    if at >= DISTANCE_BASE.len() {
                        return Err(format!("invalid distance symbol {at}"));
                    }
                    let distance =
                        usize::from(DISTANCE_BASE[at]) + bits.take(DISTANCE_EXTRA[at])? as usize;
                    if distance > self.history.len() {
                        return Err(format!("distance {distance} reaches before the start"));
                    }
                    for _ in 0..len {
                        let byte = self.history[self.history.len() - distance];
                        self.history.push(byte);
                    }
                }
            }
        }
    }
}

/// Wraps header blocks of one direction as a zlib stream of stored blocks, each block of
/// headers ending in a sync flush's empty stored block.
#[derive(Default)]
pub struct StoredDeflater {
    started: bool,
}

impl StoredDeflater {
    pub fn deflate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 16);
        if !self.started {
            // Deflate, 32 KiB window, no preset dictionary (nothing refers to one).
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        // Then an empty block, as a sync flush ends: Go's inflater hands out what it has only
        // at an empty stored block; without one it reads on for the next block header, past
        // this frame's end, and the shared stream is broken for every later frame.
        for chunk in data.chunks(0xffff).chain([&[][..]]) {
            let len = u16::try_from(chunk.len()).expect("chunked");
            // Not final, type 00 (stored), padded to the byte.
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// Reads bits least-significant first, as deflate packs them.
struct Bits<'a> {
    input: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn take(&mut self, count: u8) -> Result<u32, String> {
        let mut value = 0;
        for i in 0..count {
            let byte = self
                .input
                .get(self.at / 8)
                .ok_or("compressed data cut short")?;
            value |= u32::from((byte >> (self.at % 8)) & 1) << i;
            self.at += 1;
        }
        Ok(value)
    }
}

/// A canonical Huffman code: how many codes each length has and the symbols in code order.
struct Huffman {
    count: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut count = [0u16; 16];
        for &len in lengths {
            count[usize::from(len)] += 1;
        }
        count[0] = 0;
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + count[len];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (symbol, &len) in lengths.iter().enumerate() {
            if len != 0 {
                let slot = &mut offsets[usize::from(len)];
                symbols[usize::from(*slot)] = symbol as u16;
                *slot += 1;
            }
        }
        Huffman { count, symbols }
    }

    /// Reads one symbol, a bit at a time.
    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.count[len]);
            if code - first < count {
                return Ok(self.symbols[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        Err("invalid Huffman code".into())
    }
}

fn fixed_codes() -> (Huffman, Huffman) {
    let mut lengths = [0u8; 288];
    for (symbol, len) in lengths.iter_mut().enumerate() {
        *len = match symbol {
            0..=143 => 8,
            144..=255 => 9,
            256..=279 => 7,
            _ => 8,
        };
    }
    (Huffman::new(&lengths), Huffman::new(&[5; 30]))
}

fn dynamic_codes(bits: &mut Bits<'_>) -> Result<(Huffman, Huffman), String> {
    const ORDER: [usize; 19] = [
        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
    ];
    let literals = bits.take(5)? as usize + 257;
    let distances = bits.take(5)? as usize + 1;
    let code_lengths = bits.take(4)? as usize + 4;
    let mut lengths = [0u8; 19];
    for &at in &ORDER[..code_lengths] {
        lengths[at] = bits.take(3)? as u8;
    }
    let lencode = Huffman::new(&lengths);
    let mut lengths = vec![0u8; literals + distances];
    let mut at = 0;
    while at < lengths.len() {
        let symbol = lencode.decode(bits)?;
        let (len, repeat) = match symbol {
            0..=15 => (symbol as u8, 1),
            16 => {
                let previous = *at
                    .checked_sub(1)
                    .and_then(|p| lengths.get(p))
                    .ok_or("repeat with no previous length")?;
                (previous, 3 + bits.take(2)? as usize)
            }
            17 => (0, 3 + bits.take(3)? as usize),
            _ => (0, 11 + bits.take(7)? as usize),
        };
        let run = lengths
            .get_mut(at..at + repeat)
            .ok_or("code lengths overrun")?;
        run.fill(len);
        at += repeat;
    }
    if lengths[256] == 0 {
        return Err("no end-of-block code".into());
    }
    let (literal_lengths, distance_lengths) = lengths.split_at(literals);
    Ok((
        Huffman::new(literal_lengths),
        Huffman::new(distance_lengths),
    ))
}
