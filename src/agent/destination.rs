//! Where the agent sends a stream's requests: its Kubernetes API, or one of the extension
//! backends it allows by name. Each has its own pooled client (its own CA) and its own
//! credential; a reload rebuilds them all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use http::{HeaderName, HeaderValue};

use super::token::TokenFile;
use super::upstream_h1::UpstreamH1;
use crate::config::AgentConfig;
use crate::h1::RequestBody;
use crate::transport::tls::{self, TlsError, Trust, UpstreamClient};

/// One place requests go.
pub(crate) struct Destination {
    /// For logs and error bodies: "its Kubernetes API", "extension backend \"metrics\"".
    pub(crate) label: String,
    /// `host:port`.
    pub(crate) target: String,
    /// `target` as the `Host` of our own HTTP/1.1 client's requests (hyper's clients derive
    /// theirs from the URI) and as the URI's authority (made once; a clone is a reference
    /// count, not a copy).
    pub(crate) host: Option<HeaderValue>,
    pub(crate) authority: Option<Authority>,
    /// Plain HTTP.
    pub(crate) plaintext: bool,
    /// Bearer token to inject, checked per request.
    pub(crate) token_file: Option<TokenFile>,
    /// Headers set on every request.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Prepended to the path.
    pub(crate) path_prefix: String,
    /// The pooled client: HTTP/2 when the destination offers it by ALPN, else HTTP/1.1.
    pub(crate) client: UpstreamClient<RequestBody>,
    /// HTTP/1.1 only, for upgrade requests (exec, attach, port-forward).
    pub(crate) upgrade_client: UpstreamClient<RequestBody>,
    /// Our own HTTP/1.1 client: long-lived requests (watches, followed logs), and bodiless
    /// requests (not upgrades) once the destination is known to speak only HTTP/1.1.
    pub(crate) own_h1: UpstreamH1,
    /// Plain HTTP from the start; a TLS destination once hyper's client got an answer from it
    /// that was not HTTP/2 (its ALPN did not pick h2; HTTP/1.0 counts as HTTP/1.1 here). Until a reload: a destination that later offers HTTP/2 is still
    /// served, over HTTP/1.1.
    h1_only: AtomicBool,
}

impl Destination {
    /// Whether a bodiless request (not an upgrade) goes over our own HTTP/1.1 client: per
    /// request, it costs less than hyper's pooled client (S2 in docs/benchmarks.md); HTTP/2
    /// stays hyper's.
    pub(crate) fn speaks_h1_only(&self) -> bool {
        self.h1_only.load(Ordering::Relaxed)
    }

    /// Learns from a response of the pooled client which protocol the destination speaks.
    pub(crate) fn answered_over(&self, version: http::Version) {
        if version != http::Version::HTTP_2 && !self.speaks_h1_only() {
            self.h1_only.store(true, Ordering::Relaxed);
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
        let upstream = &config.upstream;
        let trust = match (&upstream.ca_file, upstream.plaintext) {
            (Some(ca), false) => Trust::Ca(ca),
            (None, false) => Trust::WebPki,
            (_, true) => Trust::Plaintext,
        };
        let kubernetes = Arc::new(Destination {
            label: "its Kubernetes API".into(),
            target: upstream.target.clone(),
            host: HeaderValue::from_str(&upstream.target).ok(),
            authority: upstream.target.parse().ok(),
            plaintext: upstream.plaintext,
            token_file: upstream.token_file.clone().map(TokenFile::new),
            headers: Vec::new(),
            path_prefix: String::new(),
            client: tls::upstream_client(trust, true)?,
            upgrade_client: tls::upstream_client(trust, false)?,
            own_h1: UpstreamH1::new(upstream.target.clone(), tls::upstream_h1_config(trust)?),
            h1_only: AtomicBool::new(upstream.plaintext),
        });
        let mut backends = HashMap::new();
        for backend in &config.backends {
            let trust = match (backend.tls, &backend.ca_file) {
                (true, Some(ca)) => Trust::Ca(ca),
                (true, None) => Trust::WebPki,
                (false, _) => Trust::Plaintext,
            };
            backends.insert(
                backend.name.clone(),
                Arc::new(Destination {
                    label: format!("extension backend \"{}\"", backend.name),
                    target: backend.target.clone(),
                    host: HeaderValue::from_str(&backend.target).ok(),
                    authority: backend.target.parse().ok(),
                    plaintext: !backend.tls,
                    token_file: backend.token_file.clone().map(TokenFile::new),
                    headers: backend.headers.clone(),
                    path_prefix: backend.path_prefix.clone(),
                    client: tls::upstream_client(trust, true)?,
                    upgrade_client: tls::upstream_client(trust, false)?,
                    own_h1: UpstreamH1::new(
                        backend.target.clone(),
                        tls::upstream_h1_config(trust)?,
                    ),
                    h1_only: AtomicBool::new(!backend.tls),
                }),
            );
        }
        Ok(Self {
            kubernetes,
            backends,
        })
    }
}
