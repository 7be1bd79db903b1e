//! A store's own list of its slots, so that iterating a store visits its values only,
//! never the handles of other stores on the same heap — kept with no read-modify-write
//! on insert and remove in the common case, and with no work at all on remove.
//!
//! # An append-only list of slot indexes, pruned lazily
//!
//! The list holds *members*: the slot indexes the store inserted into, in no particular
//! order, each at most once, including slots whose value was removed since. A member
//! is *live* while its slot holds a value of this store: occupied, with a pointer that
//! carries the store's tag (module `movable`; the tag is unique in the process, so no
//! other store's value matches). Whoever reads the list checks each member against its
//! slot, as any lookup does, and takes the slot's current generation for the handle.
//!
//! Each index is listed at most once: the lock holder keeps a set of the listed
//! indexes (a bit per index, in chunks of [`CHUNK_BITS`] made on first use), and a
//! drain lists an index only if its bit is clear. So a slot the store reuses (the
//! common case: a thread's remove stashes the slot and its next insert takes it back,
//! module `handle::table::lanes`) adds nothing to the list, and each value is seen at
//! most once by a reader (one slot holds one value at a time).
//!
//! Removing a value does not touch the list; it only counts (below). Dead members are
//! dropped when the list is *pruned*: after a drain, once it holds more than twice the
//! store's length plus [`PRUNE_SLACK`], every member is checked against its slot and
//! the dead ones go (their bits cleared). A prune costs O(list) and leaves about `len`
//! members, so the next one comes after at least `len + PRUNE_SLACK` inserts into new
//! slots: O(1) amortised per insert, and the list (so iteration) stays proportional to
//! the store.
//!
//! A prune may drop a member whose slot is vacant (or another store's) at that moment
//! and is then given to this store again: that insert appends the index to a ring after
//! it occupied the slot, so the next drain lists it again. A value whose insert
//! happened before a drain's Acquire of its ring's head is listed after that drain
//! (appended now, or already listed), and the prune that follows sees its slot occupied
//! (the ring's Release was after the occupy) unless the value was removed since.

//! # Per-lane rings: no lock on the hot path
//!
//! A thread that owns a lane of the heap (its thread-cache record, as for the handle
//! table's lanes) does not take the lock to add: it appends the member to a ring of its
//! own for this store (single producer: a relaxed load of its head, a store of the
//! entry, a Release store of the head — no read-modify-write). Whoever takes the lock
//! *drains* every ring into the list first (Acquire of each head, then a Release store
//! of the ring's tail, which the producer Acquires before it reuses an entry). A
//! producer whose ring is full drains under the lock itself, once per [`RING`] inserts.
//! A remove through a lane adds one to its ring's `removed` count (owner only: a load
//! and a store). Threads without a lane (their record could not be claimed) apply the
//! change under the lock directly. So:
//!
//! ```text
//! list after a drain ⊇ every index published in a ring or added under the lock
//!                      that still holds a value of the store
//! len = Σ rings (head − removed) + laneless (adds − removes)         (mod 2^32)
//! ```
//!
//! `len` is exact at quiescence (every insert counted once in a ring's head or under
//! the lock, every remove once in a ring's `removed` or under the lock), and iteration
//! and the store's drop drain first, so they see every insert and remove that happened
//! before them (a change happens-before its ring's head store, which the drain
//! Acquires; a remove happens-before the vacate its liveness check sees).
//!
//! Memory per store: a table of ring pointers, one per lane (8 KiB), a ring of
//! [`RING`] members (≈ 0.3 KiB) per lane that ever changed the store, the list (4
//! bytes per member, at most about `2 · len + PRUNE_SLACK` after a drain), and the
//! listed set: 8 bytes per [`CHUNK_BITS`] indexes up to the highest listed, and a
//! 512-byte chunk for each range of [`CHUNK_BITS`] indexes the store ever listed.
//!
//! Iteration takes the list under the lock, shared rather than copied (copy on write:
//! the list changes only when a drain adds members or a prune drops some, and only then
//! is it copied, if a snapshot still holds it), and then resolves each member without
//! the lock; values removed meanwhile are skipped (their slot no longer holds a value of
//! the store), and
//! values inserted meanwhile may or may not be seen. A thread may so insert into or
//! remove from the store while it iterates without waiting for itself.

use core::ptr::NonNull;
use std::sync::Arc;

use crate::handle::{HandleTable, LANES};
use crate::movable::{Tag, peek_tag};
use crate::sync::{
    AtomicBool, AtomicPtr, AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
    UnsafeCell,
};

/// Members one lane's ring holds before its producer must drain.
#[cfg(not(tidyheap_loom))]
const RING: usize = 64;
#[cfg(tidyheap_loom)]
const RING: usize = 2;

/// Dead members a list may hold beyond `len` before a drain prunes it (see the module
/// docs): small stores are not pruned on every drain.
#[cfg(not(tidyheap_loom))]
const PRUNE_SLACK: usize = 256;
#[cfg(tidyheap_loom)]
const PRUNE_SLACK: usize = 0;

/// Slot indexes per chunk of the listed set (one `u64` word per 64).
const CHUNK_BITS: usize = 4096;

/// A member: the index of a slot the store inserted into.
pub(crate) type Member = u32;

/// The generation of slot `index` of `table` if it holds a value of the store tagged
/// `tag` (the member is live), judged by a peek at the slot: exact while the value
/// stays; a racing remove or reuse may answer either way, and whoever uses the
/// generation checks it again (a guard, a scoped read).
#[inline]
pub(crate) fn live_generation(table: &HandleTable, tag: Tag, index: Member) -> Option<u32> {
    let slot = table.slot(index)?;
    let generation = slot.generation();
    (generation & 1 == 1 && peek_tag(slot.ptr()) == Some(tag)).then_some(generation)
}

/// The set of listed indexes (module docs): a bit per index, in chunks made on first
/// use and kept until the store drops.
#[derive(Default)]
struct Listed(Vec<Option<Box<[u64; CHUNK_BITS / 64]>>>);

impl Listed {
    /// Sets the bit of `index`; whether it was clear.
    #[inline]
    fn insert(&mut self, index: Member) -> bool {
        let (c, w, bit) = split(index);
        if c >= self.0.len() {
            self.0.resize_with(c + 1, || None);
        }
        let word = &mut self.0[c].get_or_insert_with(|| Box::new([0; CHUNK_BITS / 64]))[w];
        let clear = *word & bit == 0;
        *word |= bit;
        clear
    }

    /// Clears the bit of `index`.
    fn remove(&mut self, index: Member) {
        let (c, w, bit) = split(index);
        if let Some(Some(chunk)) = self.0.get_mut(c) {
            chunk[w] &= !bit;
        }
    }
}

/// Chunk, word in the chunk and bit of `index` in the listed set.
#[inline(always)]
fn split(index: Member) -> (usize, usize, u64) {
    let i = index as usize;
    (i / CHUNK_BITS, i % CHUNK_BITS / 64, 1 << (i % 64))
}

/// One lane's ring of members added to one store (see the module docs).
#[repr(align(64))]
struct Ring {
    /// Members pushed (wrapping): written by the lane's owner only (Release), read by
    /// drains and `len`.
    head: AtomicU32,
    /// Members drained: written under the store's lock only (Release), read by the
    /// owner (Acquire) before it reuses an entry.
    tail: AtomicU32,
    /// Removes through this lane (wrapping): written by the lane's owner only.
    removed: AtomicU32,
    ops: [AtomicU32; RING],
}

impl Ring {
    fn new() -> Self {
        Self {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            removed: AtomicU32::new(0),
            ops: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// The list and the registered rings; only touched under [`Members::lock`].
struct Dense {
    /// The store's tag: a member is live while its slot holds a pointer with it.
    tag: Tag,
    /// Shared with the snapshots taken since it last changed (copy on write: a drain
    /// that has members to add, or a prune, copies it only if a snapshot still holds
    /// it).
    list: Arc<Vec<Member>>,
    /// The indexes `list` holds (each once).
    listed: Listed,
    /// Every ring made for this store, drained by each lock holder that needs the list.
    rings: Vec<NonNull<Ring>>,
    /// Inserts minus removes made without a lane (wrapping).
    laneless: u32,
}

impl Dense {
    /// Inserts minus removes (see the module docs): exact at quiescence.
    fn len(&self) -> usize {
        let mut n = self.laneless;
        for ring in &self.rings {
            // SAFETY: registered rings live until the members drop (`Members::drop`).
            let ring = unsafe { ring.as_ref() };
            let pushed = ring.head.load(Acquire);
            n = n.wrapping_add(pushed.wrapping_sub(ring.removed.load(Acquire)));
        }
        // A remove counted before its insert's push (another lane) reads as a wrap:
        // nothing is listed then.
        if n > u32::MAX / 2 { 0 } else { n as usize }
    }

    /// Moves every member published in every ring to the list, oldest first per ring,
    /// then prunes the list if it holds too many dead members.
    fn drain(&mut self, table: &HandleTable) {
        for k in 0..self.rings.len() {
            // SAFETY: registered rings live until the members drop (`Members::drop`).
            let ring = unsafe { self.rings[k].as_ref() };
            // Acquire: the entries up to `head` were stored before it.
            let head = ring.head.load(Acquire);
            let tail = ring.tail.load(Relaxed);
            let n = head.wrapping_sub(tail);
            if n == 0 {
                continue;
            }
            for k in 0..n {
                let index = ring.ops[tail.wrapping_add(k) as usize % RING].load(Relaxed);
                // An index already listed stays listed once (a slot the store reused).
                if self.listed.insert(index) {
                    Arc::make_mut(&mut self.list).push(index);
                }
            }
            // Release: our loads of the entries happen before the producer reuses them.
            ring.tail.store(head, Release);
        }
        if self.list.len() > 2 * self.len() + PRUNE_SLACK {
            let (tag, listed) = (self.tag, &mut self.listed);
            Arc::make_mut(&mut self.list).retain(|&index| {
                let live = live_generation(table, tag, index).is_some();
                if !live {
                    listed.remove(index);
                }
                live
            });
        }
    }
}

/// A store's members (see the module docs).
pub(crate) struct Members {
    lock: AtomicBool,
    dense: UnsafeCell<Dense>,
    /// Lane `l`'s ring, or null until lane `l` first changes the store.
    rings: Box<[AtomicPtr<Ring>]>,
}

// SAFETY: `dense` is only touched under `lock` (Acquire to take, Release to give back),
// which orders the accesses of different threads; a ring's entries, head and removed
// count are written by its lane's owner only and read through atomics; the rest is
// atomic.
unsafe impl Sync for Members {}
// SAFETY: the rings are owned by the members (freed in `drop`); nothing is tied to a
// thread.
unsafe impl Send for Members {}

impl Members {
    /// No members, for the store tagged `tag`.
    pub(crate) fn new(tag: Tag) -> Self {
        Self {
            lock: AtomicBool::new(false),
            dense: UnsafeCell::new(Dense {
                tag,
                list: Arc::default(),
                listed: Listed::default(),
                rings: Vec::new(),
                laneless: 0,
            }),
            rings: (0..LANES)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
        }
    }

    /// Runs `f` on the list under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut Dense) -> R) -> R {
        let mut backoff = crate::sync::Backoff::new();
        while self
            .lock
            .compare_exchange_weak(false, true, Acquire, Relaxed)
            .is_err()
        {
            // Spins briefly, then yields (the lock is held for a drain or a copy).
            backoff.snooze();
        }
        /// Gives the lock back even if `f` panics (an allocation failure).
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Release);
            }
        }
        let _unlock = Unlock(&self.lock);
        self.dense.with_mut(|dense| {
            // SAFETY: we hold the lock, so nobody else touches `dense` until we release it.
            f(unsafe { &mut *dense })
        })
    }

    /// Lane `lane`'s ring, if registered.
    #[inline(always)]
    fn ring(&self, lane: Option<usize>) -> Option<&Ring> {
        let ring = lane.and_then(|l| self.rings.get(l))?.load(Acquire);
        // SAFETY: registered rings live as long as `self`.
        NonNull::new(ring).map(|r| unsafe { &*r.as_ptr() })
    }

    /// Records that slot `index` of `table` (the store's heap's handle table) now holds
    /// a value of the store. The hot path: one ring append (a load, a
    /// store and a Release store). A thread without a lane, a lane's first change and
    /// a full ring take the cold paths.
    ///
    /// # Safety
    ///
    /// * if `lane` is `Some(l)`, the calling thread owns lane `l` of the heap (its
    ///   thread-cache record), so it is the only producer of lane `l`'s ring.
    #[inline(always)]
    pub(crate) unsafe fn add(&self, table: &HandleTable, lane: Option<usize>, index: u32) {
        let Some(ring) = self.ring(lane) else {
            // SAFETY: the caller's precondition.
            return unsafe { self.add_slow(table, lane, index) };
        };
        // Owner only (the caller's precondition): nobody else writes `head`.
        let head = ring.head.load(Relaxed);
        // Acquire: the drain that freed the entry we reuse has finished reading it.
        if head.wrapping_sub(ring.tail.load(Acquire)) as usize == RING {
            self.drain_full(table);
        }
        ring.ops[head as usize % RING].store(index, Relaxed);
        // Release: publishes the entry (and the insert it records) to the next drain.
        ring.head.store(head.wrapping_add(1), Release);
    }

    /// Records that one of the store's values was removed: nothing is unlisted (the
    /// member is dead now, module docs), only counted.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[inline(always)]
    pub(crate) unsafe fn remove(&self, lane: Option<usize>) {
        let Some(ring) = self.ring(lane) else {
            // SAFETY: the caller's precondition.
            return unsafe { self.remove_slow(lane) };
        };
        // Owner only (the caller's precondition): a load and a store.
        let n = ring.removed.load(Relaxed).wrapping_add(1);
        ring.removed.store(n, Release);
    }

    /// A full ring: drains every ring under the lock (once per [`RING`] inserts).
    #[cold]
    #[inline(never)]
    fn drain_full(&self, table: &HandleTable) {
        self.with(|d| d.drain(table));
    }

    /// [`Members::add`] without a registered ring: registers the lane's ring and
    /// appends there, or (no lane) adds under the lock.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[cold]
    #[inline(never)]
    unsafe fn add_slow(&self, table: &HandleTable, lane: Option<usize>, index: u32) {
        match lane {
            Some(l) if l < self.rings.len() => {
                self.register(l);
                // SAFETY: the caller's precondition; the ring is registered now.
                unsafe { self.add(table, lane, index) }
            }
            _ => self.with(|d| {
                if d.listed.insert(index) {
                    Arc::make_mut(&mut d.list).push(index);
                }
                d.laneless = d.laneless.wrapping_add(1);
            }),
        }
    }

    /// [`Members::remove`] without a registered ring: registers the lane's ring and
    /// counts there, or (no lane) counts under the lock.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[cold]
    #[inline(never)]
    unsafe fn remove_slow(&self, lane: Option<usize>) {
        match lane {
            Some(l) if l < self.rings.len() => {
                self.register(l);
                // SAFETY: the caller's precondition; the ring is registered now.
                unsafe { self.remove(lane) }
            }
            _ => self.with(|d| d.laneless = d.laneless.wrapping_sub(1)),
        }
    }

    /// Makes and registers lane `lane`'s ring (its owner's first change to the store).
    #[cold]
    #[inline(never)]
    fn register(&self, lane: usize) -> NonNull<Ring> {
        let ring = NonNull::from(Box::leak(Box::new(Ring::new())));
        self.with(|d| d.rings.push(ring));
        // Release: the ring's construction happens before a drain or the owner uses it
        // (the owner is this thread; drains find it through the locked list).
        self.rings[lane].store(ring.as_ptr(), Release);
        ring
    }

    /// The list (live and dead members: readers check each against its slot), with
    /// every published member drained into it: shared, not copied (the next change
    /// copies it if this snapshot still holds it).
    pub(crate) fn snapshot(&self, table: &HandleTable) -> Arc<Vec<Member>> {
        self.with(|d| {
            d.drain(table);
            Arc::clone(&d.list)
        })
    }

    /// Number of members (see the module docs: exact at quiescence).
    pub(crate) fn len(&self) -> usize {
        self.with(|d| d.len())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let rings = self.dense.with_mut(|dense| {
            // SAFETY: `&mut self`: nobody else can reach the list.
            core::mem::take(unsafe { &mut (*dense).rings })
        });
        for ring in rings {
            // SAFETY: each ring was leaked from a `Box` in `register`, registered once,
            // and nobody can reach it any more.
            drop(unsafe { Box::from_raw(ring.as_ptr()) });
        }
    }
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests;
