//! Config rules, one inline TOML per rule, plus the shipped examples.

use std::path::Path;

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
    assert_eq!(config.clusters[0].token, TokenHash::of(b"secret"));
    assert_eq!(config.clusters[0].target, DEFAULT_TARGET);
    assert!(config.warnings.is_empty());
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
    assert_eq!(config.clusters[0].token, TokenHash::of(b"tok-a"));
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
