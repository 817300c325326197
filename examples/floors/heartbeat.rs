//! `heartbeat`: S7's floor. A server thread (a single-threaded runtime, as the server is) holds
//! SESSIONS loopback TCP connections and answers each 13-byte message with one of the same
//! size, the least a tunnel Ping costs its receiver; a client thread pings on every connection
//! every 10 s, each connection at its own offset, as agents on other machines ping at
//! independent times. Prints the server thread's CPU (`CLOCK_THREAD_CPUTIME_ID`) over a
//! window: what answering one Ping per session per interval costs with no WebSocket, mux or
//! TLS on top.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Error, CONNECTS_IN_FLIGHT, DEADLINE};

/// Our agent's default heartbeat interval.
const INTERVAL: Duration = Duration::from_secs(10);
/// A tunnel Ping with an 8-byte payload: type, stream id, payload.
const PING: usize = 13;

pub fn heartbeat(sessions: usize, window: Duration) -> Result<String, Error> {
    raise_nofile();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (sample_tx, mut sample_rx) =
        tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<Duration>>();
    std::thread::spawn(move || -> Result<(), Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addr_tx.send(listener.local_addr()?)?;
            tokio::spawn(async move {
                while let Some(reply) = sample_rx.recv().await {
                    let _ = reply.send(thread_cpu());
                }
            });
            loop {
                let (mut socket, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        })
    });
    let addr = addr_rx.recv_timeout(DEADLINE)?;
    let up = Arc::new(AtomicUsize::new(0));
    let exchanges = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let (client_up, client_exchanges, client_failed) =
        (up.clone(), exchanges.clone(), failed.clone());
    std::thread::spawn(move || -> Result<(), Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
            for i in 0..sessions {
                let (slots, up, exchanges, failed) = (
                    slots.clone(),
                    client_up.clone(),
                    client_exchanges.clone(),
                    client_failed.clone(),
                );
                // Offsets spread evenly over the interval: independent agents.
                let offset = INTERVAL.mul_f64(i as f64 / sessions as f64);
                tokio::spawn(async move {
                    let permit = slots.acquire_owned().await.expect("open");
                    let mut socket = match TcpStream::connect(addr).await {
                        Ok(socket) => socket,
                        Err(error) => {
                            let mut failed = failed.lock().expect("not poisoned");
                            failed.get_or_insert_with(|| format!("connect {i}: {error}"));
                            return;
                        }
                    };
                    drop(permit);
                    up.fetch_add(1, Ordering::Relaxed);
                    let mut next = tokio::time::Instant::now() + offset;
                    let mut buf = [7u8; PING];
                    loop {
                        tokio::time::sleep_until(next).await;
                        next += INTERVAL;
                        if socket.write_all(&buf).await.is_err()
                            || socket.read_exact(&mut buf).await.is_err()
                        {
                            return;
                        }
                        exchanges.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            std::future::pending::<()>().await;
        });
        Ok(())
    });
    let started = Instant::now();
    while up.load(Ordering::Relaxed) < sessions {
        if let Some(error) = failed.lock().expect("not poisoned").clone() {
            return Err(error.into());
        }
        if started.elapsed() > DEADLINE {
            return Err(format!(
                "{} of {sessions} connections up",
                up.load(Ordering::Relaxed)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // One full interval first, so every connection has pinged and the window is steady state.
    std::thread::sleep(INTERVAL);
    let sample = || -> Result<Duration, Error> {
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        sample_tx.send(reply_tx).map_err(|_| "server thread gone")?;
        Ok(reply_rx.recv_timeout(DEADLINE)?)
    };
    let (cpu0, exchanges0, t0) = (sample()?, exchanges.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    let (cpu1, exchanges1, wall) = (sample()?, exchanges.load(Ordering::Relaxed), t0.elapsed());
    let per_second = (exchanges1 - exchanges0) as f64 / wall.as_secs_f64();
    let percent = 100.0 * (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64();
    let micros = (cpu1 - cpu0).as_secs_f64() * 1e6 / (exchanges1 - exchanges0).max(1) as f64;
    Ok(format!(
        "{{\"floor\":\"heartbeat\",\"sessions\":{sessions},\"window_s\":{:.1},\"exchanges_per_s\":{per_second:.0},\"server_cpu_percent\":{percent:.2},\"server_us_per_exchange\":{micros:.1}}}",
        wall.as_secs_f64()
    ))
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Two descriptors per session live in this process.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}
