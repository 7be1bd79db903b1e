//! The handle table: segmented slot storage, a lock-free free list, and the entry points
//! that turn a [`RawHandle`] into a guard. The design is documented on [`HandleTable`].

use core::fmt;
use core::ptr::{self, NonNull};

use super::guard::{SlotMove, SlotPin, SlotRead, SlotWrite};
#[cfg(all(debug_assertions, not(tidyheap_loom)))]
use super::held::{self, Want};
use super::slot::{MoveSkip, Slot};
use super::{RawHandle, lease};
use crate::sync::{
    AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use crate::{AllocError, HandleError};

/// `log2` of the first segment's slot count. Loom models use tiny segments so that
/// growth is explored and few loom atomics are created.
#[cfg(not(tidyheap_loom))]
const FIRST_SHIFT: u32 = 8;
#[cfg(tidyheap_loom)]
const FIRST_SHIFT: u32 = 1;

/// Number of segment pointers: enough for index `u32::MAX - 1`.
pub(crate) const SEGMENTS: usize = (33 - FIRST_SHIFT) as usize;

/// The most slots a table can hold: indexes run from 0 to `u32::MAX - 1`, because
/// `u32::MAX` is the index of [`RawHandle::NULL`].
pub const MAX_SLOTS: u32 = u32::MAX;

/// Free-list head index meaning "empty".
const NIL: u32 = u32::MAX;

/// What `insert` answers once every one of a table's indexes has been issued.
const TABLE_FULL: HandleError = HandleError::Alloc(AllocError::OutOfMemory {
    size: size_of::<Slot>(),
    errno: libc::ENOMEM,
});

/// `(segment, offset)` of `index`; see "Segments" on [`HandleTable`].
#[inline(always)]
pub(crate) const fn locate(index: u32) -> (usize, usize) {
    let v = index as u64 + (1 << FIRST_SHIFT);
    let bit = 63 - v.leading_zeros();
    ((bit - FIRST_SHIFT) as usize, (v - (1 << bit)) as usize)
}

/// First index of segment `seg`.
const fn segment_start(seg: usize) -> u64 {
    (1 << (seg as u32 + FIRST_SHIFT)) - (1 << FIRST_SHIFT)
}

/// Number of slots in segment `seg` (the last one is cut at [`MAX_SLOTS`]).
pub(crate) const fn segment_len(seg: usize) -> usize {
    let full = 1u64 << (seg as u32 + FIRST_SHIFT);
    let left = MAX_SLOTS as u64 - segment_start(seg);
    (if full < left { full } else { left }) as usize
}

/// Reserves zeroed memory for segment `seg`: all-zero slots are vacant at generation 0.
#[cfg(not(tidyheap_loom))]
fn alloc_segment(seg: usize) -> Result<*mut Slot, HandleError> {
    let bytes = segment_len(seg) * size_of::<Slot>();
    let base = crate::os::reserve(bytes, crate::os::PAGE_SIZE).map_err(AllocError::from)?;
    Ok(base.as_ptr().cast())
}

/// Releases a segment made by [`alloc_segment`].
///
/// # Safety
///
/// * `base` came from `alloc_segment(seg)` and was not released yet;
/// * no reference into the segment is used afterwards.
#[cfg(not(tidyheap_loom))]
unsafe fn free_segment(seg: usize, base: *mut Slot) {
    let bytes = segment_len(seg) * size_of::<Slot>();
    // SAFETY:
    // - `base` is a live, page-aligned mapping of `bytes` bytes made by `os::reserve`
    //   (caller's precondition), and nothing uses it afterwards.
    unsafe { crate::os::release(NonNull::new_unchecked(base).cast(), bytes) };
}

/// Loom atomics must be constructed, so under loom segments are boxed slices.
#[cfg(tidyheap_loom)]
#[allow(clippy::unnecessary_wraps)] // same signature as the native twin
fn alloc_segment(seg: usize) -> Result<*mut Slot, HandleError> {
    let slots: Box<[Slot]> = (0..segment_len(seg)).map(|_| Slot::new()).collect();
    Ok(Box::into_raw(slots).cast())
}

/// # Safety
///
/// * `base` came from `alloc_segment(seg)` and was not released yet;
/// * no reference into the segment is used afterwards.
#[cfg(tidyheap_loom)]
unsafe fn free_segment(seg: usize, base: *mut Slot) {
    // SAFETY:
    // - `base` is the start of a `Box<[Slot]>` of `segment_len(seg)` slots leaked by
    //   `alloc_segment(seg)` (caller's precondition), freed once, here.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(base, segment_len(seg))) });
}

/// The counters written by inserts and removes, on their own cache lines so that
/// lookups (which read only `segments`) do not share a line with them.
#[repr(align(128))]
struct Counters {
    /// `tag << 32 | first free index` (`NIL` = empty).
    free: AtomicU64,
    /// Indexes handed out so far; slots `[0, issued)` exist and were occupied once.
    issued: AtomicU32,
    /// Occupied slots.
    len: AtomicUsize,
    /// Slots retired because their generation would wrap (or, leased, their index has
    /// no window left).
    retired: AtomicUsize,
}

/// A concurrent table of generational slots: [`insert`](Self::insert) a block address,
/// get a [`RawHandle`]; resolve the handle to a guard ([`read`](Self::read),
/// [`write`](Self::write), [`pin`](Self::pin)) that keeps the block in place; let the
/// compactor move blocks with [`try_lock_move`](Self::try_lock_move);
/// [`remove`](Self::remove) to get the address back for freeing.
///
/// Every method takes `&self` and is safe to call from any number of threads. Lookups
/// are lock-free and never block on growth. The table stores addresses only: it neither
/// allocates nor frees blocks, so whoever inserted them frees them (after `remove`, or
/// by walking [`iter`](Self::iter) before dropping the table).
///
/// # Segments
///
/// Slots live in up to 25 segments; segment `i` holds `2^(i + K)` slots
/// (`K = 8` natively, so the first segment is one 4 KiB page of 256 slots) and starts at
/// index `2^(i + K) - 2^K`. With `v = index + 2^K`:
///
/// ```text
/// segment = floor(log2 v) - K = 63 - v.leading_zeros() - K
/// offset  = v - 2^floor(log2 v)
/// ```
///
/// — one `lzcnt`, a subtract and a shift; no division, no loop. Segments never move once
/// installed, so a `&Slot` stays valid for the table's whole life and growing never
/// blocks a reader: a new segment is reserved, then installed with one compare-exchange
/// on its (null) pointer; the loser of a race releases its copy. Natively a segment is
/// fresh `mmap`ed zero pages ([`crate::os::reserve`]), and all-zero bytes *are* a vacant
/// slot at generation 0, so untouched slots cost neither time nor physical memory. The
/// last segment is cut short so that indexes stop at `u32::MAX - 1` (`u32::MAX` is the
/// null handle's): up to [`MAX_SLOTS`] slots, 16 bytes each.
///
/// # The free list
///
/// Freed slots are reused through a lock-free **LIFO** stack (Treiber stack). LIFO because
/// the most recently freed slot is the one most likely still in cache, because it keeps
/// the live indexes dense, and because a stack needs only one head word. FIFO's usual
/// argument — spreading reuse so stale handles take longer to collide — does not apply:
/// stale handles are rejected by the generation, exactly, and a slot that exhausts its
/// generations is retired (16 bytes lost per 2^31 reuses of one slot).
///
/// The head is one `AtomicU64 = tag << 32 | index` (`index == u32::MAX`: empty); the link
/// to the next free slot lives in the vacant slot's `ptr` field, as an atomic, because a
/// popper may read it while another thread has already popped and reoccupied that slot.
/// Every successful push and pop increments the tag, so the classic ABA interleaving —
/// thread 1 reads head `A` and its link `B`; thread 2 pops `A`, pops `B`, pushes `A` back;
/// thread 1's compare-exchange `A → B` would hand `B` out twice — fails: the head is
/// `A` with a different tag. (A 32-bit tag could only be fooled by 2^32 free-list
/// operations landing between one popper's load and its compare-exchange.)
///
/// # Invariants (at quiescence; tested)
///
/// ```text
/// issued = |occupied| + |free list| + retired      (every issued index is in exactly one)
/// len    = |occupied|,   capacity = Σ installed segment lengths ≥ issued
/// installed segments form a prefix: segment i installed ⇒ segments < i installed
/// ```
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::{HandleError, HandleTable};
///
/// let table = HandleTable::new();
/// let block = NonNull::from(Box::leak(Box::new([0u8; 64]))).cast::<u8>();
/// let h = table.insert(block)?;
/// assert_eq!(table.read(h)?.ptr(), block);
///
/// assert_eq!(table.remove(h)?, block);
/// assert_eq!(table.remove(h), Err(HandleError::Stale)); // double free: an error, nothing lost
/// assert!(table.read(h).is_err());
/// // SAFETY: the slot is vacant; the box is ours again.
/// drop(unsafe { Box::from_raw(block.cast::<[u8; 64]>().as_ptr()) });
///
/// let h2 = table.insert(block)?; // LIFO reuse: same slot, next generation
/// assert_eq!((h2.index(), h2.generation().get()), (h.index(), h.generation().get() + 2));
/// # table.remove(h2)?;
/// # Ok::<(), HandleError>(())
/// ```
pub struct HandleTable {
    /// Segment base pointers, null until installed (once, by CAS; never changed after).
    segments: [AtomicPtr<Slot>; SEGMENTS],
    /// Generation given to a slot the first time it is occupied (odd), unless `leased`.
    first_generation: u32,
    /// Generations come from process-wide leases (see `lease`), so that no other table
    /// of the process ever issues the same handle.
    leased: bool,
    /// Indexes `>= max_slots` are never issued.
    max_slots: u32,
    counters: Counters,
}

impl HandleTable {
    /// An empty table. Reserves nothing until the first insert.
    ///
    /// # Examples
    ///
    /// ```
    /// let table = tidyheap::HandleTable::new();
    /// assert_eq!((table.len(), table.capacity()), (0, 0));
    /// ```
    pub fn new() -> Self {
        Self {
            segments: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            first_generation: 1,
            leased: false,
            max_slots: MAX_SLOTS,
            counters: Counters {
                free: AtomicU64::new(u64::from(NIL)),
                issued: AtomicU32::new(0),
                len: AtomicUsize::new(0),
                retired: AtomicUsize::new(0),
            },
        }
    }

    /// Caps the table at `max` slots (at most [`MAX_SLOTS`]): once `max` indexes have
    /// been issued and none is free, [`insert`](Self::insert) fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ptr::NonNull;
    /// let table = tidyheap::HandleTable::new().with_max_slots(1);
    /// let h = table.insert(NonNull::dangling())?;
    /// assert!(table.insert(NonNull::dangling()).is_err());
    /// table.remove(h)?;
    /// assert!(table.insert(NonNull::dangling()).is_ok()); // the freed slot is reused
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    #[must_use]
    pub fn with_max_slots(mut self, max: u32) -> Self {
        self.max_slots = max;
        self
    }

    /// Starts every fresh slot at generation `first | 1` instead of 1, so tests can reach
    /// generation retirement (at `u32::MAX`) in a few steps. Turns
    /// [`with_process_unique_handles`](Self::with_process_unique_handles) off.
    #[doc(hidden)]
    #[must_use]
    pub fn with_first_generation(mut self, first: u32) -> Self {
        self.first_generation = first | 1;
        self.leased = false;
        self
    }

    /// Makes this table's handles unique in the whole process: no other table made this
    /// way, alive or dropped, ever issues the same `(index, generation)`, so a handle of
    /// another such table (every [`Heap`](crate::Heap)'s is one) answers `Stale` here
    /// instead of naming one of this table's blocks.
    ///
    /// Generations then come in windows of 256 leased from a process-wide counter per
    /// index (the `lease` module): a fresh slot does not start at generation 1, and a
    /// slot moves to a new window every 128 occupancies. An index whose windows are all
    /// leased (after 2^24 leases in the process) is retired instead of reused.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ptr::NonNull;
    /// use tidyheap::HandleTable;
    /// let a = HandleTable::new().with_process_unique_handles();
    /// let b = HandleTable::new().with_process_unique_handles();
    /// let ha = a.insert(NonNull::dangling())?;
    /// let hb = b.insert(NonNull::dangling())?;
    /// assert_eq!(ha.index(), hb.index());
    /// assert_ne!(ha, hb);
    /// assert!(b.read(ha).is_err()); // a's handle is stale in b
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    #[must_use]
    pub fn with_process_unique_handles(mut self) -> Self {
        self.leased = true;
        self
    }

    /// The slot at `index`, if the segment holding it is installed.
    ///
    /// Lock-free: one `leading_zeros`, one Acquire load. `None` means the index was never
    /// issued (or is `u32::MAX`); a slot in an installed segment that was never issued is
    /// vacant, so every generation check on it fails. The compactor uses this to go from
    /// a block's recorded owner index to its slot.
    #[inline]
    pub fn slot(&self, index: u32) -> Option<&Slot> {
        if index == RawHandle::NULL.index() {
            return None;
        }
        let (seg, offset) = locate(index);
        let base = self.segments.get(seg)?.load(Acquire);
        if base.is_null() {
            return None;
        }
        // SAFETY:
        // - `base` is an installed segment of `segment_len(seg)` initialised slots (zero
        //   pages or constructed slots, published by the installing CAS we Acquired);
        // - `offset < segment_len(seg)` because `index != u32::MAX`, i.e. `index < MAX_SLOTS`
        //   (see `locate`);
        // - segments are freed only when the table drops, so the slot outlives `&self`.
        Some(unsafe { &*base.add(offset) })
    }

    /// The slot `h` names, without checking its generation (see [`slot`](Self::slot)).
    #[inline]
    pub fn get(&self, h: RawHandle) -> Option<&Slot> {
        self.slot(h.index())
    }

    /// True if `h` names an occupied slot at `h`'s generation right now.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ptr::NonNull;
    /// let table = tidyheap::HandleTable::new();
    /// let h = table.insert(NonNull::dangling())?;
    /// assert!(table.contains(h));
    /// table.remove(h)?;
    /// assert!(!table.contains(h));
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    #[inline]
    pub fn contains(&self, h: RawHandle) -> bool {
        self.get(h)
            .is_some_and(|s| s.generation() == h.generation().get())
    }

    /// Stores `block` in a free slot (reusing the most recently freed one, else a fresh
    /// one) and returns its handle. The slot's generation becomes odd; the Release that
    /// publishes it also publishes the block's contents to every later guard.
    ///
    /// # Errors
    ///
    /// [`HandleError::Alloc`] if a new segment cannot be reserved, or if every index
    /// allowed ([`MAX_SLOTS`] or [`with_max_slots`](Self::with_max_slots)) is in use or
    /// retired (then as `OutOfMemory` with `ENOMEM`).
    pub fn insert(&self, block: NonNull<u8>) -> Result<RawHandle, HandleError> {
        // Each round either occupies a slot or retires one for good (a leased index out
        // of windows), and there are finitely many indexes: the loop ends.
        loop {
            let (index, slot, generation) = match self.pop_free() {
                Some((index, slot)) => {
                    // A vacant generation is even, at most u32::MAX - 1: `+ 1` cannot wrap.
                    let vacant = slot.vacant_generation();
                    if self.leased && lease::window_done(vacant) {
                        match lease::lease(index) {
                            Ok(Some(g)) => (index, slot, g),
                            Ok(None) => {
                                self.counters.retired.fetch_add(1, Relaxed);
                                continue;
                            }
                            Err(e) => {
                                self.push_free(index, slot);
                                return Err(e);
                            }
                        }
                    } else {
                        (index, slot, vacant + 1)
                    }
                }
                None => {
                    let (index, slot) = self.issue_fresh()?;
                    if self.leased {
                        match lease::lease(index) {
                            Ok(Some(g)) => (index, slot, g),
                            Ok(None) => {
                                self.counters.retired.fetch_add(1, Relaxed);
                                continue;
                            }
                            Err(e) => {
                                // Vacant at generation 0: whoever pops it leases again.
                                self.push_free(index, slot);
                                return Err(e);
                            }
                        }
                    } else {
                        (index, slot, self.first_generation)
                    }
                }
            };
            slot.occupy(block, generation);
            self.counters.len.fetch_add(1, Relaxed);
            return Ok(RawHandle::from_odd(index, generation));
        }
    }

    /// Frees `h`'s slot and returns the block address for the caller to free: waits until
    /// no guard or pin is held (like [`write`](Self::write)), then bumps the generation
    /// in one compare-exchange and puts the slot on the free list (or retires it if its
    /// generation is exhausted). Threads waiting on the slot wake up to `Stale`.
    ///
    /// Waits forever if the calling thread itself holds a guard or pin on this slot; use
    /// [`try_remove`](Self::try_remove) where that can happen.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is stale, foreign or already removed (a double free
    /// changes nothing).
    ///
    /// # Panics
    ///
    /// In debug builds, instead of waiting forever, if the calling thread holds a guard
    /// or pin on this slot (see "Same-thread re-entrance" in the [module docs](super)).
    pub fn remove(&self, h: RawHandle) -> Result<NonNull<u8>, HandleError> {
        self.remove_impl(h, true)
    }

    /// [`remove`](Self::remove) that never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for `remove`; [`HandleError::Busy`] if any guard or pin
    /// is held.
    pub fn try_remove(&self, h: RawHandle) -> Result<NonNull<u8>, HandleError> {
        self.remove_impl(h, false)
    }

    fn remove_impl(&self, h: RawHandle, wait: bool) -> Result<NonNull<u8>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        let generation = h.generation().get();
        let (block, retired) = match slot.vacate(generation, false) {
            Err(HandleError::Busy) if wait => {
                #[cfg(all(debug_assertions, not(tidyheap_loom)))]
                held::check(slot, h, Want::Remove);
                slot.vacate(generation, true)?
            }
            r => r?,
        };
        self.counters.len.fetch_sub(1, Relaxed);
        if retired {
            self.counters.retired.fetch_add(1, Relaxed);
        } else {
            self.push_free(h.index(), slot);
        }
        Ok(block)
    }

    /// Frees the slot of `guard`, a write guard on `h`, and returns the block address:
    /// the remove of a value that read scopes may see (see `handle::scope`), which takes
    /// the write guard first, checks the scopes, and only then vacates. On `Busy` (a pin
    /// is held) nothing changed and the guard is handed back.
    pub(crate) fn remove_written<'a>(
        &'a self,
        h: RawHandle,
        guard: SlotWrite<'a>,
    ) -> Result<NonNull<u8>, SlotWrite<'a>> {
        let slot = guard.slot();
        debug_assert_eq!(slot.generation(), h.generation().get());
        // SAFETY:
        // - `guard` is the write guard on this slot at `h`'s generation; on success the
        //   guard is given up below without unlocking (the vacate released it).
        let (block, retired) = match unsafe { slot.vacate_written(h.generation().get()) } {
            Ok(r) => r,
            Err(_) => return Err(guard),
        };
        guard.forget_vacated();
        self.counters.len.fetch_sub(1, Relaxed);
        if retired {
            self.counters.retired.fetch_add(1, Relaxed);
        } else {
            self.push_free(h.index(), slot);
        }
        Ok(block)
    }

    /// A shared guard on `h`'s block, waiting while a writer or the compactor holds it.
    ///
    /// The hot path is the slot lookup, one compare-exchange, and one Acquire load of the
    /// address; dropping the guard is one `fetch_sub`.
    ///
    /// Waits forever if the calling thread holds the write guard on the same block;
    /// [`try_read`](Self::try_read) answers `Busy` there instead.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` does not name a live block, now or after the wait.
    ///
    /// # Panics
    ///
    /// In debug builds, instead of waiting forever, if the calling thread holds the
    /// write guard on this block.
    #[inline]
    pub fn read(&self, h: RawHandle) -> Result<SlotRead<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        let generation = h.generation().get();
        if let Err(e) = slot.try_read(generation) {
            if e != HandleError::Busy {
                return Err(e);
            }
            #[cfg(all(debug_assertions, not(tidyheap_loom)))]
            held::check(slot, h, Want::Read);
            slot.read(generation)?;
        }
        // SAFETY:
        // - the read lock on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotRead::new(slot) })
    }

    /// A shared guard on `h`'s block, never waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for [`read`](Self::read); [`HandleError::Busy`] if a
    /// writer or the compactor holds the block.
    #[inline]
    pub fn try_read(&self, h: RawHandle) -> Result<SlotRead<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        slot.try_read(h.generation().get())?;
        // SAFETY:
        // - the read lock on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotRead::new(slot) })
    }

    /// The exclusive guard on `h`'s block, waiting for readers, a writer or the compactor.
    ///
    /// Waits forever if the calling thread holds a read or write guard on the same block;
    /// [`try_write`](Self::try_write) answers `Busy` there instead.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` does not name a live block, now or after the wait.
    ///
    /// # Panics
    ///
    /// In debug builds, instead of waiting forever, if the calling thread holds a read
    /// or write guard on this block.
    #[inline]
    pub fn write(&self, h: RawHandle) -> Result<SlotWrite<'_>, HandleError> {
        self.write_for(h, false)
    }

    /// [`write`](Self::write); `for_remove` says the guard is taken to remove the value
    /// (the debug builds' self-deadlock panic then names a remove).
    #[inline]
    pub(crate) fn write_for(
        &self,
        h: RawHandle,
        for_remove: bool,
    ) -> Result<SlotWrite<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        let generation = h.generation().get();
        if let Err(e) = slot.try_write(generation) {
            if e != HandleError::Busy {
                return Err(e);
            }
            #[cfg(all(debug_assertions, not(tidyheap_loom)))]
            held::check(
                slot,
                h,
                if for_remove {
                    Want::Remove
                } else {
                    Want::Write
                },
            );
            #[cfg(not(all(debug_assertions, not(tidyheap_loom))))]
            let _ = for_remove;
            slot.write(generation)?;
        }
        // SAFETY:
        // - the write lock on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotWrite::new(slot) })
    }

    /// The exclusive guard on `h`'s block, never waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for [`write`](Self::write); [`HandleError::Busy`] if any
    /// reader (this thread's included), writer or the compactor holds the block.
    #[inline]
    pub fn try_write(&self, h: RawHandle) -> Result<SlotWrite<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        slot.try_write(h.generation().get())?;
        // SAFETY:
        // - the write lock on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotWrite::new(slot) })
    }

    /// Pins `h`'s block in place, waiting at most for an in-flight move.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` does not name a live block, now or after the wait.
    #[inline]
    pub fn pin(&self, h: RawHandle) -> Result<SlotPin<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        slot.pin(h.generation().get())?;
        // SAFETY:
        // - the pin on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotPin::new(slot) })
    }

    /// Pins `h`'s block in place, never waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for [`pin`](Self::pin); [`HandleError::Busy`] while the
    /// compactor is moving the block.
    #[inline]
    pub fn try_pin(&self, h: RawHandle) -> Result<SlotPin<'_>, HandleError> {
        let slot = self.get(h).ok_or(HandleError::Stale)?;
        slot.try_pin(h.generation().get())?;
        // SAFETY:
        // - the pin on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotPin::new(slot) })
    }

    /// For the compactor: takes slot `index` exclusively if it still owns the block at
    /// `expected` and nobody holds it. Never waits (see [`Slot::try_lock_move`]).
    ///
    /// # Errors
    ///
    /// [`MoveSkip::Gone`] if the slot does not exist, is vacant or points elsewhere;
    /// [`MoveSkip::Pinned`] / [`MoveSkip::Busy`] if a pin / any other guard is held.
    pub fn try_lock_move(
        &self,
        index: u32,
        expected: NonNull<u8>,
    ) -> Result<SlotMove<'_>, MoveSkip> {
        let slot = self.slot(index).ok_or(MoveSkip::Gone)?;
        let generation = slot.try_lock_move(expected.as_ptr())?;
        // SAFETY:
        // - the move lock on `slot` was just taken and is handed to the guard.
        Ok(unsafe { SlotMove::new(slot, RawHandle::from_odd(index, generation)) })
    }

    /// Number of occupied slots (exact at quiescence).
    pub fn len(&self) -> usize {
        self.counters.len.load(Relaxed)
    }

    /// True if no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of slots in the installed segments: occupied, free, retired and not yet
    /// issued.
    pub fn capacity(&self) -> usize {
        (0..SEGMENTS)
            .take_while(|&seg| !self.segments[seg].load(Relaxed).is_null())
            .map(segment_len)
            .sum()
    }

    /// Number of slots retired for good because their generation reached `u32::MAX`
    /// (or, in a table with process-unique handles, their index ran out of windows).
    pub fn retired(&self) -> usize {
        self.counters.retired.load(Relaxed)
    }

    /// The handles of the occupied slots, in index order. Weakly consistent under
    /// concurrent inserts and removes; exact when nothing else runs (for example in the
    /// `Drop` of a store that must free every remaining block).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::ptr::NonNull;
    /// let table = tidyheap::HandleTable::new();
    /// let a = table.insert(NonNull::dangling())?;
    /// let b = table.insert(NonNull::dangling())?;
    /// table.remove(a)?;
    /// assert_eq!(table.iter().collect::<Vec<_>>(), [b]);
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            table: self,
            next: 0,
            end: self.counters.issued.load(Acquire),
        }
    }

    /// Every issued slot with its index, walking the installed segments as slices (no
    /// per-index segment lookup): the scan behind scoped iteration. Slots issued after
    /// the call may or may not be visited.
    pub(crate) fn slots(&self) -> impl Iterator<Item = (u32, &Slot)> + '_ {
        let end = u64::from(self.counters.issued.load(Acquire));
        (0..SEGMENTS)
            .take_while(move |&seg| segment_start(seg) < end)
            .filter_map(move |seg| {
                let start = segment_start(seg);
                let base = self.segments[seg].load(Acquire);
                if base.is_null() {
                    return None;
                }
                let len = (segment_len(seg) as u64).min(end - start) as usize;
                // SAFETY:
                // - `base` is an installed segment of `segment_len(seg) >= len` initialised
                //   slots (published by the installing CAS, which we Acquired), freed only
                //   when the table drops, so they outlive `&self`.
                let slots = unsafe { core::slice::from_raw_parts(base, len) };
                Some((start as u32, slots))
            })
            .flat_map(|(start, slots)| {
                slots
                    .iter()
                    .enumerate()
                    .map(move |(i, slot)| (start + i as u32, slot))
            })
    }

    /// Pops the most recently freed slot, which the caller then owns.
    fn pop_free(&self) -> Option<(u32, &Slot)> {
        let mut head = self.counters.free.load(Acquire);
        loop {
            let index = head as u32;
            if index == NIL {
                return None;
            }
            let Some(slot) = self.slot(index) else {
                unreachable!("free list holds index {index}, which was never issued");
            };
            // May be garbage if another thread popped `index` meanwhile; then the tag
            // has moved on and the compare-exchange below fails.
            let next = slot.next_free();
            let new = (head & !0xFFFF_FFFF).wrapping_add(1 << 32) | u64::from(next);
            match self
                .counters
                .free
                .compare_exchange_weak(head, new, AcqRel, Acquire)
            {
                Ok(_) => return Some((index, slot)),
                Err(now) => head = now,
            }
        }
    }

    /// Pushes the vacant slot `index`, which the caller owns, on the free list.
    fn push_free(&self, index: u32, slot: &Slot) {
        let mut head = self.counters.free.load(Relaxed);
        loop {
            slot.set_next_free(head as u32);
            let new = (head & !0xFFFF_FFFF).wrapping_add(1 << 32) | u64::from(index);
            // Release publishes the link and the slot's vacant state to the next popper.
            match self
                .counters
                .free
                .compare_exchange_weak(head, new, Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Claims the next never-used index, installing its segment first if needed (so a
    /// failed reservation consumes no index).
    fn issue_fresh(&self) -> Result<(u32, &Slot), HandleError> {
        let mut n = self.counters.issued.load(Relaxed);
        loop {
            if n >= self.max_slots {
                return Err(TABLE_FULL);
            }
            let slot = self.install_slot(n)?;
            match self
                .counters
                .issued
                .compare_exchange_weak(n, n + 1, Release, Relaxed)
            {
                Ok(_) => return Ok((n, slot)),
                Err(now) => n = now,
            }
        }
    }

    /// The slot at `index`, installing its segment if it is missing.
    fn install_slot(&self, index: u32) -> Result<&Slot, HandleError> {
        if let Some(slot) = self.slot(index) {
            return Ok(slot);
        }
        let (seg, offset) = locate(index);
        let fresh = alloc_segment(seg)?;
        let base =
            match self.segments[seg].compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
                Ok(_) => fresh,
                Err(winner) => {
                    // SAFETY:
                    // - `fresh` came from `alloc_segment(seg)` just above and was never
                    //   published, so nothing refers to it.
                    unsafe { free_segment(seg, fresh) };
                    winner
                }
            };
        // SAFETY:
        // - `base` is the installed segment `seg`, whose slots live as long as the table;
        // - `offset < segment_len(seg)` since `index < max_slots <= MAX_SLOTS`.
        Ok(unsafe { &*base.add(offset) })
    }

    /// The free list from head to tail. Only meaningful at quiescence.
    ///
    /// # Panics
    ///
    /// If the list is longer than the number of issued indexes (it has a cycle).
    #[cfg(test)]
    pub(crate) fn free_list(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut index = self.counters.free.load(Acquire) as u32;
        while index != NIL {
            assert!(
                out.len() < self.issued() as usize,
                "free list has a cycle: {out:?}"
            );
            out.push(index);
            index = self.slot(index).map_or(NIL, Slot::next_free);
        }
        out
    }

    /// Indexes issued so far.
    #[cfg(test)]
    pub(crate) fn issued(&self) -> u32 {
        self.counters.issued.load(Acquire)
    }
}

impl Default for HandleTable {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HandleTable {
    /// Releases the segments. Blocks still referenced by occupied slots are not freed:
    /// the table never owned them.
    fn drop(&mut self) {
        for (seg, base) in self.segments.iter().enumerate() {
            let base = base.load(Acquire);
            if !base.is_null() {
                // SAFETY:
                // - `base` was installed from `alloc_segment(seg)` and is released once,
                //   here; `&mut self` means no slot reference outlives this call.
                unsafe { free_segment(seg, base) };
            }
        }
    }
}

impl fmt::Debug for HandleTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandleTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("retired", &self.retired())
            .finish_non_exhaustive()
    }
}

/// Iterator over the handles of a table's occupied slots; see [`HandleTable::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    table: &'a HandleTable,
    next: u32,
    end: u32,
}

impl Iterator for Iter<'_> {
    type Item = RawHandle;

    fn next(&mut self) -> Option<RawHandle> {
        while self.next < self.end {
            let index = self.next;
            self.next += 1;
            if let Some(slot) = self.table.slot(index) {
                let generation = slot.generation();
                if generation & 1 == 1 {
                    return Some(RawHandle::from_odd(index, generation));
                }
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some((self.end - self.next) as usize))
    }
}

impl core::iter::FusedIterator for Iter<'_> {}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    fn dangling(n: usize) -> NonNull<u8> {
        NonNull::new(ptr::without_provenance_mut(8 * (n + 1))).unwrap()
    }

    /// A leased table whose fresh indexes start at `first` (test-only: the indexes below
    /// count as issued but are in no list).
    fn leased_table_from(first: u32) -> HandleTable {
        let t = HandleTable::new().with_process_unique_handles();
        t.counters.issued.store(first, Relaxed);
        t
    }

    #[test]
    fn leased_generations_move_to_a_new_window_every_128_occupancies() {
        let first = 1_000_200;
        let t = leased_table_from(first);
        let mut h = t.insert(dangling(0)).unwrap();
        assert_eq!(h.index(), first);
        let start = h.generation().get();
        assert_eq!(start % lease::WINDOW, 1);
        for _ in 0..lease::WINDOW / 2 - 1 {
            t.remove(h).unwrap();
            h = t.insert(dangling(0)).unwrap();
        }
        assert_eq!(
            h.generation().get(),
            start + lease::WINDOW - 2,
            "one window"
        );
        t.remove(h).unwrap();
        let next = t.insert(dangling(0)).unwrap();
        assert_eq!(next.index(), first, "same slot, new window");
        assert_eq!(next.generation().get() % lease::WINDOW, 1);
        assert!(next.generation().get() > h.generation().get());
        assert!(t.read(h).is_err());
        t.remove(next).unwrap();
    }

    #[test]
    fn a_leased_index_out_of_windows_is_retired_never_reused() {
        let first = 1_000_300;
        let t = leased_table_from(first);
        let h = t.insert(dangling(0)).unwrap();
        assert_eq!(h.index(), first);
        // Every other window of this index is gone: when this slot's window ends, it
        // retires instead of wrapping or reusing a window.
        lease::set_windows_used(first, lease::TEST_WINDOWS);
        let mut h = h;
        for _ in 0..lease::WINDOW / 2 - 1 {
            t.remove(h).unwrap();
            h = t.insert(dangling(0)).unwrap();
            assert_eq!(h.index(), first);
        }
        t.remove(h).unwrap();
        // The next fresh index is out of windows too: skipped.
        lease::set_windows_used(first + 1, lease::TEST_WINDOWS);
        let moved = t.insert(dangling(1)).unwrap();
        assert_eq!(moved.index(), first + 2);
        assert_eq!(t.retired(), 2);
        assert_eq!(t.len(), 1);
        assert!(
            t.read(h).is_err(),
            "the retired slot's last handle stays stale"
        );
        assert_eq!(
            t.slot(first).unwrap().generation() % 2,
            0,
            "vacant for good"
        );
        assert!(t.free_list().is_empty());
        t.remove(moved).unwrap();
    }

    #[test]
    fn table_and_guards_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<HandleTable>();
        check::<Slot>();
        check::<SlotRead<'static>>();
        check::<SlotWrite<'static>>();
        check::<SlotPin<'static>>();
        check::<SlotMove<'static>>();
    }

    #[test]
    fn locate_math() {
        assert_eq!(SEGMENTS, 25);
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(255), (0, 255));
        assert_eq!(locate(256), (1, 0));
        assert_eq!(locate(767), (1, 511));
        assert_eq!(locate(768), (2, 0));
        assert_eq!(
            locate(u32::MAX - 1),
            (SEGMENTS - 1, segment_len(SEGMENTS - 1) - 1)
        );
        // Segments tile [0, MAX_SLOTS) exactly.
        let mut start = 0u64;
        for seg in 0..SEGMENTS {
            assert_eq!(segment_start(seg), start);
            let len = segment_len(seg) as u64;
            for i in [start, start + len / 2, start + len - 1] {
                assert_eq!(locate(i as u32), (seg, (i - start) as usize));
            }
            start += len;
        }
        assert_eq!(start, u64::from(MAX_SLOTS));
    }

    #[test]
    fn memory_per_slot_is_16_bytes() {
        assert_eq!(size_of::<Slot>(), 16);
        let t = HandleTable::new();
        for i in 0..1000 {
            t.insert(dangling(i)).unwrap();
        }
        // Segments double: at most 2x the slots in use, 16 B each.
        assert_eq!(t.capacity(), 256 + 512 + 1024);
    }

    #[test]
    fn lifo_reuse_and_accounting() {
        let t = HandleTable::new();
        let hs: Vec<_> = (0..5).map(|i| t.insert(dangling(i)).unwrap()).collect();
        for &h in &hs[1..4] {
            t.remove(h).unwrap();
        }
        assert_eq!(t.free_list(), [3, 2, 1]);
        assert_eq!((t.len(), t.issued()), (2, 5));
        let again = t.insert(dangling(9)).unwrap();
        assert_eq!((again.index(), again.generation().get()), (3, 3));
        assert_eq!(t.free_list(), [2, 1]);
        // Double free: Stale, and the free list is unchanged.
        assert_eq!(t.remove(hs[1]), Err(HandleError::Stale));
        assert_eq!(t.free_list(), [2, 1]);
    }

    #[test]
    fn iter_lists_exactly_the_occupied() {
        let t = HandleTable::new();
        let hs: Vec<_> = (0..600).map(|i| t.insert(dangling(i)).unwrap()).collect();
        for h in hs.iter().step_by(3) {
            t.remove(*h).unwrap();
        }
        let live: Vec<_> = hs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 != 0)
            .map(|(_, h)| *h)
            .collect();
        assert_eq!(t.iter().collect::<Vec<_>>(), live);
        assert_eq!(t.len(), live.len());
    }

    #[test]
    fn max_slots_is_an_error_not_a_panic() {
        let t = HandleTable::new().with_max_slots(3);
        let hs: Vec<_> = (0..3).map(|i| t.insert(dangling(i)).unwrap()).collect();
        assert_eq!(t.insert(dangling(3)), Err(TABLE_FULL));
        assert_eq!(t.len(), 3);
        t.remove(hs[0]).unwrap();
        assert_eq!(t.insert(dangling(4)).unwrap().index(), 0);
    }
}
