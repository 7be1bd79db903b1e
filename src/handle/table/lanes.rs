//! Per-thread stashes of vacant slots (*lanes*): inserts and removes of a thread that
//! owns a lane reuse slots without touching the shared free list or the shared length.
//!
//! A lane is owned by exactly one thread at a time; its owner is whoever owns the
//! heap's thread-cache record of the same index (the caller proves it), and ownership
//! passes between threads with the record's claim (Acquire) and release (Release).
//! A lane holds:
//!
//! * a **stash** of up to [`STASH`] vacant slot indexes, LIFO. Removing pushes the
//!   slot the remove just vacated (its generation already bumped to even, so no stale
//!   handle resolves to it and no guard can be taken on it); a full stash first returns
//!   [`BATCH`] of them to the shared free list with **one** compare-exchange (the batch
//!   is linked through the slots' free-list words beforehand). Inserting pops the stash;
//!   an empty stash takes up to `BATCH` slots off the shared list with one
//!   compare-exchange, else a fresh index is issued. A stashed slot is vacant and
//!   reachable from no list, so only the lane's owner ever reoccupies it.
//! * **net**: inserts minus removes made through the lane, written by the owner alone
//!   (a load and a store, no read-modify-write) and summed by
//!   [`HandleTable::len`](super::HandleTable::len).
//!
//! Invariants (at quiescence):
//!
//! ```text
//! issued = |occupied| + |shared free list| + Σ |stash| + retired
//! len    = shared len + Σ net = |occupied|
//! ```
//!
//! A thread that exits leaves its lane with its record: the next thread to claim the
//! record inherits the stash (at most [`STASH`] slots wait there meanwhile).

use super::HandleTable;
use super::free_list::NIL;
use crate::HandleError;
use crate::handle::RawHandle;
use crate::sync::{
    AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
    UnsafeCell,
};
use core::ptr::NonNull;

/// Lanes per table: one per thread-cache record of a heap.
#[cfg(not(tidyheap_loom))]
pub(crate) const LANES: usize = 1024;
#[cfg(tidyheap_loom)]
pub(crate) const LANES: usize = 3;

/// Slots a stash holds: a lane is two 4 KiB pages, so a thread that removes a burst
/// of up to two thousand values and then inserts as many (a level unloading and the
/// next one loading, a frame's particles) reuses its own slots without touching the
/// shared list. Memory is committed only as far as a stash has grown (the lanes are
/// reserved zero pages, and each lane is touched only by its owner).
#[cfg(not(tidyheap_loom))]
pub(super) const STASH: usize = 2044;
#[cfg(tidyheap_loom)]
pub(super) const STASH: usize = 2;

/// Slots moved between a stash and the shared list at once.
const BATCH: usize = STASH / 2;

/// The owner-only part of a lane. All-zero bytes are an empty stash.
#[repr(C)]
struct Stash {
    len: u32,
    slots: [u32; STASH],
}

/// One lane (see the module docs), on its own cache lines. The net count and the
/// stash's length come first, so a lane whose stash stays short touches one page.
#[repr(C, align(128))]
pub(crate) struct Lane {
    /// Inserts minus removes through this lane, as a wrapping `usize`.
    net: AtomicUsize,
    stash: UnsafeCell<Stash>,
}

#[cfg(not(tidyheap_loom))]
const _: () = assert!(size_of::<Lane>() == 8192);

impl Lane {
    /// Adds `d` to the lane's net count: owner only, so a load and a store.
    #[inline(always)]
    fn add_net(&self, d: usize) {
        self.net
            .store(self.net.load(Relaxed).wrapping_add(d), Relaxed);
    }
}

/// Reserves the lanes: natively zero pages (empty stashes, net 0), under loom
/// constructed cells.
#[cfg(not(tidyheap_loom))]
pub(super) fn alloc_lanes() -> Result<*mut Lane, HandleError> {
    let bytes = LANES * size_of::<Lane>();
    let base = crate::os::reserve(bytes, crate::os::PAGE_SIZE).map_err(crate::AllocError::from)?;
    Ok(base.as_ptr().cast())
}

/// # Safety
///
/// `base` came from `alloc_lanes` and is released once; nothing uses it afterwards.
#[cfg(not(tidyheap_loom))]
pub(super) unsafe fn free_lanes(base: *mut Lane) {
    // SAFETY:
    // - `base` is a live mapping of `LANES` lanes made by `os::reserve` (caller's
    //   precondition), not used afterwards.
    unsafe {
        crate::os::release(
            NonNull::new_unchecked(base).cast(),
            LANES * size_of::<Lane>(),
        );
    }
}

#[cfg(tidyheap_loom)]
#[allow(clippy::unnecessary_wraps)] // same signature as the native twin
pub(super) fn alloc_lanes() -> Result<*mut Lane, HandleError> {
    let lanes: Box<[Lane]> = (0..LANES)
        .map(|_| Lane {
            stash: UnsafeCell::new(Stash {
                len: 0,
                slots: [0; STASH],
            }),
            net: AtomicUsize::new(0),
        })
        .collect();
    Ok(Box::into_raw(lanes).cast())
}

/// # Safety
///
/// `base` came from `alloc_lanes` and is released once; nothing uses it afterwards.
#[cfg(tidyheap_loom)]
pub(super) unsafe fn free_lanes(base: *mut Lane) {
    // SAFETY:
    // - `base` is a `Box<[Lane]>` of `LANES` lanes leaked by `alloc_lanes`, freed once.
    drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(base, LANES)) });
}

impl HandleTable {
    /// Lane `lane`, reserving the lanes on first use; `None` if that fails (the caller
    /// then takes the shared path).
    #[inline(always)]
    fn lane(&self, lane: usize) -> Option<&Lane> {
        debug_assert!(lane < LANES);
        let mut base = self.lanes.load(Acquire);
        if base.is_null() {
            base = self.install_lanes()?;
        }
        // SAFETY:
        // - `base` holds `LANES` initialised lanes (installed by CAS, which we Acquired),
        //   released only when the table drops; `lane < LANES` (caller's precondition).
        Some(unsafe { &*base.add(lane) })
    }

    #[cold]
    fn install_lanes(&self) -> Option<*mut Lane> {
        let fresh = alloc_lanes().ok()?;
        match self
            .lanes
            .compare_exchange(core::ptr::null_mut(), fresh, AcqRel, Acquire)
        {
            Ok(_) => Some(fresh),
            Err(winner) => {
                // SAFETY: `fresh` was never published.
                unsafe { free_lanes(fresh) };
                Some(winner)
            }
        }
    }

    /// Σ net over the lanes (see the module docs), as a wrapping `usize`.
    pub(super) fn lanes_net(&self) -> usize {
        let base = self.lanes.load(Acquire);
        if base.is_null() {
            return 0;
        }
        let used = self.lanes_used.load(Relaxed).min(LANES);
        (0..used)
            .map(|i| {
                // SAFETY: as in `lane`: an installed lane array of `LANES` lanes.
                unsafe { &*base.add(i) }.net.load(Relaxed)
            })
            .fold(0usize, usize::wrapping_add)
    }

    /// [`insert`](Self::insert) through lane `lane`: reuses a stashed slot, else a batch
    /// from the shared free list, else a fresh index. Falls back to `insert` if the
    /// lanes cannot be reserved.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    ///
    /// # Safety
    ///
    /// * `lane < LANES`, and the calling thread owns lane `lane` (no other thread uses
    ///   it until the caller hands it on with Release / Acquire synchronisation).
    #[inline]
    pub(crate) unsafe fn insert_in(
        &self,
        lane: usize,
        block: NonNull<u8>,
    ) -> Result<RawHandle, HandleError> {
        let Some(l) = self.lane(lane) else {
            return self.insert(block);
        };
        // Each round occupies a slot or retires one for good: the loop ends.
        loop {
            let popped = l.stash.with_mut(|s| {
                // SAFETY: the caller owns the lane, so nobody else touches the stash.
                let s = unsafe { &mut *s };
                if s.len == 0 {
                    s.len = self.pop_batch(&mut s.slots[..BATCH]) as u32;
                    if s.len == 0 {
                        return None;
                    }
                    self.note_lane(lane);
                }
                s.len -= 1;
                Some(s.slots[s.len as usize])
            });
            let (index, slot, fresh) = match popped {
                Some(index) => match self.slot(index) {
                    Some(slot) => (index, slot, false),
                    None => unreachable!("stash holds index {index}, which was never issued"),
                },
                None => {
                    let (index, slot) = self.issue_fresh()?;
                    self.note_lane(lane);
                    (index, slot, true)
                }
            };
            match self.next_generation(index, slot, fresh) {
                Ok(Some(generation)) => {
                    slot.occupy(block, generation);
                    l.add_net(1);
                    return Ok(RawHandle::from_odd(index, generation));
                }
                Ok(None) => {}
                Err(e) => {
                    // Still vacant: back on the stash (room: we just took it off), and
                    // whoever takes it next leases again.
                    // SAFETY: as above, the stash is the caller's.
                    l.stash.with_mut(|s| unsafe { (*s).push(index) });
                    return Err(e);
                }
            }
        }
    }

    /// Records that lane `lane` has been used, so `len` sums it.
    #[inline]
    fn note_lane(&self, lane: usize) {
        if self.lanes_used.load(Relaxed) <= lane {
            self.lanes_used.fetch_max(lane + 1, Relaxed);
        }
    }

    /// Takes back slot `index` that the caller has just vacated (a remove through
    /// `vacate_written`): counts the remove, and stashes the slot in lane `lane` (or,
    /// with no lane, pushes it on the shared free list); a retired slot is only counted.
    ///
    /// # Safety
    ///
    /// * the caller vacated slot `index` and nobody else has been given it;
    /// * if `lane` is `Some(l)`: `l < LANES` and the caller owns lane `l` (see
    ///   [`insert_in`](Self::insert_in)).
    #[inline]
    pub(crate) unsafe fn recycle(&self, lane: Option<usize>, index: u32, retired: bool) {
        let l = lane.and_then(|lane| {
            let l = self.lane(lane)?;
            self.note_lane(lane);
            Some(l)
        });
        let Some(l) = l else {
            return self.recycle_shared(index, retired);
        };
        l.add_net(usize::MAX);
        if retired {
            self.counters.retired.fetch_add(1, Relaxed);
            return;
        }
        l.stash.with_mut(|s| {
            // SAFETY: the caller owns the lane.
            let s = unsafe { &mut *s };
            if s.len as usize == STASH {
                self.spill(s);
            }
            s.push(index);
        });
    }

    /// [`recycle`](Self::recycle) without a lane: the shared count and free list.
    #[cold]
    #[inline(never)]
    fn recycle_shared(&self, index: u32, retired: bool) {
        self.counters.len.fetch_sub(1, Relaxed);
        if retired {
            self.counters.retired.fetch_add(1, Relaxed);
        } else if let Some(slot) = self.slot(index) {
            self.push_free(index, slot);
        }
    }

    /// A full stash: its oldest half goes back to everyone, in one compare-exchange.
    #[cold]
    #[inline(never)]
    fn spill(&self, s: &mut Stash) {
        self.push_batch(&s.slots[..BATCH]);
        s.slots.copy_within(BATCH.., 0);
        s.len -= BATCH as u32;
    }

    /// Takes up to `out.len()` slots off the shared free list with one
    /// compare-exchange; returns how many (0 if the list is empty).
    ///
    /// The walk down the list reads links that may be garbage if another thread pops
    /// meanwhile, but then the head's tag has moved and the compare-exchange fails: a
    /// success means the list was unchanged since the head was loaded (Acquire, which
    /// synchronises with every push before it), so the links read were the real ones.
    #[inline(never)]
    fn pop_batch(&self, out: &mut [u32]) -> usize {
        let mut head = self.counters.free.load(Acquire);
        'retry: loop {
            let mut index = head as u32;
            let mut n = 0;
            while n < out.len() && index != NIL {
                let Some(slot) = self.slot(index) else {
                    // A garbage link (we raced a pop): look again.
                    head = self.counters.free.load(Acquire);
                    continue 'retry;
                };
                out[n] = index;
                n += 1;
                index = slot.next_free();
            }
            if n == 0 {
                return 0;
            }
            let new = (head & !0xFFFF_FFFF).wrapping_add(1 << 32) | u64::from(index);
            match self
                .counters
                .free
                .compare_exchange_weak(head, new, AcqRel, Acquire)
            {
                Ok(_) => return n,
                Err(now) => head = now,
            }
        }
    }

    /// Pushes the vacant slots `batch` (non-empty, owned by the caller) on the shared
    /// free list with one compare-exchange, first in the list first.
    fn push_batch(&self, batch: &[u32]) {
        let slot = |i: u32| match self.slot(i) {
            Some(s) => s,
            None => unreachable!("stash holds index {i}, which was never issued"),
        };
        for pair in batch.windows(2) {
            slot(pair[0]).set_next_free(pair[1]);
        }
        self.push_chain(batch[0], slot(batch[batch.len() - 1]));
    }

    /// The stashed slots of every lane. Only meaningful at quiescence.
    #[cfg(test)]
    pub(crate) fn stashed(&self) -> Vec<u32> {
        let base = self.lanes.load(Acquire);
        if base.is_null() {
            return Vec::new();
        }
        (0..LANES)
            .flat_map(|i| {
                // SAFETY: as in `lane`: an installed lane array of `LANES` lanes.
                let lane = unsafe { &*base.add(i) };
                lane.stash.with_mut(|s| {
                    // SAFETY: at quiescence (the caller's promise) nobody else uses it.
                    let s = unsafe { &*s };
                    s.slots[..s.len as usize].to_vec()
                })
            })
            .collect()
    }
}

impl Stash {
    /// Pushes `index`; the caller made room.
    #[inline]
    fn push(&mut self, index: u32) {
        debug_assert!((self.len as usize) < STASH);
        self.slots[self.len as usize] = index;
        self.len += 1;
    }
}
