//! The agent's `[[backend]]` entries: the Argo CD extension backends inside this cluster that
//! the server may reach, by name only (the server never names an address).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{resolve, Check};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    name: String,
    target: String,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    token_file: Option<PathBuf>,
    path_prefix: Option<String>,
}

/// One extension backend this agent serves.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The extension name (the server's `[[extension]] name`).
    pub name: String,
    /// `host:port` the agent dials.
    pub target: String,
    /// HTTPS to the backend (verified against `ca_file`, else the web PKI roots).
    pub tls: bool,
    /// CA bundle for `tls`.
    pub ca_file: Option<PathBuf>,
    /// Headers set on every request (after the request's own; they win).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A bearer token injected as `Authorization`, re-read per request.
    pub token_file: Option<PathBuf>,
    /// Prepended to every request path (Argo CD drops the path of its backend URL).
    pub path_prefix: String,
}

pub(crate) fn validate(
    raw: Vec<RawBackend>,
    config_path: &Path,
    check: Check,
) -> Result<Vec<BackendConfig>, String> {
    let mut names = HashSet::new();
    let mut backends = Vec::new();
    for (index, backend) in raw.into_iter().enumerate() {
        let at = format!("[[backend]] #{} (name \"{}\")", index + 1, backend.name);
        super::common::extension_name(&at, &backend.name, &mut names)?;
        if backend.target.parse::<http::uri::Authority>().is_err() || !backend.target.contains(':')
        {
            return Err(format!("{at}: target must be host:port"));
        }
        if backend.ca_file.is_some() && !backend.tls {
            return Err(format!("{at}: ca_file needs tls = true"));
        }
        let mut headers = Vec::new();
        for (name, value) in backend.headers {
            let name = http::HeaderName::try_from(name.as_str())
                .map_err(|_| format!("{at}: headers: \"{name}\" is not a header name"))?;
            // The agent sets these per request: the authority from `target` (over HTTP/2 it is
            // `:authority`, and a `Host` beside it is refused), the framing and the hop's own.
            if name == http::header::HOST
                || name == http::header::CONTENT_LENGTH
                || crate::http::is_hop_by_hop(&name)
            {
                return Err(format!(
                    "{at}: headers: {name} cannot be configured (the agent sets it per request; \
                     the backend's authority is its target)"
                ));
            }
            let mut value = http::HeaderValue::try_from(value)
                .map_err(|_| format!("{at}: headers: the value of {name} is not a header value"))?;
            // It may be an API key: `Debug` shows "Sensitive", HTTP/2 never indexes it.
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let path_prefix = backend.path_prefix.unwrap_or_default();
        if !path_prefix.is_empty() && (!path_prefix.starts_with('/') || path_prefix.ends_with('/'))
        {
            return Err(format!(
                "{at}: path_prefix must start with / and not end with one"
            ));
        }
        let ca_file = backend.ca_file.map(|file| resolve(config_path, &file));
        let token_file = backend.token_file.map(|file| resolve(config_path, &file));
        if check == Check::Files {
            for file in ca_file.iter().chain(token_file.iter()) {
                std::fs::metadata(file)
                    .map_err(|error| format!("{at}: {}: {error}", file.display()))?;
            }
        }
        backends.push(BackendConfig {
            name: backend.name,
            target: backend.target,
            tls: backend.tls,
            ca_file,
            headers,
            token_file,
            path_prefix,
        });
    }
    Ok(backends)
}
