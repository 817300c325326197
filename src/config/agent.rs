//! `agent.toml`: the server to dial, the agent's token, and the upstream it fronts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::limits::{LimitsConfig, RawLimits};
use super::runtime::{RawLog, RuntimeConfig};
use super::{parse, read, read_secret_file, resolve, Check, ConfigError, Secret};
use crate::file_version::Seen;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    server_url: String,
    token_file: Option<PathBuf>,
    token: Option<String>,
    server_ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    proxy_url: Option<String>,
    proxy_url_file: Option<PathBuf>,
    no_proxy: Option<Vec<String>>,
    #[serde(default)]
    allow_insecure_server: bool,
    health_listen: Option<String>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    max_reconnect_interval: Option<Duration>,
    upstream: RawUpstream,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    backend: Vec<super::backends::RawBackend>,
    #[serde(default)]
    log: RawLog,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    config_poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "super::duration::deserialize_opt")]
    idle_nap: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    target: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    inject_token: Option<bool>,
    #[serde(default)]
    plaintext: bool,
}

/// Where the agent forwards tunnelled requests (the Kubernetes API).
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port`. Default `kubernetes.default.svc:443`.
    pub target: String,
    /// The CA that signs the API's certificate (the pod's service-account CA by default).
    pub ca_file: Option<PathBuf>,
    /// The bearer token to inject, re-read for every request (it rotates). `None` when
    /// `inject_token = false`.
    pub token_file: Option<PathBuf>,
    /// Plain HTTP to the upstream (tests and local setups only).
    pub plaintext: bool,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// `wss://host[:port]/connect` (or `ws://` with `allow_insecure_server`).
    pub server_url: String,
    /// The tunnel token, presented as `Authorization: Bearer` on `/connect`.
    pub token: Secret,
    /// Verifies the server; `None` uses the built-in web PKI roots.
    pub server_ca: Option<PathBuf>,
    /// The agent's client certificate and key (PEM) for a server that requires mTLS.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// The egress proxy (`http://[user:pass@]host:port`) reached with `CONNECT`; `None`: from
    /// `$HTTPS_PROXY` / `$https_proxy` at dial time, else direct.
    pub proxy_url: Option<Secret>,
    /// Hosts dialled directly even with a proxy (`$NO_PROXY` when unset): exact names,
    /// `.suffix` / `suffix` domain matches, `*`.
    pub no_proxy: Option<Vec<String>>,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub health_listen: Option<SocketAddr>,
    /// Cap of the reconnect backoff. Default 60 s.
    pub max_reconnect_interval: Duration,
    /// The upstream.
    pub upstream: UpstreamConfig,
    /// Argo CD extension backends the server may reach by name.
    pub backends: Vec<super::backends::BackendConfig>,
    /// Limits.
    pub limits: LimitsConfig,
    /// Logging and reload.
    pub runtime: RuntimeConfig,
    /// The config file and every file it names: a change to any of them reloads.
    pub watched: Vec<PathBuf>,
    /// What the load read of them (the config file, token files), for the reload watch to
    /// start from; taken by whoever starts or updates the watch.
    pub seen: Vec<Seen>,
    /// Warnings to log once telemetry is up.
    pub warnings: Vec<String>,
}

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path, check: Check) -> Result<Self, ConfigError> {
        let (text, seen) = read(path)?;
        let mut config = Self::from_toml(path, &text, check)?;
        config.seen.push(seen);
        Ok(config)
    }

    /// Validates TOML text that came from `path`.
    pub fn from_toml(path: &Path, text: &str, check: Check) -> Result<Self, ConfigError> {
        let raw: RawAgent = parse(path, text)?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut warnings = Vec::new();
        let mut seen = Vec::new();
        let runtime = raw
            .log
            // Off: an agent has one tunnel and few wake-ups to batch.
            .validate(raw.config_poll_interval, raw.idle_nap, Duration::ZERO)
            .map_err(invalid)?;
        let scheme = raw
            .server_url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("wss") => {}
            // S7: the check is on the parsed, lower-cased scheme, so `WS://` is plaintext too.
            Some("ws") if raw.allow_insecure_server => warnings.push(
                "server_url is plaintext ws://; the tunnel token and all traffic are unencrypted"
                    .into(),
            ),
            Some("ws") => {
                return Err(invalid(format!(
                "server_url \"{}\" is plaintext; use wss:// or set allow_insecure_server = true",
                raw.server_url
            )))
            }
            _ => {
                return Err(invalid(format!(
                    "server_url \"{}\" must start with wss://",
                    raw.server_url
                )))
            }
        }
        let raw_token_file = raw.token_file.as_ref().map(|file| resolve(path, file));
        let token = match (&raw_token_file, raw.token) {
            (Some(file), None) => match check {
                Check::Syntax => Secret::new("unread".into()),
                Check::Files => read_secret_file(file, &mut seen)
                    .map_err(|error| invalid(format!("token_file: {error}")))?,
            },
            (None, Some(token)) if !token.trim().is_empty() => {
                warnings.push("plaintext `token` in the config file; prefer token_file".into());
                Secret::new(token.trim().to_owned())
            }
            (None, Some(_)) => return Err(invalid("token is empty".into())),
            (None, None) => return Err(invalid("needs token_file (or token)".into())),
            (Some(_), Some(_)) => {
                return Err(invalid("set only one of token_file or token".into()))
            }
        };
        let health_listen = raw
            .health_listen
            .map(|listen| {
                listen
                    .parse()
                    .map_err(|_| invalid(format!("health_listen = \"{listen}\" is not an address")))
            })
            .transpose()?;
        let upstream = raw.upstream;
        let inject = upstream.inject_token.unwrap_or(true);
        let token_file = match (inject, upstream.token_file) {
            (false, Some(_)) => {
                return Err(invalid(
                    "[upstream] token_file is set but inject_token = false".into(),
                ))
            }
            (false, None) => None,
            (true, file) => Some(file.map_or_else(
                || Path::new(SA_DIR).join("token"),
                |file| resolve(path, &file),
            )),
        };
        let ca_file = match (upstream.plaintext, upstream.ca_file) {
            (true, Some(_)) => {
                return Err(invalid(
                    "[upstream] ca_file is set but plaintext = true".into(),
                ))
            }
            (true, None) => None,
            (false, file) => Some(file.map_or_else(
                || Path::new(SA_DIR).join("ca.crt"),
                |file| resolve(path, &file),
            )),
        };
        if check == Check::Files {
            for file in ca_file.iter().chain(token_file.iter()) {
                std::fs::metadata(file)
                    .map_err(|error| invalid(format!("[upstream] {}: {error}", file.display())))?;
            }
        }
        let server_ca = raw.server_ca.map(|file| resolve(path, &file));
        let client_identity = match (raw.client_cert, raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((resolve(path, &cert), resolve(path, &key))),
            _ => return Err(invalid("client_cert and client_key go together".into())),
        };
        // A URL with credentials belongs in a file (a Secret volume), not in the config.
        let proxy_file = raw.proxy_url_file.as_ref().map(|file| resolve(path, file));
        let proxy_url = match (raw.proxy_url, &proxy_file, check) {
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "set only one of proxy_url or proxy_url_file".into(),
                ))
            }
            (Some(url), None, _) => Some(url),
            (None, Some(file), Check::Files) => Some(
                read_secret_file(file, &mut seen)
                    .map_err(|error| invalid(format!("proxy_url_file: {error}")))?
                    .expose()
                    .to_owned(),
            ),
            (None, _, _) => None,
        };
        if let Some(proxy) = &proxy_url {
            // Exactly what a dial will accept; the error never echoes the URL (it may hold a
            // password).
            crate::transport::proxy::ProxyTarget::check_url(proxy)
                .map_err(|error| invalid(error.to_string()))?;
        }
        if let (Check::Files, Some((cert, key))) = (check, &client_identity) {
            for file in [cert, key] {
                std::fs::metadata(file).map_err(|error| {
                    invalid(format!(
                        "client_cert/client_key {}: {error}",
                        file.display()
                    ))
                })?;
            }
        }
        if let (Check::Files, Some(file)) = (check, &server_ca) {
            std::fs::metadata(file)
                .map_err(|error| invalid(format!("server_ca {}: {error}", file.display())))?;
        }
        let backends = super::backends::validate(raw.backend, path, check).map_err(invalid)?;
        let mut watched = vec![path.to_owned()];
        if check == Check::Files {
            watched.extend(
                backends
                    .iter()
                    .filter_map(|backend| backend.ca_file.clone()),
            );
        }
        if check == Check::Files {
            // The upstream token is re-read per request anyway; these are read once per use.
            watched.extend(raw_token_file.iter().cloned());
            watched.extend(server_ca.iter().cloned());
            watched.extend(proxy_file.iter().cloned());
            if let Some((cert, key)) = &client_identity {
                watched.extend([cert.clone(), key.clone()]);
            }
            watched.extend(ca_file.iter().cloned());
        }
        Ok(Self {
            path: path.to_owned(),
            server_url: raw.server_url,
            token,
            server_ca,
            client_identity,
            proxy_url: proxy_url.map(Secret::new),
            no_proxy: raw.no_proxy,
            health_listen,
            max_reconnect_interval: match raw
                .max_reconnect_interval
                .unwrap_or(Duration::from_secs(60))
            {
                // A zero cap would reconnect in a tight loop (B5).
                cap if cap < Duration::from_secs(1) || cap > Duration::from_secs(3600) => {
                    return Err(invalid(
                        "max_reconnect_interval must be between 1s and 1h".into(),
                    ))
                }
                cap => cap,
            },
            upstream: UpstreamConfig {
                target: upstream
                    .target
                    .unwrap_or_else(|| super::server::DEFAULT_TARGET.to_owned()),
                ca_file,
                token_file,
                plaintext: upstream.plaintext,
            },
            backends,
            limits: raw.limits.validate().map_err(invalid)?,
            runtime,
            watched,
            seen,
            warnings,
        })
    }
}
