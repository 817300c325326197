//! Runs the tunnel core end to end on one machine: a server and an agent negotiate over a real
//! WebSocket on loopback, then the server pushes concurrent echo streams and one bulk download
//! through the mux and prints what it measured. Stand-in for the real server/agent binaries
//! until they land (issue 3).
//!
//! `cargo run --release --example loopback_tunnel [-- --v1]`

use std::sync::Arc;
use std::time::Instant;

use argocd_proxy::mux::negotiate::{self, ServerIdentity};
use argocd_proxy::mux::{Limits, MemoryBudget, Role, Session};
use argocd_proxy::transport::websocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BULK_BYTES: usize = 512 * 1024 * 1024;
const ECHO_STREAMS: usize = 1000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let offer_v2 = !std::env::args().any(|arg| arg == "--v1");
    let mut limits = Limits::default();
    if let Ok(window) = std::env::var("STREAM_WINDOW_KIB") {
        limits.stream_window = window.parse::<u32>()? * 1024;
        limits.session_buffer = limits.max_streams * limits.stream_window as usize;
    }
    let budget = Arc::new(MemoryBudget::default_process());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    let agent_limits = limits.clone();
    let agent_budget = budget.clone();
    let agent = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await?;
        let url = format!("ws://{addr}/connect");
        let connected = websocket::connect(tcp, &url, Some("demo-token"), offer_v2).await?;
        let mut transport = connected.transport;
        let negotiated = negotiate::agent(
            &mut transport,
            connected.offered,
            connected.echoed,
            &agent_limits,
        )
        .await?;
        let config = negotiated.into_config(Role::Agent, agent_limits, agent_budget);
        let mut session = Session::start(transport, config);
        while let Some(incoming) = session.incoming.accept().await {
            let bulk = incoming.target() == b"bulk";
            let mut stream = incoming.accept();
            tokio::spawn(async move {
                if bulk {
                    let chunk = vec![0x5a; 256 * 1024];
                    for _ in 0..BULK_BYTES / chunk.len() {
                        stream.write_all(&chunk).await?;
                    }
                } else {
                    // Length-prefixed, because v1 has no half-close to mark the request's end.
                    let len = stream.read_u32().await? as usize;
                    let mut request = vec![0; len];
                    stream.read_exact(&mut request).await?;
                    stream.write_all(&request).await?;
                }
                stream.shutdown().await
            });
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    let (tcp, _) = listener.accept().await?;
    let accepted = websocket::accept(tcp, true, |_| Ok(())).await?;
    let mut transport = accepted.transport;
    let identity = ServerIdentity {
        server_id: "demo".into(),
        replica_count: 1,
    };
    let negotiated = negotiate::server(&mut transport, accepted.echoed, &limits, &identity).await?;
    println!(
        "tunnel up on {addr}: protocol {}",
        negotiated.version.as_str()
    );
    let session = Session::start(
        transport,
        negotiated.into_config(Role::Server, limits, budget),
    );

    let started = Instant::now();
    let mut echoes = Vec::new();
    for index in 0..ECHO_STREAMS {
        let handle = session.handle.clone();
        echoes.push(tokio::spawn(async move {
            let mut stream = handle.open(b"echo").await?;
            let body = format!("request {index}").into_bytes();
            stream.write_u32(body.len() as u32).await?;
            stream.write_all(&body).await?;
            stream.shutdown().await?;
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await?;
            assert_eq!(back, body, "echo differs");
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for echo in echoes {
        echo.await?.map_err(|error| error.to_string())?;
    }
    println!(
        "{ECHO_STREAMS} concurrent echo streams: {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let mut bulk = session.handle.open(b"bulk").await?;
    bulk.shutdown().await?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let read = bulk.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        total += read;
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(total, BULK_BYTES, "bulk transfer short");
    println!(
        "bulk: {} MiB in {seconds:.2} s = {:.0} MiB/s",
        total >> 20,
        (total >> 20) as f64 / seconds
    );
    println!("stats: {:?}", session.handle.stats());
    session.handle.close();
    session.handle.closed().await;
    drop(agent);
    Ok(())
}
