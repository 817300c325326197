//! `[public]`, `[internal]`, `[ops]`: an address, and for the first two optional TLS with
//! optional client certificates (mTLS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{resolve, Check};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    bind_client_cert: Option<bool>,
}

/// A listener's TLS files, re-read on reload (cert-manager rotates them in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA bundle signs (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl ListenerTls {
    /// The files, for the reload watch.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key].into_iter().chain(&self.client_ca)
    }
}

/// A validated listener.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<ListenerTls>,
    pub(crate) bind_client_cert: bool,
}

impl RawListener {
    /// A listener table whose keys live in a bigger table (`[extensions]`).
    pub(crate) fn plain_or_tls(
        listen: String,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Self {
        Self {
            listen,
            tls_cert,
            tls_key,
            client_ca,
            bind_client_cert: None,
        }
    }

    /// Validates `[table]`; `tls_allowed` is false for `[ops]` (probes need no certificates),
    /// and only `[public]` may bind client certificates to clusters.
    pub(crate) fn validate(
        self,
        table: &str,
        config_path: &Path,
        check: Check,
    ) -> Result<Listener, String> {
        let addr = self.listen.parse::<SocketAddr>().map_err(|_| {
            format!(
                "[{table}] listen = \"{}\" is not an address like \"0.0.0.0:8443\"",
                self.listen
            )
        })?;
        let client_ca_set = self.client_ca.is_some();
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ListenerTls {
                cert: resolve(config_path, &cert),
                key: resolve(config_path, &key),
                client_ca: self.client_ca.map(|ca| resolve(config_path, &ca)),
            }),
            _ => return Err(format!("[{table}] tls_cert and tls_key go together")),
        };
        if tls.is_none() && client_ca_set {
            return Err(format!("[{table}] client_ca needs tls_cert and tls_key"));
        }
        if table == "ops" && tls.is_some() {
            return Err("[ops] is plain HTTP (probes carry no certificates); remove tls_*".into());
        }
        let bind_client_cert = self.bind_client_cert.unwrap_or(false);
        if bind_client_cert && table != "public" {
            return Err(format!("[{table}] bind_client_cert is only for [public]"));
        }
        if bind_client_cert && tls.as_ref().is_none_or(|tls| tls.client_ca.is_none()) {
            return Err("[public] bind_client_cert needs client_ca (mTLS)".into());
        }
        if let (Check::Files, Some(tls)) = (check, &tls) {
            for file in tls.files() {
                std::fs::metadata(file)
                    .map_err(|error| format!("[{table}] {}: {error}", file.display()))?;
            }
        }
        Ok(Listener {
            addr,
            tls,
            bind_client_cert,
        })
    }
}
