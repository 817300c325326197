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
            // Over HTTP/2 the authority is `:authority` (a `Host` beside it is refused), and
            // the framing and hop-by-hop headers belong to each connection.
            let why = if name == http::header::HOST {
                Some("the backend's authority is its target")
            } else if name == http::header::CONTENT_LENGTH {
                Some("the body's framing is set per request")
            } else if crate::http::is_hop_by_hop(&name) {
                Some("hop-by-hop headers belong to each connection")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(format!(
                    "{at}: headers: {name} cannot be configured ({why})"
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{AgentConfig, Check};

    #[test]
    fn backend_header_values_never_show_in_debug_output() {
        let text = "server_url = \"wss://h/c\"\ntoken = \"t\"\n[upstream]\n\
                    [[backend]]\nname = \"metrics\"\ntarget = \"m.svc:80\"\n\
                    headers = { \"X-Api-Key\" = \"k3y-value\" }\n";
        let config = AgentConfig::from_toml(Path::new("a.toml"), text, Check::Syntax).unwrap();
        assert_eq!(config.backends[0].headers[0].1, "k3y-value");
        assert!(!format!("{config:?}").contains("k3y-value"));
    }

    #[test]
    fn backend_headers_the_agent_sets_per_request_are_refused() {
        for name in [
            "Host",
            "content-length",
            "Connection",
            "Transfer-Encoding",
            "upgrade",
        ] {
            let text = format!(
                "server_url = \"wss://h/c\"\ntoken = \"t\"\n[upstream]\n\
                 [[backend]]\nname = \"metrics\"\ntarget = \"m.svc:80\"\n\
                 headers = {{ \"{name}\" = \"x\" }}\n"
            );
            let error = AgentConfig::from_toml(Path::new("a.toml"), &text, Check::Syntax)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!(
                    "[[backend]] #1 (name \"metrics\"): headers: {} cannot be configured",
                    name.to_ascii_lowercase()
                )),
                "{error}"
            );
        }
    }
}
