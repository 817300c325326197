//! Streams share one transport: a busy stream must not lock out the others, and the order
//! guarantees between a stream's frames and the server's LiveIds list must survive the
//! per-stream queues.

use super::*;

/// Opens a stream on a server whose raw peer granted it `credit` bytes.
async fn open_with_credit(server: &Session, peer: &mut RawPeer, credit: u32) -> MuxStream {
    let stream = server.handle.open(b"t").await.unwrap();
    let id = stream.id();
    peer.send(Frame::WindowUpdate {
        id,
        increment: credit,
    })
    .await;
    stream
}

/// A stream that keeps the send queue full (its reader, the peer, is slow) does not stop a
/// second stream from queueing its small write, and that write goes out after at most one
/// frame of the busy stream, not behind everything it had queued.
#[tokio::test]
async fn a_small_write_is_not_held_behind_a_busy_streams_queue() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, Limits::default());
    let mut busy = open_with_credit(&server, &mut peer, 64 * 1024 * 1024).await;
    let mut small = server.handle.open(b"t").await.unwrap();
    let (busy_id, small_id) = (busy.id(), small.id());
    let bulk = tokio::spawn(async move {
        busy.write_all(&vec![7u8; 8 * 1024 * 1024]).await.unwrap();
        busy
    });
    let send_queue = Limits::default().send_queue;
    within("the busy stream fills the send queue", async {
        while server.handle.stats().queued_send < send_queue {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The old single FIFO parked this write until the peer read a megabyte.
    within("the small write is queued", small.write_all(b"small"))
        .await
        .unwrap();

    let mut busy_frames_before = 0;
    within("the small write arrives", async {
        loop {
            match peer.recv().await.expect("session alive") {
                Frame::Data { id, payload } if id == small_id => {
                    assert_eq!(&payload[..], b"small");
                    return;
                }
                Frame::Data { id, .. } if id == busy_id => busy_frames_before += 1,
                _ => {}
            }
        }
    })
    .await;
    // What the writer had taken before the small write was queued (one 256 KiB batch, four
    // frames) plus one turn of the busy stream; the queue behind it held 16 more frames.
    assert!(
        busy_frames_before <= 6,
        "{busy_frames_before} Data frames of the busy stream went first"
    );
    drop(bulk);
}

/// The writer builds LiveIds behind the frames it has written: a stream the server has
/// dropped while its last Data and Fin still wait in the queue is listed, so the agent does
/// not discard it before those frames arrive.
#[tokio::test(start_paused = true)]
async fn live_ids_list_a_dropped_stream_whose_frames_are_still_queued() {
    let (server, mut peer) = with_raw_peer(Role::Server, Version::V2, six_beats_a_second());
    let mut stream = open_with_credit(&server, &mut peer, 16 * 1024 * 1024).await;
    let id = stream.id();
    peer.send(Frame::Fin { id }).await;
    let mut nothing = Vec::new();
    within("the peer's Fin", stream.read_to_end(&mut nothing))
        .await
        .unwrap();
    // 512 KiB fits the send queue; the transport (4 messages) holds the writer's first batch.
    stream.write_all(&vec![1u8; 512 * 1024]).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    // Both directions ended cleanly: the slot is gone, its Data and Fin are still queued.
    assert_eq!(server.handle.stats().streams, 0);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut listed = None;
    within("LiveIds and the Fin", async {
        loop {
            match peer.recv().await.expect("session alive") {
                Frame::LiveIds { ids, .. } if listed.is_none() => listed = Some(ids),
                Frame::Fin { id: fin } if fin == id => break,
                _ => {}
            }
        }
    })
    .await;
    // The writer was held on its first batch while the heartbeats asked for the list, so the
    // list goes out in a later batch, ahead of the Fin at the back of the stream's queue.
    let ids = listed.expect("LiveIds went out before the Fin");
    assert!(
        ids.contains(&id),
        "LiveIds {ids:?} went out before stream {id}'s Fin without listing it"
    );
}
