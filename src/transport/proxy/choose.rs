//! Whether the server is dialled through a proxy: `proxy_url` unless `no_proxy` covers the
//! server host, with `$HTTPS_PROXY` / `$NO_PROXY` standing in for unset keys.

use std::net::IpAddr;

use super::{ProxyError, ProxyTarget};

/// Where the proxy URL and the bypass list come from when the config sets neither; the first
/// non-empty variable wins.
const PROXY_VARS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The proxy to reach `host` (the server's host name or IP, IPv6 with or without brackets)
/// through: `proxy_url` unless `host` matches `no_proxy`. No environment is read.
pub fn choose(
    proxy_url: Option<&str>,
    no_proxy: Option<&[String]>,
    host: &str,
) -> Result<Option<ProxyTarget>, ProxyError> {
    select(
        proxy_url.map(|url| ("proxy_url", url)),
        no_proxy.unwrap_or_default(),
        host,
    )
}

/// [`choose`], with `$HTTPS_PROXY` / `$https_proxy` standing in for an unset `proxy_url` and
/// `$NO_PROXY` / `$no_proxy` (comma-separated) for an unset `no_proxy`. Read at each call, so a
/// dial sees the process environment as it is then.
pub fn choose_with_env(
    proxy_url: Option<&str>,
    no_proxy: Option<&[String]>,
    host: &str,
) -> Result<Option<ProxyTarget>, ProxyError> {
    let env_proxy = match proxy_url {
        Some(_) => None,
        None => first_env(PROXY_VARS),
    };
    let proxy = match (proxy_url, &env_proxy) {
        (Some(url), _) => Some(("proxy_url", url)),
        (None, Some((name, url))) => Some((env_origin(name), url.as_str())),
        (None, None) => None,
    };
    let env_no_proxy: Vec<String>;
    let no_proxy = match no_proxy {
        Some(list) => list,
        None => {
            env_no_proxy = first_env(NO_PROXY_VARS)
                .map(|(_, list)| list.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            &env_no_proxy
        }
    };
    select(proxy, no_proxy, host)
}

/// The first of `names` set to something other than blanks. A value that is not UTF-8 is
/// read lossily, so it fails to parse as a URL instead of being silently skipped.
fn first_env(names: [&'static str; 2]) -> Option<(&'static str, String)> {
    names.into_iter().find_map(|name| {
        let value = std::env::var_os(name)?.to_string_lossy().into_owned();
        (!value.trim().is_empty()).then_some((name, value))
    })
}

fn env_origin(name: &str) -> &'static str {
    match name {
        "HTTPS_PROXY" => "$HTTPS_PROXY",
        _ => "$https_proxy",
    }
}

/// `no_proxy` is checked first, so a host it covers is dialled directly even when the proxy
/// URL (say a broken `$HTTPS_PROXY`) would not parse.
fn select(
    proxy: Option<(&'static str, &str)>,
    no_proxy: &[String],
    host: &str,
) -> Result<Option<ProxyTarget>, ProxyError> {
    let Some((origin, url)) = proxy else {
        return Ok(None);
    };
    let host = normalize(host);
    if no_proxy.iter().any(|entry| bypasses(entry, &host)) {
        return Ok(None);
    }
    ProxyTarget::parse(url, origin).map(Some)
}

/// Lower case, without IPv6 brackets or a trailing root dot.
fn normalize(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Whether one `no_proxy` entry covers `host` (normalized): `*`; the same IP; the same name;
/// or a domain (`example.com`, `.example.com`, `*.example.com`) of which `host` is a
/// subdomain. A port in the entry is ignored, since the server has one port per host anyway.
fn bypasses(entry: &str, host: &str) -> bool {
    let entry = entry.trim();
    if entry == "*" {
        return true;
    }
    let name = normalize(without_port(entry));
    let domain = name.trim_start_matches('*').trim_start_matches('.');
    if domain.is_empty() {
        return false;
    }
    match host.parse::<IpAddr>() {
        // Compared as addresses (`::1` is `0:0::1`), never as suffixes: `0.0.1` is no domain of
        // `127.0.0.1`.
        Ok(ip) => domain.parse::<IpAddr>() == Ok(ip),
        Err(_) => {
            host == domain
                || host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.ends_with('.'))
        }
    }
}

/// `host:port` → `host`, `[v6]:port` → `v6`; a bare IPv6 address (several colons) is kept.
fn without_port(entry: &str) -> &str {
    if let Some(bracketed) = entry.strip_prefix('[') {
        return bracketed
            .split_once(']')
            .map_or(bracketed, |(host, _)| host);
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => entry,
    }
}
