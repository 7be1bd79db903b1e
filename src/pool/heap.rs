//! The heap core: size-class pools over arenas, with central lists and thread caches.
//!
//! ```text
//! alloc(class) ─▶ thread cache list ──miss──▶ central list (lock-free batch) ──empty──▶ arena (lock): carve from spans
//! free(block)  ─▶ thread cache list ──over limit──▶ central list ──full──▶ home to its span (its arena's lock)
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
use super::central::{Batch, CentralFreeList};
#[cfg(feature = "hardened")]
use super::hardened;
use super::lock::{Mutex, MutexGuard};
use super::pagemap;
use super::poison;
use super::span::{Span, SpanKind};
use super::thread_cache::{self, Counters, PARK_BYTES, PARKED_TOTAL_BYTES, ThreadCache, bump};
use crate::large::{LargeAllocator, LargeConfig};
use crate::numa::Topology;
use crate::size_class::{self, NUM_CLASSES};
use crate::stats::PoolCounters;
use crate::sync::const_fn_unless_loom;
use crate::{AllocError, os};

/// Whether every fixed free checks its pointer and layout against the span (see
/// [`HeapInner::misuse`]): in debug builds and with the `hardened` feature. Otherwise
/// only the frees that miss the thread cache's fast slot do; the double-free check
/// ([`HeapInner::stamp_free`]) is always on.
pub(crate) const CHECK_EVERY_FREE: bool = cfg!(any(debug_assertions, feature = "hardened"));

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
    /// thread may hold up to one list's worth more per class in between.
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
    fn ensure_key(&self) {
        if self.key.load(Ordering::Relaxed) == 0 {
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

    /// Claims a free thread-cache record for the calling thread.
    pub(crate) fn claim_cache(&self) -> Option<*const ThreadCache> {
        self.ensure_id();
        if !self.registered.load(Ordering::Acquire) {
            let mut reg = REGISTRY.lock();
            if !self.registered.load(Ordering::Relaxed) {
                self.reg_next
                    .store(reg.head as *mut HeapInner, Ordering::Relaxed);
                reg.head = self;
                self.registered.store(true, Ordering::Release);
            }
        }
        let mut table = self.caches.load(Ordering::Acquire);
        if table.is_null() {
            let bytes = MAX_THREAD_CACHES * size_of::<ThreadCache>();
            let fresh = os::reserve(bytes, os::PAGE_SIZE)
                .ok()?
                .cast::<ThreadCache>();
            table = match self.caches.compare_exchange(
                ptr::null_mut(),
                fresh.as_ptr(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh.as_ptr(),
                Err(winner) => {
                    // SAFETY: `fresh` was never shared.
                    unsafe { os::release(fresh.cast(), bytes) };
                    winner
                }
            };
        }
        for i in 0..MAX_THREAD_CACHES {
            // SAFETY: `i` is in the table, whose records are valid zeroed or used ones.
            let rec = unsafe { &*table.add(i) };
            if !rec.claimed.load(Ordering::Relaxed)
                && rec
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.caches_hwm.fetch_max(i + 1, Ordering::AcqRel);
                // SAFETY: we just claimed the record.
                let local = unsafe { rec.local() };
                self.unpark(local);
                for k in &mut local.lists {
                    for (class, list) in k.iter_mut().enumerate() {
                        list.set_up(self.list_limit(class));
                    }
                }
                rec.arena.store(self.next_arena() as u32, Ordering::Relaxed);
                rec.movable_epoch.store(
                    self.movable_epoch.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                return Some(rec);
            }
        }
        None
    }

    /// Releases `cache` (flushing it home) if `heap` is still a registered heap with
    /// id `id`.
    ///
    /// # Safety
    ///
    /// `cache` was claimed by the calling thread from the heap with id `id`, which lived
    /// at `heap`.
    pub(crate) unsafe fn release_if_alive(
        heap: *const HeapInner,
        id: u64,
        cache: *const ThreadCache,
    ) {
        let reg = REGISTRY.lock();
        let mut cur = reg.head;
        while !cur.is_null() {
            // SAFETY: registered heaps are alive while the registry lock is held (they
            // unlink under it before being freed).
            let h = unsafe { &*cur };
            if cur == heap && h.id() == id {
                // SAFETY: the record belongs to this live heap and to this thread.
                unsafe { h.release_cache(&*cache) };
                break;
            }
            cur = h.reg_next.load(Ordering::Relaxed);
        }
        drop(reg);
    }

    /// Parks `cache` for the next thread (see `thread_cache`): its movable blocks go to
    /// the central lists, its fixed lists stay (trimmed to `PARK_BYTES`), its counters
    /// fold into the shared ones, and it is unclaimed.
    ///
    /// # Safety
    ///
    /// The caller owns `cache` (its thread is the caller, or is gone).
    unsafe fn release_cache(&self, cache: &ThreadCache) {
        // SAFETY: forwarded: we own the record.
        let local = unsafe { cache.local() };
        for (class, list) in local.lists[SpanKind::Movable as usize]
            .iter_mut()
            .enumerate()
        {
            while let Some(b) = list.take_batch(self.batch(class)) {
                self.give_central(b, class, SpanKind::Movable);
            }
        }
        local.resync_all();
        let fixed = SpanKind::Fixed as usize;
        let room = PARKED_TOTAL_BYTES.saturating_sub(self.parked_bytes.load(Ordering::Relaxed));
        let keep = PARK_BYTES.min(room) as isize;
        for class in (0..NUM_CLASSES).rev() {
            if local.cached_bytes <= keep {
                break;
            }
            let list = &mut local.lists[fixed][class];
            while let Some(b) = list.take_batch(self.batch(class)) {
                self.give_central(b, class, SpanKind::Fixed);
            }
            local.resync(fixed, class);
        }
        local.parked = local.cached_bytes.max(0) as usize;
        self.parked_bytes.fetch_add(local.parked, Ordering::Relaxed);
        for k in 0..2 {
            let (from, to) = (&cache.counters[k], &self.shared[k]);
            from.drain_into(to);
        }
        cache.claimed.store(false, Ordering::Release);
    }

    /// Takes a just-claimed record's parked bytes off the heap's parked total.
    fn unpark(&self, local: &mut thread_cache::Local) {
        let p = core::mem::take(&mut local.parked);
        if p != 0 {
            self.parked_bytes.fetch_sub(p, Ordering::Relaxed);
        }
    }

    /// Returns every cached block of `cache` (of `kind`, or of both kinds) home.
    ///
    /// # Safety
    ///
    /// The caller owns `cache`.
    pub(crate) unsafe fn flush_cache(&self, cache: &ThreadCache, kind: Option<SpanKind>) {
        // SAFETY: forwarded.
        unsafe { self.flush_classes(cache, kind, u128::MAX) }
    }

    /// Returns the cached blocks of `cache` (of `kind`, or of both kinds) whose class
    /// bit is set in `classes` home.
    ///
    /// # Safety
    ///
    /// The caller owns `cache`.
    pub(crate) unsafe fn flush_classes(
        &self,
        cache: &ThreadCache,
        kind: Option<SpanKind>,
        classes: u128,
    ) {
        // SAFETY: forwarded: we own the record.
        let local = unsafe { cache.local() };
        for k in SpanKind::ALL {
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            for class in 0..NUM_CLASSES {
                let list = &mut local.lists[k as usize][class];
                if list.len() == 0 || classes & (1 << class) == 0 {
                    continue;
                }
                while let Some(batch) = list.take_batch(usize::MAX) {
                    // SAFETY: the batch's blocks are free and ours.
                    unsafe { self.return_home(batch) };
                }
                local.resync(k as usize, class);
            }
        }
    }

    /// Brings every parked record's blocks home (records no thread holds).
    pub(crate) fn flush_parked(&self) {
        for rec in self.records().unwrap_or(&[]) {
            if !rec.claimed.load(Ordering::Relaxed)
                && rec
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // SAFETY: we claimed the record (a parked one has no thread).
                self.unpark(unsafe { rec.local() });
                // SAFETY: as above.
                unsafe { self.flush_cache(rec, None) };
                rec.claimed.store(false, Ordering::Release);
            }
        }
    }

    /// This thread's cache record.
    #[inline(always)]
    pub(crate) fn thread_cache(&self) -> Option<&ThreadCache> {
        thread_cache::current(self)
    }

    /// Allocates one block of `class`/`kind` for a request of `size` bytes.
    #[inline(always)]
    pub(crate) fn alloc_block(
        &self,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Result<NonNull<u8>, AllocError> {
        match self.alloc_hit(class, size, kind) {
            Some(b) => Ok(b),
            None => self.alloc_miss(class, size, kind),
        }
    }

    /// The hot path: one thread-local access, a list pop and two counter adds. `None`
    /// when the record is not in its fast slot or the list is empty (see `alloc_miss`).
    #[inline(always)]
    pub(crate) fn alloc_hit(
        &self,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Option<NonNull<u8>> {
        self.alloc_hit_at(self.fast_slot, class, size, kind)
    }

    /// [`HeapInner::alloc_hit`] with the heap's fast slot known to the caller.
    #[inline(always)]
    pub(crate) fn alloc_hit_at(
        &self,
        slot: usize,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Option<NonNull<u8>> {
        debug_assert!(class < NUM_CLASSES);
        let tc = thread_cache::current_fast_at(self, slot)?;
        self.alloc_cached(tc, class, size, kind)
    }

    /// [`HeapInner::alloc_hit`] with this thread's record `tc` already looked up.
    #[inline(always)]
    pub(crate) fn alloc_cached(
        &self,
        tc: &ThreadCache,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Option<NonNull<u8>> {
        debug_assert!(class < NUM_CLASSES);
        if kind == SpanKind::Movable {
            self.honor_movable_epoch(tc);
        }
        // SAFETY: this thread owns its record; `class` is a class.
        let b = unsafe { tc.list(kind as usize, class) }.pop()?;
        let c = &tc.counters[kind as usize];
        bump(&c.allocs, 1);
        bump(&c.alloc_bytes, size as u64);
        self.hand_out(b, class, size, kind);
        Some(b)
    }

    /// The index of record `tc` in this heap's record table: the lane of the heap's
    /// handle table that its owner uses (`handle::table::lanes`).
    #[inline(always)]
    pub(crate) fn lane_of(&self, tc: &ThreadCache) -> usize {
        let base = self.caches.load(Ordering::Relaxed);
        (core::ptr::from_ref(tc).addr() - base.addr()) / size_of::<ThreadCache>()
    }

    /// A fixed block of `class` from `tc`'s list, counted; `None` if the list is empty.
    #[inline(always)]
    pub(crate) fn pop_cached(
        &self,
        tc: &ThreadCache,
        class: usize,
        size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: this thread owns its record; `class` is a class.
        let b = unsafe { tc.list(SpanKind::Fixed as usize, class) }.pop()?;
        let c = &tc.counters[SpanKind::Fixed as usize];
        bump(&c.allocs, 1);
        bump(&c.alloc_bytes, size as u64);
        self.hand_out(b, class, size, SpanKind::Fixed);
        Some(b)
    }

    /// Everything `alloc_hit` does not serve: finding or claiming the record, a refill,
    /// or the uncached path.
    #[cold]
    #[inline(never)]
    fn alloc_miss(
        &self,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Result<NonNull<u8>, AllocError> {
        let Some(tc) = self.thread_cache() else {
            return self.alloc_uncached(class, size, kind);
        };
        if kind == SpanKind::Movable {
            self.honor_movable_epoch(tc);
        }
        // SAFETY: this thread owns its record; `class` is a class.
        let Some(b) = unsafe { tc.list(kind as usize, class) }.pop() else {
            return self.refill(tc, class, size, kind);
        };
        let c = &tc.counters[kind as usize];
        bump(&c.allocs, 1);
        bump(&c.alloc_bytes, size as u64);
        self.hand_out(b, class, size, kind);
        Ok(b)
    }

    /// The list of `class` was empty: takes a batch from the central list, or carves
    /// one from the thread's arena; serves the first block and counts the allocation.
    #[cold]
    #[inline(never)]
    fn refill(
        &self,
        tc: &ThreadCache,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Result<NonNull<u8>, AllocError> {
        let c = &tc.counters[kind as usize];
        // SAFETY: this thread owns its record.
        let local = unsafe { tc.local() };
        let list = &mut local.lists[kind as usize][class];
        let b = if let Some(batch) = self.central[kind as usize][class].pop() {
            bump(&c.batches_in, 1);
            let (first, rest) = batch.split_first();
            if let Some(rest) = rest {
                let head = rest.head();
                list.adopt(rest);
                if kind == SpanKind::Fixed {
                    // The batch's head carried the central list's link in word 1: give
                    // it its free stamp back (the other blocks kept theirs).
                    // SAFETY: the block is free, ours, and at least 16 bytes.
                    unsafe { stamp_word(head).write(self.key.load(Ordering::Relaxed)) };
                }
            }
            first
        } else {
            let arena = &self.arenas[tc.arena.load(Ordering::Relaxed) as usize];
            // Carving writes a link into every block, faulting its pages in: carve at
            // most `CARVE_BYTES` at a time, so a thread that allocates a few large
            // blocks does not commit a whole batch of them.
            let want = self
                .batch(class)
                .min((CARVE_BYTES / size_class::size(class)).max(1));
            arena.take_blocks(&self.source, class, kind, want, |b| {
                // SAFETY: fresh blocks are free and now ours; a batch is below the
                // list's limit, so the list never fills here.
                let full = unsafe { list.push(b) };
                debug_assert!(!full);
            })?;
            list.pop().expect("a refill yields at least one block")
        };
        local.resync(kind as usize, class);
        bump(&c.misses, 1);
        bump(&c.allocs, 1);
        bump(&c.alloc_bytes, size as u64);
        if local.cached_bytes > self.config.thread_cache_bytes as isize {
            self.shrink(tc);
        }
        self.hand_out(b, class, size, kind);
        Ok(b)
    }

    #[cold]
    #[inline(never)]
    fn alloc_uncached(
        &self,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> Result<NonNull<u8>, AllocError> {
        self.ensure_key();
        let arena = &self.arenas[self.next_arena()];
        let mut out = None;
        arena.take_blocks(&self.source, class, kind, 1, |b| out = Some(b))?;
        let c = &self.shared[kind as usize];
        c.allocs.fetch_add(1, Ordering::Relaxed);
        c.alloc_bytes.fetch_add(size as u64, Ordering::Relaxed);
        c.misses.fetch_add(1, Ordering::Relaxed);
        let b = out.expect("take_blocks returned one block");
        self.hand_out(b, class, size, kind);
        Ok(b)
    }

    /// Frees a block of `class`/`kind` that was allocated for `size` bytes.
    ///
    /// # Safety
    ///
    /// `block` is a live block of this heap of that class and kind, and dead from now on.
    #[inline(always)]
    pub(crate) unsafe fn free_block(
        &self,
        block: NonNull<u8>,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) {
        // SAFETY: forwarded from the caller.
        if !unsafe { self.free_hit(block, class, size, kind) } {
            // SAFETY: forwarded from the caller; `free_hit` left the block alone.
            unsafe { self.free_miss(block, class, size, kind) }
        }
    }

    /// The hot path: one thread-local access, a list push whose decrement is also the
    /// overflow check, and two counter adds. `false` (the block untouched) when the
    /// record is not in its fast slot.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`].
    #[inline(always)]
    pub(crate) unsafe fn free_hit(
        &self,
        block: NonNull<u8>,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { self.free_hit_at(self.fast_slot, block, class, size, kind) }
    }

    /// [`HeapInner::free_hit`] with the heap's fast slot known to the caller.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`].
    #[inline(always)]
    pub(crate) unsafe fn free_hit_at(
        &self,
        slot: usize,
        block: NonNull<u8>,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> bool {
        debug_assert!(class < NUM_CLASSES);
        let Some(tc) = thread_cache::current_fast_at(self, slot) else {
            return false;
        };
        // SAFETY: forwarded from the caller.
        if unsafe { self.free_cached(tc, block, class, size, kind) } {
            self.overflow(tc, class, kind);
        }
        true
    }

    /// Pushes the block on `tc`'s list and counts the free; `true` when the list is now
    /// full and the caller must call [`HeapInner::overflow`] before anything else
    /// touches it.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`]; `tc` is this thread's record.
    #[inline(always)]
    #[must_use]
    pub(crate) unsafe fn free_cached(
        &self,
        tc: &ThreadCache,
        block: NonNull<u8>,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) -> bool {
        if kind == SpanKind::Fixed {
            // SAFETY: forwarded from the caller: a block of this heap of `class`.
            unsafe { self.stamp_free(block, class, size) };
        }
        poison::free_class(block, class);
        if kind == SpanKind::Movable {
            self.honor_movable_epoch(tc);
        }
        let c = &tc.counters[kind as usize];
        bump(&c.frees, 1);
        bump(&c.free_bytes, size as u64);
        // SAFETY: this thread owns its record; `class` is a class.
        let list = unsafe { tc.list(kind as usize, class) };
        // SAFETY: the caller hands us the dead block.
        unsafe { list.push(block) }
    }

    /// `block` of `class`/`kind` goes to the caller for a request of `size` bytes: ASan
    /// may see all of it, and a fixed block loses its free stamp (see
    /// [`HeapInner::stamp_free`]), so only a free puts the key back into it, and gets
    /// its canary (`hardened`).
    #[inline(always)]
    fn hand_out(&self, block: NonNull<u8>, class: usize, size: usize, kind: SpanKind) {
        #[cfg(not(feature = "hardened"))]
        let _ = size;
        poison::live_class(block, class);
        if kind == SpanKind::Fixed {
            // SAFETY: the block is ours until returned and at least 16 bytes (16-aligned),
            // so word 1 is in bounds and aligned.
            unsafe { stamp_word(block).write(0) };
            #[cfg(feature = "hardened")]
            // SAFETY: the block is ours, of `class`, and `size` fits its class.
            unsafe {
                let key = self.key.load(Ordering::Relaxed);
                hardened::write_canary(key, block, size_class::size(class), size)
            };
        }
    }

    /// The always-on double-free check of a fixed block being freed: a free fixed block
    /// carries the heap's random key in word 1 (written here; cleared when the block is
    /// handed out again, see [`hand_out`]), so finding the key there means the block is
    /// already free. Then [`HeapInner::misuse`] names the problem and aborts. On the hot
    /// path this is a load, a compare and a store.
    ///
    /// A double free goes unseen only while the first free's block heads a batch in a
    /// central list (word 1 then holds the list's link) — or, with odds of 2^-64 per
    /// free, a live block holding the key by chance is reported as freed twice.
    ///
    /// # Safety
    ///
    /// `block` points to at least 16 readable and writable bytes (a pool block); with
    /// `hardened`, it is a block of `class` handed out for `size` bytes.
    #[inline(always)]
    pub(crate) unsafe fn stamp_free(&self, block: NonNull<u8>, class: usize, size: usize) {
        #[cfg(not(feature = "hardened"))]
        let _ = size;
        let key = self.key.load(Ordering::Relaxed);
        let w = stamp_word(block);
        // SAFETY: forwarded from the caller: word 1 is in bounds and 8-aligned.
        if unsafe { w.read() } == key {
            self.stamped_free(block, class);
        }
        #[cfg(feature = "hardened")]
        // SAFETY: forwarded from the caller: a live block of `class` asked for as
        // `size`, so the canary and the zeroed range are inside it.
        unsafe {
            hardened::check_canary(key, block, size_class::size(class), size);
            hardened::zero_on_free(block, size_class::size(class));
        }
        // SAFETY: as above; the block is dead from now on, word 1 is the heap's.
        unsafe { w.write(key) };
    }

    /// A block being freed carries the free stamp: a double free, unless the pointer is
    /// not a fixed block of this heap's of `class` at all (then that is reported).
    #[cold]
    #[inline(never)]
    fn stamped_free(&self, block: NonNull<u8>, class: usize) -> ! {
        self.misuse(block, class);
        crate::misuse::fatal!(
            "double free of {block:p} ({} B class)",
            size_class::size(class)
        )
    }

    /// Checks that `block` is the start of a block of a fixed span of this heap of
    /// `class` (the class of the layout it is freed with), or aborts with a message
    /// naming the problem. See [`crate::misuse`].
    #[cold]
    #[inline(never)]
    pub(crate) fn misuse(&self, block: NonNull<u8>, class: usize) {
        let size = size_class::size(class);
        let Some(span) = self.span_of(block) else {
            crate::misuse::fatal!(
                "free of {block:p}, which is not a block of this heap (freed with a layout \
                 of the {size} B class)"
            )
        };
        if span.kind() != SpanKind::Fixed {
            crate::misuse::fatal!(
                "free of {block:p} as a fixed block, but it is a movable (handle) block"
            )
        }
        if span.class() != class {
            crate::misuse::fatal!(
                "free of {block:p} with a layout of the {size} B class, but the block is of \
                 the {} B class (wrong layout passed to dealloc)",
                span.block_size()
            )
        }
        if span.block_index(block.as_ptr() as usize).is_none() {
            crate::misuse::fatal!(
                "free of {block:p}, which is not the start of a block ({size} B class)"
            )
        }
    }

    /// Everything `free_hit` does not serve: finding or claiming the record, or the
    /// uncached path.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`].
    #[cold]
    #[inline(never)]
    unsafe fn free_miss(&self, block: NonNull<u8>, class: usize, size: usize, kind: SpanKind) {
        match self.thread_cache() {
            Some(tc) => {
                // SAFETY: forwarded from the caller.
                if unsafe { self.free_cached(tc, block, class, size, kind) } {
                    self.overflow(tc, class, kind);
                }
            }
            // SAFETY: forwarded from the caller.
            None => unsafe { self.free_uncached(block, class, size, kind) },
        }
    }

    /// # Safety
    ///
    /// As [`HeapInner::free_block`].
    #[cold]
    #[inline(never)]
    unsafe fn free_uncached(&self, block: NonNull<u8>, class: usize, size: usize, kind: SpanKind) {
        if kind == SpanKind::Fixed {
            // SAFETY: forwarded from the caller.
            unsafe { self.stamp_free(block, class, size) };
        }
        poison::free_class(block, class);
        let c = &self.shared[kind as usize];
        c.frees.fetch_add(1, Ordering::Relaxed);
        c.free_bytes.fetch_add(size as u64, Ordering::Relaxed);
        // SAFETY: the dead block is ours.
        unsafe { self.return_home(Batch::from_block(block)) };
    }

    /// The list of `class` is full: moves a batch to the central list (or home when
    /// the central list is full), then checks the cache's byte budget.
    #[cold]
    #[inline(never)]
    pub(crate) fn overflow(&self, tc: &ThreadCache, class: usize, kind: SpanKind) {
        // SAFETY: this thread owns its record.
        let local = unsafe { tc.local() };
        local.resync(kind as usize, class);
        let list = &mut local.lists[kind as usize][class];
        let n = self.batch(class).min(list.len() - 1);
        if let Some(b) = list.take_batch(n) {
            bump(&tc.counters[kind as usize].batches_out, 1);
            self.give_central(b, class, kind);
        }
        local.resync(kind as usize, class);
        if local.cached_bytes > self.config.thread_cache_bytes as isize {
            self.shrink(tc);
        }
    }

    /// The byte view says the cache is over budget: makes the view exact and, if it
    /// still is, halves every list, biggest classes first, until it is not.
    #[cold]
    #[inline(never)]
    fn shrink(&self, tc: &ThreadCache) {
        // SAFETY: this thread owns its record.
        let local = unsafe { tc.local() };
        local.resync_all();
        let budget = self.config.thread_cache_bytes as isize;
        for k in SpanKind::ALL {
            for c in (0..NUM_CLASSES).rev() {
                if local.cached_bytes <= budget {
                    return;
                }
                let l = &mut local.lists[k as usize][c];
                let give = l.len() - l.len() / 2;
                if give == 0 {
                    continue;
                }
                if let Some(b) = l.take_batch(give) {
                    bump(&tc.counters[k as usize].batches_out, 1);
                    self.give_central(b, c, k);
                }
                local.resync(k as usize, c);
            }
        }
    }

    /// Blocks a thread's list of `class` holds at most: two batches.
    pub(crate) fn list_limit(&self, class: usize) -> u16 {
        (2 * self.batch(class)).max(2) as u16
    }

    fn give_central(&self, batch: Batch, class: usize, kind: SpanKind) {
        let central = &self.central[kind as usize][class];
        let bytes = self.batch(class) * size_class::size(class);
        let cap = (CENTRAL_BYTES_PER_CLASS / bytes).max(4);
        let batch = if central.batches() < cap {
            match central.push(batch) {
                Ok(()) => return,
                Err(b) => b,
            }
        } else {
            batch
        };
        // SAFETY: the batch's blocks are free and ours.
        unsafe { self.return_home(batch) };
    }

    /// Returns every block of `batch` to its span, locking each owning arena once per
    /// run of blocks that share it.
    ///
    /// # Safety
    ///
    /// The batch's blocks are free blocks of this heap that nobody uses.
    pub(crate) unsafe fn return_home(&self, batch: Batch) {
        let (head, _tail, count) = batch.into_raw_parts();
        let mut cur = head.as_ptr();
        let mut locked: Option<(u32, MutexGuard<'_, super::arena::ArenaState>)> = None;
        for _ in 0..count {
            let block = NonNull::new(cur).expect("batch count matches its chain");
            // SAFETY: the block is free and ours; read its link before it is reused.
            cur = unsafe { block.cast::<*mut u8>().read() };
            let span = self.span_of(block).expect("a pool block maps to its span");
            let arena = &self.arenas[span.arena as usize];
            if locked.as_ref().is_none_or(|(a, _)| *a != span.arena) {
                // Never hold two arena locks: release the previous one first.
                drop(locked.take());
                locked = Some((span.arena, arena.lock()));
            }
            let (_, st) = locked.as_mut().expect("locked above");
            // SAFETY: we hold the span's arena lock and the block is a dead out block.
            unsafe { arena.put_block(st, span, block) };
        }
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
            // `hardened`: the class's slack after the request holds the canary.
            Some(_) if cfg!(feature = "hardened") && layout.size() != 0 => layout.size(),
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
                if CHECK_EVERY_FREE {
                    self.misuse(ptr, class);
                }
                let (size, kind) = (layout.size(), SpanKind::Fixed);
                // SAFETY: forwarded from the caller.
                if !unsafe { self.free_hit_at(slot, ptr, class, size, kind) } {
                    if !CHECK_EVERY_FREE {
                        // Off the hot path the full check is cheap next to the rest.
                        self.misuse(ptr, class);
                    }
                    // SAFETY: forwarded from the caller; the hit path left it alone.
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

    /// Reallocates a fixed block; see `Heap::realloc`.
    ///
    /// # Safety
    ///
    /// `ptr` was allocated by this heap with `old`, and `new_size` rounded up to
    /// `old.align()` does not overflow `isize`.
    pub(crate) unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = old.align();
        let new = Layout::from_size_align(new_size, align)
            .map_err(|_| AllocError::TooLarge { size: new_size })?;
        let co = size_class::class_for(old.size(), align);
        let cn = size_class::class_for(new_size, align);
        match (co, cn) {
            // In place only within the class: `dealloc` derives the class from the
            // layout it is given, so a block kept in place must stay in the class its
            // new size maps to.
            (Some(co), Some(cn)) if cn == co => {
                #[cfg(feature = "hardened")]
                // SAFETY: forwarded from the caller: `ptr` is a live block of class `co`
                // asked for as `old.size()`; `new_size` fits the same class.
                unsafe {
                    let key = self.key.load(Ordering::Relaxed);
                    hardened::check_canary(key, ptr, size_class::size(co), old.size());
                    hardened::write_canary(key, ptr, size_class::size(co), new_size);
                }
                self.account_resize(old.size(), new_size);
                Ok(ptr)
            }
            (None, None) => {
                self.check_commit(new_size.saturating_sub(old.size()))?;
                // SAFETY: forwarded from the caller: a large block with this layout.
                unsafe { self.large.realloc(ptr, old, new_size) }
            }
            _ => {
                let fresh = self.alloc(new)?;
                // SAFETY: both blocks are valid for the copied length and distinct; the
                // old block is dead after the copy.
                unsafe {
                    ptr::copy_nonoverlapping(
                        ptr.as_ptr(),
                        fresh.as_ptr(),
                        old.size().min(new_size),
                    );
                    self.dealloc(ptr, old);
                }
                Ok(fresh)
            }
        }
    }

    fn account_resize(&self, old: usize, new: usize) {
        let c = match self.thread_cache() {
            Some(tc) => &tc.counters[0],
            None => &self.shared[0],
        };
        // Live bytes = alloc_bytes − free_bytes: charge the new size, credit the old.
        c.alloc_bytes.fetch_add(new as u64, Ordering::Relaxed);
        c.free_bytes.fetch_add(old as u64, Ordering::Relaxed);
    }

    /// Sums counters of `kind` over the shared set and every record.
    pub(crate) fn counters(&self, kind: SpanKind) -> crate::stats::PoolCounters {
        let mut s = self.shared[kind as usize].snapshot();
        for rec in self.records().unwrap_or(&[]) {
            s += rec.counters[kind as usize].snapshot();
        }
        s
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
