//! Caller authentication on the internal listener (DESIGN.md §5 item 4): with `[[caller]]`
//! entries configured, a `/tunnel/` request must carry a caller's bearer token or client
//! certificate, and may reach only that caller's clusters. Runs before the cluster lookup, so
//! an unauthenticated client learns nothing about which clusters exist.

use http::{header, HeaderMap};

use super::auth::authenticate;
use crate::config::CallerConfig;
use crate::transport::tls_server::ClientCert;

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No known credential: 401.
    Unauthenticated,
    /// A known caller outside its clusters: 403 (the caller's name, for the log).
    Forbidden(String),
}

/// The caller's name when it may reach `cluster`; `None` when no callers are configured (the
/// internal listener is then guarded by the network alone).
pub fn check(
    callers: &[CallerConfig],
    headers: &HeaderMap,
    cert: Option<&ClientCert>,
    cluster: &str,
) -> Result<Option<String>, Refusal> {
    if callers.is_empty() {
        return Ok(None);
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let tokens = callers.iter().map(|caller| caller.token.as_ref());
    // Every token compared in constant time; a certificate only when no token matched.
    let caller = authenticate(tokens, presented)
        .map(|index| &callers[index])
        .or_else(|| {
            let cert = cert?;
            callers.iter().find(|caller| {
                caller
                    .cert_name
                    .as_deref()
                    .is_some_and(|name| cert.names(name))
            })
        })
        .ok_or(Refusal::Unauthenticated)?;
    if caller.allows(cluster) {
        Ok(Some(caller.name.clone()))
    } else {
        Err(Refusal::Forbidden(caller.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterScope, TokenHash};

    fn caller(name: &str, token: &str, clusters: Option<&[&str]>) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            token: Some(TokenHash::of(token.as_bytes())),
            cert_name: None,
            clusters: clusters.map_or(ClusterScope::All, |ids| {
                ClusterScope::Only(ids.iter().map(|id| id.to_string()).collect())
            }),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    #[test]
    fn tokens_scope_callers_to_their_clusters() {
        let callers = [
            caller("argocd-a", "ta", Some(&["c1"])),
            caller("argocd-all", "tall", None),
        ];
        assert_eq!(
            check(&callers, &bearer("ta"), None, "c1"),
            Ok(Some("argocd-a".into()))
        );
        assert_eq!(
            check(&callers, &bearer("ta"), None, "c2"),
            Err(Refusal::Forbidden("argocd-a".into()))
        );
        assert_eq!(
            check(&callers, &bearer("tall"), None, "c2"),
            Ok(Some("argocd-all".into()))
        );
        assert_eq!(
            check(&callers, &bearer("nope"), None, "c1"),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(
            check(&callers, &HeaderMap::new(), None, "c1"),
            Err(Refusal::Unauthenticated)
        );
        // "Bearer" is required: a bare token is not a bearer credential.
        let mut bare = HeaderMap::new();
        bare.insert(header::AUTHORIZATION, "ta".parse().unwrap());
        assert_eq!(
            check(&callers, &bare, None, "c1"),
            Err(Refusal::Unauthenticated)
        );
    }

    #[test]
    fn no_callers_means_no_caller_check() {
        assert_eq!(check(&[], &HeaderMap::new(), None, "c1"), Ok(None));
    }
}
