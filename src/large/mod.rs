//! Large allocations and file-backed asset maps.
//!
//! # Large blocks
//!
//! Requests too big for the size-class pools (above 256 KiB, or aligned above 4 KiB) get
//! a mapping of their own from [`LargeAllocator`]. The allocator holds no list of its
//! live blocks: a block's whole mapping is a pure function of its [`Layout`] and the
//! [`LargeConfig`] (see `Geometry`), so `dealloc` needs nothing but the layout. Freed
//! mappings are parked in a small, bounded cache and reused, resized with `mremap`, by
//! later requests (the `cache` module): streaming 1–64 MiB buffers then faults no page
//! twice. The cache lives in the allocator under a spin-then-yield lock that never
//! allocates, so it stays fit to run inside a `#[global_allocator]`.
//!
//! # Accounting
//!
//! [`LargeStats`] counts live blocks (`live_blocks`, `live_bytes` requested,
//! `mapped_bytes` of their mappings) apart from cached ones (`cached_blocks`,
//! `cached_bytes`): a cached mapping is held from the OS but holds no live block. At
//! quiescence `maps - unmaps == live_blocks + cached_blocks`, and the bytes held from
//! the OS for large blocks are `mapped_bytes + cached_bytes`. [`LargeAllocator::purge`]
//! (called by `Heap::trim` with a zero age) unmaps cached mappings.
//!
//! ```text
//!  ptr (aligned to max(align, 4 KiB), to 2 MiB when huge)
//!  │
//!  ▼
//!  ├──────────────── len ─────────────────┼─ guard ─┼╌╌╌╌ free slot room ╌╌╌╌╌╌╌┤
//!  │ size requested │ rounding (usable)   │PROT_NONE│ unmapped: in-place growth │
//!  └────────────────┴─────────────────────┴─────────┴╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌╌┘
//!  len = size rounded up to 4 KiB (to 2 MiB for huge blocks); guard only if configured
//! ```
//!
//! * **Huge pages.** Blocks of 2 MiB and more first try `MAP_HUGETLB` (explicitly
//!   reserved 2 MiB pages); when none are reserved they get ordinary pages, 2 MiB-aligned,
//!   with `madvise(MADV_HUGEPAGE)` so transparent huge pages can back them. Both outcomes
//!   are counted. [`HugePages::Advise`] skips the first attempt (so tests can force the
//!   fallback), [`HugePages::Never`] skips both.
//! * **Guard page.** With [`LargeConfig::guard_page`], the page after the usable bytes is
//!   `PROT_NONE`: running past [`LargeAllocator::usable_size`] faults at once.
//! * **Growth without copying.** [`LargeAllocator::realloc`] first asks `mremap` to extend
//!   the mapping where it is. Blocks are placed with room after them (the `placement`
//!   module), so this usually succeeds. Otherwise the mapping's pages are moved to a
//!   fresh, aligned reservation (`mremap(MAYMOVE | FIXED)`): the page tables move, the
//!   bytes do not. Shrinking unmaps the tail in place. Only if the kernel refuses both
//!   (hugetlb mappings on old kernels, the VMA limit) does it fall back to
//!   allocate-copy-free, counted in [`LargeStats::copy_fallbacks`].
//! * **Reuse.** A freed mapping is cached unless it alone exceeds
//!   [`LargeConfig::cache_bytes`]; older entries are evicted to make room, and entries
//!   older than [`LargeConfig::cache_age`] at the next large call or [`purge`]. `alloc`
//!   takes the best-fitting entry (a factor of two either way) and resizes it in place or
//!   by moving its pages, as `realloc` does; [`LargeAllocator::alloc`] zeroes what it
//!   reuses, [`LargeAllocator::alloc_uninit`] does not.
//!
//!   [`purge`]: LargeAllocator::purge
//! * **Relocation.** [`LargeAllocator::relocate`] moves a block's pages to a new address
//!   the same way, for the compactor's handle-addressed large blocks.
//!
//! # File-backed assets
//!
//! [`MappedAsset`] maps an asset file read-only, with sequential and will-need advice,
//! and unmaps it on drop.

mod asset;
mod cache;
mod placement;
mod registry;
mod stats;

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::time::Duration;
use std::sync::atomic::{AtomicBool, Ordering};

pub use asset::MappedAsset;
pub use stats::LargeStats;

use stats::Counters;

use crate::AllocError;
use crate::numa::{self, NodePolicy, NumaError};
use crate::os::{self, OsError, PAGE_SIZE, round_up};
use crate::pool::lock::Mutex;

/// The huge page size tidyheap asks for (x86-64 and aarch64 with 4 KiB base pages).
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Whether large blocks of [`HUGE_PAGE_SIZE`] and more use huge pages.
///
/// # Examples
///
/// ```
/// use tidyheap::large::{HugePages, LargeConfig};
/// assert_eq!(LargeConfig::DEFAULT.huge_pages, HugePages::Try);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HugePages {
    /// Ordinary pages only; sizes are rounded to 4 KiB.
    Never,
    /// Skip `MAP_HUGETLB`; map ordinary pages, 2 MiB-aligned and rounded, and advise
    /// `MADV_HUGEPAGE` (the fallback path of [`HugePages::Try`], taken every time).
    Advise,
    /// Try `MAP_HUGETLB` (2 MiB pages the administrator reserved); if the kernel has none,
    /// fall back to [`HugePages::Advise`]. Blocks with a guard page always use the
    /// fallback, since a hugetlb mapping cannot have a 4 KiB guard.
    #[default]
    Try,
}

/// How a [`LargeAllocator`] maps its blocks.
///
/// # Examples
///
/// ```
/// use tidyheap::large::{LargeAllocator, LargeConfig};
/// static GUARDED: LargeAllocator =
///     LargeAllocator::new(LargeConfig { guard_page: true, ..LargeConfig::DEFAULT });
/// assert!(GUARDED.config().guard_page);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LargeConfig {
    /// Huge-page policy for blocks of [`HUGE_PAGE_SIZE`] and more. Default [`HugePages::Try`].
    pub huge_pages: HugePages,
    /// Put a `PROT_NONE` page after every block, so overruns fault. Default `false`.
    pub guard_page: bool,
    /// Place blocks with unmapped address space after them (see the module docs), so
    /// `realloc` can grow them in place. Default `true`; `false` lets the kernel place
    /// them, which makes most growths move.
    pub growth_room: bool,
    /// Bytes of freed mappings kept for reuse, at most (see the module docs). A freed
    /// mapping larger than this is unmapped at once; `0` turns the cache off. Default
    /// 64 MiB.
    pub cache_bytes: usize,
    /// A cached mapping freed longer than this ago is unmapped at the next large
    /// allocation or free, or by [`LargeAllocator::purge`]. Default 1 s.
    pub cache_age: Duration,
}

impl LargeConfig {
    /// The defaults: huge pages tried, no guard page, growth room on, a cache of up to
    /// 64 MiB of mappings freed less than a second ago.
    pub const DEFAULT: Self = Self {
        huge_pages: HugePages::Try,
        guard_page: false,
        growth_room: true,
        cache_bytes: 64 << 20,
        cache_age: Duration::from_secs(1),
    };

    /// [`LargeConfig::DEFAULT`] without the cache: every free unmaps at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::large::LargeConfig;
    /// assert_eq!(LargeConfig::UNCACHED.cache_bytes, 0);
    /// ```
    pub const UNCACHED: Self = Self {
        cache_bytes: 0,
        ..Self::DEFAULT
    };
}

impl Default for LargeConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The mapping a block of a given layout gets: a pure function of `(size, align, config)`.
///
/// Invariants (what lets `dealloc` work from the layout alone):
/// * the block's mapping is exactly `[ptr, ptr + total)`; `[ptr, ptr + len)` is
///   read-write and `[ptr + len, ptr + total)` is the guard page, if any;
/// * `len` and `total` are the same for every size `s'` in `[s, len(s)]`: a block freed
///   with any size between the requested one and its usable size is unmapped whole.
///   (`huge` and `map_align` may differ at one point: `2 MiB - 1` is not huge, yet its
///   usable size 2 MiB is. They only steer placement and advice.);
/// * `total + map_align <= isize::MAX` (the worst case of an aligned over-mapping);
/// * a `MAP_HUGETLB` block is always `huge` (its `len` a whole number of huge pages):
///   only huge blocks get hugetlb pages, and `realloc` never shrinks one that may be
///   hugetlb below [`HUGE_PAGE_SIZE`] in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    /// Usable bytes: the size (at least 1) rounded up to 4 KiB, or to 2 MiB when `huge`.
    len: usize,
    /// `len` plus the guard page, if configured.
    total: usize,
    /// Alignment of `ptr`: the layout's, at least a page, at least 2 MiB when `huge`.
    map_align: usize,
    /// The size is at least [`HUGE_PAGE_SIZE`] and the config allows huge pages.
    huge: bool,
}

impl Geometry {
    fn of(size: usize, align: usize, config: &LargeConfig) -> Result<Self, AllocError> {
        let too_large = AllocError::TooLarge { size };
        if !align.is_power_of_two() {
            return Err(AllocError::InvalidAlignment { align });
        }
        let huge = config.huge_pages != HugePages::Never && size >= HUGE_PAGE_SIZE;
        let unit = if huge { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        let len = round_up(size.max(1), unit).ok_or(too_large)?;
        let guard = if config.guard_page { PAGE_SIZE } else { 0 };
        let total = len.checked_add(guard).ok_or(too_large)?;
        let map_align = align.max(unit);
        match total.checked_add(map_align) {
            Some(worst) if worst <= isize::MAX as usize => Ok(Self {
                len,
                total,
                map_align,
                huge,
            }),
            _ => Err(too_large),
        }
    }
}

/// Maps large blocks directly from the OS and caches freed mappings; see the
/// [module docs](self).
///
/// Allocation-free: a config, relaxed counters and a fixed-size cache under a lock that
/// never parks. It can live in a `static` and serve a `#[global_allocator]`. Dropping it
/// unmaps its cached mappings (live blocks stay the caller's).
///
/// # Examples
///
/// ```
/// use std::alloc::Layout;
/// use tidyheap::large::{LargeAllocator, LargeConfig};
///
/// let large = LargeAllocator::new(LargeConfig::DEFAULT);
/// let layout = Layout::from_size_align(1 << 20, 64).unwrap();
/// let p = large.alloc(layout)?;
/// // SAFETY: `p` is a fresh, zeroed, writable block of 1 MiB.
/// unsafe { p.as_ptr().add((1 << 20) - 1).write(7) };
/// // SAFETY: `p` came from `large.alloc(layout)`; it is grown with the same alignment.
/// let p = unsafe { large.realloc(p, layout, 4 << 20)? };
/// // SAFETY: the contents moved with the block; its new size is 4 MiB.
/// unsafe {
///     assert_eq!(p.as_ptr().add((1 << 20) - 1).read(), 7);
///     large.dealloc(p, Layout::from_size_align(4 << 20, 64).unwrap());
/// }
/// assert_eq!((large.stats().live_blocks, large.stats().cached_blocks), (0, 1));
/// assert_eq!(large.purge(std::time::Duration::ZERO), 4 << 20);
/// # Ok::<(), tidyheap::AllocError>(())
/// ```
#[derive(Debug)]
pub struct LargeAllocator {
    config: LargeConfig,
    counters: Counters,
    /// Set (for good) once a block got `MAP_HUGETLB` pages. Until then no block is a
    /// hugetlb mapping, and huge blocks may shrink below 2 MiB in place.
    ///
    /// Relaxed suffices: the store precedes the return of that block's pointer, and any
    /// thread that later reallocates the block received the pointer through some
    /// synchronisation, which carries the store with it.
    hugetlb_mapped: AtomicBool,
    /// Set (for good) once [`alloc_on_node`](Self::alloc_on_node) gave a block a node
    /// policy. From then on a mapping reused from the cache has its policy reset, since
    /// it may come from such a block. Relaxed suffices, as for `hugetlb_mapped`: the
    /// store precedes that block's pointer, and the block reaches the cache (and its
    /// taker, under the cache lock) only through synchronisation that carries it.
    node_bound: AtomicBool,
    /// Freed mappings kept for reuse (the `cache` module).
    cache: Mutex<cache::Cache>,
}

impl Drop for LargeAllocator {
    fn drop(&mut self) {
        self.purge(Duration::ZERO);
    }
}

impl Default for LargeAllocator {
    fn default() -> Self {
        Self::new(LargeConfig::DEFAULT)
    }
}

impl LargeAllocator {
    /// An allocator with `config` and zeroed counters.
    pub const fn new(config: LargeConfig) -> Self {
        Self {
            config,
            counters: Counters::new(),
            hugetlb_mapped: AtomicBool::new(false),
            node_bound: AtomicBool::new(false),
            cache: Mutex::new(cache::Cache::new()),
        }
    }

    /// The configuration this allocator was built with.
    pub const fn config(&self) -> &LargeConfig {
        &self.config
    }

    /// Allocates a zeroed block for `layout`: a cached mapping (zeroed here) or a fresh one.
    ///
    /// The block is aligned to `max(layout.align(), 4 KiB)` (2 MiB for huge blocks) and
    /// [`usable_size`](Self::usable_size) bytes are usable. A zero-sized layout gets one
    /// page (so large alignments of zero-sized types work).
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] when the size, rounded and with guard page and alignment
    /// slack, exceeds `isize::MAX`; [`AllocError::OutOfMemory`] with the `errno` when the
    /// kernel refuses the mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::{AllocError, large::LargeAllocator};
    /// let large = LargeAllocator::default();
    /// let huge = Layout::from_size_align(isize::MAX as usize - 100, 1).unwrap();
    /// assert!(matches!(large.alloc(huge), Err(AllocError::TooLarge { .. })));
    /// ```
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.alloc_inner(layout, layout.size(), true)
    }

    /// As [`alloc`](Self::alloc), but a block reused from the cache keeps whatever bytes
    /// its last owner left (fresh mappings are still zero): what `GlobalAlloc::alloc`
    /// needs, without the cost of zeroing.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// let l = Layout::from_size_align(1 << 20, 8).unwrap();
    /// let p = large.alloc_uninit(l)?;
    /// // SAFETY: `p` is a live block of `l`; it is freed, then its mapping reused.
    /// unsafe { large.dealloc(p, l) };
    /// let q = large.alloc_uninit(l)?;
    /// assert_eq!(large.stats().cache_hits, 1);
    /// // SAFETY: `q` is a live block of `l`.
    /// unsafe { large.dealloc(q, l) };
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn alloc_uninit(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.alloc_inner(layout, layout.size(), false)
    }

    /// [`alloc_uninit`](Self::alloc_uninit), counting `live` requested bytes in
    /// [`LargeStats::live_bytes`] instead of `layout.size()`: for a block that keeps a
    /// header of its own in front of what its user asked for (DESIGN: live bytes are
    /// requested bytes). Free it with [`dealloc_counted`](Self::dealloc_counted) and the
    /// same `live`.
    pub(crate) fn alloc_counted_uninit(
        &self,
        layout: Layout,
        live: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        self.alloc_inner(layout, live, false)
    }

    /// A block for `layout` counted as `live` requested bytes: a cached mapping (zeroed
    /// if `zero`) or a fresh one.
    fn alloc_inner(
        &self,
        layout: Layout,
        live: usize,
        zero: bool,
    ) -> Result<NonNull<u8>, AllocError> {
        let g = Geometry::of(layout.size(), layout.align(), &self.config)?;
        let ptr = match self.take_cached(live, &g, zero) {
            Some(p) => p,
            None => {
                let p = self.map_block(&g)?;
                self.counters.on_map(live, g.total);
                p
            }
        };
        registry::insert(ptr, g.total);
        Ok(ptr)
    }

    /// Frees a block: its mapping goes to the cache, or back to the OS when it does not
    /// fit there (see [`LargeConfig::cache_bytes`]).
    ///
    /// # Safety
    ///
    /// * `ptr` was returned by `alloc`, `realloc` or `relocate` of this allocator (or of
    ///   one with the same [`LargeConfig`]) and not freed or moved since;
    /// * `layout` has the block's alignment and a size between the one it was allocated
    ///   (or last resized) with and its [`usable_size`](Self::usable_size);
    /// * nothing accesses the block afterwards.
    ///
    /// # Panics
    ///
    /// In debug builds, when `ptr` is not aligned as `layout` and the block would be, or
    /// `layout` could never have been allocated: both mean the safety contract was
    /// broken. A double free found in the cache aborts the process with a message, in
    /// every build.
    pub unsafe fn dealloc(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller; the block was counted with its layout's size.
        unsafe { self.dealloc_counted(ptr, layout, layout.size()) }
    }

    /// [`dealloc`](Self::dealloc) of a block made by [`alloc_counted_uninit`](Self::alloc_counted_uninit)
    /// with `live` requested bytes.
    ///
    /// # Safety
    ///
    /// * as [`dealloc`](Self::dealloc);
    /// * `live` is what the block is counted with: its `alloc_counted_uninit` argument (which
    ///   `relocate` keeps), or `layout.size()` for a block of `alloc` or `realloc`.
    pub(crate) unsafe fn dealloc_counted(&self, ptr: NonNull<u8>, layout: Layout, live: usize) {
        let Ok(g) = Geometry::of(layout.size(), layout.align(), &self.config) else {
            if cfg!(debug_assertions) {
                panic!("LargeAllocator::dealloc: {layout:?} could never have been allocated");
            }
            return;
        };
        debug_assert_eq!(
            ptr.as_ptr() as usize % layout.align().max(PAGE_SIZE),
            0,
            "LargeAllocator::dealloc: {ptr:p} is not a large block of {layout:?}"
        );
        registry::check(ptr, layout.size(), g.total);
        registry::remove(ptr);
        // SAFETY:
        // - the caller guarantees `ptr` is a live block whose layout gives geometry `g`,
        //   so `[ptr, ptr + g.total)` is exactly its page-aligned mapping;
        // - nothing uses the block afterwards.
        unsafe { self.park(ptr, live, &g) };
    }

    /// Bytes of live block mappings (`LargeStats::mapped_bytes`), read without a
    /// snapshot of every counter: what a heap's commit limit counts.
    pub(crate) fn mapped_bytes(&self) -> usize {
        self.counters
            .mapped_bytes
            .load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The bytes usable in a block allocated with `layout`: its size rounded up to the
    /// page (to 2 MiB for huge blocks), guard page excluded. For a layout that cannot be
    /// allocated at all, `layout.size()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// assert_eq!(large.usable_size(Layout::from_size_align(300_000, 8).unwrap()), 303_104);
    /// ```
    pub fn usable_size(&self, layout: Layout) -> usize {
        Geometry::of(layout.size(), layout.align(), &self.config).map_or(layout.size(), |g| g.len)
    }

    /// Resizes a block to `new_size` bytes (same alignment), keeping its contents up to
    /// the smaller of the old and new [usable sizes](Self::usable_size). Bytes beyond
    /// the old usable size read as zero.
    ///
    /// Within the usable size nothing happens. Growth extends the mapping in place with
    /// `mremap` when the address space after it is free, and otherwise moves its pages to
    /// a new address without copying; shrinking unmaps the tail in place. See
    /// [`LargeStats`] for how each outcome is counted. A grown block gets
    /// `MADV_HUGEPAGE` once huge, never `MAP_HUGETLB` pages (those are only given at
    /// allocation). The kernel does not grow hugetlb mappings with `mremap` and keeps
    /// them whole huge pages long, so growing a hugetlb block, or shrinking a block that
    /// may be one below 2 MiB, copies.
    ///
    /// # Safety
    ///
    /// * `ptr` and `old` satisfy the conditions of [`dealloc`](Self::dealloc);
    /// * on success the block lives at the returned pointer only: `ptr` and everything
    ///   derived from it must not be used again.
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] or [`AllocError::OutOfMemory`] as [`alloc`](Self::alloc);
    /// the block is then unchanged and still owned by the caller.
    pub unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let new = Layout::from_size_align(new_size, old.align())
            .map_err(|_| AllocError::TooLarge { size: new_size })?;
        let og = Geometry::of(old.size(), old.align(), &self.config)?;
        registry::check(ptr, old.size(), og.total);
        let ng = Geometry::of(new_size, old.align(), &self.config)?;
        let c = &self.counters;
        if ng.len < og.len && og.huge && !ng.huge && self.hugetlb_mapped.load(Ordering::Relaxed) {
            // The block may be a MAP_HUGETLB one: the kernel would keep it a whole huge
            // page long, breaking the `Geometry` invariant `dealloc` relies on. Copy the
            // (under 2 MiB) prefix to a fresh block instead.
            // SAFETY: forwarded from the caller: `ptr` is a live block of `old`.
            return unsafe { self.copy_move(ptr, old, new) };
        }
        // SAFETY: the caller guarantees `ptr` is a live block of geometry `og`, accessed
        // only through the result afterwards.
        let result = unsafe { self.resize_mapping(ptr, &og, &ng) };
        match result {
            Ok(p) => {
                registry::moved(ptr, p, ng.total);
                c.resize(old.size(), og.total, new_size, ng.total);
                let counter = if new_size < old.size() {
                    &c.shrink_in_place
                } else if p == ptr {
                    &c.grow_in_place
                } else {
                    &c.grow_moved
                };
                if new_size != old.size() {
                    Counters::bump(counter);
                }
                Ok(p)
            }
            // SAFETY: the block is intact after the failed remapping; forwarded from the
            // caller's guarantees.
            Err(_) => unsafe { self.copy_move(ptr, old, new) },
        }
    }

    /// Moves a block to a new address without copying its bytes: its pages are remapped
    /// into a fresh reservation with `mremap(MAYMOVE | FIXED)`. Contents, size, alignment
    /// and guard page are kept; the old address becomes unmapped.
    ///
    /// # Safety
    ///
    /// * `ptr` and `layout` satisfy the conditions of [`dealloc`](Self::dealloc);
    /// * on success the block lives at the returned pointer only.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] when the kernel can neither remap nor provide a copy
    /// target; the block is then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// let layout = Layout::from_size_align(1 << 20, 16).unwrap();
    /// let p = large.alloc(layout)?;
    /// // SAFETY: `p` is a live block of `layout`; after relocation only `q` is used.
    /// unsafe {
    ///     p.as_ptr().write(42);
    ///     let q = large.relocate(p, layout)?;
    ///     assert_ne!(p, q);
    ///     assert_eq!(q.as_ptr().read(), 42);
    ///     large.dealloc(q, layout);
    /// }
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub unsafe fn relocate(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let g = Geometry::of(layout.size(), layout.align(), &self.config)?;
        registry::check(ptr, layout.size(), g.total);
        // SAFETY: forwarded from the caller: `ptr` is a live block of geometry `g`.
        match unsafe { self.move_pages(ptr, &g, &g) } {
            Ok(p) => {
                registry::moved(ptr, p, g.total);
                Counters::bump(&self.counters.relocations);
                Ok(p)
            }
            // SAFETY: the block is intact after the failed move; forwarded from the caller.
            Err(_) => unsafe { self.copy_move(ptr, layout, layout) },
        }
    }

    /// Maps a fresh zeroed block for `layout` whose pages prefer node `node`
    /// (`mbind(MPOL_PREFERRED)` before any page is touched): they are placed there while
    /// the node has free memory. The policy belongs to the mapping and moves with it
    /// through [`realloc`](Self::realloc) and [`relocate`](Self::relocate) (`mremap`
    /// keeps it; a copy fallback does not). Free the block with
    /// [`dealloc`](Self::dealloc) as any other.
    ///
    /// # Errors
    ///
    /// [`NumaError::Alloc`] as [`alloc`](Self::alloc); [`NumaError::NodeOutOfRange`] or
    /// [`NumaError::NodeUnavailable`] when the kernel has no such node (the block is
    /// then unmapped again: nothing stays allocated).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::{large::LargeAllocator, numa::NumaError};
    /// let large = LargeAllocator::default();
    /// let layout = Layout::from_size_align(1 << 20, 16).unwrap();
    /// let p = large.alloc_on_node(layout, 0)?;
    /// // SAFETY: `p` is a live block of `layout`.
    /// unsafe { large.dealloc(p, layout) };
    /// assert!(matches!(
    ///     large.alloc_on_node(layout, 1000),
    ///     Err(NumaError::NodeUnavailable { node: 1000, .. })
    /// ));
    /// assert_eq!((large.stats().node_placements, large.stats().live_blocks), (1, 0));
    /// # Ok::<(), NumaError>(())
    /// ```
    pub fn alloc_on_node(&self, layout: Layout, node: u32) -> Result<NonNull<u8>, NumaError> {
        if node >= numa::MAX_NODE_ID {
            return Err(NumaError::NodeOutOfRange { node });
        }
        // A fresh mapping, never a cached one: a policy set without moving pages only
        // places pages not yet touched, and a cached mapping's pages are resident.
        let g = Geometry::of(layout.size(), layout.align(), &self.config)?;
        let p = self.map_block(&g).map_err(AllocError::from)?;
        self.counters.on_map(layout.size(), g.total);
        registry::insert(p, g.total);
        self.node_bound.store(true, Ordering::Relaxed);
        let len = self.usable_size(layout);
        if let Err(e) = numa::bind(p.as_ptr(), len, node, NodePolicy::Preferred, false) {
            // SAFETY: `p` is the live block just allocated with `layout`, never shared.
            unsafe { self.dealloc(p, layout) };
            return Err(e);
        }
        Counters::bump(&self.counters.node_placements);
        Ok(p)
    }

    /// A snapshot of the counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::large::LargeAllocator;
    /// let large = LargeAllocator::default();
    /// let layout = Layout::from_size_align(300_000, 8).unwrap();
    /// let p = large.alloc(layout)?;
    /// let s = large.stats();
    /// assert_eq!((s.live_blocks, s.live_bytes, s.mapped_bytes), (1, 300_000, 303_104));
    /// // SAFETY: `p` is a live block of `layout`.
    /// unsafe { large.dealloc(p, layout) };
    /// assert_eq!(large.stats().mapped_bytes, 0);
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn stats(&self) -> LargeStats {
        self.counters.snapshot()
    }

    /// Maps the pages of a new block of geometry `g`, guard page and advice included.
    fn map_block(&self, g: &Geometry) -> Result<NonNull<u8>, OsError> {
        if g.huge {
            if self.config.huge_pages == HugePages::Try
                && !self.config.guard_page
                && let Some(p) = self.map_hugetlb(g)
            {
                self.hugetlb_mapped.store(true, Ordering::Relaxed);
                Counters::bump(&self.counters.huge_tlb);
                return Ok(p);
            }
            Counters::bump(&self.counters.huge_fallbacks);
        }
        let base = self.reserve(g)?;
        if self.config.guard_page {
            // SAFETY: `[base, base + g.total)` was just mapped for this block alone and
            // its last page (the guard) holds nothing.
            if let Err(e) = unsafe { os::protect_none(base.byte_add(g.len), PAGE_SIZE) } {
                // SAFETY: the fresh mapping is unused and unpublished.
                unsafe { os::release(base, g.total) };
                return Err(e);
            }
        }
        self.advise_huge(base, g);
        Ok(base)
    }

    /// Tries `MAP_HUGETLB` with 2 MiB pages for a block without guard page.
    fn map_hugetlb(&self, g: &Geometry) -> Option<NonNull<u8>> {
        let flags = libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        let hint = self.hint(g);
        let p = os::map_at_hint(hint, g.len, flags).ok()?;
        if (p.as_ptr() as usize).is_multiple_of(g.map_align) {
            Some(p)
        } else {
            // SAFETY: the fresh hugetlb mapping of `g.len` (a 2 MiB multiple) is unused.
            unsafe { os::release(p, g.len) };
            None
        }
    }

    /// A slot hint for geometry `g`, or 0 (no preference) without growth room.
    fn hint(&self, g: &Geometry) -> usize {
        if self.config.growth_room {
            placement::claim(g.total, g.map_align).unwrap_or(0)
        } else {
            0
        }
    }

    /// Maps `g.total` fresh read-write bytes aligned to `g.map_align`, in a growth slot
    /// when configured.
    fn reserve(&self, g: &Geometry) -> Result<NonNull<u8>, OsError> {
        let hint = self.hint(g);
        if hint != 0
            && let Ok(p) = os::map_at_hint(hint, g.total, 0)
        {
            if (p.as_ptr() as usize).is_multiple_of(g.map_align) {
                return Ok(p);
            }
            // SAFETY: the fresh mapping is unused; it is just misaligned.
            unsafe { os::release(p, g.total) };
        }
        os::reserve(g.total, g.map_align)
    }

    /// Asks for transparent huge pages on a huge block's usable range (a hint: failure,
    /// e.g. a kernel without THP, changes nothing but speed).
    fn advise_huge(&self, p: NonNull<u8>, g: &Geometry) {
        if g.huge {
            // SAFETY: `[p, p + g.len)` is a block's page-aligned usable range and
            // MADV_HUGEPAGE discards nothing.
            let _hint_only = unsafe { os::advise(p, g.len, libc::MADV_HUGEPAGE) };
        }
    }

    /// Resizes the mapping of geometry `og` at `ptr` to geometry `ng` without copying:
    /// nothing when the lengths match, the tail unmapped when shrinking, and when growing
    /// an in-place `mremap`, else its pages moved to a fresh aligned reservation.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + og.total)` is a whole block mapping of geometry `og` (read-write up
    /// to `og.len`, guard page after it when configured); on success it lives at the
    /// result only, and the bytes beyond `ng.len` are dead.
    ///
    /// # Errors
    ///
    /// The kernel's, when it can do neither; the mapping is then unchanged.
    unsafe fn resize_mapping(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<NonNull<u8>, OsError> {
        if ng.len == og.len {
            Ok(ptr)
        } else if ng.len < og.len {
            // SAFETY: forwarded from the caller: a live mapping of geometry `og`.
            unsafe { self.shrink_in_place(ptr, og, ng) }.map(|()| ptr)
        } else if self.config.guard_page {
            // SAFETY: as above; the block is only accessed through the result afterwards.
            unsafe { self.move_pages(ptr, og, ng) }
        } else {
            // SAFETY: as above. Without a guard page the mapping is the single VMA
            // `[ptr, ptr + og.total)` that `remap` requires.
            match unsafe { os::remap(ptr, og.total, ng.total, 0, ptr::null_mut()) } {
                Ok(p) => {
                    self.advise_huge(p, ng);
                    Ok(p)
                }
                // SAFETY: as above; the failed remap left the block unchanged.
                Err(_) => unsafe { self.move_pages(ptr, og, ng) },
            }
        }
    }

    /// Unmaps a block's tail so it has geometry `ng` (smaller than `og`).
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of geometry `og`; the bytes beyond `ng.len` are dead.
    unsafe fn shrink_in_place(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<(), OsError> {
        if self.config.guard_page {
            // SAFETY: `ptr + ng.len` is page-aligned and its page lies inside the block's
            // usable range (`ng.len < og.len`), whose contents there are dead.
            unsafe { os::protect_none(ptr.byte_add(ng.len), PAGE_SIZE) }?;
            // SAFETY: `[ptr + ng.total, ptr + og.total)` is the dead rest of the block plus
            // its old guard page: whole VMAs at the end of our mapping, unused.
            unsafe { os::release(ptr.byte_add(ng.total), og.total - ng.total) };
        } else {
            // SAFETY: without a guard page the block is the single VMA `[ptr, ptr +
            // og.total)`; shrinking in place keeps `ptr`, so no pointer is invalidated
            // beyond the dead tail.
            unsafe { os::remap(ptr, og.total, ng.total, 0, ptr::null_mut()) }?;
        }
        Ok(())
    }

    /// Moves a block's pages to a fresh reservation of geometry `ng` (as large as `og` or
    /// larger), without copying; the old range is unmapped.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of geometry `og`; on success it lives at the result only.
    unsafe fn move_pages(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<NonNull<u8>, OsError> {
        let dest = self.reserve(ng)?;
        if self.config.guard_page {
            // SAFETY: `dest` is our fresh reservation of `ng.total` bytes; its last page
            // becomes the guard and holds nothing.
            if let Err(e) = unsafe { os::protect_none(dest.byte_add(ng.len), PAGE_SIZE) } {
                // SAFETY: the fresh reservation is unused.
                unsafe { os::release(dest, ng.total) };
                return Err(e);
            }
        }
        // SAFETY:
        // - `[ptr, ptr + og.len)` is the block's read-write range, a single VMA (the guard
        //   page, if any, is a separate one and is not part of the move);
        // - `[dest, dest + ng.len)` is our fresh, unused reservation, replaced by the move;
        // - the caller uses only the result afterwards.
        let moved = match unsafe {
            os::remap(
                ptr,
                og.len,
                ng.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dest.as_ptr(),
            )
        } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the failed remap left the reservation unused and the block intact.
                unsafe { os::release(dest, ng.total) };
                return Err(e);
            }
        };
        debug_assert_eq!(moved, dest);
        if self.config.guard_page {
            // SAFETY: the old guard page `[ptr + og.len, +PAGE_SIZE)` is its own VMA,
            // left behind by the move and used by nothing.
            unsafe { os::release(ptr.byte_add(og.len), PAGE_SIZE) };
        }
        self.advise_huge(moved, ng);
        Ok(moved)
    }

    /// The last resort of `realloc` and `relocate`: a new block for `new`, the common
    /// prefix copied, the old block freed.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `old` (conditions of [`dealloc`](Self::dealloc)); on
    /// success it is freed.
    unsafe fn copy_move(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let fresh = self.alloc(new)?;
        // Keep what remapping would keep: every byte both blocks can hold.
        let keep = self.usable_size(old).min(self.usable_size(new));
        // SAFETY:
        // - both blocks are live, distinct mappings with at least `keep` usable bytes;
        // - then the old block is freed under the caller's guarantees.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), keep);
            self.dealloc(ptr, old);
        }
        Counters::bump(&self.counters.copy_fallbacks);
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn geometry_rounds_to_pages_and_huge_pages() {
        let cfg = LargeConfig::DEFAULT;
        let g = Geometry::of(300_000, 8, &cfg).unwrap();
        assert_eq!(
            (g.len, g.total, g.map_align, g.huge),
            (303_104, 303_104, PAGE_SIZE, false)
        );
        let g = Geometry::of(3 * MIB, 8, &cfg).unwrap();
        assert_eq!((g.len, g.map_align, g.huge), (4 * MIB, 2 * MIB, true));
        let never = LargeConfig {
            huge_pages: HugePages::Never,
            ..cfg
        };
        let g = Geometry::of(3 * MIB, 8, &never).unwrap();
        assert_eq!((g.len, g.map_align, g.huge), (3 * MIB, PAGE_SIZE, false));
        let guarded = LargeConfig {
            guard_page: true,
            ..cfg
        };
        let g = Geometry::of(0, 1 << 22, &guarded).unwrap();
        assert_eq!(
            (g.len, g.total, g.map_align),
            (PAGE_SIZE, 2 * PAGE_SIZE, 1 << 22)
        );
    }

    /// The `Geometry` invariant that lets `dealloc` take any size up to the usable one.
    #[test]
    fn geometry_is_stable_across_the_usable_range() {
        for cfg in [
            LargeConfig::DEFAULT,
            LargeConfig {
                huge_pages: HugePages::Never,
                guard_page: true,
                growth_room: false,
                ..LargeConfig::UNCACHED
            },
        ] {
            for size in [0, 1, 4095, 4097, 300_000, 2 * MIB - 1, 2 * MIB, 5 * MIB + 3] {
                let g = Geometry::of(size, 16, &cfg).unwrap();
                for s in [size, (size + g.len) / 2, g.len] {
                    let h = Geometry::of(s, 16, &cfg).unwrap();
                    assert_eq!((h.len, h.total), (g.len, g.total), "size {size} vs {s}");
                }
            }
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "could never have been allocated")]
    fn dealloc_with_an_impossible_layout_panics_in_debug() {
        let large = LargeAllocator::default();
        let layout = Layout::from_size_align(isize::MAX as usize - 1, 1).unwrap();
        // SAFETY: deliberately breaks the contract with a layout no block can have; the
        // debug check panics before anything is unmapped.
        unsafe { large.dealloc(NonNull::dangling(), layout) };
    }

    #[test]
    fn geometry_rejects_impossible_sizes() {
        let guarded = LargeConfig {
            guard_page: true,
            ..LargeConfig::DEFAULT
        };
        let max = isize::MAX as usize;
        for (size, align, cfg) in [
            (usize::MAX, 1, LargeConfig::DEFAULT),
            (max - PAGE_SIZE + 2, 1, LargeConfig::DEFAULT),
            (max - 3 * PAGE_SIZE, 1, LargeConfig::DEFAULT),
            (max / 2, 1 << 62, LargeConfig::DEFAULT),
            (max - 2 * PAGE_SIZE, 1, guarded),
        ] {
            assert_eq!(
                Geometry::of(size, align, &cfg),
                Err(AllocError::TooLarge { size })
            );
        }
        assert_eq!(
            Geometry::of(4096, 3, &LargeConfig::DEFAULT),
            Err(AllocError::InvalidAlignment { align: 3 })
        );
    }
}
