//! `server.toml`: listeners, clusters and their agent tokens, limits.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::callers::{CallerConfig, RawCaller};
use super::common::{self, Hashed, Reading, SecretSource};
use super::extensions::{ExtensionsConfig, RawExtension, RawExtensions};
use super::limits::{LimitsConfig, RawLimits};
use super::listener::{ListenerTls, RawListener};
use super::runtime::{RawLog, RuntimeConfig};
use super::{parse, read, Check, ConfigError};
use crate::file_version::Seen;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    public: RawListener,
    internal: RawListener,
    ops: Option<RawListener>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    cluster: Vec<RawCluster>,
    #[serde(default)]
    caller: Vec<RawCaller>,
    extensions: Option<RawExtensions>,
    #[serde(default)]
    extension: Vec<RawExtension>,
    #[serde(default)]
    log: RawLog,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    config_poll_interval: Option<std::time::Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    idle_nap: Option<std::time::Duration>,
}

/// The server's default `idle_nap`: at 10,000 idle agents it takes a third off the idle CPU
/// (S7 in docs/benchmarks.md).
pub const DEFAULT_IDLE_NAP: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: String,
    token_sha256: Option<String>,
    token_file: Option<PathBuf>,
    token: Option<String>,
    target: Option<String>,
    impersonation: Option<Impersonation>,
    rate_limit: Option<u32>,
    rate_burst: Option<u32>,
}

/// Which `Impersonate-*` headers from Argo CD reach the cluster (DESIGN.md §5 item 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impersonation {
    /// Strip every `Impersonate-*` header.
    None,
    /// Pass `Impersonate-User` (Argo CD's sync impersonation sends only that); strip
    /// `Impersonate-Group`, `-Uid` and `-Extra-*`.
    #[default]
    User,
    /// Pass every `Impersonate-*` header.
    All,
}

/// The SHA-256 of an agent token. Only hashes are kept in memory after load.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let hex = hex.trim();
        // from_str_radix would also take a leading '+': accept hex digits only.
        if hex.len() != 64 || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * index..2 * index + 2], 16).ok()?;
        }
        Some(Self(out))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not a secret, but a short prefix is all a log needs.
        write!(f, "sha256:{}…", &self.to_hex()[..8])
    }
}

/// One customer cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The id in `/tunnel/<id>/…` (letters, digits, `-`, `_`, `.`).
    pub id: String,
    /// The agent token's hash; `None` only in a syntax-only check (the file was not read), so
    /// nothing can ever authenticate as this cluster.
    pub token: Option<TokenHash>,
    /// Which `Impersonate-*` headers pass.
    pub impersonation: Impersonation,
    /// Requests per second allowed for this cluster, and the burst above it; `None`: no limit.
    /// Past it requests get 429 at once, never a queue (B13).
    pub rate_limit: Option<(u32, u32)>,
    /// Sent in a v1 Connect (a Go agent compares it with its `-target`). Default
    /// `kubernetes.default.svc:443`.
    pub target: String,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// Agents connect here (`/connect`, `/healthz`).
    pub public_listen: SocketAddr,
    /// Argo CD calls here (`/tunnel/<cluster-id>/…`).
    pub internal_listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`; none when `[ops]` is absent.
    pub ops_listen: Option<SocketAddr>,
    /// TLS (and mTLS) on the public listener.
    pub public_tls: Option<ListenerTls>,
    /// TLS (and mTLS) on the internal listener; HTTP/2 is offered by ALPN.
    pub internal_tls: Option<ListenerTls>,
    /// An agent's client certificate must carry its cluster id as a DNS name.
    pub bind_client_cert: bool,
    /// Who may call `/tunnel/`; empty: anyone who reaches the internal listener.
    pub callers: Vec<CallerConfig>,
    /// Argo CD proxy extensions through the tunnels; `None` without `[extensions]`.
    pub extensions: Option<ExtensionsConfig>,
    /// Clusters, in file order.
    pub clusters: Vec<ClusterConfig>,
    /// Cluster id → its index in `clusters`: every tunnel request looks its cluster up, and a
    /// scan of thousands of ids per request would cost more than the request.
    cluster_index: HashMap<String, usize>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Logging and reload.
    pub runtime: RuntimeConfig,
    /// The config file and every file it names: a change to any of them reloads.
    pub watched: Vec<PathBuf>,
    /// What the load read of them (the config file, token files), for the reload watch to
    /// start from; taken by whoever starts or updates the watch.
    pub seen: Vec<Seen>,
    /// Warnings to log once telemetry is up (e.g. plaintext tokens).
    pub warnings: Vec<String>,
}

/// The default v1 Connect target (the Go server's default `targetAddr`).
pub const DEFAULT_TARGET: &str = "kubernetes.default.svc:443";

impl ServerConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path, check: Check) -> Result<Self, ConfigError> {
        let (text, seen) = read(path)?;
        let mut config = Self::from_toml(path, &text, check)?;
        config.seen.push(seen);
        Ok(config)
    }

    /// Validates TOML text that came from `path` (used for messages and relative paths).
    pub fn from_toml(path: &Path, text: &str, check: Check) -> Result<Self, ConfigError> {
        let raw: RawServer = parse(path, text)?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let public = raw
            .public
            .validate("public", path, check)
            .map_err(invalid)?;
        let internal = raw
            .internal
            .validate("internal", path, check)
            .map_err(invalid)?;
        let ops_listen = raw
            .ops
            .map(|ops| ops.validate("ops", path, check).map(|ops| ops.addr))
            .transpose()
            .map_err(invalid)?;
        let (public_listen, internal_listen) = (public.addr, internal.addr);
        let limits = raw.limits.validate().map_err(invalid)?;
        let runtime = raw
            .log
            .validate(raw.config_poll_interval, raw.idle_nap, DEFAULT_IDLE_NAP)
            .map_err(invalid)?;
        let mut watched = vec![path.to_owned()];
        let mut seen = Vec::new();
        let mut warnings = Vec::new();
        let mut reading = Reading {
            config_path: path,
            check,
            watched: &mut watched,
            seen: &mut seen,
            warnings: &mut warnings,
        };
        let mut clusters = Vec::new();
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (index, cluster) in raw.cluster.into_iter().enumerate() {
            let at = format!("[[cluster]] #{} (id \"{}\")", index + 1, cluster.id);
            if !valid_id(&cluster.id) {
                return Err(invalid(format!(
                    "{at}: id must be 1-253 characters of letters, digits, '-', '_' or '.'"
                )));
            }
            if !ids.insert(cluster.id.clone()) {
                return Err(invalid(format!("{at}: duplicate cluster id")));
            }
            let hashed = SecretSource {
                sha256: cluster.token_sha256,
                file: cluster.token_file,
                plain: cluster.token,
            }
            .hash(&at, "token", &mut reading)
            .map_err(&invalid)?;
            if hashed == Hashed::Missing {
                return Err(invalid(format!(
                    "{at}: needs one of token_sha256, token_file or token"
                )));
            }
            let token = hashed.hash();
            if token.is_some_and(|token| !hashes.insert(token)) {
                return Err(invalid(format!(
                    "{at}: same token as another cluster; each cluster needs its own"
                )));
            }
            let target = cluster.target.unwrap_or_else(|| DEFAULT_TARGET.to_owned());
            if target.is_empty() || target.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "{at}: target must be a host:port without spaces"
                )));
            }
            let rate_limit = common::rate(&at, cluster.rate_limit, cluster.rate_burst, 1, None)
                .map_err(&invalid)?;
            clusters.push(ClusterConfig {
                id: cluster.id,
                token,
                rate_limit,
                impersonation: cluster.impersonation.unwrap_or_default(),
                target,
            });
        }
        if public.bind_client_cert {
            if let Some(cluster) = clusters
                .iter()
                .find(|cluster| !super::is_dns_name(&cluster.id))
            {
                return Err(invalid(format!(
                    "[public] bind_client_cert: cluster id \"{}\" is not a DNS name, so no certificate could name it",
                    cluster.id
                )));
            }
        }
        let mut callers = Vec::new();
        for (index, caller) in raw.caller.into_iter().enumerate() {
            let caller = caller
                .validate(index, &ids, &mut reading)
                .map_err(invalid)?;
            if caller.token.is_some_and(|token| !hashes.insert(token)) {
                return Err(invalid(format!(
                    "[[caller]] \"{}\": same token as another caller or an agent",
                    caller.name
                )));
            }
            if caller.cert_name.is_some()
                && internal
                    .tls
                    .as_ref()
                    .is_none_or(|tls| tls.client_ca.is_none())
            {
                return Err(invalid(format!(
                    "[[caller]] \"{}\": cert_name needs [internal] client_ca (mTLS)",
                    caller.name
                )));
            }
            callers.push(caller);
        }
        let extensions = match raw.extensions {
            Some(table) => Some(
                table
                    .validate(raw.extension, &ids, &mut reading)
                    .map_err(invalid)?,
            ),
            None if !raw.extension.is_empty() => {
                return Err(invalid(
                    "[[extension]] entries need an [extensions] listener".into(),
                ))
            }
            None => None,
        };
        if let Some(secret) = extensions.as_ref().and_then(|extensions| extensions.secret) {
            if !hashes.insert(secret) {
                return Err(invalid(
                    "[extensions] secret is the same as an agent's or a caller's token".into(),
                ));
            }
        }
        let extensions_tls = extensions
            .as_ref()
            .and_then(|extensions| extensions.tls.as_ref());
        for tls in public.tls.iter().chain(&internal.tls).chain(extensions_tls) {
            if check == Check::Files {
                watched.extend(tls.files().cloned());
            }
        }
        let mut addresses = vec![("public", public_listen), ("internal", internal_listen)];
        addresses.extend(ops_listen.map(|addr| ("ops", addr)));
        addresses.extend(
            extensions
                .as_ref()
                .map(|extensions| ("extensions", extensions.listen)),
        );
        for (i, (name, addr)) in addresses.iter().enumerate() {
            for (other, other_addr) in &addresses[i + 1..] {
                if addr == other_addr && addr.port() != 0 {
                    return Err(invalid(format!(
                        "[{name}] and [{other}] both listen on {addr}"
                    )));
                }
            }
        }
        Ok(Self {
            path: path.to_owned(),
            public_listen,
            internal_listen,
            ops_listen,
            public_tls: public.tls,
            internal_tls: internal.tls,
            bind_client_cert: public.bind_client_cert,
            callers,
            extensions,
            cluster_index: clusters
                .iter()
                .enumerate()
                .map(|(index, cluster)| (cluster.id.clone(), index))
                .collect(),
            clusters,
            limits,
            runtime,
            watched,
            seen,
            warnings,
        })
    }

    /// The cluster `id` names, if configured.
    pub fn cluster(&self, id: &str) -> Option<&ClusterConfig> {
        // Checked against the entry, so a list changed after parsing misses rather than
        // answering with another cluster.
        self.cluster_index
            .get(id)
            .and_then(|&index| self.clusters.get(index))
            .filter(|cluster| cluster.id == id)
    }
}

/// Cluster ids appear in URL paths and metric labels: keep them to a safe alphabet.
fn valid_id(id: &str) -> bool {
    (1..=253).contains(&id.len())
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        && id != "."
        && id != ".."
}
