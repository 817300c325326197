//! `argocd-proxy-server`: accepts agents' tunnels and routes Argo CD's requests through them.
//! The tunnel core (protocol, mux, WebSocket transport) is in the library; the HTTP server that
//! uses it is being built (issue 3), so for now this binary only reports its version.

use argh::FromArgs;

/// Accepts argocd-proxy agents and routes Argo CD's /tunnel/<cluster-id>/ requests to them.
#[derive(FromArgs)]
struct Args {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

/// EX_USAGE: the command line or config is unusable.
const EX_USAGE: i32 = 64;

fn main() {
    let args: Args = argh::from_env();
    if args.version {
        println!("argocd-proxy-server {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("argocd-proxy-server: serving is not implemented yet (tunnel core only); see README");
    std::process::exit(EX_USAGE);
}
