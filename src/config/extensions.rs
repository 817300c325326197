//! `[extensions]` and `[[extension]]`: the server's listener for Argo CD proxy extensions whose
//! backends live inside customer clusters (DESIGN.md §8). Argo CD drops the path of a backend
//! URL, so the listener is its own port and routing comes from headers Argo CD sets last (its
//! `extension.config` `headers`), which a browser cannot override.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::listener::{ListenerTls, RawListener};
use super::server::TokenHash;
use super::{read_secret_file, resolve, Check};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExtensions {
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    secret_sha256: Option<String>,
    secret_file: Option<PathBuf>,
    secret: Option<String>,
    secret_header: Option<String>,
    extension_header: Option<String>,
    cluster_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExtension {
    name: String,
    clusters: Vec<String>,
    max_concurrent: Option<usize>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
}

/// The extensions listener and what may pass it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionsConfig {
    /// Where Argo CD's extension proxy sends requests.
    pub listen: SocketAddr,
    /// TLS (and mTLS) on it.
    pub tls: Option<ListenerTls>,
    /// Hash of the secret Argo CD sends in `secret_header`; `None` only in a syntax-only
    /// check of a `secret_file` (nothing authenticates then).
    pub secret: Option<TokenHash>,
    /// Header carrying the secret. Default `X-Argocd-Proxy-Secret`.
    pub secret_header: http::HeaderName,
    /// Header naming the extension. Default `X-Argocd-Proxy-Extension`.
    pub extension_header: http::HeaderName,
    /// Header naming the cluster. Default `X-Argocd-Proxy-Cluster`.
    pub cluster_header: http::HeaderName,
    /// The extensions allowed through, each with its clusters (deny by default).
    pub extensions: Vec<ExtensionConfig>,
}

/// One extension allowed through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionConfig {
    /// Argo CD's extension name (`^[A-Za-z0-9_-]+$`), also the agent's `[[backend]] name`.
    pub name: String,
    /// Cluster ids it may reach; `None`: all (`["*"]`).
    pub clusters: Option<Vec<String>>,
    /// Requests in flight at once, all clusters together; more get 429. Default 16.
    pub max_concurrent: usize,
    /// Requests per second and burst; past it 429. Default 100/s, burst 200.
    pub rate_limit: Option<(u32, u32)>,
}

/// The default `[[extension]]` rate: requests per second, burst.
pub const DEFAULT_RATE: (u32, u32) = (100, 200);

impl ExtensionConfig {
    /// Whether this extension may reach `cluster`.
    pub fn allows(&self, cluster: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == cluster))
    }
}

fn header(
    value: Option<String>,
    default: &'static str,
    key: &str,
) -> Result<http::HeaderName, String> {
    let name = value.unwrap_or_else(|| default.to_owned());
    http::HeaderName::try_from(name.as_str())
        .map_err(|_| format!("[extensions] {key} = \"{name}\" is not a header name"))
}

impl RawExtensions {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn validate(
        self,
        raw_extensions: Vec<RawExtension>,
        config_path: &Path,
        check: Check,
        cluster_ids: &HashSet<String>,
        watched: &mut Vec<PathBuf>,
        warnings: &mut Vec<String>,
    ) -> Result<ExtensionsConfig, String> {
        let listener =
            RawListener::plain_or_tls(self.listen, self.tls_cert, self.tls_key, self.client_ca)
                .validate("extensions", config_path, check)?;
        let secret = match (self.secret_sha256, self.secret_file, self.secret) {
            (Some(hex), None, None) => Some(
                TokenHash::from_hex(&hex)
                    .ok_or("[extensions] secret_sha256 must be 64 hex digits")?,
            ),
            (None, Some(file), None) => match check {
                Check::Syntax => None,
                Check::Files => {
                    let file = resolve(config_path, &file);
                    let secret = read_secret_file(&file)
                        .map_err(|error| format!("[extensions] secret_file: {error}"))?;
                    watched.push(file);
                    Some(TokenHash::of(secret.expose().as_bytes()))
                }
            },
            (None, None, Some(secret)) if !secret.trim().is_empty() => {
                warnings.push("[extensions]: plaintext `secret`; prefer secret_sha256 or secret_file".into());
                Some(TokenHash::of(secret.trim().as_bytes()))
            }
            (None, None, Some(_)) => return Err("[extensions] secret is empty".into()),
            (None, None, None) => {
                return Err("[extensions] needs secret_sha256, secret_file or secret: Argo CD must authenticate".into())
            }
            _ => return Err("[extensions] set only one of secret_sha256, secret_file or secret".into()),
        };
        if secret == Some(TokenHash::of(b"")) {
            return Err("[extensions] secret_sha256 is the hash of an empty secret".into());
        }
        let mut names = HashSet::new();
        let mut extensions = Vec::new();
        for (index, raw) in raw_extensions.into_iter().enumerate() {
            let at = format!("[[extension]] #{} (name \"{}\")", index + 1, raw.name);
            let valid_name = !raw.name.is_empty()
                && raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(format!(
                    "{at}: name must match ^[A-Za-z0-9_-]+$ (Argo CD's rule)"
                ));
            }
            if !names.insert(raw.name.clone()) {
                return Err(format!("{at}: duplicate name"));
            }
            let clusters = if raw.clusters.iter().any(|id| id == "*") {
                if raw.clusters.len() > 1 {
                    return Err(format!("{at}: clusters = [\"*\"] stands alone"));
                }
                None
            } else {
                if raw.clusters.is_empty() {
                    return Err(format!("{at}: clusters is empty (use [\"*\"] for all)"));
                }
                if let Some(unknown) = raw.clusters.iter().find(|id| !cluster_ids.contains(*id)) {
                    return Err(format!(
                        "{at}: clusters names \"{unknown}\", which is not a [[cluster]] id"
                    ));
                }
                Some(raw.clusters)
            };
            let max_concurrent = match raw.max_concurrent.unwrap_or(16) {
                0 => return Err(format!("{at}: max_concurrent must be > 0")),
                max => max,
            };
            let rate_limit = match (raw.rate_limit, raw.rate_burst) {
                // On by default: extension traffic shares the cluster's tunnel and the server's
                // one core with Argo CD's own, and a UI extension has no need for more.
                (None, None) => Some(DEFAULT_RATE),
                (Some(0), _) | (_, Some(0)) => {
                    return Err(format!("{at}: rate_limit and rate_burst must be > 0"))
                }
                (Some(rate), burst) => Some((rate, burst.unwrap_or(rate.saturating_mul(2)))),
                (None, Some(_)) => return Err(format!("{at}: rate_burst needs rate_limit")),
            };
            extensions.push(ExtensionConfig {
                name: raw.name,
                clusters,
                max_concurrent,
                rate_limit,
            });
        }
        Ok(ExtensionsConfig {
            listen: listener.addr,
            tls: listener.tls,
            secret,
            secret_header: header(self.secret_header, "x-argocd-proxy-secret", "secret_header")?,
            extension_header: header(
                self.extension_header,
                "x-argocd-proxy-extension",
                "extension_header",
            )?,
            cluster_header: header(
                self.cluster_header,
                "x-argocd-proxy-cluster",
                "cluster_header",
            )?,
            extensions,
        })
    }
}
