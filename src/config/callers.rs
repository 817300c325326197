//! `[[caller]]`: who may call `/tunnel/` on the internal listener (DESIGN.md §5 item 4). With
//! no entries, any caller that reaches the listener is trusted (NetworkPolicy is the guard).

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::common::{ClusterScope, Hashed, Reading, SecretSource};
use super::server::TokenHash;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCaller {
    name: String,
    token_sha256: Option<String>,
    token_file: Option<PathBuf>,
    token: Option<String>,
    cert_name: Option<String>,
    clusters: Vec<String>,
}

/// One authenticated caller (Argo CD, usually one per Argo CD instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerConfig {
    /// For logs and metrics.
    pub name: String,
    /// Hash of its bearer token (`Authorization: Bearer`); `None` in a syntax-only check of a
    /// `token_file`, or when it authenticates by certificate only.
    pub token: Option<TokenHash>,
    /// A DNS name its client certificate must carry (needs `[internal] client_ca`).
    pub cert_name: Option<String>,
    /// The clusters it may reach.
    pub clusters: ClusterScope,
}

impl RawCaller {
    pub(crate) fn validate(
        self,
        index: usize,
        cluster_ids: &HashSet<String>,
        reading: &mut Reading<'_>,
    ) -> Result<CallerConfig, String> {
        let at = format!("[[caller]] #{} (name \"{}\")", index + 1, self.name);
        if self.name.is_empty() {
            return Err(format!("{at}: name is empty"));
        }
        let token = SecretSource {
            sha256: self.token_sha256,
            file: self.token_file,
            plain: self.token,
        }
        .hash(&at, "token", reading)?;
        if let Some(name) = self.cert_name.as_deref() {
            if !super::is_dns_name(name) {
                return Err(format!(
                    "{at}: cert_name \"{name}\" is not a DNS name a certificate can carry"
                ));
            }
        }
        if token == Hashed::Missing && self.cert_name.is_none() {
            return Err(format!(
                "{at}: needs a token (token_sha256, token_file or token) or cert_name"
            ));
        }
        Ok(CallerConfig {
            name: self.name,
            token: token.hash(),
            cert_name: self.cert_name,
            clusters: ClusterScope::parse(&at, self.clusters, cluster_ids)?,
        })
    }
}

impl CallerConfig {
    /// Whether this caller may reach `cluster`.
    pub fn allows(&self, cluster: &str) -> bool {
        self.clusters.allows(cluster)
    }
}
