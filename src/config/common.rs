//! What several tables share: a secret given as a hash, a file or (warned) plain text, kept
//! only as its SHA-256; a list of cluster ids or `["*"]`; a request rate and its burst.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::server::TokenHash;
use super::{read_secret_file, resolve, Check};
use crate::file_version::Seen;

/// A secret's three spellings in one table: `<key>_sha256`, `<key>_file`, `<key>`.
pub(crate) struct SecretSource {
    pub(crate) sha256: Option<String>,
    pub(crate) file: Option<PathBuf>,
    pub(crate) plain: Option<String>,
}

/// Where a secret is read from and what the read adds (the file to watch, a warning).
pub(crate) struct Reading<'a> {
    pub(crate) config_path: &'a Path,
    pub(crate) check: Check,
    pub(crate) watched: &'a mut Vec<PathBuf>,
    pub(crate) seen: &'a mut Vec<Seen>,
    pub(crate) warnings: &'a mut Vec<String>,
}

/// A validated secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hashed {
    /// None of the three keys was set.
    Missing,
    /// A `_file` in a syntax-only check: not read, so nothing can match it.
    Unread,
    /// The SHA-256 of the secret.
    Hash(TokenHash),
}

impl Hashed {
    /// The hash, if the secret was read.
    pub(crate) fn hash(self) -> Option<TokenHash> {
        match self {
            Hashed::Hash(hash) => Some(hash),
            Hashed::Missing | Hashed::Unread => None,
        }
    }
}

impl SecretSource {
    /// Validates the source named `key` (`token`, `secret`) of the table `at`: at most one
    /// spelling, 64 hex digits, a readable non-empty file, never the hash of an empty secret.
    pub(crate) fn hash(
        self,
        at: &str,
        key: &str,
        reading: &mut Reading<'_>,
    ) -> Result<Hashed, String> {
        let hashed = match (self.sha256, self.file, self.plain) {
            (None, None, None) => Hashed::Missing,
            (Some(hex), None, None) => Hashed::Hash(
                TokenHash::from_hex(&hex)
                    .ok_or_else(|| format!("{at}: {key}_sha256 must be 64 hex digits"))?,
            ),
            (None, Some(file), None) => match reading.check {
                // Rendered configs are checked without their secrets mounted.
                Check::Syntax => Hashed::Unread,
                Check::Files => {
                    let file = resolve(reading.config_path, &file);
                    let secret = read_secret_file(&file, reading.seen)
                        .map_err(|error| format!("{at}: {key}_file: {error}"))?;
                    reading.watched.push(file);
                    Hashed::Hash(TokenHash::of(secret.expose().as_bytes()))
                }
            },
            (None, None, Some(plain)) if !plain.trim().is_empty() => {
                reading.warnings.push(format!(
                    "{at}: plaintext `{key}` in the config file; prefer {key}_sha256 or {key}_file"
                ));
                Hashed::Hash(TokenHash::of(plain.trim().as_bytes()))
            }
            (None, None, Some(_)) => return Err(format!("{at}: {key} is empty")),
            _ => {
                return Err(format!(
                    "{at}: set only one of {key}_sha256, {key}_file or {key}"
                ))
            }
        };
        if hashed == Hashed::Hash(TokenHash::of(b"")) {
            return Err(format!("{at}: {key}_sha256 is the hash of an empty {key}"));
        }
        Ok(hashed)
    }
}

/// Which clusters something may reach: `["*"]` for all, else known cluster ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterScope {
    /// Every cluster.
    All,
    /// These cluster ids.
    Only(Vec<String>),
}

impl ClusterScope {
    /// Validates `clusters` of the table `at` against the configured cluster ids.
    pub(crate) fn parse(
        at: &str,
        clusters: Vec<String>,
        known: &HashSet<String>,
    ) -> Result<Self, String> {
        if clusters.iter().any(|id| id == "*") {
            return match clusters.len() {
                1 => Ok(ClusterScope::All),
                _ => Err(format!("{at}: clusters = [\"*\"] stands alone")),
            };
        }
        if clusters.is_empty() {
            return Err(format!("{at}: clusters is empty (use [\"*\"] for all)"));
        }
        if let Some(unknown) = clusters.iter().find(|id| !known.contains(*id)) {
            return Err(format!(
                "{at}: clusters names \"{unknown}\", which is not a [[cluster]] id"
            ));
        }
        Ok(ClusterScope::Only(clusters))
    }

    /// Whether `cluster` is in scope.
    pub fn allows(&self, cluster: &str) -> bool {
        match self {
            ClusterScope::All => true,
            ClusterScope::Only(ids) => ids.iter().any(|id| id == cluster),
        }
    }
}

/// `rate_limit` / `rate_burst` of the table `at`: both > 0, a burst only with a rate; unset,
/// `default`. A rate alone gets a burst of `rate × burst_factor` (at least rate + 1).
pub(crate) fn rate(
    at: &str,
    limit: Option<u32>,
    burst: Option<u32>,
    burst_factor: u32,
    default: Option<(u32, u32)>,
) -> Result<Option<(u32, u32)>, String> {
    match (limit, burst) {
        (None, None) => Ok(default),
        (Some(0), _) | (_, Some(0)) => Err(format!("{at}: rate_limit and rate_burst must be > 0")),
        (Some(rate), burst) => Ok(Some((
            rate,
            burst.unwrap_or(
                rate.saturating_mul(burst_factor)
                    .max(rate.saturating_add(1)),
            ),
        ))),
        (None, Some(_)) => Err(format!("{at}: rate_burst needs rate_limit")),
    }
}

/// An extension name as Argo CD accepts it (`^[A-Za-z0-9_-]+$`), unique among `seen`.
pub(crate) fn extension_name(
    at: &str,
    name: &str,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{at}: name must match ^[A-Za-z0-9_-]+$ (Argo CD's rule)"
        ));
    }
    if !seen.insert(name.to_owned()) {
        return Err(format!("{at}: duplicate name"));
    }
    Ok(())
}
