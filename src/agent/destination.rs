//! Where the agent sends a stream's requests: its Kubernetes API, or one of the extension
//! backends it allows by name. Each has its own pooled client (its own CA) and its own
//! credential; a reload rebuilds them all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use hyper_util::rt::TokioExecutor;

use super::forward::UpstreamClient;
use crate::config::{AgentConfig, UpstreamConfig};
use crate::transport::tls::{self, TlsError};

/// One place requests go.
pub(crate) struct Destination {
    /// For logs and error bodies: "its Kubernetes API", "extension backend \"metrics\"".
    pub(crate) label: String,
    /// `host:port`.
    pub(crate) target: String,
    /// Plain HTTP.
    pub(crate) plaintext: bool,
    /// Bearer token to inject, re-read per request.
    pub(crate) token_file: Option<PathBuf>,
    /// Headers set on every request.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Prepended to the path.
    pub(crate) path_prefix: String,
    /// The pooled client: HTTP/2 when the destination offers it by ALPN, else HTTP/1.1.
    pub(crate) client: UpstreamClient,
    /// HTTP/1.1 only, for upgrade requests (exec, attach, port-forward) and long-lived ones
    /// (watches, followed logs).
    pub(crate) upgrade_client: UpstreamClient,
}

impl Destination {
    /// The client for a request: upgrades need HTTP/1.1; long-lived requests take it too.
    pub(crate) fn client_for(&self, http1: bool) -> &UpstreamClient {
        if http1 {
            &self.upgrade_client
        } else {
            &self.client
        }
    }
}

/// The Kubernetes API and the extension backends.
pub(crate) struct Destinations {
    pub(crate) kubernetes: Arc<Destination>,
    pub(crate) backends: HashMap<String, Arc<Destination>>,
}

impl Destinations {
    /// Builds every client (reading the CA files now).
    pub(crate) fn build(config: &AgentConfig) -> Result<Self, TlsError> {
        let kubernetes = Arc::new(Destination {
            label: "its Kubernetes API".into(),
            target: config.upstream.target.clone(),
            plaintext: config.upstream.plaintext,
            token_file: config.upstream.token_file.clone(),
            headers: Vec::new(),
            path_prefix: String::new(),
            client: upstream_client(&config.upstream, true)?,
            upgrade_client: upstream_client(&config.upstream, false)?,
        });
        let mut backends = HashMap::new();
        for backend in &config.backends {
            let roots = if backend.tls {
                tls::roots(backend.ca_file.as_deref())?
            } else {
                rustls::RootCertStore::empty()
            };
            backends.insert(
                backend.name.clone(),
                Arc::new(Destination {
                    label: format!("extension backend \"{}\"", backend.name),
                    target: backend.target.clone(),
                    plaintext: !backend.tls,
                    token_file: backend.token_file.clone(),
                    headers: backend.headers.clone(),
                    path_prefix: backend.path_prefix.clone(),
                    client: client(roots.clone(), true),
                    upgrade_client: client(roots, false),
                }),
            );
        }
        Ok(Self {
            kubernetes,
            backends,
        })
    }
}

/// The HTTP client for the upstream, trusting `upstream.ca_file` (read now).
fn upstream_client(upstream: &UpstreamConfig, h2: bool) -> Result<UpstreamClient, TlsError> {
    let roots = match (&upstream.ca_file, upstream.plaintext) {
        (Some(ca), false) => tls::roots(Some(ca))?,
        _ => rustls::RootCertStore::empty(),
    };
    Ok(client(roots, h2))
}

fn client(roots: rustls::RootCertStore, h2: bool) -> UpstreamClient {
    // hyper-rustls sets ALPN itself (and refuses a config that already has it).
    let connector = tls::upstream_connector(tls::client_config(roots, &[]), h2);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}
