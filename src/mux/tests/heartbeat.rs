//! The heartbeat against a scripted peer under paused time: who pings whom, and when a peer
//! counts as dead.

use super::*;

/// What a scripted peer does for `span`: pings every `ping_every` from the start (as our agent
/// does), answers the session's Pings if `answer`, accepts every stream opened to it. Returns
/// how many Pings the session sent it and how many Pongs it got back.
async fn scripted_peer(
    mut peer: RawPeer,
    ping_every: Option<Duration>,
    answer: bool,
    span: Duration,
) -> (usize, usize) {
    let end = tokio::time::Instant::now() + span;
    let mut next_ping = tokio::time::Instant::now();
    let (mut pings, mut pongs) = (0, 0);
    loop {
        let wake = match ping_every {
            Some(_) => next_ping.min(end),
            None => end,
        };
        tokio::select! {
            message = peer.0.next() => {
                let Some(Ok(message)) = message else { break };
                match decode(message).expect("decodable") {
                    Frame::Ping { payload } => {
                        pings += 1;
                        if answer {
                            peer.send(Frame::Pong { payload }).await;
                        }
                    }
                    Frame::Pong { .. } => pongs += 1,
                    Frame::Connect { id, .. } => peer.send(Frame::Connected { id }).await,
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                peer.send(Frame::Ping { payload: Bytes::from_static(b"agent-hb") }).await;
                next_ping += ping_every.expect("pinging");
            }
        }
    }
    (pings, pongs)
}

/// One minute of an idle tunnel (beats at 10, 20 … 60 s), a little over.
fn a_minute() -> Duration {
    Duration::from_secs(60) + Duration::from_millis(500)
}

/// An idle agent that pings is only answered: the server's own Ping goes out at the start
/// (the round trip) and with every sixth beat (LiveIds), not every beat.
#[tokio::test(start_paused = true)]
async fn a_server_only_answers_an_idle_agent_that_pings() {
    let limits = Limits::default();
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let (pings, pongs) =
        scripted_peer(peer, Some(limits.heartbeat_interval), true, a_minute()).await;
    assert_eq!(pongs, 7, "every Ping of the agent answered");
    assert_eq!(
        pings, 2,
        "the server pinged at the start and on the sixth beat only"
    );
    assert!(!server.handle.is_closed());
}

/// An agent that only answers (or a peer that pings too seldom) is pinged every beat.
#[tokio::test(start_paused = true)]
async fn a_server_pings_every_beat_an_agent_that_does_not_ping() {
    let limits = Limits::default();
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits);
    let (pings, _) = scripted_peer(peer, None, true, a_minute()).await;
    assert_eq!(pings, 7);
    assert!(!server.handle.is_closed());
}

/// While a stream is open the server pings every beat even though the agent pings: window
/// growth uses the round trip those Pings measure.
#[tokio::test(start_paused = true)]
async fn a_server_pings_every_beat_while_a_stream_is_open() {
    let limits = Limits::default();
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let handle = server.handle.clone();
    let opener = tokio::spawn(async move { handle.open(b"t").await.expect("open") });
    let (pings, _) = scripted_peer(peer, Some(limits.heartbeat_interval), true, a_minute()).await;
    let stream = within("open", opener).await.unwrap();
    assert_eq!(pings, 7);
    drop(stream);
}

/// A peer that pings but never answers (its reader is stuck, say) is dropped within a beat
/// plus the timeout, on either end: its Pings do not stand in for the Pongs we wait for.
#[tokio::test(start_paused = true)]
async fn a_peer_that_pings_but_never_answers_is_dropped() {
    for role in [Role::Server, Role::Agent] {
        let limits = Limits::default();
        let deadline = limits.heartbeat_interval + limits.heartbeat_timeout;
        let (session, peer) = with_raw_peer(role, Version::V2, limits.clone());
        let started = tokio::time::Instant::now();
        let peer = tokio::spawn(scripted_peer(
            peer,
            Some(limits.heartbeat_interval),
            false,
            Duration::from_secs(600),
        ));
        assert_eq!(session.handle.closed().await, SessionEnd::HeartbeatTimeout);
        let took = started.elapsed();
        assert!(took <= deadline, "{role:?}: took {took:?}");
        assert!(took > limits.heartbeat_timeout, "{role:?}: took {took:?}");
        peer.abort();
    }
}
