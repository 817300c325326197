//! Stream id allocation (server side). Ids start at 1 per session and go up by one, as the Go
//! server's do; unlike it (B16), a wrap past `u32::MAX` skips 0 (the session's own id) and every
//! id still live, so a live stream is never overwritten.

use crate::protocol::StreamId;

/// Hands out stream ids for one session.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    next: StreamId,
}

impl IdAllocator {
    pub(crate) fn new() -> Self {
        Self { next: 1 }
    }

    #[cfg(test)]
    fn starting_at(next: StreamId) -> Self {
        Self { next }
    }

    /// Where the next allocation starts: unchanged means nothing was allocated since.
    pub(crate) fn peek(&self) -> StreamId {
        self.next
    }

    /// The next id that is neither 0 nor live. `None` only if all 2^32 − 1 ids are live, which
    /// the stream limit rules out; callers treat it as "too many streams".
    pub(crate) fn allocate(&mut self, is_live: impl Fn(StreamId) -> bool) -> Option<StreamId> {
        for _ in 0..=u32::MAX {
            let candidate = self.next;
            self.next = self.next.wrapping_add(1);
            if candidate != 0 && !is_live(candidate) {
                return Some(candidate);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_start_at_one_and_increase() {
        let mut ids = IdAllocator::new();
        let got: Vec<_> = (0..3).map(|_| ids.allocate(|_| false).unwrap()).collect();
        assert_eq!(got, [1, 2, 3]);
    }

    /// B16: near the wrap, the allocator never returns 0 or an id that is still live.
    #[test]
    fn wrap_skips_zero_and_live_ids() {
        let live: HashSet<StreamId> = [u32::MAX - 1, 1, 2, 4].into_iter().collect();
        let mut ids = IdAllocator::starting_at(u32::MAX - 2);
        let got: Vec<_> = (0..4)
            .map(|_| ids.allocate(|id| live.contains(&id)).unwrap())
            .collect();
        assert_eq!(got, [u32::MAX - 2, u32::MAX, 3, 5]);
    }
}
