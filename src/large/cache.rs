//! The cache of freed large mappings: a small table of whole mappings kept for reuse.
//!
//! # Why
//!
//! Unmapping a freed large block and mapping a fresh one for the next request makes the
//! kernel zero and fault in every page again (a 1 MiB block: 256 faults, ~100 µs), and
//! `munmap` flushes TLBs. Programs that stream textures or resize buffers do this all the
//! time. So `dealloc` parks the whole mapping here instead, and `alloc` takes the entry
//! that fits best and adjusts it to the new size with `mremap` (see
//! `LargeAllocator::resize_mapping`): shrinking unmaps the tail in place, growing
//! extends it in place (blocks sit in growth slots, see `placement`) or moves its pages.
//! The resident pages are reused; only the difference is faulted or released.
//!
//! # Bounds
//!
//! The table holds at most [`SLOTS`] mappings and `LargeConfig::cache_bytes` bytes. When
//! a new entry does not fit, the oldest entries are evicted; entries freed longer than
//! `LargeConfig::cache_age` ago are evicted at every large `alloc`/`dealloc`, and
//! `LargeAllocator::purge` evicts by age on demand (what `Heap::trim` and the
//! compactor's purge policy call). Evicted mappings are unmapped *after* the lock is
//! released, so the lock is held for a scan of [`SLOTS`] entries at most.
//!
//! # What an entry may be reused for
//!
//! A mapping's geometry is a pure function of the layout that frees it (the `Geometry`
//! invariant of the parent module), so a reused mapping must be made to match the new
//! request's geometry *exactly*: same `total`, start aligned to the new `map_align`.
//! * the start must already be aligned (`mremap` keeps it when resizing in place, and a
//!   moved mapping gets a fresh aligned reservation);
//! * a mapping that may hold `MAP_HUGETLB` pages is reused only for a huge request of
//!   exactly its size, since the kernel neither grows nor splits hugetlb mappings
//!   (see `LargeAllocator::realloc`);
//! * other entries are reused when their size is within a factor of two of the request:
//!   shrinking a much larger mapping would throw away pages a later request could use
//!   whole, and growing a much smaller one saves little.
//!
//! # Invariants
//!
//! `len <= SLOTS`; `entries[..len]` are distinct whole mappings owned by the cache and
//! used by nothing else; `bytes == Σ entries[..len].total <= cache_bytes` after every
//! insertion. Entries are unordered.

use core::ptr::NonNull;
use core::time::Duration;
use std::sync::atomic::Ordering;

use super::mapping::Geometry;
use super::{Counters, LargeAllocator};
use crate::os::{self, PAGE_SIZE};

/// Mappings the cache holds at most.
pub(super) const SLOTS: usize = 32;

/// A freed mapping: `[ptr, ptr + total)`, read-write except for a guard page at its
/// end when the allocator has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Start of the mapping (page-aligned).
    pub(super) ptr: NonNull<u8>,
    /// Bytes of the mapping, guard page included.
    pub(super) total: usize,
    /// When it was freed, from [`now_ns`].
    pub(super) freed_at: u64,
    /// It was advised `MADV_HUGEPAGE` (it served a huge block).
    pub(super) huge: bool,
    /// It may be a `MAP_HUGETLB` mapping: reusable only whole, for a huge request.
    pub(super) hugetlb: bool,
}

// SAFETY: an entry is the sole owner of a mapping nobody else uses (see the module
// invariants); handing it to another thread hands over that ownership, like a `Box`.
unsafe impl Send for Entry {}

impl Entry {
    const EMPTY: Self = Self {
        ptr: NonNull::dangling(),
        total: 0,
        freed_at: 0,
        huge: false,
        hugetlb: false,
    };
}

/// What a request needs from an entry (a projection of its `Geometry`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Want {
    /// The mapping size the block must end with.
    pub(super) total: usize,
    /// The start alignment the block needs.
    pub(super) align: usize,
    /// The request is a huge block.
    pub(super) huge: bool,
}

/// Mappings taken out of the cache to be unmapped by the caller, outside the lock.
#[derive(Debug)]
pub(super) struct Evicted {
    entries: [Entry; SLOTS + 1],
    len: usize,
}

impl Evicted {
    pub(super) const fn new() -> Self {
        Self {
            entries: [Entry::EMPTY; SLOTS + 1],
            len: 0,
        }
    }

    fn push(&mut self, e: Entry) {
        // At most every cached entry plus the one being inserted: `SLOTS + 1`.
        self.entries[self.len] = e;
        self.len += 1;
    }

    /// The evicted entries.
    pub(super) fn as_slice(&self) -> &[Entry] {
        &self.entries[..self.len]
    }
}

/// The table itself; lives under the allocator's cache lock.
#[derive(Debug)]
pub(super) struct Cache {
    entries: [Entry; SLOTS],
    /// Entries in use: `entries[..len]`.
    len: usize,
    /// Sum of their `total`s.
    bytes: usize,
}

impl Cache {
    pub(super) const fn new() -> Self {
        Self {
            entries: [Entry::EMPTY; SLOTS],
            len: 0,
            bytes: 0,
        }
    }

    fn remove(&mut self, i: usize) -> Entry {
        let e = self.entries[i];
        self.len -= 1;
        self.entries[i] = self.entries[self.len];
        self.bytes -= e.total;
        e
    }

    /// Whether `e`'s range overlaps a cached entry's: the block is already free (a double
    /// free, or a free with a wrong size after one).
    pub(super) fn overlaps(&self, e: &Entry) -> bool {
        let (start, end) = (e.ptr.addr().get(), e.ptr.addr().get() + e.total);
        self.entries[..self.len].iter().any(|c| {
            let c_start = c.ptr.addr().get();
            c_start < end && start < c_start + c.total
        })
    }

    /// Moves every entry freed at or before `cutoff` (a [`now_ns`] value) to `out`.
    pub(super) fn expire(&mut self, cutoff: u64, out: &mut Evicted) {
        let mut i = 0;
        while i < self.len {
            if self.entries[i].freed_at <= cutoff {
                out.push(self.remove(i));
            } else {
                i += 1;
            }
        }
    }

    /// Moves every entry to `out`.
    pub(super) fn drain(&mut self, out: &mut Evicted) {
        while self.len > 0 {
            out.push(self.remove(self.len - 1));
        }
    }

    /// Adds `e`, evicting the oldest entries to `out` until it fits in `SLOTS` entries
    /// and `cap` bytes. An entry larger than `cap` goes to `out` itself. Returns whether
    /// `e` was cached.
    pub(super) fn insert(&mut self, e: Entry, cap: usize, out: &mut Evicted) -> bool {
        if e.total > cap {
            out.push(e);
            return false;
        }
        while self.len == SLOTS || self.bytes + e.total > cap {
            let oldest = (0..self.len)
                .min_by_key(|&i| self.entries[i].freed_at)
                .expect("a full cache or one over its cap has entries");
            out.push(self.remove(oldest));
        }
        self.entries[self.len] = e;
        self.len += 1;
        self.bytes += e.total;
        true
    }

    /// Takes the entry that serves `want` best: one of exactly the right size, else the
    /// smallest larger one (its tail is unmapped), else the largest smaller one (it is
    /// grown); only within the rules of the module docs. Among equals, the most recently
    /// freed (its pages are likeliest still in cache).
    pub(super) fn take(&mut self, want: &Want) -> Option<Entry> {
        let mut best: Option<(usize, (usize, u64))> = None;
        for (i, e) in self.entries[..self.len].iter().enumerate() {
            if !e.ptr.addr().get().is_multiple_of(want.align) {
                continue;
            }
            let fits = if e.hugetlb {
                want.huge && e.total == want.total
            } else {
                e.total / 2 <= want.total && want.total / 2 <= e.total
            };
            if !fits {
                continue;
            }
            // Cost: bytes to release when shrinking, twice the bytes to fault when growing.
            let cost = if e.total >= want.total {
                e.total - want.total
            } else {
                2 * (want.total - e.total)
            };
            let key = (cost, u64::MAX - e.freed_at);
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| self.remove(i))
    }
}

impl LargeAllocator {
    /// The [`now_ns`] value before which entries are too old to keep, if any.
    fn cutoff(&self, now: u64, age: Duration) -> Option<u64> {
        let age = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
        now.checked_sub(age)
    }

    /// Takes a cached mapping for a block of `size` requested bytes and geometry `g`,
    /// resized to `g` and, if `zero`, zeroed; counts a hit or a miss. `None` when the
    /// cache is off or holds nothing that fits (the caller maps a fresh block).
    pub(super) fn take_cached(&self, size: usize, g: &Geometry, zero: bool) -> Option<NonNull<u8>> {
        if self.config.cache_bytes == 0 {
            return None;
        }
        let want = Want {
            total: g.total,
            align: g.map_align,
            huge: g.huge,
        };
        let mut evicted = Evicted::new();
        let cutoff = self.cutoff(now_ns(), self.config.cache_age);
        let taken = {
            let mut cache = self.cache.lock();
            if let Some(cutoff) = cutoff {
                cache.expire(cutoff, &mut evicted);
            }
            cache.take(&want)
        };
        self.release(&evicted);
        let c = &self.counters;
        let Some(e) = taken else {
            Counters::bump(&c.cache_misses);
            return None;
        };
        let guard = if self.config.guard_page { PAGE_SIZE } else { 0 };
        let og = Geometry {
            len: e.total - guard,
            total: e.total,
            map_align: PAGE_SIZE,
            huge: e.huge,
        };
        // SAFETY: `e` was a cache entry: a whole mapping of geometry `og` (the allocator's
        // guard page setting applies to every block), and taking it out made it ours alone.
        let p = match unsafe { self.resize_mapping(e.ptr, &og, g) } {
            Ok(p) => p,
            Err(_) => {
                let mut failed = Evicted::new();
                failed.push(e);
                self.release(&failed);
                Counters::bump(&c.cache_misses);
                return None;
            }
        };
        if g.huge && !e.huge {
            self.advise_huge(p, g);
        }
        if self.node_bound.load(Ordering::Relaxed) {
            // The mapping may carry an `alloc_on_node` policy: back to the default (a
            // placement hint; failure changes only where new pages go).
            // SAFETY: `mbind(MPOL_DEFAULT)` with no node mask only changes the memory
            // policy of `[p, p + g.len)`, a page-aligned range of our own block.
            let _hint_only = unsafe {
                libc::syscall(
                    libc::SYS_mbind,
                    p.as_ptr(),
                    g.len,
                    libc::MPOL_DEFAULT,
                    core::ptr::null::<libc::c_ulong>(),
                    0usize,
                    0u32,
                )
            };
        }
        if zero {
            // SAFETY: the block is ours and read-write up to `g.len`; the bytes past
            // `og.len` are fresh zero pages from the growth, the rest may be dirty.
            unsafe { p.as_ptr().write_bytes(0, og.len.min(g.len)) };
        }
        c.on_reuse(size, g.total, e.total);
        Some(p)
    }

    /// Parks a freed block's mapping in the cache, evicting older entries to make room,
    /// or unmaps it when it is too large for the cache.
    ///
    /// A block whose range the cache already holds was freed twice: the process aborts
    /// with a message naming it (see `crate::misuse`), before anything is reused.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + g.total)` is a whole block mapping of geometry `g` that nothing uses
    /// any more.
    ///
    pub(super) unsafe fn park(&self, ptr: NonNull<u8>, size: usize, g: &Geometry) {
        let cap = self.config.cache_bytes;
        if g.total > cap {
            // SAFETY: forwarded from the caller: a whole, dead block mapping.
            unsafe { os::release(ptr, g.total) };
            self.counters.on_unmap(size, g.total);
            return;
        }
        let now = now_ns();
        let entry = Entry {
            ptr,
            total: g.total,
            freed_at: now,
            huge: g.huge,
            // Only huge blocks ever get MAP_HUGETLB pages, and only once the flag is set.
            hugetlb: g.huge && self.hugetlb_mapped.load(Ordering::Relaxed),
        };
        let mut evicted = Evicted::new();
        let double_free = {
            let mut cache = self.cache.lock();
            let double_free = cache.overlaps(&entry);
            if !double_free {
                // Counted cached before takers can see it, so no counter dips below zero.
                self.counters.on_park(size, g.total);
                if let Some(cutoff) = self.cutoff(now, self.config.cache_age) {
                    cache.expire(cutoff, &mut evicted);
                }
                cache.insert(entry, cap, &mut evicted);
            }
            double_free
        };
        self.release(&evicted);
        if double_free {
            crate::misuse::fatal!("double free of large block {ptr:p} ({} B block)", g.len)
        }
    }

    /// Unmaps the cached mappings freed at least `older_than` ago (all of them with
    /// [`Duration::ZERO`]) and returns their bytes. This is the hook of a purge policy;
    /// `Heap::trim` calls it with zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{alloc::Layout, time::Duration};
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// let l = Layout::from_size_align(1 << 20, 8).unwrap();
    /// let p = large.alloc(l)?;
    /// // SAFETY: `p` is a live block of `l`.
    /// unsafe { large.dealloc(p, l) };
    /// assert_eq!(large.stats().cached_bytes, 1 << 20);
    /// assert_eq!(large.purge(Duration::from_secs(3600)), 0, "freed just now");
    /// assert_eq!(large.purge(Duration::ZERO), 1 << 20);
    /// assert_eq!(large.stats().cached_bytes, 0);
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn purge(&self, older_than: Duration) -> usize {
        let mut evicted = Evicted::new();
        {
            let mut cache = self.cache.lock();
            if older_than.is_zero() {
                cache.drain(&mut evicted);
            } else if let Some(cutoff) = self.cutoff(now_ns(), older_than) {
                cache.expire(cutoff, &mut evicted);
            }
        }
        self.release(&evicted)
    }

    /// Unmaps the cached mappings older than [`LargeConfig::cache_age`] and returns their
    /// bytes: what every large `alloc` and `dealloc` does on the way, for a purge policy
    /// to call when the program makes no large calls (a compaction pass, a frame end).
    ///
    /// [`LargeConfig::cache_age`]: super::LargeConfig::cache_age
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// let l = Layout::from_size_align(1 << 20, 8).unwrap();
    /// // SAFETY: the block is live between alloc and dealloc.
    /// unsafe { large.dealloc(large.alloc(l)?, l) };
    /// assert_eq!(large.purge_expired(), 0, "freed less than a second ago");
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn purge_expired(&self) -> usize {
        self.purge(self.config.cache_age)
    }

    /// Unmaps evicted entries and counts them; returns their bytes.
    fn release(&self, evicted: &Evicted) -> usize {
        let mut bytes = 0;
        for e in evicted.as_slice() {
            // SAFETY: `e` left the cache, which owned its whole mapping and let nothing
            // else use it (module invariants); eviction handed it to us alone.
            unsafe { os::release(e.ptr, e.total) };
            self.counters.on_evict(e.total);
            bytes += e.total;
        }
        bytes
    }
}

/// A coarse monotonic clock in nanoseconds (`CLOCK_MONOTONIC_COARSE`: a few ms of
/// resolution, read from the vDSO without a syscall). 0 if the clock is unavailable,
/// which makes every entry look freshly freed: the cache then evicts by size only.
pub(super) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn entry(addr: usize, total: usize, freed_at: u64) -> Entry {
        Entry {
            ptr: NonNull::new(core::ptr::without_provenance_mut(addr)).unwrap(),
            total,
            freed_at,
            huge: false,
            hugetlb: false,
        }
    }

    fn want(total: usize) -> Want {
        Want {
            total,
            align: 4096,
            huge: false,
        }
    }

    fn check_sum(c: &Cache) {
        let sum: usize = c.entries[..c.len].iter().map(|e| e.total).sum();
        assert_eq!(sum, c.bytes);
    }

    #[test]
    fn best_fit_prefers_exact_then_shrink_then_grow() {
        let mut c = Cache::new();
        let mut out = Evicted::new();
        for (i, total) in [MIB, 3 * MIB, 5 * MIB / 4, 3 * MIB / 4]
            .into_iter()
            .enumerate()
        {
            assert!(c.insert(entry((i + 1) << 30, total, i as u64), usize::MAX, &mut out));
        }
        assert_eq!(c.take(&want(MIB)).unwrap().total, MIB);
        assert_eq!(c.take(&want(MIB)).unwrap().total, 5 * MIB / 4);
        assert_eq!(c.take(&want(MIB)).unwrap().total, 3 * MIB / 4);
        // 3 MiB is more than twice 1 MiB: not taken.
        assert_eq!(c.take(&want(MIB)), None);
        assert_eq!(c.take(&want(2 * MIB)).unwrap().total, 3 * MIB);
        assert!(out.as_slice().is_empty());
        check_sum(&c);
    }

    #[test]
    fn alignment_and_hugetlb_rules() {
        let mut c = Cache::new();
        let mut out = Evicted::new();
        let mut h = entry(2 * MIB, 4 * MIB, 0);
        h.hugetlb = true;
        c.insert(h, usize::MAX, &mut out);
        c.insert(entry(3 * 4096, 4 * MIB, 0), usize::MAX, &mut out);
        let huge = |total| Want {
            total,
            align: 2 * MIB,
            huge: true,
        };
        // The 4 KiB-aligned entry cannot serve a 2 MiB-aligned block; the hugetlb one
        // serves only exactly its size.
        assert_eq!(c.take(&huge(6 * MIB)), None);
        assert_eq!(c.take(&huge(4 * MIB)), Some(h));
        assert_eq!(c.take(&want(4 * MIB)).unwrap().ptr.addr().get(), 3 * 4096);
        check_sum(&c);
    }

    #[test]
    fn insert_evicts_oldest_to_fit_count_and_bytes() {
        let mut c = Cache::new();
        let mut out = Evicted::new();
        for i in 0..SLOTS {
            assert!(c.insert(
                entry((i + 1) << 30, MIB, i as u64 + 10),
                usize::MAX,
                &mut out
            ));
        }
        assert!(c.insert(entry(1 << 50, MIB, 100), usize::MAX, &mut out));
        assert_eq!(out.as_slice(), &[entry(1 << 30, MIB, 10)]);
        let mut out = Evicted::new();
        // Cap of 4 MiB: a 2 MiB entry makes room by evicting all but the newest two.
        assert!(c.insert(entry(1 << 51, 2 * MIB, 101), 4 * MIB, &mut out));
        assert_eq!(c.len, 3);
        assert_eq!(out.as_slice().len(), SLOTS - 2);
        assert!(out.as_slice().iter().all(|e| e.freed_at <= 40));
        let mut out = Evicted::new();
        assert!(!c.insert(entry(1 << 52, 5 * MIB, 102), 4 * MIB, &mut out));
        assert_eq!(out.as_slice().len(), 1);
        check_sum(&c);
    }

    #[test]
    fn overlaps_finds_any_shared_byte() {
        let mut c = Cache::new();
        let mut out = Evicted::new();
        c.insert(entry(10 * MIB, MIB, 0), usize::MAX, &mut out);
        for (addr, total, hit) in [
            (10 * MIB, MIB, true),
            (10 * MIB + 4096, 4096, true),
            (9 * MIB, MIB + 4096, true),
            (9 * MIB, MIB, false),
            (11 * MIB, MIB, false),
        ] {
            assert_eq!(
                c.overlaps(&entry(addr, total, 0)),
                hit,
                "{addr:#x}+{total:#x}"
            );
        }
    }

    #[test]
    fn expire_and_drain_take_what_they_should() {
        let mut c = Cache::new();
        let mut out = Evicted::new();
        for i in 0..10u64 {
            c.insert(entry((i as usize + 1) << 30, MIB, i), usize::MAX, &mut out);
        }
        c.expire(4, &mut out);
        assert_eq!(out.as_slice().len(), 5);
        assert!(out.as_slice().iter().all(|e| e.freed_at <= 4));
        check_sum(&c);
        let mut out = Evicted::new();
        c.drain(&mut out);
        assert_eq!((out.as_slice().len(), c.len, c.bytes), (5, 0, 0));
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0 && b >= a);
    }
}
