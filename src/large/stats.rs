//! The allocator's counters and their public snapshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[cfg(doc)]
use super::LargeAllocator;

/// Relaxed event counters; exact whenever no call is in flight.
///
/// Invariants at quiescence: `live_blocks == maps - unmaps`; `live_bytes` is the sum of
/// the requested sizes of live blocks and `mapped_bytes` the sum of their `total`s.
/// Every update adds before it subtracts, so no counter dips below its true value.
///
/// These are `std` atomics, not `crate::sync`'s: they are statistics, not a protocol
/// loom could check, and [`LargeAllocator::new`] must stay `const` (loom's are not).
#[derive(Debug)]
pub(super) struct Counters {
    pub(super) live_blocks: AtomicUsize,
    pub(super) live_bytes: AtomicUsize,
    pub(super) mapped_bytes: AtomicUsize,
    pub(super) maps: AtomicU64,
    pub(super) unmaps: AtomicU64,
    pub(super) huge_tlb: AtomicU64,
    pub(super) huge_fallbacks: AtomicU64,
    pub(super) grow_in_place: AtomicU64,
    pub(super) grow_moved: AtomicU64,
    pub(super) shrink_in_place: AtomicU64,
    pub(super) relocations: AtomicU64,
    pub(super) copy_fallbacks: AtomicU64,
    pub(super) node_placements: AtomicU64,
}

impl Counters {
    pub(super) const fn new() -> Self {
        Self {
            live_blocks: AtomicUsize::new(0),
            live_bytes: AtomicUsize::new(0),
            mapped_bytes: AtomicUsize::new(0),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            huge_tlb: AtomicU64::new(0),
            huge_fallbacks: AtomicU64::new(0),
            grow_in_place: AtomicU64::new(0),
            grow_moved: AtomicU64::new(0),
            shrink_in_place: AtomicU64::new(0),
            relocations: AtomicU64::new(0),
            copy_fallbacks: AtomicU64::new(0),
            node_placements: AtomicU64::new(0),
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a new block of `size` requested bytes in a mapping of `total` bytes.
    pub(super) fn on_map(&self, size: usize, total: usize) {
        self.live_blocks.fetch_add(1, Ordering::Relaxed);
        self.resize(0, 0, size, total);
        Self::bump(&self.maps);
    }

    /// Records the unmapping of a block recorded by [`on_map`](Self::on_map).
    pub(super) fn on_unmap(&self, size: usize, total: usize) {
        self.live_blocks.fetch_sub(1, Ordering::Relaxed);
        self.resize(size, total, 0, 0);
        Self::bump(&self.unmaps);
    }

    /// Records a live block changing from `(old_size, old_total)` to `(new_size, new_total)`.
    pub(super) fn resize(
        &self,
        old_size: usize,
        old_total: usize,
        new_size: usize,
        new_total: usize,
    ) {
        self.live_bytes.fetch_add(new_size, Ordering::Relaxed);
        self.live_bytes.fetch_sub(old_size, Ordering::Relaxed);
        self.mapped_bytes.fetch_add(new_total, Ordering::Relaxed);
        self.mapped_bytes.fetch_sub(old_total, Ordering::Relaxed);
    }

    /// A snapshot of every counter.
    pub(super) fn snapshot(&self) -> LargeStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LargeStats {
            live_blocks: self.live_blocks.load(Ordering::Relaxed),
            live_bytes: self.live_bytes.load(Ordering::Relaxed),
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            maps: get(&self.maps),
            unmaps: get(&self.unmaps),
            huge_tlb: get(&self.huge_tlb),
            huge_fallbacks: get(&self.huge_fallbacks),
            grow_in_place: get(&self.grow_in_place),
            grow_moved: get(&self.grow_moved),
            shrink_in_place: get(&self.shrink_in_place),
            relocations: get(&self.relocations),
            copy_fallbacks: get(&self.copy_fallbacks),
            node_placements: get(&self.node_placements),
        }
    }
}

/// A snapshot of a [`LargeAllocator`]'s counters, from [`LargeAllocator::stats`].
///
/// Exact when no call is in flight; while calls run, each field is a recent value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LargeStats {
    /// Blocks allocated and not yet freed.
    pub live_blocks: usize,
    /// Sum of the requested sizes of live blocks.
    pub live_bytes: usize,
    /// Sum of the mapping sizes of live blocks (rounding and guard pages included).
    pub mapped_bytes: usize,
    /// Blocks mapped by `alloc` (including the fresh block of a copy fallback).
    pub maps: u64,
    /// Blocks unmapped by `dealloc` (including the old block of a copy fallback).
    pub unmaps: u64,
    /// Blocks that got reserved huge pages (`MAP_HUGETLB`).
    pub huge_tlb: u64,
    /// Blocks big enough for huge pages that got ordinary pages plus `MADV_HUGEPAGE`.
    pub huge_fallbacks: u64,
    /// Growths that kept the address (within the usable size, or `mremap` in place).
    pub grow_in_place: u64,
    /// Growths that moved the mapping's pages to a new address (no copy).
    pub grow_moved: u64,
    /// Shrinks (always in place unless they fell back to a copy).
    pub shrink_in_place: u64,
    /// Blocks moved by [`LargeAllocator::relocate`] (no copy).
    pub relocations: u64,
    /// Reallocations and relocations the kernel could not do by remapping, done by
    /// allocate-copy-free instead.
    pub copy_fallbacks: u64,
    /// Blocks placed on a chosen node by [`LargeAllocator::alloc_on_node`].
    pub node_placements: u64,
}

impl LargeStats {
    /// The share of growths that kept their address, in `[0, 1]` (0 with no growths).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::large::LargeStats;
    /// let s = LargeStats { grow_in_place: 3, grow_moved: 1, ..LargeStats::default() };
    /// assert_eq!(s.in_place_growth_share(), 0.75);
    /// ```
    pub fn in_place_growth_share(&self) -> f64 {
        let all = self.grow_in_place + self.grow_moved;
        if all == 0 {
            0.0
        } else {
            self.grow_in_place as f64 / all as f64
        }
    }
}
