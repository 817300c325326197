//! `argocd-proxy-agent`: arguments → config → keep the tunnel to the server up and forward
//! what comes through it to the configured Kubernetes API until SIGTERM/SIGINT → exit code.

use std::path::PathBuf;

use argh::FromArgs;
use argocd_proxy::agent::Agent;
use argocd_proxy::cli;
use argocd_proxy::config::{AgentConfig, DEFAULT_AGENT_CONFIG};
use argocd_proxy::reload;

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

const PROGRAM: &str = "argocd-proxy-agent";

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        return println!("{PROGRAM} {}", env!("CARGO_PKG_VERSION"));
    }
    let check = cli::check_level(PROGRAM, args.check_config, args.syntax_only);
    let mut config = cli::config_or_exit(PROGRAM, AgentConfig::load(&args.config, check));
    if args.check_config {
        return println!("{}: ok", args.config.display());
    }
    let (runtime, warnings, watched, seen) = (
        config.runtime.clone(),
        config.warnings.clone(),
        config.watched.clone(),
        std::mem::take(&mut config.seen),
    );
    cli::run(&runtime, &warnings, watched, seen, |started| async move {
        let agent = match Agent::bind(config).await {
            Ok(agent) => agent,
            Err(error) => {
                eprintln!("{PROGRAM}: {error}");
                return cli::EX_START;
            }
        };
        tracing::info!(health = ?agent.health_addr(), "starting");
        let reloader = agent.reloader();
        tokio::spawn(reload::serve(
            started.reloads,
            move || reloader.reload(),
            started.shutdown.clone(),
        ));
        agent.run(started.shutdown).await;
        0
    })
}
