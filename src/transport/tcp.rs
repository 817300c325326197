//! TCP connects by name, for every dial the agent makes: its server, its egress proxy, its
//! upstream (the own HTTP/1.1 client's connections); and the socket option both ends of a
//! tunnel set ([`hold_unsent_in_process`]).
//!
//! A name can resolve to several addresses: a load balancer's address in each zone, IPv6 and
//! IPv4. `TcpStream::connect` tries them in turn, but gives each as long as it takes, so under
//! one outer timeout a first address that never answers (a zone that is down, an IPv6 route to
//! nowhere) used the whole budget and the next was never tried; the agent then redialled the
//! same dead address, in the resolver's same order, after every backoff. Here each address gets
//! an equal share of what is left of the budget (hyper's connector, which the agent's pooled
//! client uses, splits its timeout similarly), and an address that fails at once (refused,
//! unreachable) leaves its share to the others.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connects to `address` (`host:port`) within `budget`: resolves it, then tries each address
/// as [`connect_in_turn`] does. Nagle is off on the result (every caller wants it off; a
/// socket that refuses the option is still used, as before).
pub async fn connect(address: &str, budget: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + budget;
    let resolved = tokio::time::timeout_at(deadline, tokio::net::lookup_host(address))
        .await
        .map_err(|_| timed_out(format!("resolving {address} took over {budget:?}")))??;
    let addresses: Vec<SocketAddr> = resolved.collect();
    let tcp = connect_in_turn(&addresses, deadline).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Connects to the first of `addresses`, in order, that answers before `deadline`; each gets
/// an equal share of the time left when its turn comes. The error is the last address's, and
/// says how many were tried.
pub async fn connect_in_turn(addresses: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = None;
    for (tried, address) in addresses.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // A connect on loopback can complete in its first poll, even under a zero timeout.
            last = Some((address, timed_out("no time left to try it".into())));
            break;
        }
        let share = left / u32::try_from(addresses.len() - tried).unwrap_or(u32::MAX);
        match tokio::time::timeout(share, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(error)) => last = Some((address, error)),
            Err(_) => {
                let error = timed_out(format!("no answer within {} ms", share.as_millis()));
                last = Some((address, error));
            }
        }
    }
    let Some((address, error)) = last else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no address",
        ));
    };
    if addresses.len() == 1 {
        return Err(error);
    }
    let text = format!(
        "{} addresses tried, the last ({address}): {error}",
        addresses.len()
    );
    Err(io::Error::new(error.kind(), text))
}

/// Unsent bytes a tunnel socket holds before a write returns `WouldBlock` (`TCP_NOTSENT_LOWAT`).
pub const TUNNEL_UNSENT_LOWAT: u32 = 128 * 1024;

/// Keeps a tunnel's queued bytes in the process, where the mux serves each stream's frames in
/// turn, rather than in the socket, where they are one byte stream: a small answer written
/// behind a bulk download otherwise waited for every byte the kernel had taken before it, up to
/// the send buffer it autotunes to megabytes. Only bytes not yet sent are limited, so a WAN's
/// bytes in flight (its bandwidth-delay product) are not; the kernel may take one more
/// segment's worth past the mark. S4 in docs/benchmarks.md: the answer's return path p99
/// 7.9 → 4.0 ms (means of four pairs); a bulk stream under small requests gives them some of
/// its rate (587 → 518 MB/s), a bulk stream alone (S1, S10) none.
pub fn hold_unsent_in_process(tcp: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(tcp).set_tcp_notsent_lowat(TUNNEL_UNSENT_LOWAT)
}

fn timed_out(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, text)
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
