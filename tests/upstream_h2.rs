//! The agent talks HTTP/2 to a TLS upstream that offers it by ALPN (as the Kubernetes API
//! does): many requests share one pooled connection. Upgrades (exec, port-forward) still go
//! over HTTP/1.1, the only version that has them. An upstream that offers only HTTP/1.1 is
//! served by the agent's own client once it answered so.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::pki::TestCa;
use support::stack::{agent_from_toml, get, server, wait_routed, TestAgent, TestServer};
use support::{listener, within, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test upstream: its address, its connection count, and how many bytes each `/big`
/// download has handed to its connection so far (as flow control let it).
struct Upstream {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    downloads: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
}

/// A TLS upstream offering `alpn`; answers with the request's HTTP version (and the length of
/// its body, if any), `/big` with 32 MiB, accepts any upgrade with a 101 and then echoes. As
/// strict as nginx about the authority: 400 unless it is `localhost:<port>`, named once (an
/// HTTP/2 request with a `host` header beside its `:authority` is refused, as nginx refuses it
/// as a duplicate).
async fn upstream(config: Arc<rustls::ServerConfig>, alpn: &[&[u8]]) -> Upstream {
    let mut config = (*config).clone();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, addr) = listener().await;
    let authority: Arc<str> = format!("localhost:{}", addr.port()).into();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let downloads = Arc::new(Mutex::new(Vec::new()));
    let started = downloads.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let authority = authority.clone();
            let started = started.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service =
                    service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                        let authority = authority.clone();
                        let started = started.clone();
                        async move {
                            if let Err(why) = one_authority(&request, &authority) {
                                let mut refusal =
                                    http::Response::new(Full::new(Bytes::from(why)).boxed());
                                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                                return Ok::<_, Infallible>(refusal);
                            }
                            if request.headers().contains_key(http::header::UPGRADE) {
                                let upgrade = hyper::upgrade::on(&mut request);
                                tokio::spawn(async move {
                                    let Ok(upgraded) = upgrade.await else { return };
                                    let mut io = TokioIo::new(upgraded);
                                    let mut buffer = [0u8; 64];
                                    while let Ok(len) = io.read(&mut buffer).await {
                                        if len == 0 || io.write_all(&buffer[..len]).await.is_err() {
                                            return;
                                        }
                                    }
                                });
                                let response = http::Response::builder()
                                    .status(StatusCode::SWITCHING_PROTOCOLS)
                                    .header("connection", "upgrade")
                                    .header("upgrade", "test-echo")
                                    .body(Full::new(Bytes::new()).boxed())
                                    .unwrap();
                                return Ok::<_, Infallible>(response);
                            }
                            if request.uri().path() == "/big" {
                                // 32 MiB, 16 KiB at a time, each piece made when hyper asks for
                                // it (when flow control lets it send more).
                                let handed = Arc::new(AtomicUsize::new(0));
                                started.lock().unwrap().push(handed.clone());
                                let pieces = futures_util::stream::iter((0..2048).map(move |_| {
                                    handed.fetch_add(16 * 1024, Ordering::SeqCst);
                                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(
                                        vec![b'x'; 16 * 1024],
                                    )))
                                }));
                                let body = http_body_util::StreamBody::new(pieces).boxed();
                                return Ok(http::Response::new(body));
                            }
                            let version = format!("{:?}", request.version());
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|body| body.to_bytes().len())
                                .unwrap_or_default();
                            let answer = match body {
                                0 => version,
                                len => format!("{version} {len}"),
                            };
                            Ok(http::Response::new(Full::new(Bytes::from(answer)).boxed()))
                        }
                    });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Upstream {
        addr,
        connections,
        downloads,
    }
}

/// Whether a request names `expected` as its authority, once: the `Host` header over
/// HTTP/1.1, `:authority` alone over HTTP/2.
fn one_authority<B>(request: &http::Request<B>, expected: &str) -> Result<(), String> {
    let host = request.headers().get_all(http::header::HOST);
    let hosts: Vec<_> = host.iter().collect();
    let named = match request.version() {
        http::Version::HTTP_2 => {
            hosts.is_empty() && request.uri().authority().map(|a| a.as_str()) == Some(expected)
        }
        _ => hosts.len() == 1 && hosts[0] == expected,
    };
    match named {
        true => Ok(()),
        false => Err(format!(
            "{:?}: host headers {hosts:?}, :authority {:?}; want {expected} once",
            request.version(),
            request.uri().authority()
        )),
    }
}

/// A test upstream offering `alpn` (its TLS certificate for `localhost`), a server with cluster
/// `c1`, and its agent forwarding to that upstream; the temp dir holds their files.
struct Stack {
    api: Upstream,
    server: TestServer,
    _agent: TestAgent,
    _dir: TempDir,
}

async fn stack(alpn: &[&[u8]]) -> Stack {
    let dir = TempDir::new();
    let ca = TestCa::new("api CA");
    let api = upstream(ca.server_config(&["localhost"]), alpn).await;
    let target = format!("localhost:{}", api.addr.port());
    let server = server(&dir.0, &[("c1", "agent-token", &target)]).await;
    std::fs::write(dir.0.join("agent.token"), "agent-token").unwrap();
    let agent = agent_from_toml(
        &dir.0,
        "a",
        &format!(
            "server_url = \"ws://{}/connect\"\nallow_insecure_server = true\ntoken_file = \"agent.token\"\n\
             health_listen = \"127.0.0.1:0\"\n[upstream]\ntarget = \"{target}\"\nca_file = \"{}\"\ninject_token = false\n",
            server.addrs.public,
            ca.write(&dir.0, "ca.pem").display()
        ),
    )
    .await;
    wait_routed(server.addrs.ops.unwrap(), "c1").await;
    Stack {
        api,
        server,
        _agent: agent,
        _dir: dir,
    }
}

#[tokio::test]
async fn requests_share_one_http2_connection_and_upgrades_use_http1() {
    let stack = stack(&[b"h2", b"http/1.1"]).await;
    let (api, server) = (&stack.api, &stack.server);
    let connections = api.connections.clone();
    let internal = server.addrs.internal;

    let (status, _, body) = get(internal, "/tunnel/c1/version", &[]).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::OK, &b"HTTP/2.0"[..]),
        "the agent negotiated HTTP/2 with the upstream and named its authority once"
    );
    let requests: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move { get(internal, &format!("/tunnel/c1/api/{i}"), &[]).await })
        })
        .collect();
    for request in requests {
        let (status, _, body) = within("request", request).await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("HTTP/2.0")));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "every request on one pooled connection"
    );
    // A watch takes an HTTP/1.1 connection of its own (it must not hold an h2 stream slot);
    // the next watch reuses it once the first ended cleanly.
    for _ in 0..2 {
        let (status, _, body) = get(internal, "/tunnel/c1/api/v1/pods?watch=1", &[]).await;
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("HTTP/1.1")));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "both watches on one HTTP/1.1 connection beside the h2 one"
    );

    // An upgrade through the tunnel reaches the upstream over HTTP/1.1 and is spliced.
    let mut tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    tcp.write_all(b"GET /tunnel/c1/exec HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test-echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    within("101 through the tunnel", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                tcp.read(&mut byte).await.unwrap(),
                1,
                "connection closed: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
    })
    .await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    within("echo over the upgraded stream", tcp.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        3,
        "the upgrade took an HTTP/1.1 connection of its own"
    );
}

/// An upstream that offers only HTTP/1.1 (nginx without `http2`, most extension backends):
/// after its first answer over hyper's pooled client, the agent sends bodiless requests over
/// its own client, on a connection of its own that it reuses; a request with a body stays on
/// hyper's (which reads an early answer while it still sends).
#[tokio::test]
async fn an_http1_only_upstream_is_served_by_the_agents_own_client_after_its_first_answer() {
    let stack = stack(&[b"http/1.1"]).await;
    let (api, server) = (&stack.api, &stack.server);
    let connections = api.connections.clone();
    let internal = server.addrs.internal;
    for i in 0..5 {
        let (status, _, body) = get(internal, &format!("/tunnel/c1/api/{i}"), &[]).await;
        assert_eq!((status, body), (StatusCode::OK, Bytes::from("HTTP/1.1")));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "hyper's connection for the first answer, the agent's own for the next four"
    );
    let mut tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    tcp.write_all(
        b"POST /tunnel/c1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut response = Vec::new();
    within("the POST's answer", tcp.read_to_end(&mut response))
        .await
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nHTTP/1.1 5"), "{response}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the POST went over hyper's pooled connection"
    );
}

/// Downloads nobody reads must not stall the other requests that share the agent's one HTTP/2
/// connection: each holds at most its stream's window of unread data in the agent (512 KiB),
/// and the connection's window has room for many of them (hyper's default, 5 MiB against 2 MiB
/// per stream, was full after three).
#[tokio::test]
async fn unread_downloads_do_not_stall_the_shared_http2_connection() {
    let stack = stack(&[b"h2", b"http/1.1"]).await;
    let (api, internal) = (&stack.api, stack.server.addrs.internal);
    let (status, _, body) = get(internal, "/tunnel/c1/version", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"HTTP/2.0"[..]));

    // Eight clients ask for 32 MiB each and then read nothing (their receive buffers small, so
    // the stall reaches the tunnel at once).
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let mut tcp = socket.connect(internal).await.unwrap();
        tcp.write_all(b"GET /tunnel/c1/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        within("a download's head", tcp.read_exact(&mut first))
            .await
            .unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        stalled.push(tcp);
    }
    // Until the downloads stop moving (all the room they have is full: the server's socket
    // buffers, the tunnel's windows, the agent's HTTP/2 buffers), polled, bounded.
    within("the unread downloads to stop moving", async {
        let mut last = 0;
        let mut still = 0;
        while still < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let downloads = api.downloads.lock().unwrap();
            let handed: usize = downloads.iter().map(|d| d.load(Ordering::SeqCst)).sum();
            still = if downloads.len() == 8 && handed == last {
                still + 1
            } else {
                0
            };
            last = handed;
        }
    })
    .await;
    // They did stall, each short of its 32 MiB and of what a far larger stream window would
    // let through (the server's socket buffers take a few MiB; the agent holds 512 KiB).
    let handed: Vec<usize> = api
        .downloads
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.load(Ordering::SeqCst))
        .collect();
    assert!(
        handed.iter().all(|&bytes| bytes < 12 << 20),
        "bytes each download handed over: {handed:?}"
    );
    for i in 0..5 {
        let (status, _, body) = get(internal, &format!("/tunnel/c1/api/{i}"), &[]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"HTTP/2.0"[..]));
    }
    assert_eq!(
        api.connections.load(Ordering::SeqCst),
        1,
        "everything on the one HTTP/2 connection"
    );
    drop(stalled);
}
