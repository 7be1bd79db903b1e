//! The allocation and free paths of pool blocks: the inlined hits on the thread cache,
//! and the cold misses (refill, overflow, the uncached path, going home to the span).

use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::{CARVE_BYTES, FIXED_LIST_BYTES, HeapInner, stamp_word};
use crate::AllocError;
use crate::pool::central::Batch;
use crate::pool::check;
#[cfg(feature = "hardened")]
use crate::pool::hardened;
use crate::pool::pagemap;
use crate::pool::poison;
use crate::pool::span::SpanKind;
use crate::pool::thread_cache::{self, Outgoing, ThreadCache, bump};
use crate::size_class::{self, NUM_CLASSES};

/// `size_of::<ThreadCache>() = 2^RECORD_SHIFT · odd`.
const RECORD_SHIFT: u32 = size_of::<ThreadCache>().trailing_zeros();
/// The inverse of the record size's odd part modulo 2^64 (Newton's iteration doubles
/// the correct low bits each step: 3 → 6 → … → 96 ≥ 64).
const RECORD_INVERSE: usize = {
    let odd = size_of::<ThreadCache>() >> RECORD_SHIFT;
    let mut x = odd;
    let mut k = 0;
    while k < 5 {
        x = x.wrapping_mul(2usize.wrapping_sub(odd.wrapping_mul(x)));
        k += 1;
    }
    x
};

/// `off / size_of::<ThreadCache>()` for an `off` that is a multiple of the record size
/// (a record's offset in the record table): a shift and a multiply by the odd part's
/// inverse, exact for every multiple (checked below for every record index).
#[inline(always)]
const fn record_index(off: usize) -> usize {
    (off >> RECORD_SHIFT).wrapping_mul(RECORD_INVERSE)
}

const _: () = {
    let mut i = 0;
    while i <= super::MAX_THREAD_CACHES {
        assert!(record_index(i * size_of::<ThreadCache>()) == i);
        i += 1;
    }
};

/// Whether the hot free path also checks that a pointer is a block start (see
/// `pool::check`): with the `hardened` feature and in debug builds. Without it an
/// interior pointer into a block of the right class of a span this thread owns is
/// taken as a block; the test costs 9 instructions per hot pair (10 % of it), twice
/// the budget of the always-on checks (see `benches/README.md`).
pub(crate) const CHECK_BLOCK_START: bool = cfg!(any(debug_assertions, feature = "hardened"));

impl HeapInner {
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
    /// An exact division by the record size without a divide: see [`record_index`].
    #[inline(always)]
    pub(crate) fn lane_of(&self, tc: &ThreadCache) -> usize {
        let base = self.caches.load(Ordering::Relaxed);
        record_index(core::ptr::from_ref(tc).addr() - base.addr())
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
    pub(super) fn alloc_miss(
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
    pub(super) fn refill(
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
        // Fixed blocks come back through the remote list (their spans are this record's);
        // movable ones through the central list.
        let remote = match kind {
            SpanKind::Fixed => tc.remote.0[class].take(),
            SpanKind::Movable => ptr::null_mut(),
        };
        let b = if !remote.is_null() {
            // SAFETY: the taken chain is ours: free fixed blocks of `class`, of spans
            // this record owned when they were pushed.
            let mut rest = unsafe { list.push_chain(remote) };
            // SAFETY: what the list had no room for is ours too, and free; we are the
            // record's thread and `owned[class]` its list of the class.
            unsafe {
                self.let_go_fixed(tc, &mut local.owned[class], || {
                    let b = NonNull::new(rest)?;
                    // The block is free and ours; read its link before letting it go.
                    rest = crate::pool::link::read(b);
                    Some(b)
                })
            };
            bump(&c.batches_in, 1);
            list.pop().expect("a non-empty remote list yields a block")
        } else if kind == SpanKind::Fixed
            // SAFETY: this thread owns its record; the list was empty (we are refilling).
            && let Some(b) = unsafe {
                self.refill_local(
                    list,
                    &mut local.owned[class],
                    class,
                    #[cfg(feature = "hardened")]
                    &mut local.rng,
                )
            }
        {
            b
        } else if kind == SpanKind::Movable
            && let Some(batch) = self.central[kind as usize][class].pop()
        {
            bump(&c.batches_in, 1);
            let (first, rest) = batch.split_first();
            if let Some(rest) = rest {
                list.adopt(rest);
            }
            first
        } else {
            // NUMA: a thread the scheduler moved to another node switches to an arena
            // of that node here (see `crate::numa::placement`).
            let mut a = tc.arena.load(Ordering::Relaxed) as usize;
            if let Some(moved) = self.source.numa.moved_arena(a as u32, self.arena_count()) {
                tc.arena.store(moved as u32, Ordering::Relaxed);
                a = moved;
            }
            let arena = &self.arenas[a];
            // Carving writes a link into every block, faulting its pages in: carve at
            // most `CARVE_BYTES` at a time, so a thread that allocates a few large
            // blocks does not commit a whole batch of them.
            let fresh = self
                .batch(class)
                .min((CARVE_BYTES / size_class::size(class)).max(1));
            // Home blocks of fixed spans cost a bitmap bit each (no link read, pages
            // committed): take a quarter of the list's room in one visit, so a thread
            // whose frees went home does not lock its arena every `batch` allocations.
            #[cfg(not(feature = "hardened"))]
            let want = match kind {
                SpanKind::Fixed => fresh.max(usize::from(self.list_limit(kind, class)) / 4),
                SpanKind::Movable => fresh,
            };
            #[cfg(not(feature = "hardened"))]
            arena.take_blocks_for(&self.source, class, kind, tc, want, fresh, |b| {
                // SAFETY: fresh blocks are free and now ours; a batch is below the
                // list's limit, so the list never fills here.
                let full = unsafe { list.push(b) };
                debug_assert!(!full);
            })?;
            // `hardened`: the blocks go on the list in a random order, so consecutive
            // allocations are not neighbours in the span.
            #[cfg(feature = "hardened")]
            {
                let mut got = [NonNull::<u8>::dangling(); super::DEFAULT_BATCH];
                let mut n = 0;
                arena.take_blocks_for(&self.source, class, kind, tc, fresh, fresh, |b| {
                    got[n] = b;
                    n += 1;
                })?;
                hardened::shuffle(&mut local.rng, &mut got[..n]);
                for &b in &got[..n] {
                    // SAFETY: as above.
                    let full = unsafe { list.push(b) };
                    debug_assert!(!full);
                }
            }
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
    pub(super) fn alloc_uncached(
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
        if kind == SpanKind::Fixed && !self.is_local(tc, block, class) {
            return false;
        }
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
    pub(crate) fn hand_out(&self, block: NonNull<u8>, class: usize, size: usize, kind: SpanKind) {
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
    /// No list that holds free fixed blocks (thread lists, remote lists, span home
    /// lists) writes word 1, so every double free is seen — except that, with odds of
    /// 2^-64 per free, a live block holding the key by chance is reported as freed twice.
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
    pub(super) fn stamped_free(&self, block: NonNull<u8>, class: usize) -> ! {
        self.misuse(block, class);
        crate::misuse::fatal!(
            "double free of {block:p} ({} B class)",
            size_class::size(class)
        )
    }

    /// Checks that `block` is the start of a block of a fixed span of this heap of
    /// `class` (the class of the layout it is freed with), or aborts with a message
    /// naming the problem. See [`crate::misuse`]. Returns the block's class: `class`, or
    /// its span's bigger class if a realloc shrank the block in place (see
    /// [`Span::shrunk`](crate::pool::span::Span::shrunk)), whose mark it then clears, as
    /// the block is being freed.
    #[cold]
    #[inline(never)]
    pub(crate) fn misuse(&self, block: NonNull<u8>, class: usize) -> usize {
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
            if span.class() > class
                && let Some(i) = span.block_index(block.as_ptr() as usize)
                && span.is_shrunk(i)
            {
                span.set_shrunk(i, false);
                return span.class();
            }
            if span.class() > class
                && span.block_index(block.as_ptr() as usize).is_some()
                // SAFETY: a block start of a fixed span: at least 16 mapped bytes.
                && unsafe { stamp_word(block).read() } == self.key.load(Ordering::Relaxed)
            {
                crate::misuse::fatal!(
                    "double free of {block:p} ({} B class, shrunk in place by a realloc)",
                    span.block_size()
                )
            }
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
        class
    }

    /// Everything `free_hit` does not serve: finding or claiming the record, or the
    /// uncached path.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`].
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn free_miss(
        &self,
        block: NonNull<u8>,
        class: usize,
        size: usize,
        kind: SpanKind,
    ) {
        let tc = self.thread_cache();
        if kind == SpanKind::Fixed {
            let owner = self.owner_of(block);
            if !tc.is_some_and(|tc| ptr::eq(owner, tc)) {
                // SAFETY: forwarded from the caller.
                unsafe { self.free_remote(tc, owner, block, class, size) };
                return;
            }
        }
        match tc {
            Some(tc) => {
                // SAFETY: forwarded from the caller.
                if unsafe { self.free_cached(tc, block, class, size, kind) } {
                    self.overflow(tc, class, kind);
                }
            }
            None => {
                debug_assert_eq!(kind, SpanKind::Movable, "fixed frees took free_remote");
                // SAFETY: forwarded from the caller.
                unsafe { self.free_uncached(block, class, size) }
            }
        }
    }

    /// The owner record of fixed `block`'s span (null: none, or not a block of ours).
    #[inline]
    pub(super) fn owner_of(&self, block: NonNull<u8>) -> *mut ThreadCache {
        self.span_of(block)
            .map_or(ptr::null_mut(), |s| s.owner.load(Ordering::Relaxed))
    }

    /// Whether the free of `block` as a fixed block of `class` takes the local path:
    /// its span is owned by `tc` (see `pool::remote`) and serves `class`, and (with
    /// [`CHECK_BLOCK_START`]) `block` is the start of one of its blocks. A page-map
    /// lookup and two compares (plus the divisibility test of `pool::check`).
    ///
    /// This is the hot path's pointer check (DESIGN invariant 9): a misuse fails one of
    /// the tests and goes to the slow path, where [`HeapInner::misuse`] names it. A
    /// foreign or stack pointer has no span, or one whose owner is no record of this
    /// heap's; a movable span and a span with no block out (see `Span::put`) have no
    /// owner; a span of another class fails the class compare; an interior pointer, or
    /// one into the tail after the last block, fails the divisibility test. Costs 1
    /// instruction per hot pair on `Heap` and 5 on `Global` (see `benches/README.md`).
    #[inline(always)]
    pub(crate) fn is_local(&self, tc: &ThreadCache, block: NonNull<u8>, class: usize) -> bool {
        let addr = block.as_ptr() as usize;
        match pagemap::lookup_fast(addr) {
            Some(s) => {
                // SAFETY: page-map entries point at live span records; `owner` and
                // `class` are atomics, `base` is fixed for the record's life.
                let span = unsafe { s.as_ref() };
                ptr::eq(span.owner.load(Ordering::Relaxed), tc)
                    && span.class() == class
                    && (!CHECK_BLOCK_START
                        || check::fixed_block_start(addr.wrapping_sub(span.base), class))
            }
            None => false,
        }
    }

    /// Frees fixed `block`, whose span `tc` (this thread's record, if any) does not own:
    /// onto the remote list of its owner, or home when it has none (see `pool::remote`).
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`], for a fixed block; `owner` is its span's owner as
    /// read after the block was handed out.
    #[cold]
    #[inline(never)]
    unsafe fn free_remote(
        &self,
        tc: Option<&ThreadCache>,
        owner: *mut ThreadCache,
        block: NonNull<u8>,
        class: usize,
        size: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { self.stamp_free(block, class, size) };
        poison::free_class(block, class);
        let fixed = SpanKind::Fixed as usize;
        match tc {
            Some(tc) => {
                bump(&tc.counters[fixed].frees, 1);
                bump(&tc.counters[fixed].free_bytes, size as u64);
            }
            None => {
                self.shared[fixed].frees.fetch_add(1, Ordering::Relaxed);
                let b = &self.shared[fixed].free_bytes;
                b.fetch_add(size as u64, Ordering::Relaxed);
            }
        }
        match (NonNull::new(owner), tc) {
            (Some(_), Some(tc)) => {
                // SAFETY: this thread owns its record.
                let out = &mut unsafe { tc.local() }.outgoing[class];
                if out.owner != owner {
                    // SAFETY: the chain's blocks are dead and ours.
                    unsafe { Self::send(out, class) };
                    out.owner = owner;
                }
                // SAFETY: the dead block is ours to hand over.
                if unsafe { out.add(block) } >= self.batch(class) as u32 {
                    // SAFETY: as above.
                    unsafe { Self::send(out, class) };
                }
            }
            // SAFETY: the owner is a record of this heap (alive as long as it), and the
            // dead block is ours to hand over.
            (Some(o), None) => unsafe { o.as_ref().remote.0[class].push_chain(block, block) },
            // SAFETY: the dead block is ours; its span is owned by nobody.
            (None, _) => unsafe { self.return_home(Batch::from_block(block)) },
        }
    }

    /// Pushes `out`'s chain (if any) onto its owner's remote list of `class`.
    ///
    /// # Safety
    ///
    /// `out` belongs to the caller's record, whose thread the caller is (or owns).
    pub(super) unsafe fn send(out: &mut Outgoing, class: usize) {
        if let Some((head, tail)) = out.take() {
            // SAFETY: a non-empty chain has an owner, a record of this heap (alive as long
            // as it); the chain's blocks are dead and ours to hand over.
            unsafe { (*out.owner).remote.0[class].push_chain(head, tail) };
        }
    }

    /// A movable block freed by a thread without a record (fixed ones take
    /// `free_remote`): home to its span.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::free_block`], for a movable block.
    #[cold]
    #[inline(never)]
    pub(super) unsafe fn free_uncached(&self, block: NonNull<u8>, class: usize, size: usize) {
        poison::free_class(block, class);
        let c = &self.shared[SpanKind::Movable as usize];
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
        match kind {
            // Fixed lists go home by halves, each block straight from the list to its
            // span (one pass over the blocks, no batch built).
            // Blocks of spans this record owns go to their local sets (no lock, see
            // `pool::owned`), others home.
            SpanKind::Fixed => {
                let mut n = list.len() / 2;
                bump(&tc.counters[kind as usize].batches_out, 1);
                // SAFETY: the list's blocks are free, ours, and of this heap; we are the
                // record's thread and `owned[class]` its list of the class.
                unsafe {
                    self.let_go_fixed(tc, &mut local.owned[class], || {
                        n = n.checked_sub(1)?;
                        list.pop()
                    })
                };
            }
            // Movable lists pass a batch to the central list.
            SpanKind::Movable => {
                if let Some(b) = list.take_batch(self.batch(class).min(list.len() - 1)) {
                    bump(&tc.counters[kind as usize].batches_out, 1);
                    self.give_back(b, class, kind);
                }
            }
        }
        local.resync(kind as usize, class);
        if local.cached_bytes > self.config.thread_cache_bytes as isize {
            self.shrink(tc);
        }
    }

    /// The byte view says the cache is over budget: makes the view exact and, if it
    /// still is, halves every list, biggest classes first, until the cache is a quarter
    /// below the budget. The margin keeps the next refills and overflows under the
    /// budget, so a thread at its budget does not pay for this walk on each of them.
    #[cold]
    #[inline(never)]
    pub(super) fn shrink(&self, tc: &ThreadCache) {
        // SAFETY: this thread owns its record.
        let local = unsafe { tc.local() };
        local.resync_all();
        let budget = self.config.thread_cache_bytes as isize;
        if local.cached_bytes <= budget {
            return;
        }
        let target = budget - budget / 4;
        for k in SpanKind::ALL {
            for c in (0..NUM_CLASSES).rev() {
                if local.cached_bytes <= target {
                    return;
                }
                let l = &mut local.lists[k as usize][c];
                let give = l.len() - l.len() / 2;
                if give == 0 {
                    continue;
                }
                if let Some(b) = l.take_batch(give) {
                    bump(&tc.counters[k as usize].batches_out, 1);
                    self.give_back(b, c, k);
                }
                local.resync(k as usize, c);
            }
        }
    }

    /// Blocks a thread's list of `class`/`kind` holds at most. Movable: two batches.
    /// Fixed: [`FIXED_LIST_BYTES`] worth, or half the cache budget if less (at least two
    /// batches); its overflow goes home to the spans, whose home bitmaps play the part of
    /// mimalloc's page-local free lists (refills take them back in address order).
    pub(crate) fn list_limit(&self, kind: SpanKind, class: usize) -> u16 {
        let batches = (2 * self.batch(class)).max(2);
        let bytes = FIXED_LIST_BYTES.min(self.config.thread_cache_bytes / 2);
        match kind {
            SpanKind::Fixed => {
                (bytes / size_class::size(class)).clamp(batches, usize::from(u16::MAX)) as u16
            }
            SpanKind::Movable => batches as u16,
        }
    }
}
