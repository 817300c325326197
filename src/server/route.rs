//! `/tunnel/{cluster-id}/{rest}` → (cluster id, `/{rest}` + raw query), on the raw request
//! target, so percent-encoding reaches the agent byte for byte (`%2F` stays `%2F`).

use std::borrow::Cow;

/// Why a path is not a tunnel route.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not under `/tunnel/`.
    NotTunnel,
    /// `/tunnel//…`: no cluster id.
    EmptyId,
}

/// Splits a raw `path?query` into the cluster id and the path to forward.
/// Borrowed unless the id is followed by a query with no path (`/tunnel/abc?x=1` → `/?x=1`).
pub fn route(path_and_query: &str) -> Result<(&str, Cow<'_, str>), RouteError> {
    let rest = path_and_query
        .strip_prefix("/tunnel/")
        .ok_or(RouteError::NotTunnel)?;
    let id_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (id, tail) = rest.split_at(id_end);
    if id.is_empty() {
        return Err(RouteError::EmptyId);
    }
    let forwarded = if tail.starts_with('/') {
        Cow::Borrowed(tail)
    } else {
        Cow::Owned(format!("/{tail}"))
    };
    Ok((id, forwarded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_keep_the_raw_path_and_query() {
        let cases = [
            ("/tunnel/abc", Ok(("abc", "/".into()))),
            ("/tunnel/abc/", Ok(("abc", "/".into()))),
            ("/tunnel/abc?x=1", Ok(("abc", "/?x=1".into()))),
            (
                "/tunnel/abc/api/v1/pods?watch=1&x=%2F",
                Ok(("abc", "/api/v1/pods?watch=1&x=%2F".into())),
            ),
            (
                "/tunnel/abc/api/v1/namespaces/a%2Fb/pods",
                Ok(("abc", "/api/v1/namespaces/a%2Fb/pods".into())),
            ),
            ("/tunnel//api", Err(RouteError::EmptyId)),
            ("/tunnel/", Err(RouteError::EmptyId)),
            ("/tunnel", Err(RouteError::NotTunnel)),
            ("/connect", Err(RouteError::NotTunnel)),
        ];
        for (input, expected) in cases {
            assert_eq!(route(input), expected, "{input}");
        }
    }
}
