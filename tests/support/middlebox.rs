//! TCP middleboxes between agent and server: one that strips the negotiation echo from the
//! 101 (as an overly strict proxy might), and one that can cut both connections at once.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Forwards one connection from `listener` to `upstream`, removing the
/// `X-Argocd-Proxy-Protocol` header from the server's response head.
pub async fn strip_echo(listener: TcpListener, upstream: SocketAddr) {
    let (mut client, _) = listener.accept().await.expect("accept");
    let mut server = TcpStream::connect(upstream)
        .await
        .expect("connect upstream");
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let upward = tokio::io::copy(&mut client_read, &mut server_write);
    let downward = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if server_read.read(&mut byte).await? == 0 {
                return Ok(0);
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let kept: Vec<&str> = head
            .split("\r\n")
            .filter(|line| {
                !line
                    .to_ascii_lowercase()
                    .starts_with("x-argocd-proxy-protocol:")
            })
            .collect();
        client_write.write_all(kept.join("\r\n").as_bytes()).await?;
        tokio::io::copy(&mut server_read, &mut client_write).await
    };
    let _ = tokio::join!(upward, downward);
}

/// Forwards one connection; firing the returned sender drops both sockets (no close frames).
pub async fn cuttable(listener: TcpListener, upstream: SocketAddr) -> oneshot::Sender<()> {
    let (cut_tx, cut_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.expect("accept");
        let mut server = TcpStream::connect(upstream)
            .await
            .expect("connect upstream");
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cut_rx => {}
        }
    });
    cut_tx
}

/// Forwards every connection from `listener` to `upstream` until `cut` fires, which drops all
/// current connections at once (no close frames); new connections are served afterwards.
pub fn cut_all(listener: TcpListener, upstream: SocketAddr) -> tokio::sync::watch::Sender<u32> {
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut cut = cut_rx.clone();
            cut.borrow_and_update();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    cut_tx
}
