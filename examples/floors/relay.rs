//! S2's floor: a relay process that copies every accepted connection to one address, both ways,
//! without looking at a byte. Two of them in a chain (client → relay → relay → nginx) are what
//! any design with two relaying processes (the server and the agent) costs per request at
//! least, before HTTP, the mux and the WebSocket: four loopback connections and two user-space
//! copies each way where the direct path has one connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// Serves until `lifetime` is over (a floor stops by itself), then prints what it relayed.
/// Prints `listening ADDR` first, for the harness to find.
pub fn relay(to: SocketAddr, lifetime: Duration) -> Result<String, Error> {
    // One single-threaded runtime, as each of the two binaries has.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        let mut accepted = 0u64;
        let serve = serve(&listener, to, &mut accepted);
        if let Ok(result) = tokio::time::timeout(lifetime, serve).await {
            result?;
        }
        Ok(format!(
            r#"{{"floor":"relay","accepted":{accepted},"lifetime_s":{}}}"#,
            lifetime.as_secs_f64()
        ))
    })
}

async fn serve(listener: &TcpListener, to: SocketAddr, accepted: &mut u64) -> Result<(), Error> {
    loop {
        let (mut from, _) = listener.accept().await?;
        *accepted += 1;
        tokio::spawn(async move {
            let mut to = match TcpStream::connect(to).await {
                Ok(to) => to,
                Err(error) => return eprintln!("relay: connect {to}: {error}"),
            };
            // As the binaries do: small answers must not wait for Nagle.
            let _ = from.set_nodelay(true);
            let _ = to.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut from, &mut to).await;
        });
    }
}
