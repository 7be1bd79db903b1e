//! AddressSanitizer annotations for pool blocks, so ASan sees inside the pools.
//!
//! Built with `--cfg tidyheap_asan` (together with `-Zsanitizer=address`; see the
//! README's *Contributing* section), the pools mark memory the program may not touch:
//!
//! ```text
//! span initialised for a class:   side table addressable │ every block and the tail poisoned
//! block carved for a cache:       link words [0, 16) addressable, the rest stays poisoned
//! block handed out (alloc, or a
//!   compaction move's target):    the whole block (its class size) addressable
//! block freed (free, or the old
//!   copy of a moved block):       link words addressable, [16, size) poisoned
//! heap released:                  all its chunks addressable again (before munmap)
//! ```
//!
//! A free block keeps its first 16 bytes addressable because the free lists (thread
//! caches, remote lists, central batches) keep their links there (see
//! `pool::central`); so a 16-byte block is never poisoned, and a use after free or an
//! overflow into a free neighbour is caught from byte 16 of that block on.
//!
//! Without the cfg every function here is an empty `#[inline(always)]` body: no cost.

use core::ptr::NonNull;

/// Bytes at the front of a free block that the free lists use (words 0 and 1).
pub(crate) const LINK_BYTES: usize = 16;

#[cfg(tidyheap_asan)]
unsafe extern "C" {
    /// From the ASan runtime: marks `[addr, addr + size)` unaddressable.
    fn __asan_poison_memory_region(addr: *const u8, size: usize);
    /// From the ASan runtime: marks `[addr, addr + size)` addressable.
    fn __asan_unpoison_memory_region(addr: *const u8, size: usize);
}

/// Marks `[addr, addr + size)` unaddressable for ASan.
#[cfg(tidyheap_asan)]
#[inline(always)]
pub(crate) fn poison(addr: usize, size: usize) {
    // SAFETY: the ASan runtime only updates its shadow memory for the range; it never
    // dereferences `addr`, and every range passed here lies in the heap's own mappings.
    unsafe { __asan_poison_memory_region(addr as *const u8, size) }
}

/// Marks `[addr, addr + size)` addressable for ASan.
#[cfg(tidyheap_asan)]
#[inline(always)]
pub(crate) fn unpoison(addr: usize, size: usize) {
    // SAFETY: as in `poison`.
    unsafe { __asan_unpoison_memory_region(addr as *const u8, size) }
}

/// Without ASan: nothing.
#[cfg(not(tidyheap_asan))]
#[inline(always)]
pub(crate) fn poison(_addr: usize, _size: usize) {}

/// Without ASan: nothing.
#[cfg(not(tidyheap_asan))]
#[inline(always)]
pub(crate) fn unpoison(_addr: usize, _size: usize) {}

/// `block` (of `size` bytes) went free: only its link words stay addressable.
#[inline(always)]
pub(crate) fn free_block(block: NonNull<u8>, size: usize) {
    let a = block.as_ptr() as usize;
    unpoison(a, LINK_BYTES.min(size));
    poison(a + LINK_BYTES, size.saturating_sub(LINK_BYTES));
}

/// A freshly carved `block` is about to enter a free list: its link words become
/// addressable (the rest stays poisoned from the span's initialisation).
#[inline(always)]
pub(crate) fn carved_block(block: NonNull<u8>, size: usize) {
    unpoison(block.as_ptr() as usize, LINK_BYTES.min(size));
}

/// `block` (of `size` bytes) is handed out: all of it is addressable.
#[inline(always)]
pub(crate) fn live_block(block: NonNull<u8>, size: usize) {
    unpoison(block.as_ptr() as usize, size);
}

/// [`live_block`] for a block of size class `class` (its size is only looked up under
/// ASan, so the hot paths carry no table lookup or bounds check for it).
#[inline(always)]
pub(crate) fn live_class(block: NonNull<u8>, class: usize) {
    #[cfg(tidyheap_asan)]
    live_block(block, crate::size_class::size(class));
    #[cfg(not(tidyheap_asan))]
    let _ = (block, class);
}

/// [`free_block`] for a block of size class `class` (see [`live_class`]).
#[inline(always)]
pub(crate) fn free_class(block: NonNull<u8>, class: usize) {
    #[cfg(tidyheap_asan)]
    free_block(block, crate::size_class::size(class));
    #[cfg(not(tidyheap_asan))]
    let _ = (block, class);
}
