//! The handle table: segmented slot storage, a lock-free free list, and the entry points
//! that turn a [`RawHandle`] into a guard. The design is documented on [`HandleTable`].

mod access;
mod free_list;
mod lanes;
mod segments;
#[cfg(all(test, not(tidyheap_loom)))]
mod tests;

use core::fmt;
use core::ptr::{self, NonNull};

use super::guard::SlotWrite;
#[cfg(all(debug_assertions, not(tidyheap_loom)))]
use super::held::{self, Want};
use super::slot::Slot;
use super::{RawHandle, lease};
use crate::sync::{
    AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed},
};
use crate::{AllocError, HandleError};
use free_list::NIL;
pub use segments::MAX_SLOTS;
use segments::free_segment;

pub(crate) use lanes::LANES;
pub(crate) use segments::{SEGMENTS, locate, segment_len};

/// What `insert` answers once every one of a table's indexes has been issued.
const TABLE_FULL: HandleError = HandleError::Alloc(AllocError::OutOfMemory {
    size: size_of::<Slot>(),
    errno: libc::ENOMEM,
});

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
/// — one `bsr` (or `lzcnt`), a subtract and a shift; no division, no loop (and no false
/// dependency on the previous lookup: see `segments::floor_log2`). Segments never move once
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
/// Stores on a heap skip the shared list on most operations: each thread reuses slots
/// through its own *lane* (a stash of vacant slots that moves to and from the shared
/// list in batches of 1022 (half a stash), one compare-exchange each, and a count of its own inserts and
/// removes that `len` sums). See `handle/table/lanes.rs`.
///
/// # Invariants (at quiescence; tested)
///
/// ```text
/// issued = |occupied| + |free list| + Σ|lane stash| + retired   (each index in exactly one)
/// len    = shared len + Σ lane net = |occupied|
/// capacity = Σ installed segment lengths ≥ issued
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
    /// The per-thread lanes (module `lanes`), null until first used.
    lanes: AtomicPtr<lanes::Lane>,
    /// Lanes `[0, lanes_used)` may have been used (`len` sums them).
    lanes_used: AtomicUsize,
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
            lanes: AtomicPtr::new(ptr::null_mut()),
            lanes_used: AtomicUsize::new(0),
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

    /// The installed segment's base, the segment and the offset in it of slot `index`;
    /// `None` for `u32::MAX` or a segment not installed (shared by `slot` and
    /// `segment_of`).
    #[inline(always)]
    fn installed(&self, index: u32) -> Option<(*mut Slot, usize, usize)> {
        if index == RawHandle::NULL.index() {
            return None;
        }
        let (seg, offset) = locate(index);
        let base = self.segments.get(seg)?.load(Acquire);
        (!base.is_null()).then_some((base, seg, offset))
    }

    /// The slot at `index`, if the segment holding it is installed.
    ///
    /// Lock-free: one `leading_zeros`, one Acquire load. `None` means the index was never
    /// issued (or is `u32::MAX`); a slot in an installed segment that was never issued is
    /// vacant, so every generation check on it fails. The compactor uses this to go from
    /// a block's recorded owner index to its slot.
    #[inline]
    pub fn slot(&self, index: u32) -> Option<&Slot> {
        let (base, _, offset) = self.installed(index)?;
        // SAFETY:
        // - `base` is an installed segment of `segment_len(seg)` initialised slots (zero
        //   pages or constructed slots, published by the installing CAS we Acquired);
        // - `offset < segment_len(seg)` because `index != u32::MAX`, i.e. `index < MAX_SLOTS`
        //   (see `locate`);
        // - segments are freed only when the table drops, so the slot outlives `&self`.
        Some(unsafe { &*base.add(offset) })
    }

    /// The installed segment holding slot `index`: its first index and its slots, for a
    /// scan that resolves many nearby indexes with one segment lookup (see
    /// [`slot`](Self::slot)). `None` as for `slot`.
    #[inline]
    pub(crate) fn segment_of(&self, index: u32) -> Option<(u32, &[Slot])> {
        let (base, seg, offset) = self.installed(index)?;
        // SAFETY:
        // - as in `slot`: `base` is an installed segment of `segment_len(seg)` initialised
        //   slots, freed only when the table drops.
        let slots = unsafe { core::slice::from_raw_parts(base, segment_len(seg)) };
        Some((index - offset as u32, slots))
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
            let (index, slot, fresh) = match self.pop_free() {
                Some((index, slot)) => (index, slot, false),
                None => {
                    let (index, slot) = self.issue_fresh()?;
                    (index, slot, true)
                }
            };
            match self.next_generation(index, slot, fresh) {
                Ok(Some(generation)) => {
                    slot.occupy(block, generation);
                    self.counters.len.fetch_add(1, Relaxed);
                    return Ok(RawHandle::from_odd(index, generation));
                }
                Ok(None) => {}
                Err(e) => {
                    // Still vacant (a fresh one at generation 0): whoever pops it next
                    // leases again.
                    self.push_free(index, slot);
                    return Err(e);
                }
            }
        }
    }

    /// The generation vacant slot `index` (which the caller owns; `fresh` if it was
    /// never occupied) takes when it is occupied next: odd. `Ok(None)` when the slot was
    /// retired instead (a leased index out of windows; counted here), so the caller
    /// takes another slot.
    ///
    /// # Errors
    ///
    /// [`HandleError::Alloc`] if the lease table cannot grow; the slot is unchanged and
    /// still the caller's.
    #[inline(always)]
    fn next_generation(
        &self,
        index: u32,
        slot: &Slot,
        fresh: bool,
    ) -> Result<Option<u32>, HandleError> {
        // A vacant generation is even, at most u32::MAX - 1: `+ 1` cannot wrap.
        let vacant = slot.vacant_generation();
        let lease_now = self.leased && (fresh || lease::window_done(vacant));
        if !lease_now {
            return Ok(Some(if fresh {
                self.first_generation
            } else {
                vacant + 1
            }));
        }
        self.lease_generation(index)
    }

    /// The leased branch of [`next_generation`](Self::next_generation): a new window
    /// (once per 128 occupancies of a slot, and for a fresh one).
    #[cold]
    #[inline(never)]
    fn lease_generation(&self, index: u32) -> Result<Option<u32>, HandleError> {
        let g = lease::lease(index)?;
        if g.is_none() {
            self.counters.retired.fetch_add(1, Relaxed);
        }
        Ok(g)
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

    /// Vacates the slot of `guard`, a write guard on `h`, and returns the block address
    /// and whether the slot was retired: the remove of a value that read scopes may see
    /// (see `handle::scope`), which takes the write guard first, checks the scopes, and
    /// only then vacates. The caller then hands the slot back with
    /// [`recycle`](Self::recycle). On `Busy` (a pin is held) nothing changed and the
    /// guard is handed back.
    pub(crate) fn vacate_written<'a>(
        &'a self,
        h: RawHandle,
        guard: SlotWrite<'a>,
    ) -> Result<(NonNull<u8>, bool), SlotWrite<'a>> {
        let slot = guard.slot();
        debug_assert_eq!(slot.generation(), h.generation().get());
        // SAFETY:
        // - `guard` is the write guard on this slot at `h`'s generation; on success the
        //   guard is given up below without unlocking (the vacate released it).
        match unsafe { slot.vacate_written(h.generation().get()) } {
            Ok(r) => {
                guard.forget_vacated();
                Ok(r)
            }
            Err(_) => Err(guard),
        }
    }

    /// Number of occupied slots (exact at quiescence): the shared count plus what each
    /// thread's lane counted (module `lanes`).
    pub fn len(&self) -> usize {
        let n = self
            .counters
            .len
            .load(Relaxed)
            .wrapping_add(self.lanes_net());
        // Mid-flight (a slot inserted on one lane, removed on another) the sum can dip
        // below zero for a moment.
        n.min(isize::MAX as usize)
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
}

impl Default for HandleTable {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HandleTable {
    /// Releases the segments and lanes. Blocks still referenced by occupied slots are
    /// not freed: the table never owned them.
    fn drop(&mut self) {
        let lanes = self.lanes.load(Acquire);
        if !lanes.is_null() {
            // SAFETY:
            // - installed from `alloc_lanes` and released once, here; `&mut self` means
            //   no lane reference outlives this call.
            unsafe { lanes::free_lanes(lanes) };
        }
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
