//! What the pool heap needs from the large allocator for the blocks a `realloc` grew
//! out of the pools (`pool::heap::resize`): such a block lives in a large mapping
//! whose length does not follow from the layout it is freed with, so the heap passes a
//! layout of its own for the mapping and counts the block's requested bytes apart.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::LargeAllocator;
use super::mapping::Geometry;
use super::registry::{self, Known};

impl LargeAllocator {
    /// Whether `ptr` may be a live block mapped for `map` (a layout whose mapping the
    /// caller knows): the registry has it with that mapping length, or has lost track of
    /// some blocks and cannot tell. `false` means it is surely not one (a double free, a
    /// foreign pointer, a block of another length).
    pub(crate) fn may_be_live(&self, ptr: NonNull<u8>, map: Layout) -> bool {
        let Ok(g) = Geometry::of(map.size(), map.align(), &self.config) else {
            return false;
        };
        match registry::get(ptr) {
            Known::Live(bytes) => bytes == g.total,
            Known::Untracked => true,
            Known::Unknown => false,
        }
    }

    /// Counts a live block as `to` requested bytes instead of `from`
    /// ([`LargeStats::live_bytes`](super::LargeStats::live_bytes)); the mapping is
    /// unchanged.
    pub(crate) fn recount(&self, from: usize, to: usize) {
        let live = &self.counters.live_bytes;
        live.fetch_add(to, Ordering::Relaxed);
        live.fetch_sub(from, Ordering::Relaxed);
    }
}
