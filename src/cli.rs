//! What both binaries do around their own work: the config-loading rules and exit codes, and
//! the runtime with logging and signal handling. Keeps `src/bin/` thin.

use std::future::Future;
use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::config::{Check, ConfigError, RuntimeConfig};
use crate::reload::{Seen, Watch};

/// EX_USAGE: the command line or the config is unusable.
pub const EX_USAGE: i32 = 64;

/// Exit code when the program cannot start (a listener cannot bind, a CA cannot load).
pub const EX_START: i32 = 1;

/// The check level for the flags, or exit: `--syntax-only` skips the token files, so it only
/// goes with `--check-config` (serving from such a config would be unsafe).
pub fn check_level(program: &str, check_config: bool, syntax_only: bool) -> Check {
    match (check_config, syntax_only) {
        (_, false) => Check::Files,
        (true, true) => Check::Syntax,
        (false, true) => {
            eprintln!("{program}: --syntax-only only goes with --check-config");
            std::process::exit(EX_USAGE);
        }
    }
}

/// The loaded config, or a one-line message and exit 64.
pub fn config_or_exit<T>(program: &str, loaded: Result<T, ConfigError>) -> T {
    loaded.unwrap_or_else(|error| {
        eprintln!("{program}: {error}");
        std::process::exit(EX_USAGE);
    })
}

/// What a binary's `main` gets from [`run`].
pub struct Started {
    /// Fired by SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// SIGHUP and changes of the watched files, for [`crate::reload::serve`].
    pub reloads: Watch,
}

/// Starts logging (printing the config's warnings), raises the fd limit, runs `main` on a
/// current-thread runtime with a token that SIGTERM/SIGINT fires and a [`Watch`] on SIGHUP and
/// `watched` (so a SIGHUP from here on reloads instead of killing; starting from what the
/// config load `seen` of them), and exits with the code `main` returns.
pub fn run<F, M>(
    runtime: &RuntimeConfig,
    warnings: &[String],
    watched: Vec<PathBuf>,
    seen: Vec<Seen>,
    main: M,
) -> !
where
    M: FnOnce(Started) -> F,
    F: Future<Output = i32>,
{
    crate::telemetry::init(runtime);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    match crate::host::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "file-descriptor soft limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the file-descriptor soft limit"),
    }
    let poll = runtime.config_poll_interval;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    if let Some(nap) = runtime.idle_nap {
        builder.on_thread_park(crate::nap::before_sleep(nap));
    }
    let executor = builder.enable_all().build().expect("tokio runtime");
    let code = executor.block_on(async {
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown::on_signal().await;
            crate::systemd::stopping();
            trigger.cancel();
        });
        if let Some(interval) = crate::systemd::watchdog_interval() {
            tokio::spawn(crate::systemd::watchdog(interval));
        }
        let reloads = match Watch::new(watched, seen, poll) {
            Ok(reloads) => reloads,
            Err(error) => {
                eprintln!("cannot handle SIGHUP: {error}");
                return EX_START;
            }
        };
        main(Started { shutdown, reloads }).await
    });
    // The last lines say why the process stops; a stuck stderr does not hold the exit long.
    crate::telemetry::flush(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// `gen-token`: a new agent token (256 random bits, hex) and the `token_sha256` the server's
/// `[[cluster]]` (or `[[caller]]`) entry needs, as TOML lines to paste.
pub fn generate_token() -> Result<String, std::io::Error> {
    let bytes = crate::host::random_bytes(32)?;
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(token_lines(&token))
}

/// `hash-token`: the `token_sha256` of a token read from stdin (trimmed, as token files are).
pub fn hash_token(input: &str) -> Result<String, String> {
    let token = input.trim();
    if token.is_empty() {
        return Err("no token on stdin".into());
    }
    Ok(format!(
        "token_sha256 = \"{}\"\n",
        crate::config::TokenHash::of(token.as_bytes()).to_hex()
    ))
}

fn token_lines(token: &str) -> String {
    format!(
        "# The agent's token: its token_file (e.g. /etc/argocd-proxy/agent.token, mode 0600), or the\n\
         # agent chart's Secret. Shown once; only the hash below belongs on the server.\n\
         token = \"{token}\"\n\
         # The server's [[cluster]] entry for this agent:\n\
         token_sha256 = \"{}\"\n",
        crate::config::TokenHash::of(token.as_bytes()).to_hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_fresh_and_hash_to_what_the_server_expects() {
        let (a, b) = (generate_token().unwrap(), generate_token().unwrap());
        assert_ne!(a, b);
        let token = a
            .lines()
            .find_map(|line| line.strip_prefix("token = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap();
        assert_eq!(token.len(), 64);
        let hash = hash_token(&format!("{token}\n")).unwrap();
        assert!(a.contains(hash.trim_end()), "{a}\n{hash}");
        assert!(hash_token("  \n").is_err());
    }
}
