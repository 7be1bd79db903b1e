//! A picture of the heap: per span, its size class, kind, and the state of every block
//! ([`Heap::occupancy_map`]). Read-only; walks the spans the way [`Heap::walk`] does.

use std::sync::atomic::Ordering;

use crate::Heap;
use crate::pool::span::{ListId, Span, SpanKind};
use crate::size_class::NUM_CLASSES;

/// The state of one block in an [`OccupancyMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Not handed out: home in its span, or never carved.
    Free,
    /// A live handle-addressed block the compactor may move.
    Movable,
    /// A live handle-addressed block that was pinned when the map was taken.
    Pinned,
    /// A fixed span's block that is out of its span: handed out as a raw pointer, or
    /// free but cached by a thread cache or central list (call [`Heap::trim`] from the
    /// last thread using the heap first, for an exact picture).
    Fixed,
    /// A movable span's block that is out of its span but has no owner: cached by a
    /// thread or a central list, or between allocation and publication.
    Cached,
}

/// One span of an [`OccupancyMap`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanOccupancy {
    /// Address of the span's first byte.
    pub base: usize,
    /// Bytes of the span's region.
    pub bytes: usize,
    /// Bytes the span counts as committed: its region's pages up to the furthest block
    /// carved, and its side table's pages written.
    pub committed_bytes: usize,
    /// Size-class index.
    pub class: usize,
    /// Block size of the class.
    pub block_size: usize,
    /// Movable (handle-addressed) or fixed (raw-pointer) blocks.
    pub kind: SpanKind,
    /// Whether the compactor is evacuating the span (allocation does not refill from it).
    pub evacuating: bool,
    /// One entry per block, in address order.
    pub blocks: Vec<BlockState>,
}

impl SpanOccupancy {
    /// Blocks in `state`.
    pub fn count(&self, state: BlockState) -> usize {
        self.blocks.iter().filter(|&&b| b == state).count()
    }

    /// Blocks that are live (movable, pinned or fixed).
    pub fn live(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| {
                matches!(
                    b,
                    BlockState::Movable | BlockState::Pinned | BlockState::Fixed
                )
            })
            .count()
    }
}

/// A snapshot of which blocks of which spans are live; see [`Heap::occupancy_map`].
///
/// Spans are sorted by kind (movable first), then class, then address.
///
/// # Examples
///
/// ```
/// use tidyheap::{BlockState, Heap, SpanKind};
/// let heap = Heap::new();
/// let hs: Vec<_> = (0..4096).map(|_| heap.alloc_handle(64, 16).unwrap()).collect();
/// for h in hs.iter().step_by(2) { heap.free_handle(*h).unwrap(); }
/// heap.trim();
/// let before = heap.occupancy_map();
/// let span = &before.spans[0];
/// assert_eq!((span.kind, span.block_size), (SpanKind::Movable, 64));
/// assert_eq!(before.count(BlockState::Movable), 2048);
/// heap.compact_full();
/// let after = heap.occupancy_map();
/// assert!(after.spans.len() < before.spans.len());
/// assert!(after.movable_fragmentation() < before.movable_fragmentation());
/// assert_eq!(after.committed_bytes(), heap.stats().committed_bytes);
/// assert_eq!(after.spans.iter().map(|s| s.live()).sum::<usize>(), 2048);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OccupancyMap {
    /// The spans serving a size class.
    pub spans: Vec<SpanOccupancy>,
    /// Bytes of committed spans on the empty lists (kept for reuse; no blocks).
    pub empty_committed_bytes: usize,
    /// Requested bytes of live movable blocks (side-table lengths).
    pub movable_live_bytes: usize,
}

impl OccupancyMap {
    /// Committed bytes: serving spans plus committed empty spans (equal to
    /// [`HeapStats::committed_bytes`](crate::HeapStats::committed_bytes) at quiescence).
    pub fn committed_bytes(&self) -> usize {
        self.spans.iter().map(|s| s.committed_bytes).sum::<usize>() + self.empty_committed_bytes
    }

    /// Committed bytes of movable spans.
    pub fn movable_committed_bytes(&self) -> usize {
        self.spans
            .iter()
            .filter(|s| s.kind == SpanKind::Movable)
            .map(|s| s.committed_bytes)
            .sum()
    }

    /// Movable-heap fragmentation, `1 − live / committed` over movable spans, as in
    /// [`Heap::fragmentation`] (0 when none is committed).
    pub fn movable_fragmentation(&self) -> f64 {
        let committed = self.movable_committed_bytes();
        if committed == 0 {
            0.0
        } else {
            1.0 - self.movable_live_bytes as f64 / committed as f64
        }
    }

    /// Blocks in `state`, over all spans.
    pub fn count(&self, state: BlockState) -> usize {
        self.spans.iter().map(|s| s.count(state)).sum()
    }
}

impl Heap {
    /// Which blocks of which spans are live right now: for a heap picture (the defrag
    /// demo draws it) or a test. Takes each arena lock in turn, and reads pin counts
    /// without locking slots, so under concurrent use it is a per-span snapshot only.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{BlockState, Heap};
    /// let heap = Heap::new();
    /// let hs: Vec<_> = (0..100).map(|_| heap.alloc_handle(64, 16).unwrap()).collect();
    /// let pin = heap.pin(hs[3]).unwrap();
    /// let map = heap.occupancy_map();
    /// assert_eq!(map.count(BlockState::Movable), 99);
    /// assert_eq!(map.count(BlockState::Pinned), 1);
    /// assert_eq!(map.movable_live_bytes, 6400);
    /// drop(pin);
    /// ```
    pub fn occupancy_map(&self) -> OccupancyMap {
        let inner = self.inner();
        let table = self.handles();
        let mut map = OccupancyMap::default();
        for arena in &inner.arenas[..inner.arena_count()] {
            let st = arena.lock();
            let mut visit = |s: &Span| {
                // SAFETY: the arena lock is held (for the whole visit).
                let state = unsafe { s.state() };
                let cap = s.capacity();
                let carved = state.carved as usize;
                let mut blocks = vec![BlockState::Free; cap];
                let kind = s.kind();
                if kind == SpanKind::Movable {
                    for (i, b) in blocks.iter_mut().enumerate().take(carved) {
                        // SAFETY: movable span, `i < carved <= capacity`.
                        let m = unsafe { s.meta(i) };
                        let owner = m.owner(Ordering::Acquire);
                        *b = if owner == 0 {
                            BlockState::Cached
                        } else {
                            map.movable_live_bytes += m.len();
                            let pinned = table
                                .slot(owner - 1)
                                .is_some_and(|slot| slot.snapshot().pins > 0);
                            if pinned {
                                BlockState::Pinned
                            } else {
                                BlockState::Movable
                            }
                        };
                    }
                } else {
                    blocks[..carved].fill(BlockState::Fixed);
                }
                // Home blocks are free, whatever the kind.
                for (i, b) in blocks.iter_mut().enumerate().take(carved) {
                    if state.home.contains(i) {
                        *b = BlockState::Free;
                    }
                }
                map.spans.push(SpanOccupancy {
                    base: s.base,
                    bytes: s.bytes,
                    committed_bytes: s.committed_bytes(),
                    class: s.class(),
                    block_size: s.block_size(),
                    kind,
                    evacuating: state.list == ListId::Evacuating,
                    blocks,
                });
            };
            // SAFETY: the arena lock is held for every list iteration below.
            unsafe {
                for k in 0..2 {
                    for c in 0..NUM_CLASSES {
                        st.partial[k][c].iter().for_each(&mut visit);
                        st.full[k][c].iter().for_each(&mut visit);
                    }
                }
                for c in 0..NUM_CLASSES {
                    st.evacuating[c].iter().for_each(&mut visit);
                }
            }
            map.empty_committed_bytes += st.empty_committed;
        }
        map.spans
            .sort_by_key(|s| (s.kind != SpanKind::Movable, s.class, s.base));
        map
    }
}

#[cfg(test)]
mod tests {
    use core::alloc::Layout;

    use super::*;
    use crate::Budget;

    /// The map agrees with the counters at quiescence, through frees, pins, fixed
    /// blocks, cached blocks and a compaction.
    #[test]
    fn map_matches_stats_at_quiescence() {
        let heap = Heap::new();
        let hs: Vec<_> = (0..6000)
            .map(|i| {
                heap.alloc_handle(if i % 2 == 0 { 64 } else { 200 }, 16)
                    .unwrap()
            })
            .collect();
        let l = Layout::from_size_align(48, 16).unwrap();
        let fixed: Vec<_> = (0..500).map(|_| heap.alloc(l).unwrap()).collect();
        for (_, h) in hs.iter().enumerate().filter(|(i, _)| i % 6 > 1) {
            heap.free_handle(*h).unwrap();
        }
        let pins: Vec<_> = hs
            .iter()
            .step_by(300)
            .map(|h| heap.pin(*h).unwrap())
            .collect();
        let check = |map: &OccupancyMap, pinned: usize| {
            let s = heap.stats();
            assert_eq!(map.movable_live_bytes as u64, s.movable.live_bytes());
            assert_eq!(
                (map.count(BlockState::Movable) + map.count(BlockState::Pinned)) as u64,
                s.movable.live_blocks()
            );
            assert_eq!(map.count(BlockState::Pinned), pinned);
            assert_eq!(map.committed_bytes(), s.committed_bytes);
            for span in &map.spans {
                let movable = span.kind == SpanKind::Movable;
                assert!(span.blocks.iter().all(|b| match b {
                    BlockState::Movable | BlockState::Pinned | BlockState::Cached => movable,
                    BlockState::Fixed => !movable,
                    BlockState::Free => true,
                }));
            }
        };
        // Before a trim the freed blocks sit in this thread's cache.
        let map = heap.occupancy_map();
        check(&map, pins.len());
        assert!(map.count(BlockState::Cached) > 0);
        heap.trim();
        let map = heap.occupancy_map();
        check(&map, pins.len());
        assert_eq!(map.count(BlockState::Cached), 0);
        assert_eq!(map.count(BlockState::Fixed), fixed.len());
        let before = map.movable_fragmentation();
        heap.compact_full();
        let after = heap.occupancy_map();
        check(&after, pins.len());
        assert!(after.movable_fragmentation() < before);
        assert!((after.movable_fragmentation() - heap.fragmentation().ratio).abs() < 1e-9);
        drop(pins);
        heap.compact(Budget::UNLIMITED);
        check(&heap.occupancy_map(), 0);
        for p in fixed {
            // SAFETY: allocated above with `l`.
            unsafe { heap.dealloc(p, l) };
        }
    }
}
