//! The agent's egress proxy: whether the server is dialled through one (`proxy_url` /
//! `no_proxy`, else `$HTTPS_PROXY` / `$NO_PROXY`), and the HTTP `CONNECT` that opens the
//! tunnel the TLS and WebSocket handshakes then run inside.

use std::fmt;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

mod choose;

pub use choose::{choose, choose_with_env};

/// The largest `CONNECT` response head accepted from a proxy. Real proxies answer in well
/// under 1 KiB; the bound stops a broken or hostile proxy from making the agent buffer without
/// end (the time the proxy may take is bounded by the caller).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The port of a proxy URL that names none, as Go's `net/http` does for `http://` proxies.
const DEFAULT_PORT: u16 = 80;

/// Reported proxy-controlled text (the reason phrase, a malformed status line) is cut to this
/// many characters so a proxy cannot flood the log and the sd_notify status.
const MAX_REPORTED: usize = 100;

/// A proxy to `CONNECT` through. Its `Debug` and `Display` never show the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// `host:port`, IPv6 in brackets: where to open TCP, and what logs show.
    addr: String,
    /// `Basic base64(user:pass)` from the URL's percent-decoded userinfo.
    authorization: Option<String>,
}

/// Why the proxy could not be used. The text goes to logs and the sd_notify status, so no
/// variant carries the proxy URL or its credentials.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy URL is unusable; `origin` names where it came from.
    #[error("{origin} is not a usable proxy URL (http://[user:pass@]host:port): {reason}")]
    InvalidUrl {
        /// `proxy_url`, `$HTTPS_PROXY` or `$https_proxy`.
        origin: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No TCP connection to the proxy.
    #[error("connecting to proxy {proxy}: {source}")]
    Connect {
        /// The proxy's host:port.
        proxy: String,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy answered the `CONNECT` with a status other than 200 (407: bad credentials).
    #[error("proxy CONNECT to {proxy} refused: {}", status_text(*.status, .reason))]
    Refused {
        /// The proxy's host:port.
        proxy: String,
        /// The HTTP status.
        status: u16,
        /// The reason phrase the proxy sent (sanitized), else the standard one.
        reason: String,
    },
    /// The answer does not start with an HTTP/1.x status line.
    #[error("proxy {proxy} answered CONNECT with something other than HTTP/1.x: \"{start}\"")]
    Malformed {
        /// The proxy's host:port.
        proxy: String,
        /// The start of the answer, escaped.
        start: String,
    },
    /// The answer's head is larger than [`MAX_RESPONSE_HEAD`].
    #[error("proxy {proxy} sent a CONNECT response head over {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge {
        /// The proxy's host:port.
        proxy: String,
    },
    /// The proxy hung up before the end of its answer.
    #[error("proxy {proxy} closed the connection during CONNECT")]
    Closed {
        /// The proxy's host:port.
        proxy: String,
    },
    /// Reading or writing the proxy connection failed.
    #[error("proxy CONNECT via {proxy}: {source}")]
    Io {
        /// The proxy's host:port.
        proxy: String,
        /// The OS error.
        source: io::Error,
    },
}

fn status_text(status: u16, reason: &str) -> String {
    format!("{status} {reason}").trim_end().to_owned()
}

// === impl ProxyTarget ===

impl ProxyTarget {
    /// Parses `http://[user:pass@]host[:port][/]`; `origin` names the URL's source in errors.
    fn parse(url: &str, origin: &'static str) -> Result<Self, ProxyError> {
        let invalid = |reason| ProxyError::InvalidUrl { origin, reason };
        let uri: http::Uri = url.trim().parse().map_err(|_| invalid("not a URL"))?;
        if !uri
            .scheme_str()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http"))
        {
            return Err(invalid("the scheme must be http://"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("a proxy URL has no path or query"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let (userinfo, host_port) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority.as_str()),
        };
        // `Authority::port_u16` reads an out-of-range port as "no port"; parse it here instead.
        let host = authority.host();
        let port = match host_port.get(host.len()..).unwrap_or_default() {
            "" => DEFAULT_PORT,
            rest => rest
                .strip_prefix(':')
                .and_then(|port| port.parse::<u16>().ok())
                .filter(|port| *port != 0)
                .ok_or_else(|| invalid("the port must be 1-65535"))?,
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let authorization = match userinfo.filter(|info| !info.is_empty()) {
            None => None,
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                let bad_escape = || invalid("bad %-escape in the user name or password");
                let mut credentials = percent_decode(user).ok_or_else(bad_escape)?;
                credentials.push(b':');
                credentials.extend(percent_decode(password).ok_or_else(bad_escape)?);
                Some(format!("Basic {}", base64(&credentials)))
            }
        };
        Ok(Self {
            addr: format!("{host}:{port}"),
            authorization,
        })
    }

    /// Checks a configured `proxy_url` exactly as a dial will read it, so config validation
    /// can refuse what the dial would.
    pub fn check_url(url: &str) -> Result<(), ProxyError> {
        Self::parse(url, "proxy_url").map(drop)
    }

    /// The proxy's `host:port` (IPv6 in brackets), to connect to and to log.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl fmt::Display for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("addr", &self.addr)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

// === the CONNECT handshake ===

/// Asks `proxy`, already connected as `stream`, for a tunnel to `authority` (`host:port`, from
/// the parsed server URL), and returns the stream once the proxy answers 200. The caller
/// bounds the time; on an error the stream is dropped.
pub async fn connect<S>(
    mut stream: S,
    proxy: &ProxyTarget,
    authority: &str,
) -> Result<S, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io_error = |source| ProxyError::Io {
        proxy: proxy.addr.clone(),
        source,
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(credentials) = &proxy.authorization {
        request += &format!("Proxy-Authorization: {credentials}\r\n");
    }
    request += "\r\n";
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io_error)?;
    stream.flush().await.map_err(io_error)?;
    let head = read_head(&mut stream, proxy).await?;
    let Some((status, reason)) = status_line(&head) else {
        let start = head.get(..MAX_REPORTED).unwrap_or(&head);
        return Err(ProxyError::Malformed {
            proxy: proxy.addr.clone(),
            start: start.escape_ascii().to_string(),
        });
    };
    if status != 200 {
        let reason = match reason {
            "" => http::StatusCode::from_u16(status)
                .ok()
                .and_then(|status| status.canonical_reason())
                .unwrap_or_default()
                .to_owned(),
            reason => reason
                .chars()
                .filter(|char| !char.is_control())
                .take(MAX_REPORTED)
                .collect(),
        };
        return Err(ProxyError::Refused {
            proxy: proxy.addr.clone(),
            status,
            reason,
        });
    }
    Ok(stream)
}

/// Reads the response head through its blank line, one byte per read: what follows belongs
/// to the tunnel (the server's TLS handshake), so nothing past the head may be buffered here.
/// One read per byte costs a few hundred syscalls once per dial.
async fn read_head<S>(stream: &mut S, proxy: &ProxyTarget) -> Result<Vec<u8>, ProxyError>
where
    S: AsyncRead + Unpin,
{
    let mut head = Vec::with_capacity(256);
    let mut byte = [0_u8];
    loop {
        let read = stream
            .read(&mut byte)
            .await
            .map_err(|source| ProxyError::Io {
                proxy: proxy.addr.clone(),
                source,
            })?;
        if read == 0 {
            return Err(ProxyError::Closed {
                proxy: proxy.addr.clone(),
            });
        }
        head.push(byte[0]);
        // A bare-LF blank line is accepted too, as lenient HTTP/1 parsers do.
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(ProxyError::HeadTooLarge {
                proxy: proxy.addr.clone(),
            });
        }
    }
}

/// `HTTP/1.x SP 3DIGIT [SP reason]` → the status and the reason phrase (still raw: the
/// caller drops its control characters before reporting it).
fn status_line(head: &[u8]) -> Option<(u16, &str)> {
    let line = head.split(|&byte| byte == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let [minor, b' ', digits @ ..] = line.strip_prefix(b"HTTP/1.")? else {
        return None;
    };
    let (code, reason) = digits.split_at_checked(3)?;
    if !minor.is_ascii_digit()
        || !code.iter().all(u8::is_ascii_digit)
        || !(reason.is_empty() || reason.starts_with(b" "))
    {
        return None;
    }
    let status = std::str::from_utf8(code).ok()?.parse().ok()?;
    let reason = std::str::from_utf8(reason).unwrap_or("").trim();
    Some((status, reason))
}

/// `%XX` escapes → bytes; `None` for a `%` not followed by two hex digits.
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut bytes = text.bytes();
    let mut decoded = Vec::with_capacity(text.len());
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            decoded.push(byte);
            continue;
        }
        let high = char::from(bytes.next()?).to_digit(16)?;
        let low = char::from(bytes.next()?).to_digit(16)?;
        decoded.push((high * 16 + low) as u8);
    }
    Some(decoded)
}

/// Standard base64 with padding (RFC 4648 §4), for the one `Proxy-Authorization` header: too
/// small a need for a dependency.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let triple = chunk.iter().enumerate().fold(0_u32, |acc, (index, byte)| {
            acc | u32::from(*byte) << (16 - 8 * index)
        });
        for sextet in 0..4 {
            if sextet <= chunk.len() {
                let index = (triple >> (18 - 6 * sextet)) & 0x3f;
                encoded.push(char::from(ALPHABET[index as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

#[cfg(test)]
mod tests;
