//! rustls server configurations for the server's listeners (ring, TLS 1.2+): certificate and
//! key from PEM files, optional client-certificate verification (mTLS), ALPN; a slot that a
//! reload swaps so new connections get rotated certificates while open ones keep theirs; and
//! the check that a client certificate names something (a cluster id, a caller).

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use super::tls::{certificates, private_key, roots, TlsError};

/// A listener's TLS configuration.
pub type ServerTlsConfig = Arc<ServerConfig>;

/// Builds a server config from PEM files; `client_ca` makes a client certificate signed by it
/// mandatory.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(Some(ca))?), provider)
                    .build()
                    .map_err(|error| TlsError::Ca {
                        path: ca.display().to_string(),
                        reason: error.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|error| TlsError::Identity {
            path: key.display().to_string(),
            reason: format!("does not match the certificate or is unusable: {error}"),
        })?;
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The TLS config a listener gives new connections.
pub struct TlsSlot(RwLock<Arc<ServerConfig>>);

impl TlsSlot {
    /// A slot holding `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(RwLock::new(config))
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Rotates: handshakes from now on use `config`; established connections are untouched.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }
}

/// The verified client certificate of a connection, put in each request's extensions.
#[derive(Debug, Clone)]
pub struct ClientCert(pub CertificateDer<'static>);

impl ClientCert {
    /// Whether the certificate carries `name` as a DNS subjectAltName (the chain was already
    /// verified in the handshake). Names that are not valid DNS names never match.
    pub fn names(&self, name: &str) -> bool {
        let Ok(subject) = ServerName::try_from(name.to_owned()) else {
            return false;
        };
        webpki::EndEntityCert::try_from(&self.0)
            .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&subject).is_ok())
    }
}
