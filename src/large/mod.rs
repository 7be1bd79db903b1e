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
mod grown;
mod mapping;
mod placement;
mod registry;
mod stats;

use core::alloc::Layout;
use core::ptr::NonNull;
use core::time::Duration;
use std::sync::atomic::{AtomicBool, Ordering};

pub use asset::MappedAsset;
pub use stats::LargeStats;

use mapping::Geometry;
use stats::Counters;

use crate::AllocError;
use crate::numa::{self, NodePolicy, NumaError};
use crate::os::PAGE_SIZE;
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
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "could never have been allocated")]
    fn dealloc_with_an_impossible_layout_panics_in_debug() {
        let large = LargeAllocator::default();
        let layout = Layout::from_size_align(isize::MAX as usize - 1, 1).unwrap();
        // SAFETY: deliberately breaks the contract with a layout no block can have; the
        // debug check panics before anything is unmapped.
        unsafe { large.dealloc(NonNull::dangling(), layout) };
    }
}
