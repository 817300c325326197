//! A userspace WAN between agent and server (the kernel here has no netem): a TCP relay that
//! delays every chunk by a fixed one-way delay, keeps order, and counts **turns** — a burst of
//! bytes in one direction after bytes went the other way. A request that costs one round trip
//! through the tunnel makes one turn each way; one that waits for an acknowledgement first
//! (v1's Connect → Connected) makes two.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Which way bytes cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Agent → server.
    Up,
    /// Server → agent.
    Down,
}

/// Turns counted so far, over every connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Turns {
    /// Bursts agent → server.
    pub up: u64,
    /// Bursts server → agent.
    pub down: u64,
}

#[derive(Default)]
struct Log {
    last: Option<Way>,
    turns: Turns,
    bytes: u64,
    /// Bytes read from one side and not yet written to the other, per way (Up, Down).
    in_flight: [u64; 2],
    max_in_flight: [u64; 2],
}

/// The running relay.
pub struct Wan {
    /// Where agents dial instead of the server.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
}

impl Wan {
    /// Relays every connection to `upstream` with `delay` each way.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Wan {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let for_accept = log.clone();
        tokio::spawn(async move {
            while let Ok((agent, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (agent.set_nodelay(true), server.set_nodelay(true));
                let (agent_read, agent_write) = agent.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(
                    agent_read,
                    server_write,
                    Way::Up,
                    delay,
                    for_accept.clone(),
                ));
                tokio::spawn(pipe(
                    server_read,
                    agent_write,
                    Way::Down,
                    delay,
                    for_accept.clone(),
                ));
            }
        });
        Wan { addr, log }
    }

    /// The turns so far.
    pub fn turns(&self) -> Turns {
        self.log.lock().unwrap().turns
    }

    /// Forgets the last direction, so the next burst counts as a turn whichever way it goes
    /// (call it once the line is quiet).
    pub fn new_exchange(&self) {
        self.log.lock().unwrap().last = None;
    }

    /// The most bytes that were ever in the relay at once going `way`: with no bandwidth
    /// limit, that is what the sender had in flight over the delay.
    pub fn max_in_flight(&self, way: Way) -> u64 {
        self.log.lock().unwrap().max_in_flight[way as usize]
    }

    /// Bytes relayed so far, both ways.
    pub fn bytes(&self) -> u64 {
        self.log.lock().unwrap().bytes
    }
}

/// One direction: each chunk is stamped on arrival and written `delay` later, in order.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    way: Way,
    delay: Duration,
    log: Arc<Mutex<Log>>,
) {
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer_log = log.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = chunks.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            writer_log.lock().unwrap().in_flight[way as usize] -= chunk.len() as u64;
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let len = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(len) => len,
        };
        {
            let mut log = log.lock().unwrap();
            if log.last != Some(way) {
                log.last = Some(way);
                match way {
                    Way::Up => log.turns.up += 1,
                    Way::Down => log.turns.down += 1,
                }
            }
            log.bytes += len as u64;
            let slot = way as usize;
            log.in_flight[slot] += len as u64;
            log.max_in_flight[slot] = log.max_in_flight[slot].max(log.in_flight[slot]);
        }
        if chunks_tx
            .send((Instant::now() + delay, buffer[..len].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(chunks_tx);
    let _ = writer.await;
}
