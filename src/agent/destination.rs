//! Where the agent sends a stream's requests: its Kubernetes API, or one of the extension
//! backends it allows by name. Each has its own pooled client (its own CA) and its own
//! credential; a reload rebuilds them all.

use std::collections::HashMap;
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
    /// `target` as the `Host` every request carries and as its URI's authority (made once; a
    /// clone is a reference count, not a copy).
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
    /// Our own HTTP/1.1 client, for long-lived requests (watches, followed logs).
    pub(crate) long_lived: UpstreamH1,
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
            long_lived: UpstreamH1::new(upstream.target.clone(), tls::upstream_h1_config(trust)?),
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
                    long_lived: UpstreamH1::new(
                        backend.target.clone(),
                        tls::upstream_h1_config(trust)?,
                    ),
                }),
            );
        }
        Ok(Self {
            kubernetes,
            backends,
        })
    }
}
