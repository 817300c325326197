//! rustls client configurations (ring provider, TLS 1.2+): the agent's view of the server
//! (its `server_ca`, or the built-in web PKI roots) and of its upstream (`ca_file`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

/// Why TLS could not be set up or completed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA file could not be read or holds no certificate.
    #[error("CA bundle {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The handshake failed (untrusted certificate, wrong name…).
    #[error("TLS handshake with {host}: {source}")]
    Handshake {
        /// The server name.
        host: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TCP connection to an upstream failed or timed out.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The error.
        source: std::io::Error,
    },
    /// The host is not a valid DNS name or IP.
    #[error("invalid TLS server name {0:?}")]
    Name(String),
    /// A certificate or key file could not be read or used.
    #[error("{path}: {reason}")]
    Identity {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Roots from a PEM bundle, or the compiled-in web PKI roots when `ca` is `None`.
pub fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let Some(path) = ca else {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    };
    let error = |reason: String| TlsError::Ca {
        path: path.display().to_string(),
        reason,
    };
    for cert in pem_certificates(path).map_err(error)? {
        store.add(cert).map_err(|e| error(e.to_string()))?;
    }
    Ok(store)
}

/// A client config trusting `roots`, TLS 1.2 and 1.3, with the given ALPN protocols.
pub fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_with_identity(roots, alpn, None).expect("no identity files to read")
}

/// [`client_config`] presenting the certificate chain and key in `identity` (PEM files).
pub fn client_config_with_identity(
    roots: RootCertStore,
    alpn: &[&[u8]],
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|error| TlsError::Identity {
                path: key.display().to_string(),
                reason: error.to_string(),
            })?,
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A PEM certificate chain, leaf first; at least one certificate.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_certificates(path).map_err(|reason| TlsError::Identity {
        path: path.display().to_string(),
        reason,
    })
}

/// Every certificate in a PEM file; at least one. The error says why, for the caller to name.
fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certs)
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1). The error never shows the key.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Identity {
        path: path.display().to_string(),
        reason: format!("no usable private key ({error})"),
    })
}

/// Completes a TLS handshake over `tcp`, verifying `host`.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError> {
    let name =
        ServerName::try_from(host.to_owned()).map_err(|_| TlsError::Name(host.to_owned()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|source| TlsError::Handshake {
            host: host.to_owned(),
            source,
        })
}

/// The agent's pooled HTTP client to one upstream, sending request bodies of type `B`.
pub type UpstreamClient<B> = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>;

/// What an upstream's certificate is verified against.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// Plain HTTP: no TLS.
    Plaintext,
    /// The compiled-in web PKI roots.
    WebPki,
    /// A PEM CA bundle (read now).
    Ca(&'a Path),
}

fn trust_roots(trust: Trust<'_>) -> Result<RootCertStore, TlsError> {
    match trust {
        Trust::Plaintext => Ok(RootCertStore::empty()),
        Trust::WebPki => roots(None),
        Trust::Ca(path) => roots(Some(path)),
    }
}

/// The TLS config of our own HTTP/1.1 connections to an upstream (ALPN `http/1.1`); `None`
/// for plain HTTP.
pub fn upstream_h1_config(trust: Trust<'_>) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    match trust {
        Trust::Plaintext => Ok(None),
        _ => Ok(Some(client_config(trust_roots(trust)?, &[b"http/1.1"]))),
    }
}

/// A pooled client for an upstream; `h2` offers HTTP/2 by ALPN (see [`upstream_connector`]).
pub fn upstream_client<B>(trust: Trust<'_>, h2: bool) -> Result<UpstreamClient<B>, TlsError>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let roots = trust_roots(trust)?;
    // hyper-rustls sets ALPN itself (and refuses a config that already has it).
    let connector = upstream_connector(client_config(roots, &[]), h2);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .http1_max_buf_size(crate::http::BULK_READ_BUFFER)
            // `Host` from the URI over HTTP/1.1: the agent sends none to these clients (over
            // HTTP/2 one beside `:authority` is refused; `agent::forward`).
            .set_host(true)
            .http2_initial_stream_window_size(UPSTREAM_H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(UPSTREAM_H2_CONNECTION_WINDOW)
            .build(connector),
    )
}

/// What one HTTP/2 stream from an upstream may have unread in the agent (its tunnel stream not
/// taking more yet): 1 GB/s over the half-millisecond round trip to an API server in the same
/// cluster.
pub(crate) const UPSTREAM_H2_STREAM_WINDOW: u32 = 512 * 1024;

/// What all of one HTTP/2 connection's streams may have unread together, and so the most the
/// agent holds for one destination outside `process_buffer`. Every request to an upstream
/// shares one connection, so this must be far above one stream's: with hyper's defaults (5 MiB
/// against 2 MiB per stream) three downloads whose readers stalled took it all and every other
/// request to the cluster waited behind them. Here it takes 128 stalled downloads. Go's HTTP/2
/// client (client-go's) allows 1 GiB against 4 MiB; this keeps the agent inside its chart's
/// memory limit. Set after any adaptive-window setting, which would replace both.
pub(crate) const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// The agent's pooled HTTP client connector for its upstream: https with `config`, or http.
/// With `h2`, TLS offers HTTP/2 by ALPN (one connection multiplexes every request); without,
/// HTTP/1.1 only (upgrades — exec, port-forward — exist only there).
pub fn upstream_connector(
    config: Arc<ClientConfig>,
    h2: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*config).clone())
        .https_or_http();
    if h2 {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    }
}

/// A connection to an upstream: plain TCP, or TLS over it (boxed: a TLS session's state is
/// ~1 KiB, which a plain connection would otherwise carry unused).
pub type UpstreamIo =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// How long a TCP connect to an upstream may take (as the pooled clients' connector).
const UPSTREAM_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Dials `target` (`host:port`, or `host` for the scheme's port) and, with `tls`, completes a
/// handshake verifying its host; each step within `UPSTREAM_CONNECT_TIMEOUT` (10 s, shared
/// by the addresses the host resolves to: [`super::tcp`]).
pub async fn dial_upstream(
    tls: Option<&Arc<ClientConfig>>,
    target: &str,
) -> Result<UpstreamIo, TlsError> {
    let connect_error = |source: std::io::Error| TlsError::Connect {
        target: target.to_owned(),
        source,
    };
    // As a URI authority: without a port, the scheme's (hyper's clients do the same).
    let (host, address) = match target.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, target.to_owned()),
        _ => (
            target,
            format!("{target}:{}", if tls.is_some() { 443 } else { 80 }),
        ),
    };
    let tcp = super::tcp::connect(&address, UPSTREAM_CONNECT_TIMEOUT)
        .await
        .map_err(connect_error)?;
    let Some(config) = tls else {
        return Ok(UpstreamIo::Left(tcp));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let handshake = connect(config.clone(), host, tcp);
    let stream = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| TlsError::Handshake {
            host: host.to_owned(),
            source: std::io::ErrorKind::TimedOut.into(),
        })??;
    Ok(UpstreamIo::Right(Box::new(stream)))
}
