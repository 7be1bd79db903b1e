//! A store's own list of its slots, so that iterating a store visits its values only,
//! never the handles of other stores on the same heap — kept with no read-modify-write
//! on insert and remove in the common case.
//!
//! # The merged list
//!
//! The list is dense (a `Vec` of slot indexes, in no particular order) with a map
//! beside it, indexed by slot index: the position + 1 of the index in the list (0 =
//! absent) and the generation of the last change applied to it. Adding is a push,
//! removing a swap-remove: O(1) each. The map is flat (one bounds check per lookup) and
//! grows to the highest index the store has used: 8 bytes per slot of the heap's table
//! up to there. List and map sit behind one small spin lock of the store.
//!
//! # Per-lane rings: no lock on the hot path
//!
//! A thread that owns a lane of the heap (its thread-cache record, as for the handle
//! table's lanes) does not take the lock to add or remove: it appends the change to a
//! ring of its own for this store (single producer: a relaxed load of its head, a
//! store of the entry, a Release store of the head — no read-modify-write). Whoever
//! takes the lock *drains* every ring into the list first (Acquire of each head, then
//! a Release store of the ring's tail, which the producer Acquires before it reuses an
//! entry). A producer whose ring is full drains under the lock itself, once per
//! [`RING`] changes. Threads without a lane (their record could not be claimed) apply
//! the change under the lock directly. So:
//!
//! ```text
//! list after a drain = every change published in a ring or applied under the lock
//! ```
//!
//! and iteration, `len` and the store's drop drain first, so they see every insert and
//! remove that happened before them (a change happens-before its ring's head store,
//! which the drain Acquires).
//!
//! Memory per store: a table of ring pointers, one per lane (8 KiB), a ring of
//! [`RING`] changes (≈ 0.5 KiB) per lane that ever changed the store, and the map (8
//! bytes per slot index up to the highest the store used).
//!
//! # Changes arrive out of order: the generation decides
//!
//! Rings are drained one after another, so a value inserted on lane A and removed on
//! lane B can reach the list remove-first (B's ring drained before A's), and a slot
//! reused on lane C can arrive before either. Each change carries the generation of the
//! value it concerns (odd: the occupied generation), and the map keeps the generation
//! of the last change applied to each index. A change is applied only if it is newer:
//!
//! ```text
//! newer(g, op) = g > last_gen[i]  ∨  (g == last_gen[i] ∧ op = remove ∧ i is listed)
//! ```
//!
//! A slot's generations only grow within one table (vacant g → occupied g + 1, or the
//! first generation of a later leased window), and a value's remove always follows its
//! add, so the last change by `(generation, add < remove)` is the slot's current state:
//! whatever the drain order, once every change is drained an index is listed exactly
//! when its slot holds a value of this store (at quiescence). An index is never listed
//! twice. A handle guessed (not returned by `insert`) that removes a value between its
//! slot's occupation and the insert's change is handled the same way: its remove is as
//! new as the add, so the add is dropped.
//!
//! Iteration copies the list under the lock (a `memcpy` of 4 bytes per value) and then
//! resolves each index without it: the generation comes from the slot, checked as any
//! lookup is, so a value removed meanwhile is skipped, and values inserted meanwhile may
//! or may not be seen. The copy means a thread may insert into or remove from the store
//! while it iterates without waiting for itself.

use core::ptr::NonNull;

use crate::handle::LANES;
use crate::sync::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
    UnsafeCell,
};

/// Changes one lane's ring holds before its producer must drain.
#[cfg(not(tidyheap_loom))]
const RING: usize = 64;
#[cfg(tidyheap_loom)]
const RING: usize = 2;

/// A change as a ring entry: `index << 32 | generation`, with the generation's low bit
/// (always 1: occupied generations are odd) cleared for a remove.
#[inline(always)]
fn encode(index: u32, generation: u32, remove: bool) -> u64 {
    debug_assert!(generation & 1 == 1);
    u64::from(index) << 32 | u64::from(generation & !u32::from(remove))
}

/// One lane's ring of changes to one store (see the module docs).
#[repr(align(64))]
struct Ring {
    /// Changes pushed: written by the lane's owner only (Release), read by drains.
    head: AtomicU32,
    /// Changes drained: written under the store's lock only (Release), read by the owner
    /// (Acquire) before it reuses an entry.
    tail: AtomicU32,
    ops: [AtomicU64; RING],
}

impl Ring {
    fn new() -> Self {
        Self {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            ops: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The map's entry for one slot index.
#[derive(Clone, Copy, Default)]
struct Entry {
    /// Position + 1 in the list; 0: not listed.
    pos: u32,
    /// Generation of the last change applied (0: none).
    generation: u32,
}

/// The dense list, its map and the registered rings; only touched under
/// [`Members::lock`].
#[derive(Default)]
struct Dense {
    list: Vec<u32>,
    /// Indexed by slot index; indexes past the end have had no change.
    map: Vec<Entry>,
    /// Every ring made for this store, drained by each lock holder that needs the list.
    rings: Vec<NonNull<Ring>>,
}

impl Dense {
    /// Applies one change if it is newer than the last one applied to its index.
    #[inline]
    fn apply(&mut self, index: u32, generation: u32, remove: bool) {
        let i = index as usize;
        if i >= self.map.len() {
            self.grow(i);
        }
        let e = self.map[i];
        let listed = e.pos != 0;
        if !(generation > e.generation || (generation == e.generation && remove && listed)) {
            return;
        }
        self.map[i].generation = generation;
        if remove {
            if listed {
                let at = (e.pos - 1) as usize;
                self.list.swap_remove(at);
                self.map[i].pos = 0;
                if let Some(&moved) = self.list.get(at) {
                    // `moved` is listed, so its entry exists.
                    self.map[moved as usize].pos = e.pos;
                }
            }
        } else if !listed {
            self.list.push(index);
            self.map[i].pos = self.list.len() as u32;
        }
    }

    /// Grows the map to hold index `i` (at least doubling: amortised O(1)).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, i: usize) {
        let want = (i + 1).max(self.map.len() * 2).max(64);
        self.map.resize(want, Entry::default());
    }

    /// Applies every change published in every ring, oldest first per ring.
    fn drain(&mut self) {
        for k in 0..self.rings.len() {
            // SAFETY: registered rings live until the members drop (`Members::drop`).
            let ring = unsafe { self.rings[k].as_ref() };
            // Acquire: the entries up to `head` were stored before it.
            let head = ring.head.load(Acquire);
            let mut tail = ring.tail.load(Relaxed);
            while tail != head {
                let op = ring.ops[tail as usize % RING].load(Relaxed);
                let (index, stamp) = ((op >> 32) as u32, op as u32);
                self.apply(index, stamp | 1, stamp & 1 == 0);
                tail = tail.wrapping_add(1);
            }
            // Release: our loads of the entries happen before the producer reuses them.
            ring.tail.store(tail, Release);
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
// which orders the accesses of different threads; a ring's entries and head are written
// by its lane's owner only and read through atomics; the rest is atomic.
unsafe impl Sync for Members {}
// SAFETY: the rings are owned by the members (freed in `drop`); nothing is tied to a
// thread.
unsafe impl Send for Members {}

impl Members {
    /// No members.
    pub(crate) fn new() -> Self {
        Self {
            lock: AtomicBool::new(false),
            dense: UnsafeCell::new(Dense::default()),
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

    /// Records that slot `index` now holds a value of the store at `generation`.
    ///
    /// # Safety
    ///
    /// * if `lane` is `Some(l)`, the calling thread owns lane `l` of the heap (its
    ///   thread-cache record), so it is the only producer of lane `l`'s ring.
    #[inline(always)]
    pub(crate) unsafe fn add(&self, lane: Option<usize>, index: u32, generation: u32) {
        // SAFETY: the caller's precondition.
        unsafe { self.change(lane, index, generation, false) }
    }

    /// Records that the store's value at slot `index`, `generation` was removed.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[inline(always)]
    pub(crate) unsafe fn remove(&self, lane: Option<usize>, index: u32, generation: u32) {
        // SAFETY: the caller's precondition.
        unsafe { self.change(lane, index, generation, true) }
    }

    /// The hot path: one ring append (a load, a store and a Release store). A thread
    /// without a lane, a lane's first change and a full ring take the cold paths.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[inline(always)]
    unsafe fn change(&self, lane: Option<usize>, index: u32, generation: u32, remove: bool) {
        let ring = lane
            .and_then(|l| self.rings.get(l))
            .map(|r| r.load(Acquire));
        let Some(ring) = ring.and_then(NonNull::new) else {
            // SAFETY: the caller's precondition.
            return unsafe { self.change_slow(lane, index, generation, remove) };
        };
        // SAFETY: registered rings live as long as `self`.
        let ring = unsafe { ring.as_ref() };
        // Owner only (the caller's precondition): nobody else writes `head`.
        let head = ring.head.load(Relaxed);
        // Acquire: the drain that freed the entry we reuse has finished reading it.
        if head.wrapping_sub(ring.tail.load(Acquire)) as usize == RING {
            self.drain_full();
        }
        ring.ops[head as usize % RING].store(encode(index, generation, remove), Relaxed);
        // Release: publishes the entry (and the change it records) to the next drain.
        ring.head.store(head.wrapping_add(1), Release);
    }

    /// A full ring: drains every ring under the lock (once per [`RING`] changes).
    #[cold]
    #[inline(never)]
    fn drain_full(&self) {
        self.with(Dense::drain);
    }

    /// [`Members::change`] without a registered ring: registers the lane's ring and
    /// appends there, or (no lane) applies the change under the lock.
    ///
    /// # Safety
    ///
    /// * as for [`Members::add`].
    #[cold]
    #[inline(never)]
    unsafe fn change_slow(&self, lane: Option<usize>, index: u32, generation: u32, remove: bool) {
        match lane {
            Some(l) if l < self.rings.len() => {
                self.register(l);
                // SAFETY: the caller's precondition; the ring is registered now.
                unsafe { self.change(lane, index, generation, remove) }
            }
            _ => self.with(|d| d.apply(index, generation, remove)),
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

    /// A copy of the list, with every published change applied.
    pub(crate) fn snapshot(&self) -> Vec<u32> {
        self.with(|d| {
            d.drain();
            d.list.clone()
        })
    }

    /// Number of members, with every published change applied.
    pub(crate) fn len(&self) -> usize {
        self.with(|d| {
            d.drain();
            d.list.len()
        })
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
mod tests {
    use std::collections::HashSet;

    use super::{Members, RING};

    /// A long random life of 40 slots whose changes go through 4 lanes and the lockless
    /// path at random, so one value's add and remove often sit in different rings and
    /// reach the list out of order: every snapshot and `len` must match the model (the
    /// set of slots holding a value), with no index twice. One thread plays every lane,
    /// so each ring still has one producer.
    #[test]
    fn out_of_order_lanes_match_the_model() {
        for seed in 1..=8u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let m = Members::new();
            let mut generation = [0u32; 40];
            let mut live = HashSet::new();
            for step in 0..20_000 {
                let i = next(40) as u32;
                let lane = match next(5) {
                    4 => None,
                    l => Some(l as usize),
                };
                let g = &mut generation[i as usize];
                if live.remove(&i) {
                    // SAFETY: this thread is every lane's only producer.
                    unsafe { m.remove(lane, i, *g) };
                } else {
                    *g += if *g == 0 { 1 } else { 2 };
                    live.insert(i);
                    // SAFETY: as above.
                    unsafe { m.add(lane, i, *g) };
                }
                if step % (RING as u32 * 3 + 1) == 0 {
                    let seen = m.snapshot();
                    let set: HashSet<u32> = seen.iter().copied().collect();
                    assert_eq!(set.len(), seen.len(), "seed {seed}: an index twice");
                    assert_eq!(set, live, "seed {seed}, step {step}");
                    assert_eq!(m.len(), live.len());
                }
            }
        }
    }
}
