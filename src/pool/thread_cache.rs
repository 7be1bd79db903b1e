//! Per-thread caches: the allocation fast path.
//!
//! Each thread that uses a heap claims one [`ThreadCache`] record of that heap (records
//! live in the heap, so they stay valid however the thread's TLS is torn down). The
//! record holds, per span kind and size class, an intrusive list of free blocks. Only
//! the owning thread touches the lists, so the fast path is:
//!
//! ```text
//! alloc: TLS entry → record → list.head; list.head = *head; count -= 1   (no lock, no RMW)
//! free:  list.push(block); count += 1; if over a limit → flush a batch to the central list
//! ```
//!
//! A thread finds its record through a small thread-local table of
//! `(heap id, record)` entries, most recently used first. When the thread exits, the
//! table's destructor returns every cached block home to its span and releases the
//! record, so nothing leaks when threads die. Heaps that were dropped meanwhile are
//! recognised through the heap registry (see `pool::heap`), so the destructor never
//! touches freed memory.
//!
//! Counters are `AtomicU64`s written only by the owner with a relaxed load + store (no
//! read-modify-write, so no `lock` prefix) and read by anyone for statistics.

use core::cell::Cell;
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::central::Batch;
use super::heap::HeapInner;
use crate::size_class::NUM_CLASSES;
use crate::stats::PoolCounters;

/// A thread-owned intrusive list of free blocks of one class.
///
/// Invariant: `count` == number of blocks reachable from `head`.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct FreeList {
    head: *mut u8,
    count: u32,
}

impl FreeList {
    #[inline(always)]
    pub(crate) fn pop(&mut self) -> Option<NonNull<u8>> {
        let b = NonNull::new(self.head)?;
        // SAFETY: list blocks are free, owned by this thread's record and hold the next
        // pointer in word 0.
        self.head = unsafe { b.cast::<*mut u8>().read() };
        self.count -= 1;
        Some(b)
    }

    /// # Safety
    ///
    /// `block` is a free block of this list's class that nobody else uses.
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, block: NonNull<u8>) {
        // SAFETY: the block is dead, ours, and at least 16 bytes.
        unsafe { block.cast::<*mut u8>().write(self.head) };
        self.head = block.as_ptr();
        self.count += 1;
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count as usize
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

    /// Adopts every block of `batch` (the list must be empty).
    pub(crate) fn adopt(&mut self, batch: Batch) {
        debug_assert_eq!(self.count, 0);
        let (head, _tail, count) = batch.into_raw_parts();
        self.head = head.as_ptr();
        self.count = count;
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

/// One thread's cache for one heap.
///
/// All-zero bytes are a valid unclaimed, empty record (records live in zeroed OS pages).
#[derive(Debug)]
pub(crate) struct ThreadCache {
    /// Set while a thread owns the record.
    pub(crate) claimed: AtomicBool,
    /// The arena this thread refills from.
    pub(crate) arena: AtomicU32,
    /// Bytes of blocks on the lists (class sizes).
    pub(crate) cached_bytes: AtomicUsize,
    /// The heap's movable flush epoch this record last honoured.
    pub(crate) movable_epoch: AtomicU64,
    pub(crate) counters: [Counters; 2],
    lists: core::cell::UnsafeCell<[[FreeList; NUM_CLASSES]; 2]>,
}

// SAFETY: `lists` is only touched by the claiming thread (or by whoever releases the
// record after that thread is gone, under the heap registry lock); everything else is
// atomic.
unsafe impl Sync for ThreadCache {}

impl ThreadCache {
    /// The lists.
    ///
    /// # Safety
    ///
    /// The caller is the thread that claimed this record (or the record is being
    /// released and its thread is gone), and holds no other reference from this method.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn lists(&self) -> &mut [[FreeList; NUM_CLASSES]; 2] {
        // SAFETY: forwarded from the caller: exclusive owner access.
        unsafe { &mut *self.lists.get() }
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

/// Heaps a thread keeps records for at once; using more evicts the least recent.
const ENTRIES: usize = 8;

struct Tls {
    entries: [Cell<Entry>; ENTRIES],
}

impl Drop for Tls {
    fn drop(&mut self) {
        for e in &self.entries {
            let e = e.replace(EMPTY);
            if e.heap_id != NO_HEAP {
                // SAFETY: the entry was installed by this thread for `e.cache`, a record
                // it claimed; `release_if_alive` checks the heap is still registered.
                unsafe { HeapInner::release_if_alive(e.heap, e.heap_id, e.cache) };
            }
        }
    }
}

thread_local! {
    static TLS: Tls = const { Tls { entries: [const { Cell::new(EMPTY) }; ENTRIES] } };
}

/// This thread's record for `heap`, claiming one if needed; `None` when the thread is
/// being torn down, or the heap has no free record (the caller then takes the uncached
/// path).
#[inline(always)]
pub(crate) fn current(heap: &HeapInner) -> Option<&ThreadCache> {
    let id = heap.id();
    let found = TLS
        .try_with(|t| {
            let first = t.entries[0].get();
            if first.heap_id == id {
                return first.cache;
            }
            lookup_slow(t, heap)
        })
        .ok()?;
    // SAFETY: records live as long as their heap, which `heap` borrows, and this thread
    // owns the record it found.
    unsafe { found.as_ref() }
}

#[cold]
fn lookup_slow(t: &Tls, heap: &HeapInner) -> *const ThreadCache {
    let id = heap.id();
    let hit = t
        .entries
        .iter()
        .position(|e| id != 0 && e.get().heap_id == id);
    let idx = match hit {
        Some(i) => i,
        None => {
            let Some(cache) = heap.claim_cache() else {
                return ptr::null();
            };
            // `claim_cache` assigns the heap its id on first use.
            let id = heap.id();
            debug_assert_ne!(id, 0);
            let last = t.entries[ENTRIES - 1].replace(Entry {
                heap_id: id,
                heap,
                cache,
            });
            if last.heap_id != NO_HEAP {
                // SAFETY: the evicted entry was this thread's; the registry check inside
                // guards against a heap dropped meanwhile.
                unsafe { HeapInner::release_if_alive(last.heap, last.heap_id, last.cache) };
            }
            ENTRIES - 1
        }
    };
    // Move to front.
    let e = t.entries[idx].get();
    for i in (1..=idx).rev() {
        t.entries[i].set(t.entries[i - 1].get());
    }
    t.entries[0].set(e);
    e.cache
}
