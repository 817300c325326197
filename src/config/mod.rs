//! Configuration: TOML text → raw serde structs (`deny_unknown_fields`) → validated typed
//! config, once, at start (and again on reload). Errors name the file, the line and the key;
//! secrets never appear in `Debug` output or error messages.
//!
//! The schema of record is this module plus `examples/server.toml` / `examples/agent.toml`;
//! `docs/configuration.md` documents every key and a test checks it against the examples.

mod agent;
mod backends;
mod callers;
mod duration;
mod extensions;
mod limits;
mod listener;
mod runtime;
mod common;
mod server;

pub use agent::{AgentConfig, UpstreamConfig};
pub use backends::BackendConfig;
pub use callers::CallerConfig;
pub use common::ClusterScope;
pub use duration::parse_duration;
pub use extensions::{ExtensionConfig, ExtensionsConfig};
pub use limits::LimitsConfig;
pub use listener::ListenerTls;
pub use runtime::{LogFormat, RuntimeConfig};
pub use server::{ClusterConfig, Impersonation, ServerConfig, TokenHash};

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::file_version::Seen;

/// Default config file of the server.
pub const DEFAULT_SERVER_CONFIG: &str = "/etc/argocd-proxy/server.toml";
/// Default config file of the agent.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/argocd-proxy/agent.toml";

/// Why a config cannot be used. The message is meant for an operator's terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/mistyped keys (the message has line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and key.
        message: String,
    },
    /// The values break a rule.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// How thoroughly to check: `Files` also opens every file the config names (`--check-config`);
/// `Syntax` does not (`--check-config --syntax-only`, for rendered Helm output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Parse and validate values only.
    Syntax,
    /// Also read every file the config names.
    Files,
}

/// A secret string: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must send or hash it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a config file, with what the reload watch starts from.
pub(crate) fn read(path: &Path) -> Result<(String, Seen), ConfigError> {
    let error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let (content, seen) = Seen::read(path).map_err(error)?;
    let text = String::from_utf8(content)
        .map_err(|_| error(std::io::Error::new(ErrorKind::InvalidData, NOT_UTF8)))?;
    Ok((text, seen))
}

/// What `read_to_string` says of a file that is not UTF-8.
const NOT_UTF8: &str = "stream did not contain valid UTF-8";

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, ConfigError> {
    // toml's Display quotes the offending source line, which may hold a secret (a mistyped
    // key on a `token = "…"` line): only the position and the message are kept.
    toml::from_str(text).map_err(|error| {
        let at = error.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigError::Parse {
            path: path.to_owned(),
            message: format!("{at}{}", error.message().trim_end()),
        }
    })
}

/// Reads a secret file (a token): trimmed, never empty; what was read goes to `seen`.
pub(crate) fn read_secret_file(path: &Path, seen: &mut Vec<Seen>) -> Result<Secret, String> {
    let cannot = |error: &dyn fmt::Display| format!("cannot read {}: {error}", path.display());
    let (content, read) = Seen::read(path).map_err(|error| cannot(&error))?;
    let text = String::from_utf8(content).map_err(|_| cannot(&NOT_UTF8))?;
    seen.push(read);
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(token.to_owned()))
}

/// Whether `name` can be a DNS subjectAltName a certificate is matched against (RFC 1123
/// labels): otherwise a certificate could never name it, and binding would lock it out.
pub(crate) fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Resolves a path against `$CREDENTIALS_DIRECTORY` when it is relative and systemd passed
/// credentials (`LoadCredential=`), else against the config file's directory.
pub(crate) fn resolve(config_path: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    if let Some(credentials) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&credentials).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    config_path.parent().unwrap_or(Path::new(".")).join(path)
}

#[cfg(test)]
mod tests;
