//! The heartbeat against a scripted peer under paused time: who pings whom, and when a peer
//! counts as dead.

use super::*;
use crate::mux::heartbeat::OWN_PING_EVERY;

/// What a scripted peer does for `span`: pings every `ping_every` from the start (as our agent
/// does), answers the session's Pings if `answer`, accepts every stream opened to it. Returns
/// how many Pings the session sent it and how many Pongs it got back.
async fn scripted_peer(
    peer: RawPeer,
    ping_every: Option<Duration>,
    answer: bool,
    span: Duration,
) -> (usize, usize) {
    let answer_until = if answer { span } else { Duration::ZERO };
    scripted(peer, ping_every, Answer::Until(answer_until), span).await
}

/// How a scripted peer answers the session's Pings.
#[derive(Clone, Copy)]
enum Answer {
    /// Every Ping received before this much time has passed, none after.
    Until(Duration),
    /// None but one: the second Ping is answered with the first one's payload (a stale Pong).
    OnlyStale,
}

async fn scripted(
    mut peer: RawPeer,
    ping_every: Option<Duration>,
    answer: Answer,
    span: Duration,
) -> (usize, usize) {
    let start = tokio::time::Instant::now();
    let end = start + span;
    let mut first_payload = None;
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
                        first_payload.get_or_insert(payload.clone());
                        match answer {
                            Answer::Until(until) if start.elapsed() < until => {
                                peer.send(Frame::Pong { payload }).await;
                            }
                            Answer::OnlyStale if pings == 2 => {
                                let stale = first_payload.clone().expect("first Ping");
                                peer.send(Frame::Pong { payload: stale }).await;
                            }
                            _ => {}
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
/// (the round trip) and on every third beat, not every beat.
#[tokio::test(start_paused = true)]
async fn a_server_only_answers_an_idle_agent_that_pings() {
    let limits = Limits::default();
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let (pings, pongs) =
        scripted_peer(peer, Some(limits.heartbeat_interval), true, a_minute()).await;
    assert_eq!(pongs, 7, "every Ping of the agent answered");
    assert_eq!(
        pings, 3,
        "the server pinged at the start and on every third beat only"
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

/// A peer that pings but never answers (its reader is stuck, say) is dropped, on either end and
/// with either protocol: its Pings do not stand in for the Pongs we wait for. An agent pings
/// every beat (dropped within a beat plus the timeout of its first unanswered Ping); a server
/// only answering an idle agent pings every `OWN_PING_EVERY` beats.
#[tokio::test(start_paused = true)]
async fn a_peer_that_pings_but_never_answers_is_dropped() {
    let limits = Limits::default();
    let beat = limits.heartbeat_interval;
    for version in [Version::V1, Version::V2] {
        for (role, bound) in [
            (Role::Agent, beat * 2 + limits.heartbeat_timeout),
            (
                Role::Server,
                beat * (OWN_PING_EVERY + 1) + limits.heartbeat_timeout,
            ),
        ] {
            let (session, peer) = with_raw_peer(role, version, limits.clone());
            let started = tokio::time::Instant::now();
            let peer = tokio::spawn(scripted_peer(peer, Some(beat), false, beat * 60));
            assert_eq!(session.handle.closed().await, SessionEnd::HeartbeatTimeout);
            let took = started.elapsed();
            assert!(took <= bound, "{role:?} {version:?}: took {took:?}");
            assert!(
                took > limits.heartbeat_timeout,
                "{role:?} {version:?}: took {took:?}"
            );
            peer.abort();
        }
    }
}

/// A peer that answered for a while, then stopped answering but kept pinging: the server that
/// only answers it drops it within `OWN_PING_EVERY + 1` beats plus the timeout of the last
/// Pong.
#[tokio::test(start_paused = true)]
async fn a_server_drops_an_agent_that_stops_answering_but_keeps_pinging() {
    let limits = Limits::default();
    let beat = limits.heartbeat_interval;
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let stop = beat * 7 + beat / 2;
    let started = tokio::time::Instant::now();
    let peer = tokio::spawn(scripted(peer, Some(beat), Answer::Until(stop), beat * 60));
    assert_eq!(server.handle.closed().await, SessionEnd::HeartbeatTimeout);
    let bound = beat * (OWN_PING_EVERY + 1) + limits.heartbeat_timeout;
    let took = started.elapsed();
    // The last Ping answered went out on the sixth beat, before `stop`.
    assert!(took <= beat * 6 + bound, "took {took:?}");
    peer.abort();
}

/// A Pong that echoes an older Ping does not answer a newer one: the newer one's deadline
/// still runs (the stale Pong must not restart the clock until our next Ping).
#[tokio::test(start_paused = true)]
async fn a_stale_pong_does_not_answer_a_newer_ping() {
    let limits = Limits::default();
    let beat = limits.heartbeat_interval;
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let started = tokio::time::Instant::now();
    let peer = tokio::spawn(scripted(peer, Some(beat), Answer::OnlyStale, beat * 60));
    assert_eq!(server.handle.closed().await, SessionEnd::HeartbeatTimeout);
    // Pings at 0 (unanswered) and on the third beat (answered with the first one's payload):
    // the third beat's Ping is overdue a timeout later.
    let bound = beat * OWN_PING_EVERY + limits.heartbeat_timeout + beat;
    let took = started.elapsed();
    assert!(took <= bound, "took {took:?}");
    peer.abort();
}

/// A healthy agent pinging more seldom than the server's beat (the Go one: every 15 s) under a
/// timeout shorter than 1.5 beats: the server must not skip its own Ping when the silence until
/// the next beat could exceed the timeout.
#[tokio::test(start_paused = true)]
async fn a_server_keeps_a_slow_pinging_agent_under_a_short_timeout() {
    let limits = Limits {
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(12),
        ..Limits::default()
    };
    let (server, peer) = with_raw_peer(Role::Server, Version::V1, limits);
    // Pings at 1, 16, 31 … s: the agent's last Ping is 14 s old at the beat of 30 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, pongs) = scripted_peer(peer, Some(Duration::from_secs(15)), true, a_minute() * 2).await;
    assert!(pongs >= 8, "{pongs} Pongs");
    assert!(!server.handle.is_closed(), "{:?}", server.handle.stats());
}

/// An agent that pings every beat from `first` on, until `quiet_from` (then it only answers),
/// for `span`: each of the session's Pings as (whole seconds since the start, whether a Pong
/// came right before it).
async fn agent_pinging_from(
    mut peer: RawPeer,
    first: Duration,
    quiet_from: Duration,
    span: Duration,
) -> Vec<(u64, bool)> {
    let beat = Limits::default().heartbeat_interval;
    let start = tokio::time::Instant::now();
    let end = start + span;
    let mut next_ping = start + first;
    let mut server_pings = Vec::new();
    let mut last_was_pong = false;
    loop {
        tokio::select! {
            message = peer.0.next() => {
                let Some(Ok(message)) = message else { panic!("session ended") };
                match decode(message).expect("decodable") {
                    Frame::Ping { payload } => {
                        server_pings.push((start.elapsed().as_secs(), last_was_pong));
                        peer.send(Frame::Pong { payload }).await;
                        last_was_pong = false;
                    }
                    Frame::Pong { .. } => last_was_pong = true,
                    _ => last_was_pong = false,
                }
            }
            _ = tokio::time::sleep_until(next_ping.min(end)) => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                if next_ping < start + quiet_from {
                    peer.send(Frame::Ping { payload: Bytes::from_static(b"agent-hb") }).await;
                }
                next_ping += beat;
            }
        }
    }
    server_pings
}

/// The seconds of each of the server's Pings.
fn seconds(pings: &[(u64, bool)]) -> Vec<u64> {
    pings.iter().map(|&(at, _)| at).collect()
}

/// An idle agent pinging out of step with the server's beats (3 s after them): the server's own
/// Ping goes out right behind the Pong of an agent's Ping (one write), not on a beat of its
/// own, and the server's timer wakes for no beat at all while the agent keeps pinging.
#[tokio::test(start_paused = true)]
async fn an_idle_server_pings_with_its_pong_and_wakes_for_no_beat() {
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let secs = Duration::from_secs;
    let pings = agent_pinging_from(peer, secs(3), secs(3600), secs(65)).await;
    // At the start (the round trip), then with the Pongs of the Pings of 33 s and 63 s.
    assert_eq!(pings, [(0, false), (33, true), (63, true)]);
    let stats = server.handle.stats();
    assert_eq!(stats.counters.beats, 0, "{stats:?}");
    assert!(!server.handle.is_closed());
}

/// The agent falls quiet: the server's skipped beats end at the first one that could not only
/// answer (the agent's last Ping 1.5 beats old), and it pings on every beat from there.
#[tokio::test(start_paused = true)]
async fn an_agent_that_falls_quiet_is_pinged_on_the_beats_again() {
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let secs = Duration::from_secs;
    // The agent pings at 3, 13 and 23 s, then only answers.
    let pings = agent_pinging_from(peer, secs(3), secs(30), secs(75)).await;
    // 23 + 15 = 38 s: the beat of 40 s is the first without a recent Ping of the agent.
    assert_eq!(seconds(&pings), [0, 40, 50, 60, 70]);
    assert_eq!(server.handle.stats().counters.beats, 4);
    assert!(!server.handle.is_closed());
}

/// An agent pinging every 12 s (any period up to the interval × 1.5 is legal) stops reading:
/// the server only answering it drops it within four beats plus the timeout of its last Pong,
/// the moment the timeout passes, not at the next beat after it.
#[tokio::test(start_paused = true)]
async fn an_agent_pinging_off_the_beat_that_stops_reading_is_dropped_in_time() {
    let limits = Limits::default();
    let beat = limits.heartbeat_interval;
    let (server, peer) = with_raw_peer(Role::Server, Version::V2, limits.clone());
    let started = tokio::time::Instant::now();
    let stop = Duration::from_secs(40);
    let every = Duration::from_secs(12);
    let peer = tokio::spawn(scripted(peer, Some(every), Answer::Until(stop), beat * 60));
    assert_eq!(server.handle.closed().await, SessionEnd::HeartbeatTimeout);
    // The server's own Pings ride with the agent's of 0 and 36 s: the last Pong is at 36 s.
    let since_last_pong = started.elapsed() - Duration::from_secs(36);
    let bound = beat * (OWN_PING_EVERY + 1) + limits.heartbeat_timeout;
    assert!(
        since_last_pong <= bound,
        "dropped {since_last_pong:?} after the last Pong"
    );
    peer.abort();
}

/// A v1 stream opened while the server skips the beats of an idle tunnel: the reader is woken,
/// and the server pings on every beat from then on (a stream is open until its Connect is
/// answered, which this agent never does).
#[tokio::test(start_paused = true)]
async fn a_stream_opened_on_an_idle_v1_tunnel_brings_the_beats_back() {
    let (server, peer) = with_raw_peer(Role::Server, Version::V1, Limits::default());
    let handle = server.handle.clone();
    let opener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(25)).await;
        let _ = handle.open(b"t").await;
    });
    let secs = Duration::from_secs;
    let pings = agent_pinging_from(peer, secs(3), secs(3600), secs(45)).await;
    opener.abort();
    assert_eq!(seconds(&pings), [30, 40]);
}
