//! The one place a presented secret is compared with configured ones: hashed, then compared
//! in constant time against every entry with no early exit, so timing says nothing about which
//! entry matched or how much of a guess was right. `/connect` (agent tokens), `/tunnel/`
//! callers and the extensions listener all use it.

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::TokenHash;

/// The index of the entry (a cluster's agent token, a caller's token, the extension secret)
/// whose hash matches the presented secret's. Every entry is compared in constant time, with
/// no early exit, so timing says nothing about which matched. A missing token (a syntax-only
/// config) never matches.
///
/// Each entry costs a few word operations and one constant-time choice: a server of 10,000
/// clusters scans them on every agent connect, and a byte-wise comparison there (32 barriers per
/// entry) was most of the server's CPU while 10,000 agents reconnected.
pub fn authenticate<'a>(
    tokens: impl IntoIterator<Item = Option<&'a TokenHash>>,
    presented: &[u8],
) -> Option<usize> {
    if presented.is_empty() {
        return None;
    }
    let hash = words(&TokenHash::of(presented));
    let mut found = u64::MAX;
    let mut any = Choice::from(0);
    for (index, token) in tokens.into_iter().enumerate() {
        // The same work for every entry, present or not.
        let (candidate, present) = match token {
            Some(token) => (words(token), 1),
            None => ([0; 4], 0),
        };
        let difference = (candidate[0] ^ hash[0])
            | (candidate[1] ^ hash[1])
            | (candidate[2] ^ hash[2])
            | (candidate[3] ^ hash[3]);
        let matched = difference.ct_eq(&0) & Choice::from(present);
        found.conditional_assign(&(index as u64), matched);
        any |= matched;
    }
    bool::from(any).then_some(found as usize)
}

fn words(token: &TokenHash) -> [u64; 4] {
    let mut words = [0; 4];
    for (word, bytes) in words.iter_mut().zip(token.0.chunks_exact(8)) {
        *word = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_checks_every_entry() {
        // A syntax-only entry (no token) sits among them and never matches.
        let tokens = [
            Some(TokenHash::of(b"a")),
            None,
            Some(TokenHash::of(b"b")),
            Some(TokenHash::of(b"c")),
        ];
        let check = |presented: &[u8]| authenticate(tokens.iter().map(Option::as_ref), presented);
        assert_eq!(check(b"a"), Some(0));
        assert_eq!(check(b"b"), Some(2));
        assert_eq!(check(b"c"), Some(3));
        assert_eq!(check(b"d"), None);
        // S3: an empty presented token never matches, even an entry whose token hashes "".
        let empty = [Some(TokenHash::of(b""))];
        assert_eq!(authenticate(empty.iter().map(Option::as_ref), b""), None);
        // A hash differing from an entry's in any one word (any one byte) does not match it.
        let a = TokenHash::of(b"a");
        for byte in [0, 7, 8, 15, 16, 23, 24, 31] {
            let mut near = a.0;
            near[byte] ^= 1;
            assert_eq!(
                authenticate([Some(&TokenHash(near))], b"a"),
                None,
                "byte {byte}"
            );
        }
    }
}
