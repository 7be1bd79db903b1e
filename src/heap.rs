//! The fixed-allocation API: raw pointers from the size-class pools.
//!
//! Blocks handed out here never move (DESIGN invariant 1): they live in *fixed* spans,
//! which the compactor never touches. Requests up to 256 KiB with alignment up to
//! 4 KiB come from the pools; anything larger is mapped directly.
//!
//! # Zero-size requests
//!
//! A zero-size request returns a valid, unique, 16-byte-aligned pointer (a block of the
//! smallest class) that must be freed like any other. Reading or writing through it is
//! allowed for up to [`Heap::usable_size`] bytes.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::time::Duration;

use crate::AllocError;
use crate::compact::Compactor;
use crate::handle::HandleTable;
use crate::os;
use crate::pool::heap::{HeapConfig, HeapInner};
use crate::pool::thread_cache::HEAP_SLOT;
use crate::stats::{HeapStats, PoolCounters};

/// A heap: size-class pools with per-thread caches, arenas and a large-block path.
///
/// `Heap` is `Send + Sync`: share it by reference between threads. Dropping it returns
/// all its memory to the OS; blocks still allocated from it become invalid.
///
/// # Examples
///
/// ```
/// use std::alloc::Layout;
/// use tidyheap::Heap;
///
/// let heap = Heap::new();
/// let layout = Layout::array::<u32>(100).unwrap();
/// let p = heap.alloc(layout).unwrap();
/// // SAFETY: `p` is valid for 400 bytes and aligned for u32.
/// unsafe {
///     p.cast::<u32>().as_ptr().write(7);
///     let p = heap.realloc(p, layout, 800).unwrap();
///     assert_eq!(p.cast::<u32>().as_ptr().read(), 7);
///     heap.dealloc(p, Layout::from_size_align(800, 4).unwrap());
/// }
/// ```
pub struct Heap {
    inner: NonNull<HeapInner>,
    handles: HandleTable,
    /// Pending span live-count deltas, per lane (`movable::live`).
    pub(crate) pending_live: crate::movable::PendingLive,
    compactor: Compactor,
    /// The event sink (`src/events.rs`), set only while the heap is built.
    #[cfg(feature = "events")]
    pub(crate) events: Option<std::sync::Arc<dyn crate::events::HeapEvents>>,
    /// The allocation profiler (`src/profile/`), boxed so that it stays at one address
    /// (the at-exit list holds it) while the heap value moves.
    #[cfg(feature = "profiling")]
    pub(crate) profiler: Box<crate::profile::Profiler>,
}

// SAFETY: `HeapInner` is designed for shared use across threads (atomics, locks and
// thread-owned records); `Heap` only hands out `&HeapInner`.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

impl core::fmt::Debug for Heap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap")
            .field("arenas", &self.arena_count())
            .finish_non_exhaustive()
    }
}

impl Default for Heap {
    fn default() -> Self {
        Self::new()
    }
}

impl Heap {
    /// A heap with the default configuration.
    ///
    /// # Panics
    ///
    /// If the OS refuses the few kilobytes of bookkeeping; see [`Heap::try_new`].
    pub fn new() -> Self {
        Self::with_config(HeapConfig::DEFAULT)
    }

    /// A heap with the default configuration, or the OS error.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the bookkeeping cannot be mapped.
    pub fn try_new() -> Result<Self, AllocError> {
        Self::try_with_config(HeapConfig::DEFAULT)
    }

    /// A heap with `config`.
    ///
    /// # Panics
    ///
    /// If the OS refuses the bookkeeping; see [`Heap::try_with_config`].
    pub fn with_config(config: HeapConfig) -> Self {
        match Self::try_with_config(config) {
            Ok(h) => h,
            Err(e) => panic!("tidyheap: cannot create a heap: {e}"),
        }
    }

    /// A heap with `config`, or the OS error.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the bookkeeping cannot be mapped.
    pub fn try_with_config(config: HeapConfig) -> Result<Self, AllocError> {
        let multi_node = config
            .topology
            .unwrap_or_else(crate::numa::Topology::system)
            .node_count()
            > 1;
        let mem = os::reserve(size_of::<HeapInner>(), align_of::<HeapInner>())?;
        let inner = mem.cast::<HeapInner>();
        // SAFETY: `mem` is a fresh mapping large and aligned enough for a HeapInner.
        unsafe { inner.as_ptr().write(HeapInner::new(config, HEAP_SLOT)) };
        Ok(Self {
            inner,
            // Process-unique handles: a handle of another heap never resolves here.
            // One index short of the most: a movable block records its owner as
            // `index + 1` in its span's side table, where `u32::MAX` marks a home block
            // (`pool::span::BlockMeta`).
            handles: HandleTable::new()
                .with_process_unique_handles()
                .with_max_slots(crate::handle::MAX_SLOTS - 1),
            pending_live: crate::movable::PendingLive::new(),
            compactor: Compactor::new(multi_node),
            #[cfg(feature = "events")]
            events: None,
            #[cfg(feature = "profiling")]
            profiler: Box::new(crate::profile::Profiler::new(
                crate::profile::ProfilingConfig::DEFAULT,
            )),
        })
    }

    #[inline(always)]
    pub(crate) fn inner(&self) -> &HeapInner {
        // SAFETY: `inner` is initialised in the constructor and freed only in Drop.
        unsafe { self.inner.as_ref() }
    }

    /// The handle table of this heap's movable blocks.
    #[inline(always)]
    pub(crate) fn handles(&self) -> &HandleTable {
        &self.handles
    }

    #[inline]
    pub(crate) fn compactor(&self) -> &Compactor {
        &self.compactor
    }

    /// Allocates a block for `layout`.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] when the OS refuses memory;
    /// [`AllocError::CommitLimit`] when a large block would take the heap past
    /// [`HeapConfig::commit_limit`](crate::HeapConfig::commit_limit) (by default, the
    /// machine's physical memory). `Layout` already rules out bad alignments and
    /// overflowing sizes; see [`Heap::alloc_with`] for unchecked inputs.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let layout = std::alloc::Layout::from_size_align(24, 64).unwrap();
    /// let p = heap.alloc(layout).unwrap();
    /// assert_eq!(p.as_ptr() as usize % 64, 0);
    /// // SAFETY: allocated above with `layout`.
    /// unsafe { heap.dealloc(p, layout) };
    /// ```
    #[inline]
    pub fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let p = self.inner().alloc_at(HEAP_SLOT, layout)?;
        // Profiler hook: recorded before the pointer is returned.
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_ptr(p.as_ptr(), layout.size());
        // Event hook: alloc before the pointer is returned.
        emit!(
            self,
            on_alloc(self.raw_pool(p), p.as_ptr().addr(), layout.size())
        );
        Ok(p)
    }

    /// Allocates `size` bytes aligned to `align`, validating both.
    ///
    /// # Errors
    ///
    /// [`AllocError::InvalidAlignment`] if `align` is not a power of two,
    /// [`AllocError::TooLarge`] if `size` rounded up to `align` exceeds `isize::MAX`,
    /// [`AllocError::CommitLimit`] past the heap's commit limit,
    /// [`AllocError::OutOfMemory`] if the OS refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{AllocError, Heap};
    /// let heap = Heap::new();
    /// assert_eq!(heap.alloc_with(8, 3), Err(AllocError::InvalidAlignment { align: 3 }));
    /// assert_eq!(heap.alloc_with(usize::MAX, 8), Err(AllocError::TooLarge { size: usize::MAX }));
    /// ```
    pub fn alloc_with(&self, size: usize, align: usize) -> Result<NonNull<u8>, AllocError> {
        self.alloc(layout_for(size, align)?)
    }

    /// Allocates a zero-filled block for `layout`.
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc`].
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let layout = std::alloc::Layout::new::<[u64; 8]>();
    /// let p = heap.alloc_zeroed(layout).unwrap();
    /// // SAFETY: 64 zeroed bytes, aligned for u64.
    /// assert_eq!(unsafe { p.cast::<[u64; 8]>().read() }, [0; 8]);
    /// unsafe { heap.dealloc(p, layout) };
    /// ```
    pub fn alloc_zeroed(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let p = self.inner().alloc_zeroed(layout)?;
        // Profiler hook: recorded before the pointer is returned.
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_ptr(p.as_ptr(), layout.size());
        // Event hook: alloc before the pointer is returned.
        emit!(
            self,
            on_alloc(self.raw_pool(p), p.as_ptr().addr(), layout.size())
        );
        Ok(p)
    }

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// * `ptr` was returned by this heap's `alloc*`/`realloc` with `layout` (for
    ///   `realloc`, the layout with the new size);
    /// * it was not freed already and is not used afterwards.
    ///
    /// # Aborts
    ///
    /// Misuse that the heap detects stops the process (a message naming the problem and
    /// the address on stderr, then `abort`; never a panic): in every build, a block freed
    /// twice (`tidyheap: double free of 0x… (64 B class)`), and a large block freed
    /// twice while its mapping is cached; with debug assertions or the `hardened`
    /// feature on every free, and otherwise when the free misses the thread's cache, a
    /// pointer that is not the start of a fixed block of this heap, or a `layout` of
    /// another size class than the block's. See `docs/design.md`, invariant 9.
    #[inline]
    pub unsafe fn dealloc(&self, ptr: NonNull<u8>, layout: Layout) {
        // Event hook: free before the block can be reused.
        emit!(
            self,
            on_free(self.raw_pool(ptr), ptr.as_ptr().addr(), layout.size())
        );
        // Profiler hook: the record goes before the block can be reused.
        #[cfg(feature = "profiling")]
        self.profiler.on_free_ptr(ptr.as_ptr());
        // SAFETY: forwarded from the caller.
        unsafe { self.inner().dealloc_at(HEAP_SLOT, ptr, layout) }
    }

    /// Resizes a block to `new_size` bytes (same alignment), in place while its size
    /// class still fits (or, for large blocks, while the mapping can grow), else by
    /// moving it. Contents up to the smaller size are kept.
    ///
    /// A pool block grown into a class of 64 KiB or more moves, once, into a large
    /// mapping of 256 KiB (then counted in [`HeapStats::large`](crate::HeapStats::large)),
    /// where later resizes from 32 KiB up to 256 KiB stay in place and growth past it
    /// uses `mremap`; below 32 KiB it moves back into the pools. It is still freed and
    /// resized with its ordinary layout.
    ///
    /// # Safety
    ///
    /// `ptr` was allocated by this heap with `layout` and is not used through the old
    /// pointer afterwards unless the same pointer is returned.
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] if `new_size` rounded to the alignment overflows,
    /// [`AllocError::CommitLimit`] if growing would pass the heap's commit limit,
    /// [`AllocError::OutOfMemory`] if the OS refuses; the old block is then unchanged
    /// and still owned by the caller.
    pub unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        layout: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        // Event hook: free(old) before the old block can be reused; on failure it is
        // still the caller's, so alloc(old) again.
        emit!(
            self,
            on_free(self.raw_pool(ptr), ptr.as_ptr().addr(), layout.size())
        );
        // Profiler hook: the record is taken out before the old block can be reused,
        // and put back at the new address (or the old one, on failure).
        #[cfg(feature = "profiling")]
        let taken = self.profiler.before_realloc(ptr.as_ptr());
        // SAFETY: forwarded from the caller.
        let r = unsafe { self.inner().realloc(ptr, layout, new_size) };
        #[cfg(feature = "profiling")]
        self.profiler.after_realloc(
            taken,
            ptr.as_ptr(),
            r.as_ref().map_or(core::ptr::null_mut(), |p| p.as_ptr()),
            new_size,
        );
        #[cfg(feature = "events")]
        {
            let (p, size) = r.map_or((ptr, layout.size()), |p| (p, new_size));
            emit!(self, on_alloc(self.raw_pool(p), p.as_ptr().addr(), size));
        }
        r
    }

    /// The bytes usable in any block allocated with `layout`: its size class, or the
    /// page-rounded length of a large mapping. With the `hardened` feature, a pool
    /// block's usable size is the requested size (its slack holds a canary), unless
    /// that is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let l = std::alloc::Layout::from_size_align(100, 8).unwrap();
    /// assert_eq!(heap.usable_size(l), 112);
    /// ```
    pub fn usable_size(&self, layout: Layout) -> usize {
        self.inner().usable_size(layout)
    }

    /// A snapshot of the heap's counters. See [`crate::stats`] for the definitions.
    pub fn stats(&self) -> HeapStats {
        self.inner().stats()
    }

    /// The calling thread's cache counters for this heap (fixed and movable blocks
    /// together), or `None` if it has no cache here.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let l = std::alloc::Layout::new::<u64>();
    /// let p = heap.alloc(l).unwrap();
    /// assert_eq!(heap.thread_cache_stats().unwrap().allocations, 1);
    /// // SAFETY: `p` came from `heap` with `l`.
    /// unsafe { heap.dealloc(p, l) };
    /// ```
    pub fn thread_cache_stats(&self) -> Option<PoolCounters> {
        self.inner().thread_cache_stats()
    }

    /// Returns the calling thread's cached free blocks and the central lists' batches
    /// to their spans, then hands every empty span's pages and every cached large
    /// mapping back to the OS. Returns the bytes decommitted or unmapped.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let l = std::alloc::Layout::new::<[u8; 1024]>();
    /// let p = heap.alloc(l).unwrap();
    /// // SAFETY: `p` came from `heap` with `l`.
    /// unsafe { heap.dealloc(p, l) };
    /// heap.trim();
    /// assert_eq!(heap.stats().committed_bytes, 0);
    /// let big = std::alloc::Layout::from_size_align(1 << 20, 8).unwrap();
    /// let p = heap.alloc(big).unwrap();
    /// // SAFETY: `p` came from `heap` with `big`.
    /// unsafe { heap.dealloc(p, big) };
    /// assert_eq!(heap.stats().large.cached_bytes, 1 << 20);
    /// assert_eq!(heap.trim(), 1 << 20);
    /// assert_eq!(heap.stats().large.cached_bytes, 0);
    /// ```
    pub fn trim(&self) -> usize {
        self.return_reserved();
        self.inner().flush_and_trim() + self.inner().large.purge(Duration::ZERO)
    }

    /// Unmaps the large mappings freed at least `older_than` ago that the large-block
    /// cache still holds (all with [`Duration::ZERO`]); returns their bytes. The hook for
    /// a purge policy: see [`LargeAllocator::purge`](crate::LargeAllocator::purge).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let heap = tidyheap::Heap::new();
    /// let big = std::alloc::Layout::from_size_align(300_000, 8).unwrap();
    /// let p = heap.alloc(big).unwrap();
    /// // SAFETY: `p` came from `heap` with `big`.
    /// unsafe { heap.dealloc(p, big) };
    /// assert_eq!(heap.purge_large_cache(Duration::from_secs(60)), 0);
    /// assert_eq!(heap.purge_large_cache(Duration::ZERO), 303_104);
    /// ```
    pub fn purge_large_cache(&self, older_than: Duration) -> usize {
        self.inner().large.purge(older_than)
    }

    /// Number of arenas.
    pub fn arena_count(&self) -> usize {
        self.inner().arena_count()
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // Event hook: the heap's blocks die with it.
        emit!(self, on_heap_drop());
        // Profiler hook: the at-drop report, while handles still resolve.
        #[cfg(feature = "profiling")]
        self.finish_profiling();
        // SAFETY: we own the heap; nobody can use it after drop (no outstanding
        // borrows), and its blocks die with it per the type's contract.
        unsafe {
            self.inner().destroy();
            core::ptr::drop_in_place(self.inner.as_ptr());
            os::release(self.inner.cast(), size_of::<HeapInner>());
        }
    }
}

/// Validates a `(size, align)` request.
pub(crate) fn layout_for(size: usize, align: usize) -> Result<Layout, AllocError> {
    if !align.is_power_of_two() {
        return Err(AllocError::InvalidAlignment { align });
    }
    Layout::from_size_align(size, align).map_err(|_| AllocError::TooLarge { size })
}
