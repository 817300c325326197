//! The one place a presented secret is compared with configured ones: hashed, then compared
//! in constant time against every entry with no early exit, so timing says nothing about which
//! entry matched or how much of a guess was right. `/connect` (agent tokens), `/tunnel/`
//! callers and the extensions listener all use it.

use subtle::ConstantTimeEq;

use crate::config::TokenHash;

/// The index of the entry (a cluster's agent token, a caller's token, the extension secret)
/// whose hash matches the presented secret's. Every cluster is
/// compared in constant time, with no early exit, so timing says nothing about which matched.
/// A cluster without a token (a syntax-only config) never matches.
pub fn authenticate(tokens: &[Option<TokenHash>], presented: &[u8]) -> Option<usize> {
    if presented.is_empty() {
        return None;
    }
    let hash = TokenHash::of(presented);
    let mut found = None;
    for (index, token) in tokens.iter().enumerate() {
        // The same work for every entry, present or not.
        let (candidate, present) = match token {
            Some(token) => (token.0, true),
            None => ([0u8; 32], false),
        };
        if bool::from(candidate.ct_eq(&hash.0)) && present {
            found = Some(index);
        }
    }
    found
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
        assert_eq!(authenticate(&tokens, b"b"), Some(2));
        assert_eq!(authenticate(&tokens, b"c"), Some(3));
        assert_eq!(authenticate(&tokens, b"d"), None);
        // S3: an empty presented token never matches, even an entry whose token hashes "".
        let empty = [Some(TokenHash::of(b""))];
        assert_eq!(authenticate(&empty, b""), None);
    }
}
