//! The session's data queue: each stream's frames in order, streams served in turn.
//!
//! One FIFO for every stream made a small response wait behind everything a bulk stream had
//! queued before it (up to `send_queue`), and a stream that found the queue full could be
//! refilled out by the bulk writer on every wake. So each stream keeps its own FIFO (its Data
//! and the frames that must not overtake it: Connect, Connected, Fin, a Close/Reset after its
//! last Data) and the writer takes one frame per stream in turn: a stream that queues a frame
//! waits for at most one frame of each other busy stream.

use std::collections::{HashMap, VecDeque};

use super::state::Outbound;
use crate::protocol::StreamId;

#[derive(Default)]
pub(crate) struct DataQueue {
    streams: HashMap<StreamId, PerStream>,
    /// Streams with frames queued, in the order the writer serves them; each id at most once.
    turns: VecDeque<StreamId>,
    /// Data payload bytes queued, over all streams.
    bytes: usize,
}

/// One stream's frames: the oldest inline, the rest behind it. Most streams queue one frame
/// at a time and run dry at once; a FIFO of their own was an allocation and a free per message.
#[derive(Default)]
struct PerStream {
    oldest: Option<Outbound>,
    rest: VecDeque<Outbound>,
    bytes: usize,
}

impl PerStream {
    fn push(&mut self, item: Outbound) {
        if self.oldest.is_none() {
            self.oldest = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop(&mut self) -> Option<Outbound> {
        let item = self.oldest.take()?;
        self.oldest = self.rest.pop_front();
        Some(item)
    }

    fn is_empty(&self) -> bool {
        self.oldest.is_none()
    }
}

impl DataQueue {
    /// Queues `item` behind stream `id`'s earlier frames.
    pub(crate) fn push(&mut self, id: StreamId, item: Outbound) {
        let stream = self.streams.entry(id).or_default();
        if stream.is_empty() {
            self.turns.push_back(id);
        }
        if let Outbound::Data { len, .. } = &item {
            stream.bytes += len;
            self.bytes += len;
        }
        stream.push(item);
    }

    /// The next frame in turn: the front stream's oldest frame; that stream then goes to the
    /// back of the line if it has more.
    pub(crate) fn pop(&mut self) -> Option<Outbound> {
        let id = self.turns.pop_front()?;
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a stream in turn has frames");
        let item = stream.pop().expect("a stream in turn has frames");
        if let Outbound::Data { len, .. } = &item {
            stream.bytes -= len;
            self.bytes -= len;
        }
        if stream.is_empty() {
            self.streams.remove(&id);
        } else {
            self.turns.push_back(id);
        }
        Some(item)
    }

    /// Data payload bytes queued over all streams.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Data payload bytes stream `id` has queued.
    pub(crate) fn bytes_of(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |stream| stream.bytes)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Streams with frames still queued.
    pub(crate) fn ids(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.turns.iter().copied()
    }

    pub(crate) fn clear(&mut self) {
        self.streams.clear();
        self.turns.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;
    use bytes::Bytes;

    fn data(id: StreamId, len: usize) -> Outbound {
        Outbound::Data {
            message: Bytes::from(vec![id as u8; len]).into(),
            len,
        }
    }

    fn describe(item: Outbound) -> String {
        match item {
            Outbound::Data { message, len } => format!("d{}:{len}", message.body()[0]),
            Outbound::Frame(Frame::Fin { id }) => format!("fin{id}"),
            Outbound::Frame(other) => format!("{other:?}"),
        }
    }

    fn drain(queue: &mut DataQueue) -> Vec<String> {
        std::iter::from_fn(|| queue.pop()).map(describe).collect()
    }

    #[test]
    fn streams_take_turns_and_keep_their_own_order() {
        let mut queue = DataQueue::default();
        for _ in 0..3 {
            queue.push(1, data(1, 100));
        }
        queue.push(1, Frame::Fin { id: 1 }.into());
        queue.push(3, data(3, 5));
        queue.push(3, Frame::Fin { id: 3 }.into());
        assert_eq!(queue.bytes(), 305);
        assert_eq!(queue.bytes_of(1), 300);
        assert_eq!(queue.bytes_of(3), 5);
        assert_eq!(queue.bytes_of(5), 0);
        assert_eq!(
            drain(&mut queue),
            ["d1:100", "d3:5", "d1:100", "fin3", "d1:100", "fin1"]
        );
        assert!(queue.is_empty());
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn a_stream_that_runs_dry_and_queues_again_waits_its_turn() {
        let mut queue = DataQueue::default();
        queue.push(1, data(1, 10));
        queue.push(1, data(1, 10));
        queue.push(3, data(3, 10));
        assert_eq!(describe(queue.pop().unwrap()), "d1:10");
        assert_eq!(describe(queue.pop().unwrap()), "d3:10");
        // Stream 3 ran dry; it queues again behind stream 1, which is still in line.
        queue.push(3, data(3, 20));
        assert_eq!(queue.ids().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(drain(&mut queue), ["d1:10", "d3:20"]);
    }

    #[test]
    fn clear_forgets_everything() {
        let mut queue = DataQueue::default();
        queue.push(1, data(1, 10));
        queue.push(3, Frame::Fin { id: 3 }.into());
        queue.clear();
        assert!(queue.is_empty());
        assert_eq!(queue.bytes(), 0);
        assert!(queue.pop().is_none());
        assert_eq!(queue.ids().count(), 0);
    }
}
