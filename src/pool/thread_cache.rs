//! Per-thread caches: the allocation fast path.
//!
//! Each thread that uses a heap claims one [`ThreadCache`] record of that heap (records
//! live in the heap, so they stay valid however the thread's TLS is torn down). The
//! record holds, per span kind and size class, an intrusive list of free blocks. Only
//! the owning thread touches the lists, so the fast path is:
//!
//! ```text
//! alloc: TLS slot → record → list.head; list.head = *head; room += 1          (no lock, no RMW)
//! free:  *block = head; list.head = block; room -= 1; if room == 0 → overflow (cold)
//! ```
//!
//! plus, on each side, two owner-only counter updates (`allocs`/`alloc_bytes` or
//! `frees`/`free_bytes`), each one `add [mem], reg` on x86-64. That is all the
//! bookkeeping: the list's length is `limit - room` (invariant L1 below), so the free
//! path's only check is the flags of its own decrement, and the cache's byte budget is
//! only looked at on the cold paths (refill, overflow), from lengths synced there.
//!
//! A fixed free first checks that the block's span is owned by this record and serves
//! the layout's class (a page-map lookup and two compares, see `pool::remote` and
//! `HeapInner::is_local`); a block of another record's span goes to that record's
//! remote list instead, and the owner collects it on a miss. When a fixed
//! list overflows, its blocks of spans the record owns go into those spans' owner-only
//! local sets (no lock, see `pool::owned`), others home to their spans; a refill takes
//! from the local sets before it locks an arena.
//!
//! # Finding the record: one thread-local access
//!
//! A thread finds its record through a small thread-local table of
//! `(heap id, heap, record)` entries. The table has no destructor, so reaching it is a
//! plain `fs:`-relative access with no "is it initialised / destroyed" check. Its first
//! two entries are *fast slots*: slot 0 belongs to the most recently used [`Global`]
//! heap, slot 1 to the most recently used `Heap`, so a program that uses one `Global`
//! as its allocator and one `Heap` for its assets never has the two evict each other.
//! Each heap knows its slot (`HeapInner::fast_slot`), so the hot check is one compare
//! of the slot's id with the heap's. Everything else (other heaps, first use, eviction)
//! is [`lookup_slow`], out of line.
//!
//! # Thread exit keeps memory warm
//!
//! The exit hook is a second thread-local, with a destructor, registered the first time
//! the thread claims a record (on the slow path). When the thread exits it *parks* each
//! record: the movable lists go to the central lists (where the compactor finds them),
//! the fixed lists stay in the record, trimmed to [`PARK_BYTES`] (and to nothing once
//! the heap's parked records hold [`PARKED_TOTAL_BYTES`]), and the record is unclaimed. The next thread to claim it inherits those blocks warm: no page faults, no
//! refill, and no arena lock taken at exit or at the next thread's first allocations.
//! `Heap::trim` (and `Global::trim`) flushes parked records home. A thread that
//! allocates after its exit hook ran (from another thread-local's destructor) uses the
//! uncached path. Heaps dropped meanwhile are recognised through the heap registry (see
//! `pool::heap`), so the hook never touches freed memory.
//!
//! Counters are `AtomicU64`s written only by the owner with a relaxed load + store (no
//! read-modify-write, so no `lock` prefix; LLVM emits one `add [mem], reg`) and read by
//! anyone for statistics.
//!
//! [`Global`]: crate::Global

use core::cell::Cell;
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::central::Batch;
use super::heap::HeapInner;
use super::link;
use super::owned::OwnedSpans;
use super::remote::RemoteLists;
use crate::size_class::{self, NUM_CLASSES};
use crate::stats::PoolCounters;

/// Fixed-list bytes a parked record keeps for the next thread (see the module docs).
pub(crate) const PARK_BYTES: usize = 256 * 1024;
/// Fixed-list bytes all of a heap's parked records keep together, at most (so a pool of
/// many threads exiting at once does not strand its caches); past it, an exiting
/// thread's blocks go to the central lists.
pub(crate) const PARKED_TOTAL_BYTES: usize = 16 * PARK_BYTES;

/// A thread-owned intrusive list of free blocks of one class.
///
/// Invariants (while the record is claimed, and whenever `limit != 0`):
///
/// * L1: `len == limit - room`, where `len` is the number of blocks reachable from
///   `head`;
/// * L2: `1 <= room <= limit` between operations: a push that brings `room` to 0 is
///   followed by an overflow that takes blocks off before the free returns;
/// * L3: `synced` is `len` as of the last cold-path visit (the byte budget's view).
///
/// All zero (a fresh record) means "not set up yet": `claim` sets `limit` and `room`.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct FreeList {
    head: *mut u8,
    room: u32,
    limit: u16,
    synced: u16,
}

impl FreeList {
    /// Sets an empty, never used list up to hold up to `limit` blocks (no-op if it
    /// was set up before: a parked record keeps its lists).
    pub(crate) fn set_up(&mut self, limit: u16) {
        if self.limit == 0 {
            debug_assert!(self.head.is_null() && limit >= 2);
            self.limit = limit;
            self.room = u32::from(limit);
        }
    }

    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<NonNull<u8>> {
        let b = NonNull::new(self.head)?;
        // SAFETY: list blocks are free, owned by this thread's record and hold the next
        // pointer in word 0.
        self.head = unsafe { link::read(b) };
        self.room += 1;
        Some(b)
    }

    /// Pushes `block`; returns `true` when the list is now full (`room == 0`) and the
    /// caller must take blocks off (L2).
    ///
    /// # Safety
    ///
    /// `block` is a free block of this list's class that nobody else uses, and the
    /// list is set up.
    #[inline(always)]
    #[must_use]
    pub(crate) unsafe fn push(&mut self, block: NonNull<u8>) -> bool {
        debug_assert!(self.room >= 1, "L2: a set-up list has room");
        // SAFETY: the block is dead, ours, and at least 16 bytes.
        unsafe { link::write(block, self.head) };
        self.head = block.as_ptr();
        self.room -= 1;
        self.room == 0
    }

    /// Blocks on the list (L1).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        usize::from(self.limit) - self.room as usize
    }

    /// Blocks gained (positive) or lost since the last call, which re-syncs (L3).
    pub(crate) fn resync(&mut self) -> isize {
        let len = self.len();
        let d = len as isize - self.synced as isize;
        self.synced = len as u16;
        d
    }

    /// Detaches up to `n` blocks from the front as a batch.
    pub(crate) fn take_batch(&mut self, n: usize) -> Option<Batch> {
        let first = self.pop()?;
        // SAFETY: `first` is a free block owned by us.
        let mut batch = unsafe { Batch::from_block(first) };
        while (batch.len() as usize) < n {
            match self.pop() {
                // SAFETY: popped blocks are free and ours.
                Some(b) => unsafe { batch.push(b) },
                None => break,
            }
        }
        Some(batch)
    }

    /// Pushes blocks of the null-terminated chain (through word 0) from `chain` while
    /// the list keeps room for one more (L2); returns the rest of the chain (null when
    /// every block was taken).
    ///
    /// # Safety
    ///
    /// The chain's blocks are free blocks of this list's class that nobody else uses,
    /// and the list is set up.
    pub(crate) unsafe fn push_chain(&mut self, chain: *mut u8) -> *mut u8 {
        let mut cur = chain;
        while self.room > 1
            && let Some(b) = NonNull::new(cur)
        {
            // SAFETY: the block is ours (caller); read its link before relinking it.
            cur = unsafe { link::read(b) };
            // SAFETY: as above; `room > 1`, so the list does not fill.
            let full = unsafe { self.push(b) };
            debug_assert!(!full);
        }
        cur
    }

    /// Adopts every block of `batch` (the list must be empty, and the batch shorter
    /// than the limit, so L2 holds after).
    pub(crate) fn adopt(&mut self, batch: Batch) {
        debug_assert_eq!(self.len(), 0);
        let (head, _tail, count) = batch.into_raw_parts();
        debug_assert!(count < self.room);
        self.head = head.as_ptr();
        self.room -= count;
    }
}

/// Owner-written, anyone-read counters of one kind (fixed or movable).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) allocs: AtomicU64,
    pub(crate) alloc_bytes: AtomicU64,
    pub(crate) frees: AtomicU64,
    pub(crate) free_bytes: AtomicU64,
    /// Allocations the list could not serve (a refill followed).
    pub(crate) misses: AtomicU64,
    /// Batches taken from the central list.
    pub(crate) batches_in: AtomicU64,
    /// Batches given to the central list (or home, when it was full).
    pub(crate) batches_out: AtomicU64,
}

impl Counters {
    /// All zero. A `const` (not a `static`) on purpose: it is only ever used to
    /// initialise fresh, distinct counter sets in array repeat expressions.
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const ZERO: Counters = Counters {
        allocs: AtomicU64::new(0),
        alloc_bytes: AtomicU64::new(0),
        frees: AtomicU64::new(0),
        free_bytes: AtomicU64::new(0),
        misses: AtomicU64::new(0),
        batches_in: AtomicU64::new(0),
        batches_out: AtomicU64::new(0),
    };

    fn fields(&self) -> [&AtomicU64; 7] {
        [
            &self.allocs,
            &self.alloc_bytes,
            &self.frees,
            &self.free_bytes,
            &self.misses,
            &self.batches_in,
            &self.batches_out,
        ]
    }

    /// A relaxed reading of every counter.
    pub(crate) fn snapshot(&self) -> PoolCounters {
        let [a, ab, f, fb, m, bi, bo] = self.fields().map(|c| c.load(Ordering::Relaxed));
        PoolCounters {
            allocations: a,
            allocated_bytes: ab,
            frees: f,
            freed_bytes: fb,
            misses: m,
            batches_in: bi,
            batches_out: bo,
        }
    }

    /// Adds every counter to `to` (atomically) and zeroes it here.
    pub(crate) fn drain_into(&self, to: &Counters) {
        for (from, to) in self.fields().into_iter().zip(to.fields()) {
            to.fetch_add(from.swap(0, Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Adds `n` to an owner-only counter without a read-modify-write.
#[inline(always)]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Fixed blocks of one class that this record's thread freed for another record, not
/// yet pushed onto that record's remote list (see `pool::remote`).
///
/// Invariant: `len` blocks are chained from `head` through word 0 to `tail` (both null
/// when `len == 0`), all of spans whose owner was `owner` when they were freed.
/// All zero is empty.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) owner: *mut ThreadCache,
    head: *mut u8,
    tail: *mut u8,
    len: u32,
}

impl Outgoing {
    /// Adds `block` (for the current `owner`); returns the chain's length.
    ///
    /// # Safety
    ///
    /// `block` is a free fixed block of this chain's class that the caller hands over.
    pub(crate) unsafe fn add(&mut self, block: NonNull<u8>) -> u32 {
        // SAFETY: the block is dead, ours, and at least 16 bytes.
        unsafe { link::write(block, self.head) };
        if self.head.is_null() {
            self.tail = block.as_ptr();
        }
        self.head = block.as_ptr();
        self.len += 1;
        self.len
    }

    /// Takes the chain: `(head, tail)`, or `None` when empty.
    pub(crate) fn take(&mut self) -> Option<(NonNull<u8>, NonNull<u8>)> {
        let head = NonNull::new(self.head)?;
        let tail = NonNull::new(self.tail).expect("a non-empty chain has a tail");
        (self.head, self.tail, self.len) = (ptr::null_mut(), ptr::null_mut(), 0);
        Some((head, tail))
    }
}

/// The owner-only part of a record: the lists and the byte budget's view of them.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) lists: [[FreeList; NUM_CLASSES]; 2],
    /// Remote frees on their way, per class (see [`Outgoing`]).
    pub(crate) outgoing: [Outgoing; NUM_CLASSES],
    /// Owned fixed spans with blocks in their local sets, per class (see
    /// `pool::owned`).
    pub(crate) owned: [OwnedSpans; NUM_CLASSES],
    /// Bytes of blocks on the lists as of each list's last sync (L3): exact for every
    /// list the cold paths visited last, off by at most `limit` blocks for the others.
    pub(crate) cached_bytes: isize,
    /// Bytes this record added to its heap's parked total when it was parked (0 while
    /// claimed): taken back by whoever claims it next.
    pub(crate) parked: usize,
    /// `hardened`: the state of the generator that shuffles refills (see
    /// `hardened::shuffle`); 0 until the first refill seeds it.
    #[cfg(feature = "hardened")]
    pub(crate) rng: u64,
}

impl Local {
    /// Re-syncs `list` (of `class`) into the byte view.
    #[inline]
    pub(crate) fn resync(&mut self, kind: usize, class: usize) {
        let d = self.lists[kind][class].resync();
        self.cached_bytes += d * size_class::size(class) as isize;
    }

    /// Re-syncs every list: the view becomes exact.
    pub(crate) fn resync_all(&mut self) {
        for k in 0..2 {
            for c in 0..NUM_CLASSES {
                self.resync(k, c);
            }
        }
    }
}

/// One thread's cache for one heap.
///
/// All-zero bytes are a valid unclaimed, empty record (records live in zeroed OS pages).
#[derive(Debug)]
pub(crate) struct ThreadCache {
    /// Set while a thread owns the record.
    pub(crate) claimed: AtomicBool,
    /// The arena this thread refills from.
    pub(crate) arena: AtomicU32,
    /// The heap's movable flush epoch this record last honoured.
    pub(crate) movable_epoch: AtomicU64,
    pub(crate) counters: [Counters; 2],
    local: core::cell::UnsafeCell<Local>,
    /// Fixed blocks of this record's spans freed by other threads, per class (see
    /// `pool::remote`): pushed by anyone, taken by the record's owner.
    pub(crate) remote: RemoteLists,
}

// SAFETY: `local` is only touched by the claiming thread (or by whoever claims the
// record after that thread released it); everything else is atomic (the remote lists
// too).
unsafe impl Sync for ThreadCache {}

impl ThreadCache {
    /// The lists and byte view.
    ///
    /// # Safety
    ///
    /// The caller is the thread that claimed this record, and holds no other reference
    /// from this method.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn local(&self) -> &mut Local {
        // SAFETY: forwarded from the caller: exclusive owner access.
        unsafe { &mut *self.local.get() }
    }

    /// The list of `kind`/`class`.
    ///
    /// # Safety
    ///
    /// As [`ThreadCache::local`]; `class < NUM_CLASSES`.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn list(&self, kind: usize, class: usize) -> &mut FreeList {
        debug_assert!(kind < 2 && class < NUM_CLASSES);
        // SAFETY: owner access is forwarded from the caller; both indexes are in range,
        // so the place is inside `lists` (no bounds check on the hot path).
        unsafe {
            let lists = &raw mut (*self.local.get()).lists;
            &mut *lists.cast::<FreeList>().add(kind * NUM_CLASSES + class)
        }
    }
}

/// A thread's entry for one heap.
#[derive(Clone, Copy, Debug)]
struct Entry {
    heap_id: u64,
    heap: *const HeapInner,
    cache: *const ThreadCache,
}

/// Heap ids start at 1 and an unassigned heap reads 0, so no heap ever matches this.
const NO_HEAP: u64 = u64::MAX;

const EMPTY: Entry = Entry {
    heap_id: NO_HEAP,
    heap: ptr::null(),
    cache: ptr::null(),
};

/// Heaps a thread keeps records for at once; using more evicts one.
const ENTRIES: usize = 8;

/// The fast slot of `Global` heaps.
pub(crate) const GLOBAL_SLOT: usize = 0;
/// The fast slot of `Heap` heaps.
pub(crate) const HEAP_SLOT: usize = 1;

/// The thread's table. No destructor on purpose: see the module docs.
struct Tls {
    entries: [Cell<Entry>; ENTRIES],
}

thread_local! {
    static TLS: Tls = const { Tls { entries: [const { Cell::new(EMPTY) }; ENTRIES] } };
}

const _: () = assert!(
    !core::mem::needs_drop::<Tls>(),
    "the table must have no destructor, or every access checks its state"
);

/// Parks every record of the exiting thread (see the module docs).
struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        TLS.with(|t| {
            for e in &t.entries {
                let e = e.replace(EMPTY);
                if e.heap_id != NO_HEAP {
                    // SAFETY: the entry was installed by this thread for `e.cache`, a
                    // record it claimed; `release_if_alive` checks the heap is still
                    // registered.
                    unsafe { HeapInner::release_if_alive(e.heap, e.heap_id, e.cache) };
                }
            }
        });
    }
}

thread_local! {
    static EXIT: ExitHook = const { ExitHook };
}

/// This thread's record for `heap` if it sits in the heap's fast slot: the hot path's
/// only thread-local access (a plain `fs:`-relative load and one compare).
#[inline(always)]
pub(crate) fn current_fast(heap: &HeapInner) -> Option<&ThreadCache> {
    current_fast_at(heap, heap.fast_slot())
}

/// [`current_fast`] for a caller that knows the heap's fast slot (`Global`'s entry
/// points: a constant, so the hot path does not load it).
#[inline(always)]
pub(crate) fn current_fast_at(heap: &HeapInner, slot: usize) -> Option<&ThreadCache> {
    debug_assert_eq!(slot, heap.fast_slot());
    let e = TLS.with(|t| t.entries[slot & 1].get());
    if e.heap_id == heap.id() {
        // SAFETY: an entry with a heap id holds the (non-null) record this thread
        // claimed from that heap, which lives as long as the heap, which `heap` borrows.
        // Saying so spares the hot path a null check.
        Some(unsafe {
            core::hint::assert_unchecked(!e.cache.is_null());
            &*e.cache
        })
    } else {
        None
    }
}

/// This thread's record for `heap`, claiming one if needed; `None` when the thread is
/// being torn down, or the heap has no free record (the caller then takes the uncached
/// path).
#[inline]
pub(crate) fn current(heap: &HeapInner) -> Option<&ThreadCache> {
    if let Some(tc) = current_fast(heap) {
        return Some(tc);
    }
    let found = TLS.with(|t| lookup_slow(t, heap));
    // SAFETY: records live as long as their heap, which `heap` borrows, and this thread
    // owns the record it found.
    unsafe { found.as_ref() }
}

/// Finds or claims the record and puts it in the heap's fast slot.
#[cold]
#[inline(never)]
fn lookup_slow(t: &Tls, heap: &HeapInner) -> *const ThreadCache {
    let slot = heap.fast_slot() & 1;
    let id = heap.id();
    if id != 0
        && let Some(i) = t.entries.iter().position(|e| e.get().heap_id == id)
    {
        t.entries[i].swap(&t.entries[slot]);
        return t.entries[slot].get().cache;
    }
    // A new record: the exit hook must be registered first, so that it is released at
    // exit. Failing that (the thread is exiting), the caller goes uncached.
    if EXIT.try_with(|_| ()).is_err() {
        return ptr::null();
    }
    let Some(cache) = heap.claim_cache() else {
        return ptr::null();
    };
    // `claim_cache` assigns the heap its id on first use.
    let id = heap.id();
    debug_assert_ne!(id, 0);
    // The slot's previous occupant moves to a free entry, or evicts the last one.
    let victim = (2..ENTRIES)
        .find(|&i| t.entries[i].get().heap_id == NO_HEAP)
        .unwrap_or(ENTRIES - 1);
    let moved = t.entries[slot].replace(Entry {
        heap_id: id,
        heap,
        cache,
    });
    let evicted = t.entries[victim].replace(moved);
    if evicted.heap_id != NO_HEAP {
        // SAFETY: the evicted entry was this thread's; the registry check inside
        // guards against a heap dropped meanwhile.
        unsafe { HeapInner::release_if_alive(evicted.heap, evicted.heap_id, evicted.cache) };
    }
    cache
}
