//! `argocd-proxy-server`: arguments → config → bind every listener (failing before serving if
//! one cannot bind) → serve until SIGTERM/SIGINT → exit code.

use std::path::PathBuf;

use argh::FromArgs;
use argocd_proxy::cli;
use argocd_proxy::config::{ServerConfig, DEFAULT_SERVER_CONFIG};
use argocd_proxy::reload;
use argocd_proxy::server::Server;

/// Accepts argocd-proxy agents and routes Argo CD's /tunnel/<cluster-id>/ requests to them.
#[derive(FromArgs)]
struct Args {
    /// config file (default /etc/argocd-proxy/server.toml)
    #[argh(option, default = "PathBuf::from(DEFAULT_SERVER_CONFIG)")]
    config: PathBuf,
    /// validate the config (and the files it names) and exit
    #[argh(switch)]
    check_config: bool,
    /// with --check-config: do not open the files the config names
    #[argh(switch)]
    syntax_only: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    GenToken(GenToken),
    HashToken(HashToken),
}

/// Generate a new agent token and print it with the token_sha256 for server.toml.
#[derive(FromArgs)]
#[argh(subcommand, name = "gen-token")]
struct GenToken {}

/// Read a token on stdin and print its token_sha256 for server.toml.
#[derive(FromArgs)]
#[argh(subcommand, name = "hash-token")]
struct HashToken {}

const PROGRAM: &str = "argocd-proxy-server";

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        return println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
    }
    match args.command {
        Some(Command::GenToken(_)) => match cli::generate_token() {
            Ok(lines) => return print!("{lines}"),
            Err(error) => {
                eprintln!("{PROGRAM}: cannot read random bytes: {error}");
                std::process::exit(cli::EX_START);
            }
        },
        Some(Command::HashToken(_)) => {
            let input = std::io::read_to_string(std::io::stdin()).unwrap_or_default();
            match cli::hash_token(&input) {
                Ok(line) => return print!("{line}"),
                Err(error) => {
                    eprintln!("{PROGRAM}: {error}");
                    std::process::exit(cli::EX_USAGE);
                }
            }
        }
        None => {}
    }
    let check = cli::check_level(PROGRAM, args.check_config, args.syntax_only);
    let mut config = cli::config_or_exit(PROGRAM, ServerConfig::load(&args.config, check));
    if args.check_config {
        let clusters = config.clusters.len();
        return println!("{}: ok ({clusters} clusters)", args.config.display());
    }
    let (runtime, warnings, watched, seen) = (
        config.runtime.clone(),
        config.warnings.clone(),
        config.watched.clone(),
        std::mem::take(&mut config.seen),
    );
    cli::run(&runtime, &warnings, watched, seen, |started| async move {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("{PROGRAM}: {error}");
                return cli::EX_START;
            }
        };
        let addrs = server.addrs();
        tracing::info!(public = %addrs.public, internal = %addrs.internal, ops = ?addrs.ops, "listening");
        // Ready once every listener is bound: readiness never waits for agents.
        let ops = addrs
            .ops
            .map_or_else(String::new, |ops| format!(", ops {ops}"))
            + &addrs
                .extensions
                .map_or_else(String::new, |addr| format!(", extensions {addr}"));
        argocd_proxy::systemd::ready(&format!(
            "listening: public {}, internal {}{ops}",
            addrs.public, addrs.internal
        ));
        let reloader = server.reloader();
        tokio::spawn(reload::serve(
            started.reloads,
            move || reloader.reload(),
            started.shutdown.clone(),
        ));
        server.run(started.shutdown).await;
        0
    })
}
