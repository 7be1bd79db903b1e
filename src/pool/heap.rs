//! The heap core: size-class pools over arenas, with central lists and thread caches.
//!
//! ```text
//! movable:
//! alloc(class) ─▶ thread cache list ──miss──▶ central list (lock-free batch) ──empty──▶ arena (lock): carve from spans
//! free(block)  ─▶ thread cache list ──over limit──▶ central list ──full──▶ home to its span (its arena's lock)
//! fixed (thread-owned spans, see `pool::remote`):
//! alloc(class) ─▶ thread cache list ──miss──▶ own remote list (one swap) ──empty──▶ arena (lock): an owned span
//! free(block)  ─▶ span owned by this thread? ── yes ─▶ thread cache list ──over limit──▶ half home (arena lock)
//!                                           └── no ──▶ owner's remote list (one CAS), or home if unowned
//! ```
//!
//! `HeapInner` lives at a stable address (inside a `static` for the global allocator, or
//! in its own OS mapping for a `Heap` value), because thread caches and TLS entries
//! point into it. Every heap that has handed out a thread cache is on a global
//! registry; a thread exiting after its heap was dropped finds the heap missing there
//! and leaves the (already unmapped) records alone.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use super::arena::{Arena, SpanSource};
use super::central::CentralFreeList;
#[cfg(feature = "hardened")]
use super::hardened;
use super::lock::Mutex;
use super::pagemap;
use super::span::{Span, SpanKind};
use super::thread_cache::{Counters, ThreadCache};
use crate::large::{LargeAllocator, LargeConfig};
use crate::numa::Topology;
use crate::size_class::{self, NUM_CLASSES};
use crate::stats::PoolCounters;
use crate::sync::const_fn_unless_loom;
use crate::{AllocError, os};

mod home;
mod paths;
mod records;
mod resize;

/// The machine's physical memory in bytes (`usize::MAX` if the OS does not say),
/// read once. `sysconf` does not allocate, so this is safe inside the global allocator.
fn physical_memory() -> usize {
    static PHYS: AtomicUsize = AtomicUsize::new(0);
    let cached = PHYS.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let bytes = match (usize::try_from(pages), usize::try_from(page)) {
        (Ok(n), Ok(p)) if n > 0 && p > 0 => n.saturating_mul(p),
        _ => usize::MAX,
    };
    PHYS.store(bytes, Ordering::Relaxed);
    bytes
}

/// Most arenas a heap can have.
pub const MAX_ARENAS: usize = 64;
/// Most threads that can hold a cache of one heap at once; more threads still work,
/// through the uncached path.
pub const MAX_THREAD_CACHES: usize = 1024;
/// Blocks per central batch, at most (fewer for large classes: see `batch_table`).
pub const DEFAULT_BATCH: usize = 32;
/// Per-thread cache limit.
pub const DEFAULT_THREAD_CACHE_BYTES: usize = 2 << 20;
/// Most bytes of fresh blocks one refill carves from a span (see `refill`).
const CARVE_BYTES: usize = 32 * 1024;
/// Bytes of free blocks a central list may hold per class before batches go home.
const CENTRAL_BYTES_PER_CLASS: usize = 1 << 20;
/// Bytes of free blocks a thread's fixed list of one class may hold, at most (see
/// `list_limit`; also at most half the thread-cache budget). Short: a full list sends
/// half its blocks to their spans' owner-only local sets (`pool::owned`; others home),
/// bitmaps that keep them in address order for the next refill without the arena lock,
/// and a dozen classes in use stay far below the cache budget, so `shrink` does not run.
/// 32 KiB measured best on the database workload (16 KiB ≈ 32 KiB, 64 KiB and 256 KiB
/// worse: see `benches/README.md`, measured before the local sets); where a class's
/// working set outgrows one list (`random_free_10k`) its blocks pass through the local
/// sets every round (a page-map lookup and a bit each way).
const FIXED_LIST_BYTES: usize = 32 << 10;

/// Tuning knobs of a heap. `HeapConfig::DEFAULT` is what `Heap::new()` uses.
///
/// # Examples
///
/// ```
/// use tidyheap::{Heap, HeapConfig};
/// let heap = Heap::with_config(HeapConfig { arenas: 2, ..HeapConfig::DEFAULT });
/// assert_eq!(heap.arena_count(), 2);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HeapConfig {
    /// Number of arenas; 0 means the available parallelism. Clamped to 1..=64.
    pub arenas: usize,
    /// Blocks moved per batch between thread caches and central lists (1..=32).
    pub batch: usize,
    /// Bytes of free blocks a thread may cache before it flushes to the central lists.
    /// Checked when one of its lists refills or overflows (never on the hot path), so a
    /// thread may hold up to one list's worth more per class in between (a fixed list
    /// holds up to half this budget, at most 32 KiB).
    pub thread_cache_bytes: usize,
    /// Configuration of the direct-mapping path for large blocks.
    pub large: LargeConfig,
    /// The NUMA topology arenas are placed by; `None` (the default) detects the
    /// machine's ([`Topology::system`]). Inject one for tests, or pass
    /// `Some(&SINGLE)` with a `static SINGLE: Topology = Topology::single_node();` to turn
    /// NUMA placement off. See [`crate::numa`].
    pub topology: Option<&'static Topology>,
    /// Most bytes the heap may hold committed: pool spans (`HeapStats::committed_bytes`)
    /// plus live large mappings (`LargeStats::mapped_bytes`). A large allocation or
    /// reallocation that would go past it fails with [`AllocError::CommitLimit`] at the
    /// call, instead of succeeding (mappings are `MAP_NORESERVE`) and faulting when
    /// touched. Checked before each new large mapping or growth, not for pool blocks
    /// (at most 256 KiB each), and not atomically with other threads' requests: two
    /// requests made at once may together pass the limit by what they ask. `0` (the
    /// default) means the machine's physical memory; `usize::MAX` means no limit.
    pub commit_limit: usize,
}

impl HeapConfig {
    /// The defaults: one arena per CPU, batches of 32, 2 MiB per thread cache.
    pub const DEFAULT: HeapConfig = HeapConfig {
        arenas: 0,
        batch: DEFAULT_BATCH,
        thread_cache_bytes: DEFAULT_THREAD_CACHE_BYTES,
        large: LargeConfig::DEFAULT,
        topology: None,
        commit_limit: 0,
    };
}

impl Default for HeapConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Blocks per batch for each class under a configured batch size: fewer for big blocks
/// so a batch never holds more than 256 KiB. Computed once per heap, so the free path
/// reads a table instead of dividing.
const fn batch_table(configured: usize) -> [u8; NUM_CLASSES] {
    let cap = if configured == 0 {
        1
    } else if configured > DEFAULT_BATCH {
        DEFAULT_BATCH
    } else {
        configured
    };
    let mut t = [0u8; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        let by_bytes = 256 * 1024 / size_class::size_const(c);
        t[c] = if by_bytes < 1 {
            1
        } else if by_bytes > cap {
            cap as u8
        } else {
            by_bytes as u8
        };
        c += 1;
    }
    t
}

/// Empty central lists for every kind and class. Capacity is enforced by the heap
/// (see `give_central`), so the lists themselves take the most they can.
#[cfg(not(tidyheap_loom))]
const fn central_lists() -> [[CentralFreeList; NUM_CLASSES]; 2] {
    [const { [const { CentralFreeList::new(usize::MAX) }; NUM_CLASSES] }; 2]
}

/// Empty central lists (under loom, built at run time).
#[cfg(tidyheap_loom)]
fn central_lists() -> [[CentralFreeList; NUM_CLASSES]; 2] {
    core::array::from_fn(|_| core::array::from_fn(|_| CentralFreeList::new(usize::MAX)))
}

static NEXT_HEAP_ID: AtomicU64 = AtomicU64::new(1);

/// Heaps whose thread-cache records may still be referenced by some thread's TLS.
struct Registry {
    head: *const HeapInner,
}
// SAFETY: the pointer is only followed under the registry mutex, to heaps that unlink
// themselves (under the same mutex) before they are freed.
unsafe impl Send for Registry {}
static REGISTRY: Mutex<Registry> = Mutex::new(Registry { head: ptr::null() });

/// Word 1 of a pool block: where a free fixed block carries its heap's key.
#[inline(always)]
fn stamp_word(block: NonNull<u8>) -> *mut u64 {
    block.as_ptr().cast::<u64>().wrapping_add(1)
}

/// The state of one heap. See the module docs.
#[derive(Debug)]
pub(crate) struct HeapInner {
    id: AtomicU64,
    /// The free-stamp key (see `stamp_free`): random, never 0 once the heap is used.
    key: AtomicU64,
    /// This heap's fast slot in each thread's table (`thread_cache::GLOBAL_SLOT` or
    /// `HEAP_SLOT`).
    fast_slot: usize,
    pub(crate) config: HeapConfig,
    /// Blocks per batch, per class (see `batch_table`).
    batches: [u8; NUM_CLASSES],
    narenas: AtomicUsize,
    next_arena: AtomicUsize,
    pub(crate) arenas: [Arena; MAX_ARENAS],
    pub(crate) source: SpanSource,
    pub(crate) central: [[CentralFreeList; NUM_CLASSES]; 2],
    caches: AtomicPtr<ThreadCache>,
    /// Records ever claimed (an upper bound on indexes in use).
    caches_hwm: AtomicUsize,
    /// Bytes of fixed blocks held by parked records (see `release_cache`).
    parked_bytes: AtomicUsize,
    /// Counters of the uncached path and of released records (read-modify-write).
    pub(crate) shared: [Counters; 2],
    /// Record counters being moved into `shared` (a thread exiting, see
    /// `release_cache`): how many moves are under way, and a generation bumped when one
    /// starts and when it ends. `counters` retries a sum that overlapped a move, which
    /// would otherwise count the moved figures twice or not at all.
    draining: AtomicUsize,
    drains: AtomicU64,
    /// Bumped to ask every thread to flush its movable lists (see `flush_movable`).
    pub(crate) movable_epoch: AtomicU64,
    /// The size classes (one bit each) whose cached movable blocks a bump of
    /// `movable_epoch` asks threads to flush: those the compactor is evacuating.
    pub(crate) movable_flush_classes: [AtomicU64; 2],
    pub(crate) large: LargeAllocator,
    /// Registry link, only touched under the registry mutex.
    reg_next: AtomicPtr<HeapInner>,
    registered: core::sync::atomic::AtomicBool,
}

impl HeapInner {
    const_fn_unless_loom! {
        /// A heap's state with `config`, found through fast slot `fast_slot` of each
        /// thread's table; `const` so the global allocator can live in a `static` (not
        /// under loom, whose atomics have no `const` constructors).
        pub(crate) fn new(config: HeapConfig, fast_slot: usize) -> Self {
            Self {
                id: AtomicU64::new(0),
                key: AtomicU64::new(0),
                fast_slot,
                config,
                batches: batch_table(config.batch),
                narenas: AtomicUsize::new(0),
                next_arena: AtomicUsize::new(0),
                arenas: {
                    let mut a = [const { Arena::new(0) }; MAX_ARENAS];
                    let mut i = 0;
                    while i < MAX_ARENAS {
                        a[i].index = i as u32;
                        i += 1;
                    }
                    a
                },
                source: SpanSource::new(config.topology),
                central: central_lists(),
                caches: AtomicPtr::new(ptr::null_mut()),
                caches_hwm: AtomicUsize::new(0),
                parked_bytes: AtomicUsize::new(0),
                shared: [const { Counters::ZERO }; 2],
                draining: AtomicUsize::new(0),
                drains: AtomicU64::new(0),
                movable_epoch: AtomicU64::new(0),
                movable_flush_classes: [AtomicU64::new(0), AtomicU64::new(0)],
                large: LargeAllocator::new(config.large),
                reg_next: AtomicPtr::new(ptr::null_mut()),
                registered: core::sync::atomic::AtomicBool::new(false),
            }
        }
    }

    /// The heap's id (assigned on first use; never 0 afterwards, never reused).
    #[inline(always)]
    pub(crate) fn id(&self) -> u64 {
        self.id.load(Ordering::Relaxed)
    }

    /// This heap's fast slot (see `thread_cache`).
    #[inline(always)]
    pub(crate) fn fast_slot(&self) -> usize {
        self.fast_slot
    }

    fn ensure_id(&self) -> u64 {
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        self.ensure_key();
        let fresh = NEXT_HEAP_ID.fetch_add(1, Ordering::Relaxed);
        match self
            .id
            .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(winner) => winner,
        }
    }

    /// Sets the free-stamp key if it is not set yet. Called before the heap hands out its
    /// first block (on claiming a record, and on the uncached path).
    pub(crate) fn ensure_key(&self) {
        if self.key.load(Ordering::Relaxed) == 0 {
            #[cfg(feature = "hardened")]
            hardened::init_link_key();
            let k = crate::misuse::random_key(self as *const Self as u64);
            let _ = self
                .key
                .compare_exchange(0, k, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The commit limit in bytes (see `HeapConfig::commit_limit`).
    pub(crate) fn commit_limit(&self) -> usize {
        match self.config.commit_limit {
            0 => physical_memory(),
            n => n,
        }
    }

    /// Bytes the commit limit counts: committed pool spans and live large mappings.
    pub(crate) fn committed_for_limit(&self) -> usize {
        let pools: usize = self.arenas[..self.arena_count()]
            .iter()
            .map(|a| a.counters.committed.load(Ordering::Relaxed))
            .sum();
        pools.saturating_add(self.large.mapped_bytes())
    }

    /// `Ok` if committing `extra` more bytes keeps the heap within its commit limit.
    ///
    /// # Errors
    ///
    /// [`AllocError::CommitLimit`] otherwise.
    pub(crate) fn check_commit(&self, extra: usize) -> Result<(), AllocError> {
        let limit = self.commit_limit();
        if limit != usize::MAX && self.committed_for_limit().saturating_add(extra) > limit {
            return Err(AllocError::CommitLimit { size: extra, limit });
        }
        Ok(())
    }

    /// Number of arenas in use (decided on first use).
    pub(crate) fn arena_count(&self) -> usize {
        let n = self.narenas.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        let want = if self.config.arenas == 0 {
            // sysconf does not allocate, unlike `available_parallelism`, which may read
            // cgroup files: this can run inside the global allocator.
            // SAFETY: sysconf has no preconditions.
            let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
            usize::try_from(cpus).unwrap_or(1)
        } else {
            self.config.arenas
        }
        // NUMA: at least one arena per node.
        .max(self.source.numa.min_arenas())
        .clamp(1, MAX_ARENAS);
        match self
            .narenas
            .compare_exchange(0, want, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => want,
            Err(n) => n,
        }
    }

    /// The arena for the calling thread: round-robin, within the thread's current node
    /// when there are several (NUMA: see `crate::numa::placement`).
    fn next_arena(&self) -> usize {
        let n = self.arena_count();
        match self.source.numa.pick_arena(n) {
            Some(a) => a,
            None => self.next_arena.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    fn records(&self) -> Option<&[ThreadCache]> {
        let p = self.caches.load(Ordering::Acquire);
        let n = self
            .caches_hwm
            .load(Ordering::Acquire)
            .min(MAX_THREAD_CACHES);
        // SAFETY: the record table holds MAX_THREAD_CACHES zero-initialised (valid)
        // records for the heap's life.
        NonNull::new(p).map(|p| unsafe { core::slice::from_raw_parts(p.as_ptr(), n) })
    }

    /// The span holding `block`, if it is one of this heap's.
    #[inline]
    pub(crate) fn span_of(&self, block: NonNull<u8>) -> Option<&Span> {
        let s = pagemap::lookup(block.as_ptr() as usize)?;
        // SAFETY: page-map entries point at live span records; the heap check below
        // makes sure the record is ours, so `&self` bounds its life.
        let span = unsafe { &*s.as_ptr() };
        self.owns_span(span).then_some(span)
    }

    #[inline]
    fn owns_span(&self, span: &Span) -> bool {
        self.source.owns(span)
    }

    /// Blocks per batch for `class`.
    #[inline(always)]
    pub(crate) fn batch(&self, class: usize) -> usize {
        usize::from(self.batches[class])
    }

    /// Allocates a fixed block per `layout` from the pools (or the large path).
    #[inline(always)]
    pub(crate) fn alloc(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.alloc_at(self.fast_slot, layout)
    }

    /// [`HeapInner::alloc`] with the heap's fast slot known to the caller (`Heap`'s
    /// methods: a constant, so the hot path does not load it).
    #[inline(always)]
    pub(crate) fn alloc_at(&self, slot: usize, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let size = layout.size();
        match size_class::class_for(size, layout.align()) {
            Some(class) => match self.alloc_hit_at(slot, class, size, SpanKind::Fixed) {
                Some(b) => Ok(b),
                None => self.alloc_miss(class, size, SpanKind::Fixed),
            },
            None => self.alloc_large(layout),
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_large(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.check_commit(layout.size())?;
        // Contents unspecified: a mapping reused from the large cache is not re-zeroed.
        self.large.alloc_uninit(layout)
    }

    /// Allocates a zero-filled fixed block per `layout`; see `Heap::alloc_zeroed`.
    pub(crate) fn alloc_zeroed(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        if size_class::class_for(layout.size(), layout.align()).is_none() {
            self.check_commit(layout.size())?;
            // Zeroes what it reuses from the cache; fresh mappings are zero already.
            return self.large.alloc(layout);
        }
        let p = self.alloc(layout)?;
        // SAFETY: the block holds at least `layout.size()` writable bytes.
        unsafe { p.as_ptr().write_bytes(0, layout.size()) };
        Ok(p)
    }

    /// The bytes usable in any block allocated with `layout`; see `Heap::usable_size`.
    #[inline]
    pub(crate) fn usable_size(&self, layout: Layout) -> usize {
        match size_class::class_for(layout.size(), layout.align()) {
            // `hardened`: the class's slack after the request holds the canary, so a block
            // is exactly as long as asked for (also a zero-size one: were it its whole
            // class, a free with any size up to the class would be a valid fit and would
            // look for a canary that was never written).
            Some(_) if cfg!(feature = "hardened") => layout.size(),
            Some(c) => size_class::size(c),
            None => self.large.usable_size(layout),
        }
    }

    /// The calling thread's cache counters (fixed and movable together); `None` if no
    /// thread ever took a cache of this heap, or this thread cannot have one.
    ///
    /// Never the first to claim a cache: a heap that no allocation has registered stays
    /// unregistered (see `Global`, which relies on this for its safe methods).
    pub(crate) fn thread_cache_stats(&self) -> Option<PoolCounters> {
        if self.id() == 0 {
            return None;
        }
        let tc = self.thread_cache()?;
        let mut c = tc.counters[0].snapshot();
        c += tc.counters[1].snapshot();
        Some(c)
    }

    /// Returns the calling thread's cached blocks, the parked records' and the central
    /// lists' batches home, then decommits every empty span; returns the bytes decommitted. Like
    /// [`HeapInner::thread_cache_stats`], never the first to claim a cache.
    pub(crate) fn flush_and_trim(&self) -> usize {
        if self.id() != 0
            && let Some(tc) = self.thread_cache()
        {
            // SAFETY: the calling thread owns its record.
            unsafe { self.flush_cache(tc, None) };
        }
        self.flush_parked();
        self.drain_central(None);
        self.trim()
    }

    /// Frees a fixed block.
    ///
    /// # Safety
    ///
    /// `ptr` was allocated by this heap with `layout` and is dead from now on.
    #[inline(always)]
    pub(crate) unsafe fn dealloc(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.dealloc_at(self.fast_slot, ptr, layout) }
    }

    /// [`HeapInner::dealloc`] with the heap's fast slot known to the caller.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::dealloc`].
    #[inline(always)]
    pub(crate) unsafe fn dealloc_at(&self, slot: usize, ptr: NonNull<u8>, layout: Layout) {
        match size_class::class_for(layout.size(), layout.align()) {
            Some(class) => {
                let (size, kind) = (layout.size(), SpanKind::Fixed);
                // SAFETY: forwarded from the caller.
                if !unsafe { self.free_hit_at(slot, ptr, class, size, kind) } {
                    if self.span_of(ptr).is_none() {
                        // In no span of this heap: a block a realloc grew out of the
                        // pools (`resize`), or misuse, which aborts there.
                        // SAFETY: forwarded from the caller.
                        unsafe { self.dealloc_grown(ptr, layout, class) };
                        return;
                    }
                    // The hit path takes only blocks that pass the pointer check
                    // (`is_local`); everything else is checked here, and a misuse
                    // aborts with its name. A block a realloc shrank in place is of a
                    // bigger class than its layout says: it goes home as what it is.
                    let class = self.misuse(ptr, class);
                    // SAFETY: forwarded from the caller; the hit path left it alone, and
                    // `class` is the block's own.
                    unsafe { self.free_miss(ptr, class, size, kind) }
                }
            }
            // SAFETY: forwarded from the caller.
            None => unsafe { self.dealloc_large(ptr, layout) },
        }
    }

    /// # Safety
    ///
    /// As [`HeapInner::dealloc`], for a large block.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_large(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.large.dealloc(ptr, layout) }
    }

    /// Sums counters of `kind` over the shared set and every record.
    ///
    /// A seqlock read against `release_cache`'s moves of a record's counters into the
    /// shared set (`draining`, `drains`): a sum that saw any counter a move wrote also
    /// sees, after its acquire fence, the generation that move bumped before writing
    /// (its release fence), and is taken again. So every free that returned before the
    /// call is counted once, even while threads exit (`std::thread::scope` returns before
    /// its threads' exit hooks run).
    pub(crate) fn counters(&self, kind: SpanKind) -> crate::stats::PoolCounters {
        loop {
            let generation = self.drains.load(Ordering::Acquire);
            if self.draining.load(Ordering::Acquire) == 0 {
                let mut s = self.shared[kind as usize].snapshot();
                for rec in self.records().unwrap_or(&[]) {
                    s += rec.counters[kind as usize].snapshot();
                }
                core::sync::atomic::fence(Ordering::Acquire);
                if self.draining.load(Ordering::Relaxed) == 0
                    && self.drains.load(Ordering::Relaxed) == generation
                {
                    return s;
                }
            }
            std::thread::yield_now();
        }
    }

    /// Moves `cache`'s counters into the shared set, as one step for `counters`.
    pub(super) fn drain_counters(&self, cache: &ThreadCache) {
        self.draining.fetch_add(1, Ordering::Relaxed);
        self.drains.fetch_add(1, Ordering::Relaxed);
        // Release: a sum that reads any counter written below sees the two bumps above.
        core::sync::atomic::fence(Ordering::Release);
        for k in 0..2 {
            cache.counters[k].drain_into(&self.shared[k]);
        }
        self.drains.fetch_add(1, Ordering::Release);
        self.draining.fetch_sub(1, Ordering::Release);
    }

    /// A snapshot of the heap's counters.
    pub(crate) fn stats(&self) -> crate::stats::HeapStats {
        let n = self.arena_count();
        let mut threads = [0usize; MAX_ARENAS];
        for rec in self.records().unwrap_or(&[]) {
            if rec.claimed.load(Ordering::Relaxed) {
                threads[rec.arena.load(Ordering::Relaxed) as usize % MAX_ARENAS] += 1;
            }
        }
        let arenas: Vec<_> = self.arenas[..n]
            .iter()
            .map(|a| {
                let c = &a.counters;
                crate::stats::ArenaStats {
                    spans: c.spans.load(Ordering::Relaxed),
                    committed_bytes: c.committed.load(Ordering::Relaxed),
                    refills: c.refills.load(Ordering::Relaxed),
                    returns: c.returns.load(Ordering::Relaxed),
                    decommits: c.decommits.load(Ordering::Relaxed),
                    recommits: c.recommits.load(Ordering::Relaxed),
                    lock_acquisitions: c.locks.load(Ordering::Relaxed),
                    threads: threads[a.index as usize],
                }
            })
            .collect();
        let mut central = crate::stats::CentralCounters::default();
        for k in &self.central {
            for list in k {
                let c = list.stats();
                central.pushes += c.pushes;
                central.pops += c.pops;
                central.pop_misses += c.pop_misses;
                central.rejections += c.full_rejections;
                central.batches_held += list.batches();
            }
        }
        crate::stats::HeapStats {
            central,
            fixed: self.counters(SpanKind::Fixed),
            movable: self.counters(SpanKind::Movable),
            large: self.large.stats(),
            committed_bytes: arenas.iter().map(|a| a.committed_bytes).sum(),
            spans: arenas.iter().map(|a| a.spans).sum(),
            numa: self.source.numa.stats(&arenas),
            arenas,
        }
    }

    /// One compaction pass's purge in every arena (see `Arena::purge_for_pass`);
    /// returns the bytes handed back.
    pub(crate) fn purge_for_pass(
        &self,
        min_age: u64,
        deadline: Option<std::time::Instant>,
    ) -> usize {
        self.arenas[..self.arena_count()]
            .iter()
            .map(|a| a.purge_for_pass(min_age, deadline))
            .sum()
    }

    /// Hands every empty span's pages back to the OS at once; returns the bytes that
    /// stopped counting as committed.
    pub(crate) fn trim(&self) -> usize {
        self.arenas[..self.arena_count()]
            .iter()
            .map(|a| a.trim())
            .sum()
    }

    /// Returns every batch held by the central lists home.
    pub(crate) fn drain_central(&self, kind: Option<SpanKind>) {
        for k in SpanKind::ALL {
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            for list in &self.central[k as usize] {
                for batch in list.take_all() {
                    // SAFETY: batches in the central list are free blocks of this heap.
                    unsafe { self.return_home(batch) };
                }
            }
        }
    }

    /// Unregisters the heap and returns all its memory to the OS.
    ///
    /// # Safety
    ///
    /// Nothing uses any block, record or span of this heap afterwards.
    pub(crate) unsafe fn destroy(&self) {
        if self.registered.load(Ordering::Acquire) {
            let mut reg = REGISTRY.lock();
            let me = self as *const HeapInner;
            if reg.head == me {
                reg.head = self.reg_next.load(Ordering::Relaxed);
            } else {
                let mut cur = reg.head;
                while !cur.is_null() {
                    // SAFETY: registered heaps are alive under the registry lock.
                    let h = unsafe { &*cur };
                    let next = h.reg_next.load(Ordering::Relaxed);
                    if core::ptr::eq(next, me) {
                        h.reg_next
                            .store(self.reg_next.load(Ordering::Relaxed), Ordering::Relaxed);
                        break;
                    }
                    cur = next;
                }
            }
        }
        let table = self.caches.load(Ordering::Acquire);
        if let Some(t) = NonNull::new(table) {
            // SAFETY: the record table was reserved with this size; nobody uses it now.
            unsafe { os::release(t.cast(), MAX_THREAD_CACHES * size_of::<ThreadCache>()) };
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.source.release_all() };
    }
}
