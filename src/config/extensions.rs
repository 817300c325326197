//! `[extensions]` and `[[extension]]`: the server's listener for Argo CD proxy extensions whose
//! backends live inside customer clusters (DESIGN.md §8). Argo CD drops the path of a backend
//! URL, so the listener is its own port and routing comes from headers Argo CD sets last (its
//! `extension.config` `headers`), which a browser cannot override.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::common::{self, ClusterScope, Hashed, Reading, SecretSource};
use super::listener::{ListenerTls, RawListener};
use super::server::TokenHash;

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
    /// The clusters it may reach.
    pub clusters: ClusterScope,
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
        self.clusters.allows(cluster)
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
    pub(crate) fn validate(
        self,
        raw_extensions: Vec<RawExtension>,
        cluster_ids: &HashSet<String>,
        reading: &mut Reading<'_>,
    ) -> Result<ExtensionsConfig, String> {
        let (config_path, check) = (reading.config_path, reading.check);
        let listener =
            RawListener::plain_or_tls(self.listen, self.tls_cert, self.tls_key, self.client_ca)
                .validate("extensions", config_path, check)?;
        let secret = SecretSource {
            sha256: self.secret_sha256,
            file: self.secret_file,
            plain: self.secret,
        }
        .hash("[extensions]", "secret", reading)?;
        if secret == Hashed::Missing {
            return Err(
                "[extensions] needs secret_sha256, secret_file or secret: Argo CD must authenticate"
                    .into(),
            );
        }
        let mut names = HashSet::new();
        let mut extensions = Vec::new();
        for (index, raw) in raw_extensions.into_iter().enumerate() {
            let at = format!("[[extension]] #{} (name \"{}\")", index + 1, raw.name);
            super::common::extension_name(&at, &raw.name, &mut names)?;
            let clusters = ClusterScope::parse(&at, raw.clusters, cluster_ids)?;
            let max_concurrent = match raw.max_concurrent.unwrap_or(16) {
                0 => return Err(format!("{at}: max_concurrent must be > 0")),
                max => max,
            };
            // On by default: extension traffic shares the cluster's tunnel and the server's
            // one core with Argo CD's own, and a UI extension has no need for more.
            let rate_limit =
                common::rate(&at, raw.rate_limit, raw.rate_burst, 2, Some(DEFAULT_RATE))?;
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
            secret: secret.hash(),
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
