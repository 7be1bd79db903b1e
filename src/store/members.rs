//! A store's own list of its slots, so that iterating a store visits its values only,
//! never the handles of other stores on the same heap.
//!
//! The list is dense (a `Vec` of slot indexes, in no particular order) with a position
//! map beside it (slot index → position + 1, 0 = absent), so adding is a push and
//! removing a swap-remove: O(1) each. Both sit behind one small spin lock of the store;
//! taking it is the store's only read-modify-write on insert and on remove besides the
//! slot and span words, and it replaces the store's length counter (the length is the
//! list's, mirrored into an atomic with a plain store while the lock is held).
//!
//! # What the list holds, and when
//!
//! ```text
//! insert: slot occupied (tagged with the store) → add(index)
//! remove: slot vacated (generation bumped) → remove(index) → slot recycled
//! ```
//!
//! So an index is in the list only while its slot holds a value of this store, or has
//! just been vacated by this store's remove and is not yet reusable by anyone: an index
//! is never in the list twice, and never names another store's value. Iteration copies
//! the list under the lock (a `memcpy` of 4 bytes per value) and then resolves each
//! index without it: the generation comes from the slot, checked as any lookup is, so
//! a value removed meanwhile is skipped, and values inserted meanwhile may or may not be
//! seen. The copy means a thread may insert into or remove from the store while it
//! iterates without waiting for itself.
//!
//! # A forged handle
//!
//! A handle guessed (not returned by `insert`) can remove a value between its insert's
//! slot occupation and its `add`; the `remove` then finds no member and the late `add`
//! lists a vacant slot. That costs nothing unsound: every lookup checks the slot's
//! generation and tag, so iteration skips it, `add` never lists an index twice, and the
//! next insert of the store into that slot adopts the entry (only `len` counts it
//! meanwhile).

use crate::handle::{locate, segment_len};
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// The dense list and its position map; only touched under [`Members::lock`].
#[derive(Default)]
struct Dense {
    list: Vec<u32>,
    /// Per handle-table segment (allocated when the store first has a slot in it), the
    /// position + 1 of each index (0: not a member).
    pos: Vec<Option<Box<[u32]>>>,
}

impl Dense {
    fn pos_mut(&mut self, index: u32) -> &mut u32 {
        let (seg, offset) = locate(index);
        if self.pos.len() <= seg {
            self.pos.resize_with(seg + 1, || None);
        }
        &mut self.pos[seg].get_or_insert_with(|| vec![0; segment_len(seg)].into_boxed_slice())
            [offset]
    }
}

/// A store's members (see the module docs).
pub(crate) struct Members {
    lock: AtomicBool,
    /// `dense.list.len()`, stored (not added to) under the lock.
    len: AtomicUsize,
    dense: UnsafeCell<Dense>,
}

// SAFETY: `dense` is only touched under `lock` (Acquire to take, Release to give back),
// which makes the accesses of different threads ordered; the rest is atomic.
unsafe impl Sync for Members {}

impl Members {
    /// No members.
    pub(crate) fn new() -> Self {
        Self {
            lock: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            dense: UnsafeCell::new(Dense::default()),
        }
    }

    /// Runs `f` on the list under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut Dense) -> R) -> R {
        let mut backoff = crate::sync::Backoff::new();
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Spins briefly, then yields (the lock is held for a push or a copy).
            backoff.snooze();
        }
        /// Gives the lock back even if `f` panics (an allocation failure).
        struct Unlock<'a>(&'a AtomicBool);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _unlock = Unlock(&self.lock);
        self.dense.with_mut(|dense| {
            // SAFETY: we hold the lock, so nobody else touches `dense` until we release it.
            let dense = unsafe { &mut *dense };
            let r = f(dense);
            self.len.store(dense.list.len(), Ordering::Relaxed);
            r
        })
    }

    /// Adds slot `index`, which now holds a value of the store (nothing if it is a
    /// member already: see "A forged handle" in the module docs).
    pub(crate) fn add(&self, index: u32) {
        self.with(|d| {
            let n = d.list.len() as u32;
            let p = d.pos_mut(index);
            if *p == 0 {
                *p = n + 1;
                d.list.push(index);
            }
        });
    }

    /// Removes slot `index`, whose value the store has just removed.
    pub(crate) fn remove(&self, index: u32) {
        self.with(|d| {
            let p = core::mem::take(d.pos_mut(index));
            if p == 0 {
                return;
            }
            let at = (p - 1) as usize;
            d.list.swap_remove(at);
            if let Some(&moved) = d.list.get(at) {
                *d.pos_mut(moved) = p;
            }
        });
    }

    /// A copy of the list.
    pub(crate) fn snapshot(&self) -> Vec<u32> {
        self.with(|d| d.list.clone())
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}
