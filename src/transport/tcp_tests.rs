use super::*;
use tokio::net::{TcpListener, TcpSocket};

/// An address that never answers a connect: a listener with a backlog of 0 whose one queue
/// slot is taken (Linux then drops further SYNs, and the connect waits for its retries). Kept
/// alive by the returned values.
async fn black_hole() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let address = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        let attempt = TcpStream::connect(address);
        match tokio::time::timeout(Duration::from_millis(300), attempt).await {
            Ok(Ok(tcp)) => queued.push(tcp),
            Ok(Err(error)) => panic!("filling the black hole's queue: {error}"),
            Err(_) => return (address, listener, queued),
        }
    }
    panic!("a connect past a full backlog still completed: no black hole to test with")
}

/// An address nothing listens on (a listener's, closed).
async fn refusing() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("timed out after 20 s: a connect that should have ended")
}

#[tokio::test]
async fn a_first_address_that_never_answers_costs_its_share_not_the_whole_budget() {
    let (silent, _listener, _queued) = black_hole().await;
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_address = good.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(4);
    let tcp = bounded(connect_in_turn(&[silent, good_address], deadline))
        .await
        .expect("the second address answers within its share");
    assert_eq!(tcp.peer_addr().unwrap(), good_address);
}

#[tokio::test]
async fn an_address_that_refuses_leaves_the_time_to_the_next() {
    let refused = refusing().await;
    let (silent, _listener, _queued) = black_hole().await;
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_address = good.local_addr().unwrap();
    // Refused at once, the first leaves its third: the silent second gets half of the rest,
    // and the third the other half.
    let deadline = Instant::now() + Duration::from_secs(3);
    let tcp = bounded(connect_in_turn(&[refused, silent, good_address], deadline))
        .await
        .expect("the third address answers");
    assert_eq!(tcp.peer_addr().unwrap(), good_address);
}

#[tokio::test]
async fn addresses_that_all_fail_give_the_last_error_and_their_count() {
    let (silent, _listener, _queued) = black_hole().await;
    let refused = refusing().await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(1);
    let error = bounded(connect_in_turn(&[refused, silent], deadline))
        .await
        .expect_err("nothing answers");
    // The refused address left its half to the silent one, which waited for all of it (a
    // timeout never fires early; a split fixed up front would have given it half).
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the silent address got only {:?} of 1 s",
        started.elapsed()
    );
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    let text = error.to_string();
    assert!(text.contains("2 addresses tried"), "{text}");
    assert!(text.contains(&silent.to_string()), "{text}");

    let deadline = Instant::now() + Duration::from_secs(5);
    let error = bounded(connect_in_turn(&[refused], deadline))
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
    let error = bounded(connect_in_turn(&[], deadline)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
    // Past the deadline nothing is dialled, not even an address that would answer at once.
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let past = Instant::now();
    let error = bounded(connect_in_turn(&[good.local_addr().unwrap()], past))
        .await
        .expect_err("no time left");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
}

#[tokio::test]
async fn a_name_is_resolved_and_its_addresses_tried() {
    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = good.local_addr().unwrap().port();
    // `localhost` may resolve to ::1 first, which refuses: the IPv4 address is tried next.
    let tcp = bounded(connect(
        &format!("localhost:{port}"),
        Duration::from_secs(5),
    ))
    .await
    .expect("localhost answers");
    assert_eq!(tcp.peer_addr().unwrap().port(), port);
    assert!(tcp.nodelay().unwrap());
    bounded(connect("no-such-host.invalid:80", Duration::from_secs(5)))
        .await
        .expect_err("no such name");
}

#[tokio::test]
async fn a_tunnel_socket_holds_little_unsent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let before = socket2::SockRef::from(&tcp).tcp_notsent_lowat().unwrap();
    assert_ne!(
        before, TUNNEL_UNSENT_LOWAT,
        "the kernel's default is unlimited"
    );
    hold_unsent_in_process(&tcp).unwrap();
    let after = socket2::SockRef::from(&tcp).tcp_notsent_lowat().unwrap();
    assert_eq!(after, TUNNEL_UNSENT_LOWAT);
}
