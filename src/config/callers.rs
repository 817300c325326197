//! `[[caller]]`: who may call `/tunnel/` on the internal listener (DESIGN.md §5 item 4). With
//! no entries, any caller that reaches the listener is trusted (NetworkPolicy is the guard).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::server::TokenHash;
use super::{read_secret_file, resolve, Check};

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
    /// Cluster ids it may reach; `None`: all (`clusters = ["*"]`).
    pub clusters: Option<Vec<String>>,
}

impl RawCaller {
    pub(crate) fn validate(
        self,
        index: usize,
        config_path: &Path,
        check: Check,
        cluster_ids: &HashSet<String>,
        watched: &mut Vec<PathBuf>,
        warnings: &mut Vec<String>,
    ) -> Result<CallerConfig, String> {
        let at = format!("[[caller]] #{} (name \"{}\")", index + 1, self.name);
        let token_configured =
            self.token_sha256.is_some() || self.token_file.is_some() || self.token.is_some();
        if self.name.is_empty() {
            return Err(format!("{at}: name is empty"));
        }
        let token = match (self.token_sha256, self.token_file, self.token) {
            (None, None, None) => None,
            (Some(hex), None, None) => Some(
                TokenHash::from_hex(&hex)
                    .ok_or_else(|| format!("{at}: token_sha256 must be 64 hex digits"))?,
            ),
            (None, Some(file), None) => match check {
                Check::Syntax => None,
                Check::Files => {
                    let file = resolve(config_path, &file);
                    let secret = read_secret_file(&file)
                        .map_err(|error| format!("{at}: token_file: {error}"))?;
                    watched.push(file);
                    Some(TokenHash::of(secret.expose().as_bytes()))
                }
            },
            (None, None, Some(token)) if !token.trim().is_empty() => {
                warnings.push(format!(
                    "{at}: plaintext `token`; prefer token_sha256 or token_file"
                ));
                Some(TokenHash::of(token.trim().as_bytes()))
            }
            (None, None, Some(_)) => return Err(format!("{at}: token is empty")),
            _ => {
                return Err(format!(
                    "{at}: set only one of token_sha256, token_file or token"
                ))
            }
        };
        if token == Some(TokenHash::of(b"")) {
            return Err(format!("{at}: token_sha256 is the hash of an empty token"));
        }
        if let Some(name) = self
            .cert_name
            .as_deref()
            .filter(|name| !super::is_dns_name(name))
        {
            return Err(format!(
                "{at}: cert_name \"{name}\" is not a DNS name a certificate can carry"
            ));
        }
        if !token_configured && self.cert_name.is_none() {
            return Err(format!(
                "{at}: needs a token (token_sha256, token_file or token) or cert_name"
            ));
        }
        let clusters = if self.clusters.iter().any(|id| id == "*") {
            if self.clusters.len() > 1 {
                return Err(format!("{at}: clusters = [\"*\"] stands alone"));
            }
            None
        } else {
            if self.clusters.is_empty() {
                return Err(format!("{at}: clusters is empty (use [\"*\"] for all)"));
            }
            if let Some(unknown) = self.clusters.iter().find(|id| !cluster_ids.contains(*id)) {
                return Err(format!(
                    "{at}: clusters names \"{unknown}\", which is not a [[cluster]] id"
                ));
            }
            Some(self.clusters)
        };
        Ok(CallerConfig {
            name: self.name,
            token,
            cert_name: self.cert_name,
            clusters,
        })
    }
}

impl CallerConfig {
    /// Whether this caller may reach `cluster`.
    pub fn allows(&self, cluster: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == cluster))
    }
}
