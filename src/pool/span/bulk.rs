//! A span's home blocks in bulk, for the compactor: a target hands all its home
//! blocks to a pass at once (`detach_home`), and a source takes back the old copies of
//! a batch of moved blocks at once (`put_indices`). Both work on the home bitmap a word
//! (64 blocks) at a time and read no block; the side table's home marks are still kept
//! one entry per block (see `BlockMeta`).

use core::ptr;
use std::sync::atomic::Ordering;

use super::{Span, SpanKind};
use crate::pool::poison;

impl Span {
    /// Movable spans: takes every home block out of the span's home set for the caller
    /// (a compaction target reserving its destinations), without reading the blocks:
    /// their indices are read from the home bitmap and pushed onto `out` in
    /// *descending* address order (so `out.pop()` yields the lowest address first). The
    /// blocks count as out (accounting in the module docs) until the caller puts them
    /// back with [`Span::put`] or uses them; they stay poisoned as free until used.
    /// Moves nothing between arena lists: the caller does (the span may now have no
    /// room). Returns how many blocks were taken, or `None`, taking nothing, if `out`
    /// has too little spare capacity (it is never grown here: growing could allocate
    /// under the arena lock).
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * the span is movable and initialised.
    pub(crate) unsafe fn detach_home(&self, out: &mut Vec<u32>) -> Option<usize> {
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        let n = st.free_count as usize;
        if out.capacity() - out.len() < n {
            return None;
        }
        let found = st.home.drain_highest(|i| {
            // SAFETY: movable and initialised (caller), `i < carved <= capacity`; the
            // entry of a home block was written (home) in this life.
            unsafe { self.meta(i) }.set_home_written(false);
            out.push(i as u32);
        });
        debug_assert_eq!(found, n, "free_count counts the home set");
        st.free_count = 0;
        Some(found)
    }

    /// Puts blocks `indices` (strictly ascending) back in the span's home set, as
    /// [`Span::put`] does one block: one bitmap update per word of 64 blocks. A block
    /// that is home already (a double free no earlier check caught) aborts the process
    /// with a message.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * `indices` are out blocks of this span that were live in its current life (their
    ///   side-table entries held an owner, so their pages are counted) and that nobody
    ///   uses any more.
    pub(crate) unsafe fn put_indices(&self, indices: &[u32]) {
        debug_assert!(indices.is_sorted_by(|a, b| a < b), "strictly ascending");
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        let movable = self.kind() == SpanKind::Movable;
        let size = self.block_size();
        for run in indices.chunk_by(|a, b| a / u64::BITS == b / u64::BITS) {
            let w = (run[0] / u64::BITS) as usize;
            let mask = run.iter().fold(0u64, |m, &i| m | 1 << (i % u64::BITS));
            if let Err(i) = st.home.insert_word(w, mask) {
                crate::misuse::fatal!("double free of {:p} ({size} B class)", self.block(i))
            }
        }
        for &i in indices {
            let i = i as usize;
            debug_assert!(i < st.carved as usize, "only carved blocks come home");
            poison::free_block(self.block(i), size);
            if movable {
                // SAFETY: movable and initialised (we hold one of its blocks under the
                // lock), `i < carved <= capacity`; the entry held an owner (caller).
                unsafe { self.meta(i) }.set_home_written(true);
            }
        }
        st.free_count += indices.len() as u32;
        debug_assert!(st.free_count <= st.carved);
        if st.free_count == st.carved {
            // As in `Span::put`: no block is out, so no free may route on the owner.
            self.owner.store(ptr::null_mut(), Ordering::Relaxed);
        }
    }
}
