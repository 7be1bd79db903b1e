//! Reader samples of handle-addressed blocks: which node reads each block most.
//!
//! # Where the samples live, and why not in the span's side table
//!
//! The movable side table holds 6 bytes a block (owner + slack, outside the span);
//! one more byte a block would cost every heap, one node or many, about 1.5 % of a 64 B
//! class in metadata (the seed-pattern test's `fragmentation < 0.1` after a full
//! compaction would no longer hold). So the samples live beside the heap instead, in
//! one `MAP_NORESERVE` mapping that only a heap with more than one node and migration on
//! ever makes (at its first sample), keyed by *(span table index, block index)*:
//!
//! ```text
//! flags:   [u8; MAX_SPANS]            a span holds a block that may be misplaced
//! entries: [[u16; stride]; MAX_SPANS] one per block; stride = the largest movable capacity
//! entry:   node (bits 0..6) | count (bits 6..10) | owner tag (bits 10..16)
//! ```
//!
//! Pages are touched only for spans some reader sampled: at most `2 · stride` bytes
//! (two pages for the 16 B class, one for most) per sampled span. The reservation is
//! virtual address space only (about 25 GiB with `MAP_NORESERVE`); where the kernel
//! refuses it (strict overcommit), sampling stays off for the heap.
//!
//! # The majority counter
//!
//! Each entry keeps a Boyer–Moore majority vote over the sampled readers' nodes: a
//! sample from the recorded node raises the count (to 15), one from another node lowers
//! it, and at 0 the next sample's node takes over. So a node that reads a block more than
//! all others together ends up recorded with a count that grows with its lead. A block
//! is *misplaced* when the recorded node is not its span's arena node and the count is at
//! least the heap's threshold ([`NumaMigration::threshold`](super::NumaMigration)).
//!
//! The owner tag (6 bits of the owning handle's slot index and generation) tells samples
//! of the block's current owner from those of an earlier block at the same place: a sample whose tag
//! differs starts the vote afresh, and the planner ignores an entry whose tag is not the
//! current owner's. (One in 64 reused places may inherit an old vote: the cost is one
//! needless move, never a wrong one.)
//!
//! Updates are relaxed loads and stores: two readers sampling one block at once may lose
//! a sample, which a vote tolerates. Nothing here is needed for soundness; the compactor
//! re-validates every move it plans from these samples (DESIGN invariant 7).

use core::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU16, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::os;
use crate::pool::arena::MAX_SPANS;
use crate::pool::span::{SpanKind, capacity_of};
use crate::size_class::NUM_CLASSES;

/// Largest count of the majority vote.
pub(crate) const MAX_COUNT: u8 = 15;

const NODE_BITS: u32 = 6;
const COUNT_SHIFT: u32 = NODE_BITS;
const TAG_SHIFT: u32 = COUNT_SHIFT + 4;
const _: () = assert!(
    super::MAX_NODES <= 1 << NODE_BITS,
    "node indexes fit the entry"
);

/// One decoded entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Vote {
    /// Dense node index of the leading reader.
    pub(crate) node: usize,
    /// Its lead, `0..=MAX_COUNT`.
    pub(crate) count: u8,
    /// Owner tag of the block the vote is about.
    pub(crate) tag: u8,
}

impl Vote {
    fn decode(e: u16) -> Self {
        Self {
            node: usize::from(e & ((1 << NODE_BITS) - 1)),
            count: ((e >> COUNT_SHIFT) & 0xf) as u8,
            tag: (e >> TAG_SHIFT) as u8,
        }
    }

    fn encode(self) -> u16 {
        self.node as u16 | u16::from(self.count) << COUNT_SHIFT | u16::from(self.tag) << TAG_SHIFT
    }

    /// The vote after one sample from node `reader` for the block owned by `tag`.
    pub(crate) fn after(self, reader: usize, tag: u8) -> Self {
        if self.tag != tag || self.count == 0 {
            Self {
                node: reader,
                count: 1,
                tag,
            }
        } else if self.node == reader {
            Self {
                count: (self.count + 1).min(MAX_COUNT),
                ..self
            }
        } else {
            Self {
                count: self.count - 1,
                ..self
            }
        }
    }
}

/// Records one sample from node `reader` in the vote `e` of a large block owned by tag
/// `tag`; true when the vote just reached `threshold` (worth the compactor's look).
pub(crate) fn record_in(e: &AtomicU16, tag: u8, reader: usize, threshold: u8) -> bool {
    let old = Vote::decode(e.load(Ordering::Relaxed));
    let v = old.after(reader, tag);
    e.store(v.encode(), Ordering::Relaxed);
    v.count >= threshold && (old.count < threshold || old.tag != tag)
}

/// Takes the vote `e` of a large block, leaving it cleared.
pub(crate) fn take_vote(e: &AtomicU16) -> Vote {
    Vote::decode(e.swap(0, Ordering::Relaxed))
}

/// The owner tag of the block of the handle with slot `index` and `generation`: a new
/// occupant of the same slot (whose generation is 2 higher) gets another tag, so a
/// block freed and re-allocated at once into the same slot and place does not inherit
/// the old vote (until the tags come round again, 64 occupancies later).
#[inline]
pub(crate) fn owner_tag(index: u32, generation: u32) -> u8 {
    ((index ^ (generation >> 1)) & 0x3f) as u8
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ReaderMap {
    /// The mapping, or null before the first sample (and after a refused reservation).
    base: AtomicPtr<u8>,
    /// Entries per span (the largest movable capacity); set with `base`.
    stride: AtomicUsize,
    /// Serialises making the mapping; true once the kernel refused it.
    make: Mutex<bool>,
}

impl ReaderMap {
    pub(crate) const fn new() -> Self {
        Self {
            base: AtomicPtr::new(core::ptr::null_mut()),
            stride: AtomicUsize::new(0),
            make: Mutex::new(false),
        }
    }

    fn flags_bytes() -> usize {
        MAX_SPANS.next_multiple_of(os::PAGE_SIZE)
    }

    fn map_bytes(stride: usize) -> usize {
        Self::flags_bytes() + MAX_SPANS * stride * size_of::<u16>()
    }

    /// The mapping, made now if it does not exist yet; `None` if the kernel refused it.
    pub(crate) fn get_or_make(&self) -> Option<Mapped<'_>> {
        if let Some(m) = self.get() {
            return Some(m);
        }
        let mut refused = self.make.lock();
        if let Some(m) = self.get() {
            return Some(m);
        }
        if *refused {
            return None;
        }
        let stride = (0..NUM_CLASSES)
            .map(|c| capacity_of(c, SpanKind::Movable))
            .max()
            .unwrap_or(0);
        match os::reserve(Self::map_bytes(stride), os::PAGE_SIZE) {
            Ok(p) => {
                self.stride.store(stride, Ordering::Relaxed);
                // Release: whoever sees the base also sees the stride.
                self.base.store(p.as_ptr(), Ordering::Release);
                self.get()
            }
            Err(_) => {
                *refused = true;
                None
            }
        }
    }

    /// The mapping if it exists (one load).
    #[inline]
    pub(crate) fn get(&self) -> Option<Mapped<'_>> {
        let base = NonNull::new(self.base.load(Ordering::Acquire))?;
        Some(Mapped {
            base,
            stride: self.stride.load(Ordering::Relaxed),
            _map: self,
        })
    }
}

impl Drop for ReaderMap {
    fn drop(&mut self) {
        if let Some(m) = self.get() {
            // SAFETY: the mapping was reserved with `map_bytes(stride)` and is ours; the
            // map is being dropped, so no `Mapped` borrowing it is alive.
            unsafe { os::release(m.base, Self::map_bytes(m.stride)) };
        }
    }
}

/// A view of a made mapping, valid while the map lives.
#[derive(Clone, Copy)]
pub(crate) struct Mapped<'a> {
    base: NonNull<u8>,
    stride: usize,
    _map: &'a ReaderMap,
}

impl Mapped<'_> {
    fn flag(&self, span: usize) -> &AtomicU8 {
        assert!(span < MAX_SPANS, "span index {span} out of the table");
        // SAFETY: the flags occupy the first `MAX_SPANS` bytes of the mapping, which lives
        // as long as the `ReaderMap` this view borrows; `span < MAX_SPANS`; any byte is a
        // valid `AtomicU8`.
        unsafe { &*self.base.as_ptr().add(span).cast::<AtomicU8>() }
    }

    fn entry(&self, span: usize, block: usize) -> &AtomicU16 {
        assert!(
            span < MAX_SPANS && block < self.stride,
            "block {block} of span {span} out of the map"
        );
        // SAFETY: the entries start at the page-aligned `flags_bytes()` and hold
        // `MAX_SPANS * stride` `u16`s, all inside the mapping, which lives as long as the
        // `ReaderMap` this view borrows; the indexes are in range (checked above), the
        // offset is even so the entry is 2-aligned, and any bytes are a valid `AtomicU16`.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(ReaderMap::flags_bytes())
                .cast::<AtomicU16>()
                .add(span * self.stride + block)
        }
    }

    /// The vote of block `block` of span `span`.
    pub(crate) fn vote(&self, span: usize, block: usize) -> Vote {
        Vote::decode(self.entry(span, block).load(Ordering::Relaxed))
    }

    /// Records one sample from node `reader` for the block, owned by slot tag `tag`;
    /// flags the span when the block now looks misplaced (away from `home`, the span's
    /// arena node, with a count of at least `threshold`).
    pub(crate) fn record(
        &self,
        span: usize,
        block: usize,
        tag: u8,
        reader: usize,
        home: usize,
        threshold: u8,
    ) {
        let e = self.entry(span, block);
        let v = Vote::decode(e.load(Ordering::Relaxed)).after(reader, tag);
        e.store(v.encode(), Ordering::Relaxed);
        if v.node != home && v.count >= threshold {
            self.flag(span).store(1, Ordering::Relaxed);
        }
    }

    /// Sets the vote of a block (after a move: the old place's is cleared, the new
    /// place's gets `v`).
    pub(crate) fn set(&self, span: usize, block: usize, v: Vote) {
        self.entry(span, block).store(v.encode(), Ordering::Relaxed);
    }

    /// Clears the vote of a block.
    pub(crate) fn clear(&self, span: usize, block: usize) {
        self.entry(span, block).store(0, Ordering::Relaxed);
    }

    /// Takes the span's flag: whether it was set.
    pub(crate) fn take_flag(&self, span: usize) -> bool {
        let f = self.flag(span);
        f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::Relaxed) != 0
    }

    /// Flags the span again (a misplaced block could not move yet).
    pub(crate) fn set_flag(&self, span: usize) {
        self.flag(span).store(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_round_trip() {
        for node in [0, 1, 17, 63] {
            for count in 0..=MAX_COUNT {
                for tag in [0, 1, 42, 63] {
                    let v = Vote { node, count, tag };
                    assert_eq!(Vote::decode(v.encode()), v);
                }
            }
        }
    }

    /// A node reading more than all others together leads the vote; a new owner tag
    /// restarts it; the count saturates.
    #[test]
    fn majority_vote() {
        let mut v = Vote::decode(0);
        for k in 0..40 {
            v = v.after(if k % 3 == 0 { 0 } else { 1 }, 5);
        }
        assert_eq!((v.node, v.tag), (1, 5));
        assert!(v.count >= 8, "{v:?}");
        for _ in 0..40 {
            v = v.after(1, 5);
        }
        assert_eq!(v.count, MAX_COUNT);
        assert_eq!(
            v.after(0, 6),
            Vote {
                node: 0,
                count: 1,
                tag: 6
            }
        );
        let mut w = Vote {
            node: 1,
            count: 1,
            tag: 5,
        };
        w = w.after(0, 5);
        assert_eq!(w.count, 0);
        assert_eq!(
            w.after(0, 5),
            Vote {
                node: 0,
                count: 1,
                tag: 5
            }
        );
    }

    #[test]
    fn map_records_and_flags() {
        let map = ReaderMap::new();
        assert!(map.get().is_none());
        let m = map.get_or_make().expect("the reservation is virtual");
        assert!(!m.take_flag(7));
        for _ in 0..8 {
            m.record(7, 3, 9, 1, 0, 8);
        }
        assert_eq!(
            m.vote(7, 3),
            Vote {
                node: 1,
                count: 8,
                tag: 9
            }
        );
        assert!(m.take_flag(7));
        assert!(!m.take_flag(7));
        // Reading from the home node never flags.
        for _ in 0..20 {
            m.record(8, 0, 1, 0, 0, 1);
        }
        assert!(!m.take_flag(8));
        m.clear(7, 3);
        assert_eq!(m.vote(7, 3).count, 0);
        let last = MAX_SPANS - 1;
        m.record(last, m.stride - 1, 0, 2, 0, 1);
        assert!(m.take_flag(last));
    }
}
