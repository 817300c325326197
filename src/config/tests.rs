//! Config rules, one inline TOML per rule, plus the shipped examples.

use std::path::Path;
use std::time::Duration;

use super::server::DEFAULT_TARGET;
use super::*;

fn server(text: &str) -> Result<ServerConfig, ConfigError> {
    ServerConfig::from_toml(
        Path::new("/etc/argocd-proxy/server.toml"),
        text,
        Check::Syntax,
    )
}

const LISTENERS: &str =
    "[public]\nlisten = \"127.0.0.1:0\"\n[internal]\nlisten = \"127.0.0.1:0\"\n";

fn with_clusters(clusters: &str) -> String {
    format!("{LISTENERS}{clusters}")
}

#[test]
fn a_hashed_token_loads() {
    let hash = TokenHash::of(b"secret").to_hex();
    let config = server(&with_clusters(&format!(
        "[[cluster]]\nid = \"a\"\ntoken_sha256 = \"{hash}\"\n"
    )))
    .unwrap();
    assert_eq!(config.clusters[0].token, Some(TokenHash::of(b"secret")));
    assert_eq!(config.clusters[0].impersonation, Impersonation::User);
    assert_eq!(config.clusters[0].target, DEFAULT_TARGET);
    assert!(config.warnings.is_empty());
}

#[test]
fn clusters_are_found_by_id() {
    let clusters: String = (0..50)
        .map(|i| {
            let hash = TokenHash::of(format!("t{i}").as_bytes()).to_hex();
            format!("[[cluster]]\nid = \"c{i}\"\ntoken_sha256 = \"{hash}\"\n")
        })
        .collect();
    let config = server(&with_clusters(&clusters)).unwrap();
    for i in [0, 1, 17, 49] {
        let cluster = config.cluster(&format!("c{i}")).expect("configured");
        assert_eq!(cluster.id, format!("c{i}"));
        assert_eq!(
            cluster.token,
            Some(TokenHash::of(format!("t{i}").as_bytes()))
        );
    }
    assert!(config.cluster("c50").is_none());
    assert!(config.cluster("").is_none());
}

#[test]
fn unknown_keys_are_errors_with_line_and_key() {
    let error = server(&with_clusters("[[cluster]]\nid = \"a\"\ntokn = \"x\"\n"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("/etc/argocd-proxy/server.toml"), "{error}");
    assert!(error.contains("line 7"), "{error}");
    assert!(error.contains("tokn"), "{error}");
}

/// S3: empty tokens, empty ids, duplicate ids and duplicate tokens are refused at load.
#[test]
fn unsafe_cluster_entries_are_refused() {
    let cases = [
        ("[[cluster]]\nid = \"a\"\ntoken = \"\"\n", "empty"),
        ("[[cluster]]\nid = \"a\"\ntoken = \"  \"\n", "empty"),
        ("[[cluster]]\nid = \"a\"\n", "needs one of"),
        ("[[cluster]]\nid = \"\"\ntoken = \"t\"\n", "id must be"),
        ("[[cluster]]\nid = \"a/b\"\ntoken = \"t\"\n", "id must be"),
        (
            "[[cluster]]\nid = \"a\"\ntoken = \"t\"\n[[cluster]]\nid = \"a\"\ntoken = \"u\"\n",
            "duplicate cluster id",
        ),
        (
            "[[cluster]]\nid = \"a\"\ntoken = \"t\"\n[[cluster]]\nid = \"b\"\ntoken = \"t\"\n",
            "same token",
        ),
        (
            "[[cluster]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n",
            "64 hex",
        ),
        (
            "[[cluster]]\nid = \"a\"\ntoken = \"t\"\ntoken_sha256 = \"x\"\n",
            "only one",
        ),
    ];
    for (clusters, expected) in cases {
        let error = server(&with_clusters(clusters)).unwrap_err().to_string();
        assert!(error.contains(expected), "{clusters:?}: {error}");
    }
}

#[test]
fn plaintext_tokens_warn_and_never_print() {
    let config = server(&with_clusters(
        "[[cluster]]\nid = \"a\"\ntoken = \"hunter2\"\n",
    ))
    .unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn listeners_and_limits_are_validated() {
    let error =
        server("[public]\nlisten = \"nope\"\n[internal]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(error.to_string().contains("[public] listen"), "{error}");
    let same = "[public]\nlisten = \"127.0.0.1:8080\"\n[internal]\nlisten = \"127.0.0.1:8080\"\n";
    assert!(server(same)
        .unwrap_err()
        .to_string()
        .contains("both listen"));
    let limits = format!("{LISTENERS}[limits]\nheartbeat_interval = \"20s\"\n");
    assert!(server(&limits).unwrap_err().to_string().contains("15s"));
    let limits = format!("{LISTENERS}[limits]\nopen_timeout = \"soon\"\n");
    assert!(server(&limits)
        .unwrap_err()
        .to_string()
        .contains("duration"));
}

/// A `tunnel_buffer` under the default `max_stream_window` (64 MiB) alone is valid: the
/// window's default follows it down, as the tunnel's follows `process_buffer`. Setting both
/// inconsistently is still an error.
#[test]
fn the_default_stream_window_fits_a_smaller_tunnel_buffer() {
    let small =
        format!("{LISTENERS}[limits]\ntunnel_buffer = 33554432\nmax_streams_per_tunnel = 64\n");
    let config = server(&small).unwrap();
    assert_eq!(config.limits.tunnel.max_stream_window, 32 * 1024 * 1024);
    // And the tunnel's default follows a smaller process budget (the agent chart's 128 MiB).
    let budget = format!("{LISTENERS}[limits]\nprocess_buffer = 134217728\n");
    let config = server(&budget).unwrap();
    assert_eq!(config.limits.tunnel.session_buffer, 128 * 1024 * 1024);
    let both = format!("{small}max_stream_window = 67108864\n");
    assert!(server(&both)
        .unwrap_err()
        .to_string()
        .contains("max_stream_window"));
}

#[test]
fn token_files_are_read_only_when_checking_files() {
    let dir = std::env::temp_dir().join(format!("argocd-proxy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.token"), "tok-a\n").unwrap();
    let text = with_clusters("[[cluster]]\nid = \"a\"\ntoken_file = \"a.token\"\n[[cluster]]\nid = \"b\"\ntoken_file = \"missing.token\"\n");
    let path = dir.join("server.toml");
    assert!(ServerConfig::from_toml(&path, &text, Check::Syntax).is_ok());
    let error = ServerConfig::from_toml(&path, &text, Check::Files)
        .unwrap_err()
        .to_string();
    assert!(error.contains("missing.token"), "{error}");
    let text = with_clusters("[[cluster]]\nid = \"a\"\ntoken_file = \"a.token\"\n");
    let config = ServerConfig::from_toml(&path, &text, Check::Files).unwrap();
    assert_eq!(config.clusters[0].token, Some(TokenHash::of(b"tok-a")));
    let unread = ServerConfig::from_toml(&path, &text, Check::Syntax).unwrap();
    assert_eq!(
        unread.clusters[0].token, None,
        "a syntax-only check never invents a token"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// S7: plaintext is refused in any letter case without the opt-in.
#[test]
fn agent_refuses_plaintext_in_any_case() {
    let agent = |url: &str, allow: bool| {
        let text = format!("server_url = \"{url}\"\ntoken = \"t\"\nallow_insecure_server = {allow}\n[upstream]\nplaintext = true\n");
        AgentConfig::from_toml(Path::new("agent.toml"), &text, Check::Syntax)
    };
    for url in [
        "ws://h/connect",
        "WS://h/connect",
        "Ws://h/connect",
        "http://h/connect",
    ] {
        assert!(agent(url, false).is_err(), "{url}");
    }
    assert!(agent("WS://h/connect", true).is_ok());
    // B5: a zero reconnect cap would reconnect in a tight loop.
    let text = "server_url = \"wss://h/c\"\ntoken = \"t\"\nmax_reconnect_interval = \"0s\"\n[upstream]\nplaintext = true\n";
    let error = AgentConfig::from_toml(Path::new("agent.toml"), text, Check::Syntax).unwrap_err();
    assert!(
        error.to_string().contains("max_reconnect_interval"),
        "{error}"
    );
    assert!(agent("wss://h/connect", false).is_ok());
}

#[test]
fn agent_token_injection_is_explicit() {
    let text = "server_url = \"wss://h/connect\"\ntoken = \"t\"\n[upstream]\ninject_token = false\nplaintext = true\n";
    let config = AgentConfig::from_toml(Path::new("agent.toml"), text, Check::Syntax).unwrap();
    assert!(config.upstream.token_file.is_none());
    let text = "server_url = \"wss://h/connect\"\ntoken = \"t\"\n[upstream]\n";
    let config = AgentConfig::from_toml(Path::new("agent.toml"), text, Check::Syntax).unwrap();
    assert_eq!(
        config.upstream.token_file.unwrap(),
        Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
}

/// The shipped examples parse (named explicitly, so a rename cannot make this check nothing).
#[test]
fn shipped_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = ServerConfig::load(&root.join("examples/server.toml"), Check::Syntax).unwrap();
    assert!(!server.clusters.is_empty());
    assert!(server.ops_listen.is_some());
    let agent = AgentConfig::load(&root.join("examples/agent.toml"), Check::Syntax).unwrap();
    assert!(agent.health_listen.is_some());
}

/// Every key the parser accepts, per table, as serde lists them when it meets an unknown one.
fn accepted_keys(kind: &str, table: &str) -> Vec<String> {
    const LISTENERS: &str =
        "[public]\nlisten = \"127.0.0.1:1\"\n[internal]\nlisten = \"127.0.0.1:2\"\n";
    const AGENT: &str = "server_url = \"wss://h/c\"\ntoken = \"t\"\n";
    // The unknown key goes last, inside the table being probed (top level: first of all).
    let text = match (kind, table) {
        ("server", "") => format!("zz_not_a_key = 1\n{LISTENERS}"),
        ("server", "[public]") => "[internal]\nlisten = \"127.0.0.1:2\"\n[public]\nlisten = \"127.0.0.1:1\"\nzz_not_a_key = 1\n".to_owned(),
        ("server", "[[cluster]]") => format!("{LISTENERS}[[cluster]]\nid = \"a\"\nzz_not_a_key = 1\n"),
        ("server", "[[caller]]") => format!("{LISTENERS}[[caller]]\nname = \"a\"\nzz_not_a_key = 1\n"),
        ("server", "[internal]") => format!("{LISTENERS}zz_not_a_key = 1\n"),
        ("server", "[[extension]]") => format!("{LISTENERS}[[extension]]\nname = \"a\"\nzz_not_a_key = 1\n"),
        ("server", table) => format!("{LISTENERS}{table}\nzz_not_a_key = 1\n"),
        ("agent", "") => format!("zz_not_a_key = 1\n{AGENT}[upstream]\n"),
        ("agent", "[upstream]") => format!("{AGENT}[upstream]\nzz_not_a_key = 1\n"),
        ("agent", table) => format!("{AGENT}[upstream]\n{table}\nzz_not_a_key = 1\n"),
        _ => unreachable!(),
    };
    let path = Path::new("probe.toml");
    let error = if kind == "server" {
        ServerConfig::from_toml(path, &text, Check::Syntax).unwrap_err()
    } else {
        AgentConfig::from_toml(path, &text, Check::Syntax).unwrap_err()
    }
    .to_string();
    // serde says "expected one of `a`, `b`" or, for a single field, "expected `a`".
    let list = error
        .split("expected one of ")
        .nth(1)
        .or_else(|| error.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{kind} {table}: {error}"));
    list.split(',')
        .flat_map(|keys| keys.split(" or "))
        .map(|key| key.trim().trim_matches('`').to_owned())
        .filter(|key| !key.is_empty())
        .collect()
}

/// docs/configuration.md documents every key the parsers accept (a new key fails this test
/// until it is documented), and the shipped examples use only documented keys.
#[test]
fn every_accepted_key_is_documented() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let mut checked = 0;
    for (kind, table) in [
        ("server", ""),
        ("server", "[public]"),
        ("server", "[ops]"),
        ("server", "[internal]"),
        ("server", "[[caller]]"),
        ("server", "[limits]"),
        ("server", "[[cluster]]"),
        ("server", "[log]"),
        ("server", "[extensions]"),
        ("server", "[[extension]]"),
        ("agent", ""),
        ("agent", "[upstream]"),
        ("agent", "[limits]"),
        ("agent", "[log]"),
        ("agent", "[[backend]]"),
    ] {
        for key in accepted_keys(kind, table) {
            let documented = if table.is_empty() {
                doc.contains(&format!("| `{key}` |"))
                    || doc.contains(&format!("| `[{key}]` |"))
                    || doc.contains(&format!("| `[[{key}]]` |"))
            } else if table == "[limits]" {
                doc.contains(&format!("| `{key}` |"))
            } else {
                doc.contains(&format!("| `{table} {key}` |"))
            };
            assert!(
                documented,
                "{kind}.toml {table} `{key}` is not documented in docs/configuration.md"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 30,
        "only {checked} keys found: the probe is broken"
    );
}

#[test]
fn log_and_poll_settings_are_validated() {
    const SERVER: &str =
        "[public]\nlisten = \"127.0.0.1:1\"\n[internal]\nlisten = \"127.0.0.1:2\"\n";
    let load = |extra: &str| {
        ServerConfig::from_toml(
            Path::new("s.toml"),
            &format!("{extra}\n{SERVER}"),
            Check::Syntax,
        )
    };
    let defaults = load("").unwrap().runtime;
    assert_eq!(defaults.log_level, "info");
    assert_eq!(defaults.log_format, crate::config::LogFormat::Auto);
    assert_eq!(defaults.config_poll_interval, Some(Duration::from_secs(2)));
    assert_eq!(defaults.idle_nap, Some(Duration::from_millis(2)));
    let off = load("config_poll_interval = \"0s\"\nidle_nap = \"0s\"")
        .unwrap()
        .runtime;
    assert_eq!((off.config_poll_interval, off.idle_nap), (None, None));
    let error = load("idle_nap = \"50ms\"").unwrap_err().to_string();
    assert!(error.contains("idle_nap must be at most 20ms"), "{error}");
    let error = load("config_poll_interval = \"10ms\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("at least 100ms"), "{error}");
    let error = load("[log]\nlevel = \"loud=[\"").unwrap_err().to_string();
    assert!(error.contains("[log] level"), "{error}");
    let error = load("[log]\nformat = \"xml\"").unwrap_err().to_string();
    assert!(error.contains("xml"), "{error}");
    let chosen = load("[log]\nlevel = \"warn,argocd_proxy=debug\"\nformat = \"json\"").unwrap();
    assert_eq!(chosen.runtime.log_format, crate::config::LogFormat::Json);
}

#[test]
fn tls_and_caller_rules_are_enforced_at_load() {
    const OPS: &str = "[ops]\nlisten = \"127.0.0.1:3\"\n";
    let load = |public: &str, internal: &str, rest: &str| {
        let text = format!(
            "[public]\nlisten = \"127.0.0.1:1\"\n{public}[internal]\nlisten = \"127.0.0.1:2\"\n{internal}{rest}\
             [[cluster]]\nid = \"c1\"\ntoken = \"t1\"\n"
        );
        ServerConfig::from_toml(Path::new("s.toml"), &text, Check::Syntax)
            .map_err(|e| e.to_string())
    };
    let pair = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
    let mtls = format!("{pair}client_ca = \"ca.pem\"\n");
    let error =
        |public: &str, internal: &str, rest: &str| load(public, internal, rest).unwrap_err();
    assert!(error("tls_cert = \"c.pem\"\n", "", "").contains("go together"));
    assert!(error("client_ca = \"ca.pem\"\n", "", "").contains("needs tls_cert"));
    assert!(error(&format!("{pair}bind_client_cert = true\n"), "", "").contains("needs client_ca"));
    assert!(
        error("", &format!("{mtls}bind_client_cert = true\n"), "").contains("only for [public]")
    );
    assert!(
        error("", "", &format!("{OPS}tls_cert = \"c\"\ntls_key = \"k\"\n"))
            .contains("[ops] is plain")
    );
    let config = load(&format!("{mtls}bind_client_cert = true\n"), pair, "").unwrap();
    assert!(config.bind_client_cert);
    assert_eq!(config.public_tls.unwrap().cert, Path::new("c.pem"));
    assert!(config.internal_tls.unwrap().client_ca.is_none());

    let caller = |body: &str| format!("[[caller]]\nname = \"argocd\"\n{body}");
    assert!(error("", "", &caller("clusters = [\"c1\"]\n")).contains("needs a token"));
    assert!(error("", "", &caller("token = \"x\"\nclusters = []\n")).contains("is empty"));
    assert!(
        error("", "", &caller("token = \"x\"\nclusters = [\"c9\"]\n"))
            .contains("not a [[cluster]]")
    );
    assert!(error(
        "",
        "",
        &caller("token = \"x\"\nclusters = [\"*\", \"c1\"]\n")
    )
    .contains("stands alone"));
    assert!(error("", "", &caller("token = \"t1\"\nclusters = [\"*\"]\n")).contains("same token"));
    assert!(
        error("", "", &caller("cert_name = \"a\"\nclusters = [\"*\"]\n"))
            .contains("needs [internal] client_ca")
    );
    assert!(error(
        "",
        &mtls,
        &caller("cert_name = \"bad_name\"\nclusters = [\"*\"]\n")
    )
    .contains("not a DNS name"));
    let config = load(
        "",
        &mtls,
        &caller("cert_name = \"argocd\"\nclusters = [\"*\"]\n"),
    )
    .unwrap();
    assert!(config.callers[0].allows("anything"));
    // Secrets never appear in errors or Debug output.
    let config = load(
        "",
        "",
        &caller("token = \"s3cret-caller\"\nclusters = [\"c1\"]\n"),
    )
    .unwrap();
    assert!(!format!("{config:?}").contains("s3cret-caller"));
}

#[test]
fn parse_errors_name_the_place_but_never_quote_the_line() {
    let text = "[public]\nlisten = \"127.0.0.1:1\"\n[internal]\nlisten = \"127.0.0.1:2\"\n\
                [[cluster]]\nid = \"c1\"\ntokne = \"s3cret-token-value\"\n";
    let error = ServerConfig::from_toml(Path::new("s.toml"), text, Check::Syntax)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("s.toml: line 7, column 1: unknown field `tokne`"),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
}

/// The reload watch starts from what the load read (the startup gap: a file changed between
/// the load and the watch's first look would otherwise never reload): each file read, and the
/// digest of exactly what was read.
#[test]
fn a_load_records_what_it_read_of_each_file() {
    let dir = std::env::temp_dir().join(format!("config-seen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.token"), "tok-a\n").unwrap();
    let text = with_clusters("[[cluster]]\nid = \"a\"\ntoken_file = \"a.token\"\n");
    std::fs::write(dir.join("server.toml"), &text).unwrap();
    let mut config = ServerConfig::load(&dir.join("server.toml"), Check::Files).unwrap();
    config.seen.sort_by(|a, b| a.path.cmp(&b.path));
    let seen: Vec<_> = config
        .seen
        .iter()
        .map(|seen| (seen.path.clone(), seen.digest))
        .collect();
    assert_eq!(
        seen,
        [
            (dir.join("a.token"), crate::file_version::digest(b"tok-a\n")),
            (
                dir.join("server.toml"),
                crate::file_version::digest(text.as_bytes())
            ),
        ]
    );
    assert!(!format!("{config:?}").contains("tok-a"));
    let unread = ServerConfig::from_toml(&dir.join("server.toml"), &text, Check::Syntax).unwrap();
    assert!(
        unread.seen.is_empty(),
        "a syntax-only check reads no token file"
    );

    std::fs::write(dir.join("proxy.url"), "http://proxy.example:3128\n").unwrap();
    let text =
        "server_url = \"wss://h/c\"\ntoken_file = \"a.token\"\nproxy_url_file = \"proxy.url\"\n\
                [upstream]\nplaintext = true\ninject_token = false\n";
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let config = AgentConfig::load(&dir.join("agent.toml"), Check::Files).unwrap();
    let mut seen: Vec<_> = config.seen.iter().map(|seen| seen.path.clone()).collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            dir.join("a.token"),
            dir.join("agent.toml"),
            dir.join("proxy.url")
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_proxy_url_can_come_from_a_watched_file() {
    let dir = std::env::temp_dir().join(format!("proxy-url-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("agent.token"), "t").unwrap();
    std::fs::write(
        dir.join("proxy.url"),
        "http://agent:s3cret@proxy.example:3128\n",
    )
    .unwrap();
    let path = dir.join("agent.toml");
    let base = "server_url = \"wss://h/c\"\ntoken_file = \"agent.token\"\n[upstream]\nplaintext = true\ninject_token = false\n";
    let with = |extra: &str| {
        let text = format!("{extra}{base}");
        AgentConfig::from_toml(&path, &text, Check::Files).map_err(|e| e.to_string())
    };
    let config = with("proxy_url_file = \"proxy.url\"\n").unwrap();
    assert_eq!(
        config.proxy_url.as_ref().unwrap().expose(),
        "http://agent:s3cret@proxy.example:3128"
    );
    assert!(config.watched.contains(&dir.join("proxy.url")));
    assert!(!format!("{config:?}").contains("s3cret"));
    let error = with("proxy_url_file = \"proxy.url\"\nproxy_url = \"http://p:1\"\n").unwrap_err();
    assert!(error.contains("only one of proxy_url"), "{error}");
    std::fs::write(dir.join("proxy.url"), "socks5://agent:s3cret@p:1").unwrap();
    let error = with("proxy_url_file = \"proxy.url\"\n").unwrap_err();
    assert!(!error.contains("s3cret"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
