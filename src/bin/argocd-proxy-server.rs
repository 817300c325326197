//! `argocd-proxy-server`: parses arguments, loads the config, binds every listener (failing
//! before serving if one cannot bind), serves until SIGTERM/SIGINT, and maps the outcome to an
//! exit code.

use std::path::PathBuf;

use argh::FromArgs;
use argocd_proxy::config::{Check, ServerConfig, DEFAULT_SERVER_CONFIG};
use argocd_proxy::server::Server;
use tokio_util::sync::CancellationToken;

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
}

/// EX_USAGE: the command line or the config is unusable.
const EX_USAGE: i32 = 64;

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        println!("argocd-proxy-server {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if args.syntax_only && !args.check_config {
        // A syntax-only load skips the token files: serving from it would be unsafe.
        eprintln!("argocd-proxy-server: --syntax-only only goes with --check-config");
        std::process::exit(EX_USAGE);
    }
    let check = if args.syntax_only {
        Check::Syntax
    } else {
        Check::Files
    };
    let config = match ServerConfig::load(&args.config, check) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("argocd-proxy-server: {error}");
            std::process::exit(EX_USAGE);
        }
    };
    if args.check_config {
        println!(
            "{}: ok ({} clusters)",
            args.config.display(),
            config.clusters.len()
        );
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
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("argocd-proxy-server: {error}");
                return 1;
            }
        };
        let addrs = server.addrs();
        tracing::info!(public = %addrs.public, internal = %addrs.internal, ops = ?addrs.ops, "listening");
        let shutdown = CancellationToken::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            argocd_proxy::shutdown::on_signal().await;
            trigger.cancel();
        });
        server.run(shutdown).await;
        0
    });
    std::process::exit(code);
}
