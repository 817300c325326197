//! `argocd-proxy-agent`: parses arguments, loads the config, keeps the tunnel to the server up
//! and forwards what comes through it to the configured Kubernetes API until SIGTERM/SIGINT.

use std::path::PathBuf;

use argh::FromArgs;
use argocd_proxy::agent::Agent;
use argocd_proxy::config::{AgentConfig, Check, DEFAULT_AGENT_CONFIG};
use tokio_util::sync::CancellationToken;

/// Dials out to argocd-proxy-server and forwards tunnelled requests to its Kubernetes API.
#[derive(FromArgs)]
struct Args {
    /// config file (default /etc/argocd-proxy/agent.toml)
    #[argh(option, default = "PathBuf::from(DEFAULT_AGENT_CONFIG)")]
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
}

/// EX_USAGE: the command line or the config is unusable.
const EX_USAGE: i32 = 64;

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        println!("argocd-proxy-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if args.syntax_only && !args.check_config {
        // A syntax-only load skips the token files: serving from it would be unsafe.
        eprintln!("argocd-proxy-agent: --syntax-only only goes with --check-config");
        std::process::exit(EX_USAGE);
    }
    let check = if args.syntax_only {
        Check::Syntax
    } else {
        Check::Files
    };
    let config = match AgentConfig::load(&args.config, check) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("argocd-proxy-agent: {error}");
            std::process::exit(EX_USAGE);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return;
    }
    argocd_proxy::telemetry::init();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        let agent = match Agent::bind(config).await {
            Ok(agent) => agent,
            Err(error) => {
                eprintln!("argocd-proxy-agent: {error}");
                return 1;
            }
        };
        tracing::info!(health = ?agent.health_addr(), "starting");
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            argocd_proxy::shutdown::on_signal().await;
            trigger.cancel();
        });
        agent.run(shutdown).await;
        0
    });
    std::process::exit(code);
}
