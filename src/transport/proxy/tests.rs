use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;

fn list(entries: &[&str]) -> Vec<String> {
    entries.iter().map(|entry| entry.to_string()).collect()
}

/// Whether `host` goes through `http://proxy:3128` given `no_proxy`.
fn proxied(no_proxy: &[&str], host: &str) -> bool {
    choose(Some("http://proxy:3128"), Some(&list(no_proxy)), host)
        .expect("valid proxy URL")
        .is_some()
}

fn target(url: &str) -> ProxyTarget {
    ProxyTarget::parse(url, "proxy_url").expect("valid proxy URL")
}

#[test]
fn no_proxy_configured_dials_directly() {
    assert_eq!(choose(None, None, "server.example").unwrap(), None);
    assert_eq!(
        choose(None, Some(&list(&["*"])), "server.example").unwrap(),
        None
    );
}

#[test]
fn proxy_applies_to_hosts_no_proxy_does_not_cover() {
    let chosen = choose(Some("http://proxy.corp:3128"), None, "server.example").unwrap();
    assert_eq!(
        chosen.map(|proxy| proxy.addr),
        Some("proxy.corp:3128".into())
    );
    assert!(proxied(&[], "server.example"));
    assert!(proxied(&["other.example", "10.0.0.1"], "server.example"));
}

#[test]
fn no_proxy_matches_names_domains_and_wildcard() {
    assert!(!proxied(&["server.example"], "server.example"), "exact");
    assert!(!proxied(&["example"], "server.example"), "bare domain");
    assert!(!proxied(&[".example"], "server.example"), "dot domain");
    assert!(
        !proxied(&["*.example"], "server.example"),
        "star-dot domain"
    );
    assert!(
        !proxied(&[".server.example"], "server.example"),
        "dot form, the domain itself"
    );
    assert!(!proxied(&["*"], "anything.at.all"), "wildcard");
    assert!(
        !proxied(&["  a.test ", " server.example"], "server.example"),
        "blanks"
    );
    assert!(
        proxied(&["ver.example"], "server.example"),
        "not a label boundary"
    );
    assert!(
        proxied(&["sub.server.example"], "server.example"),
        "a subdomain only"
    );
    assert!(proxied(&["", ".", "*."], "server.example"), "empty entries");
}

#[test]
fn no_proxy_ignores_case_ports_and_trailing_dots() {
    assert!(!proxied(&["Server.EXAMPLE"], "server.example"));
    assert!(!proxied(&["server.example"], "SERVER.example."));
    assert!(!proxied(&["server.example:8443"], "server.example"));
    assert!(!proxied(&["example:443"], "server.example"));
}

#[test]
fn no_proxy_matches_ip_addresses_exactly() {
    assert!(!proxied(&["10.1.2.3"], "10.1.2.3"));
    assert!(!proxied(&["10.1.2.3:443"], "10.1.2.3"));
    assert!(proxied(&["1.2.3"], "10.1.2.3"), "an IP is no domain");
    assert!(proxied(&["10.1.2.30"], "10.1.2.3"));
    assert!(
        !proxied(&["::1"], "[::1]"),
        "bare IPv6 entry, bracketed host"
    );
    assert!(!proxied(&["[::1]:443"], "::1"), "bracketed entry with port");
    assert!(!proxied(&["[0:0::1]"], "[::1]"), "compared as addresses");
    assert!(!proxied(&["[FD00::A]"], "[fd00::a]"));
    assert!(proxied(&["::2"], "[::1]"));
}

#[test]
fn userinfo_becomes_a_basic_proxy_authorization() {
    assert_eq!(target("http://proxy:3128").authorization, None);
    assert_eq!(
        target("http://aladdin:opensesame@proxy:3128")
            .authorization
            .as_deref(),
        Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l")
    );
    // Percent-escapes are decoded first: `p@ss:w%rd` is the password, and a colon splits
    // only once.
    assert_eq!(
        target("http://us%65r:p%40ss:w%25rd@proxy:3128").authorization,
        Some(format!("Basic {}", base64(b"user:p@ss:w%rd")))
    );
    assert_eq!(
        target("http://user@proxy:3128").authorization,
        Some(format!("Basic {}", base64(b"user:")))
    );
}

#[test]
fn proxy_urls_parse_host_and_port() {
    assert_eq!(target("http://proxy:3128").addr, "proxy:3128");
    assert_eq!(target("HTTP://proxy:3128/").addr, "proxy:3128");
    assert_eq!(target("http://proxy").addr, "proxy:80");
    assert_eq!(target("http://u:p@[fd00::1]:3128").addr, "[fd00::1]:3128");
    assert_eq!(target("  http://10.0.0.1:8080  ").addr, "10.0.0.1:8080");
}

#[test]
fn malformed_proxy_urls_are_refused_without_echoing_them() {
    for url in [
        "proxy:3128",
        "https://proxy:3128",
        "socks5://proxy:1080",
        "http://",
        "http://proxy:0",
        "http://proxy:65536",
        "http://proxy:port",
        "http://proxy:3128/path",
        "http://proxy:3128/?q=1",
        "http://user:s3cret%zz@proxy:3128",
        "http://user:s3cret@",
        "not a url at all s3cret",
    ] {
        let error = choose(Some(url), None, "server.example").expect_err(url);
        assert!(
            matches!(
                error,
                ProxyError::InvalidUrl {
                    origin: "proxy_url",
                    ..
                }
            ),
            "{url}: {error:?}"
        );
        assert!(!error.to_string().contains("s3cret"), "{url}: {error}");
    }
}

#[test]
fn check_url_agrees_with_the_dial() {
    assert!(ProxyTarget::check_url("http://user:pass@proxy:3128").is_ok());
    let error = ProxyTarget::check_url("http://proxy:3128/path").unwrap_err();
    assert_eq!(
        error.to_string(),
        "proxy_url is not a usable proxy URL (http://[user:pass@]host:port): \
         a proxy URL has no path or query"
    );
}

#[test]
fn no_proxy_wins_over_a_broken_proxy_url() {
    assert_eq!(
        choose(Some("socks5://x"), Some(&list(&["*"])), "h").unwrap(),
        None
    );
}

#[test]
fn debug_and_display_hide_the_credentials() {
    let proxy = target("http://user:s3cret@proxy:3128");
    let shown = format!("{proxy} {proxy:?}");
    assert!(shown.contains("proxy:3128"), "{shown}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("Basic"),
        "{shown}"
    );
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
    assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
}

/// Runs [`connect`] against a fake proxy that checks the request and answers `answer`; returns
/// the request it saw and the outcome.
async fn handshake(url: &str, answer: &[u8]) -> (String, Result<Vec<u8>, ProxyError>) {
    let (agent, mut proxy) = duplex(64);
    let answer = answer.to_vec();
    let fake = async move {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            request.push(proxy.read_u8().await.expect("request byte"));
        }
        // The proxy may hang up right after answering; the agent must not care.
        let _ = proxy.write_all(&answer).await;
        drop(proxy);
        String::from_utf8(request).expect("UTF-8 request")
    };
    let agent = async {
        let mut stream = connect(agent, &target(url), "server.example:443").await?;
        // What the agent reads next is the tunnel's: proof nothing past the head was consumed.
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("tunnel bytes");
        Ok(rest)
    };
    tokio::join!(fake, agent)
}

#[tokio::test]
async fn connect_sends_the_request_and_leaves_the_tunnel_bytes_unread() {
    let (request, outcome) = handshake(
        "http://user:pass@proxy:3128",
        b"HTTP/1.1 200 Connection established\r\nVia: tinyproxy\r\n\r\n\x16\x03\x01TLS",
    )
    .await;
    assert_eq!(
        request,
        "CONNECT server.example:443 HTTP/1.1\r\nHost: server.example:443\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n"
    );
    assert_eq!(outcome.expect("tunnel"), b"\x16\x03\x01TLS");
}

#[tokio::test]
async fn connect_accepts_http_1_0_and_bare_line_feeds() {
    let (request, outcome) = handshake("http://proxy:3128", b"HTTP/1.0 200\n\nrest").await;
    assert!(!request.contains("Proxy-Authorization"), "{request}");
    assert_eq!(outcome.expect("tunnel"), b"rest");
}

#[tokio::test]
async fn a_407_is_refused_with_its_status_and_without_credentials() {
    let (_, outcome) = handshake(
        "http://user:s3cret@proxy:3128",
        b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n<html>",
    )
    .await;
    let error = outcome.expect_err("407");
    assert!(
        matches!(error, ProxyError::Refused { status: 407, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert_eq!(
        text,
        "proxy CONNECT to proxy:3128 refused: 407 Proxy Authentication Required"
    );
    assert!(!format!("{text} {error:?}").contains("s3cret"));
}

#[tokio::test]
async fn a_refusal_without_reason_gets_the_standard_one_and_control_bytes_are_dropped() {
    let (_, outcome) = handshake("http://proxy:3128", b"HTTP/1.1 403\r\n\r\n").await;
    assert!(outcome
        .unwrap_err()
        .to_string()
        .ends_with("refused: 403 Forbidden"));
    let (_, outcome) = handshake(
        "http://proxy:3128",
        b"HTTP/1.1 502 Bad\x1b[2J Gateway\r\n\r\n",
    )
    .await;
    assert!(outcome
        .unwrap_err()
        .to_string()
        .ends_with("refused: 502 Bad[2J Gateway"));
}

#[tokio::test]
async fn garbage_answers_are_malformed() {
    for answer in [
        &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 20\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"\x16\x03\x01\x00\x05\r\n\r\n",
    ] {
        let (_, outcome) = handshake("http://proxy:3128", answer).await;
        let error = outcome.expect_err("malformed");
        assert!(matches!(error, ProxyError::Malformed { .. }), "{error:?}");
    }
}

#[tokio::test]
async fn eof_in_the_middle_of_the_head_is_an_error() {
    let (_, outcome) = handshake(
        "http://proxy:3128",
        b"HTTP/1.1 200 Connection established\r\n",
    )
    .await;
    assert!(
        matches!(outcome, Err(ProxyError::Closed { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    while answer.len() < MAX_RESPONSE_HEAD {
        answer.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    answer.extend_from_slice(b"\r\n");
    let (_, outcome) = handshake("http://proxy:3128", &answer).await;
    assert!(
        matches!(outcome, Err(ProxyError::HeadTooLarge { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_head_of_exactly_the_limit_is_accepted() {
    let mut answer = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
    answer.resize(MAX_RESPONSE_HEAD - 4, b'a');
    answer.extend_from_slice(b"\r\n\r\ntunnel");
    let (_, outcome) = handshake("http://proxy:3128", &answer).await;
    assert_eq!(outcome.expect("at the limit"), b"tunnel");
}
