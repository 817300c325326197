//! `argocd-proxy-agent`: dials out to the server and forwards tunnelled requests to its Kubernetes API.
//! The tunnel core (protocol, mux, WebSocket transport) is in the library; the agent that
//! uses it is being built (issue 3), so for now this binary only reports its version.

use argh::FromArgs;

/// Dials out to argocd-proxy-server and forwards tunnelled requests to its Kubernetes API.
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
        println!("argocd-proxy-agent {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    eprintln!("argocd-proxy-agent: serving is not implemented yet (tunnel core only); see README");
    std::process::exit(EX_USAGE);
}
