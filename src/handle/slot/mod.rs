//! One slot of the handle table: the generation and the per-slot guard state in one
//! atomic word, plus the block address. The layout, invariants and waiting protocol are
//! documented on [`Slot`], next to the fields they govern.

mod life;
#[cfg(all(test, not(tidyheap_loom)))]
mod tests;

use core::fmt;
use core::ptr::{self, NonNull};

use crate::HandleError;
#[cfg(tidyheap_loom)]
use crate::sync::Ordering::SeqCst;
use crate::sync::{
    AtomicPtr, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

/// Writer bit: an exclusive [`write`](Slot::write) guard is held.
const WRITER: u64 = 1 << 0;
/// Mover bit: the compactor holds the slot exclusively ([`Slot::try_lock_move`]).
const MOVER: u64 = 1 << 1;
/// Some thread set this before parking on the slot; clear it, then `unpark_all`.
const PARKED: u64 = 1 << 2;
const PIN_SHIFT: u32 = 3;
const PIN_ONE: u64 = 1 << PIN_SHIFT;
const PIN_MASK: u64 = 0x0000_FFF8;
const READER_SHIFT: u32 = 16;
const READER_ONE: u64 = 1 << READER_SHIFT;
const READER_MASK: u64 = 0xFFFF_0000;
const GEN_SHIFT: u32 = 32;

/// The most read guards one slot can hold at once; a further `try_read` is `Busy` and a
/// further `read` waits for one to go.
pub const MAX_READERS: u32 = (READER_MASK >> READER_SHIFT) as u32;
/// The most pins one slot can hold at once; a further `try_pin` is `Busy` and a further
/// `pin` waits for one to go.
pub const MAX_PINS: u32 = (PIN_MASK >> PIN_SHIFT) as u32;

const _: () = assert!(READER_MASK & PIN_MASK == 0);
const _: () = assert!((READER_MASK | PIN_MASK | PARKED | MOVER | WRITER) == 0xFFFF_FFFF);
#[cfg(not(tidyheap_loom))]
const _: () = assert!(size_of::<Slot>() == 16);

/// What a lock attempt wants; decides what blocks it and what it turns the word into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Read,
    Write,
    Pin,
    /// Vacate the slot (bump the generation), for `remove`.
    Free,
    /// Take the slot alone for a remove that must check read scopes first (`W | M`):
    /// blocked as `Free`; see [`Slot::try_lock_remove`].
    Remove,
}

impl Op {
    /// True if the lock word `s` does not admit this operation now.
    #[inline(always)]
    const fn blocked(self, s: u64) -> bool {
        match self {
            Op::Read => s & (WRITER | MOVER) != 0 || s & READER_MASK == READER_MASK,
            Op::Write => s & (WRITER | MOVER | READER_MASK) != 0,
            Op::Pin => s & MOVER != 0 || s & PIN_MASK == PIN_MASK,
            Op::Free | Op::Remove => s & (WRITER | MOVER | READER_MASK | PIN_MASK) != 0,
        }
    }

    /// The word after this operation succeeds on `s`, whose generation is `gen`.
    #[inline(always)]
    const fn next(self, s: u64, generation: u32) -> u64 {
        match self {
            Op::Read => s + READER_ONE,
            Op::Write => s | WRITER,
            Op::Pin => s + PIN_ONE,
            // The lock word (here at most `PARKED`) is cleared: vacant slots have none.
            Op::Free => vacated(generation),
            Op::Remove => s | WRITER | MOVER,
        }
    }
}

/// The state of a slot freed at generation `generation` (odd): the next, even, generation
/// and an empty lock word — or 0 (retired) if the generation would wrap.
#[inline(always)]
const fn vacated(generation: u32) -> u64 {
    match generation.checked_add(1) {
        Some(g) => (g as u64) << GEN_SHIFT,
        None => 0,
    }
}

#[inline(always)]
const fn generation_of(s: u64) -> u32 {
    (s >> GEN_SHIFT) as u32
}

/// True if state `s` is occupied at exactly `generation`.
#[inline(always)]
const fn matches(s: u64, generation: u32) -> bool {
    generation_of(s) == generation && generation & 1 == 1
}

/// Why the compactor could not take a slot for a move. Nothing was changed; the
/// compactor skips the block and may retry in a later pass (except after `Gone`).
///
/// # Examples
///
/// ```
/// use tidyheap::handle::MoveSkip;
/// assert_eq!(MoveSkip::Pinned.to_string(), "block is pinned");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoveSkip {
    /// A reader or writer (or another mover) holds the slot.
    Busy,
    /// The block is pinned: its address must stay put.
    Pinned,
    /// The slot is vacant, or no longer points at the expected block: the block was freed
    /// (and perhaps the slot reused).
    Gone,
}

impl fmt::Display for MoveSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Busy => "block is busy: a guard is held",
            Self::Pinned => "block is pinned",
            Self::Gone => "block is gone: freed or its slot reused",
        })
    }
}

/// A decoded snapshot of a slot's state word, for diagnostics and tests. It may be out of
/// date as soon as it is taken.
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::HandleTable;
///
/// let table = HandleTable::new();
/// let h = table.insert(NonNull::<u64>::dangling().cast())?;
/// let slot = table.get(h).unwrap();
/// let _r = table.read(h)?;
/// let s = slot.snapshot();
/// assert!(s.is_occupied());
/// assert_eq!((s.readers, s.pins, s.writer), (1, 0, false));
/// # Ok::<(), tidyheap::HandleError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// The slot's generation: odd while occupied, even while vacant.
    pub generation: u32,
    /// Read guards held.
    pub readers: u32,
    /// Pins held.
    pub pins: u32,
    /// A write guard is held.
    pub writer: bool,
    /// The compactor holds the slot for a move.
    pub moving: bool,
    /// Some thread is (about to be) parked waiting on the slot.
    pub waiters: bool,
}

impl SlotState {
    /// Decodes a state word.
    const fn decode(s: u64) -> Self {
        Self {
            generation: generation_of(s),
            readers: ((s & READER_MASK) >> READER_SHIFT) as u32,
            pins: ((s & PIN_MASK) >> PIN_SHIFT) as u32,
            writer: s & WRITER != 0,
            moving: s & MOVER != 0,
            waiters: s & PARKED != 0,
        }
    }

    /// True if the slot is occupied (its generation is odd).
    pub const fn is_occupied(&self) -> bool {
        self.generation & 1 == 1
    }
}

/// One handle-table slot: 16 bytes holding the generation, the guard state and the block
/// address.
///
/// # The state word
///
/// ```text
///  63                              32 31            16 15          3  2   1   0
/// ┌──────────────────────────────────┬────────────────┬─────────────┬───┬───┬───┐
/// │ generation (odd = occupied)      │ readers (16 b) │ pins (13 b) │ P │ M │ W │
/// └──────────────────────────────────┴────────────────┴─────────────┴───┴───┴───┘
///   W = WRITER, M = MOVER (the compactor), P = PARKED (some thread is parked on the slot)
/// ```
///
/// Every transition is a single atomic on this word, so "the generation matches" and
/// "the guard is granted" are one indivisible event. The slot's invariants, kept by every
/// transition below:
///
/// ```text
/// state = generation << 32 | readers << 16 | pins << 3 | P << 2 | M << 1 | W
/// generation odd  ⇔ occupied  ⇒ ptr = block address (non-null)
/// generation even ⇔ vacant    ⇒ lock word == 0, ptr = next free index (when on the free list)
/// W ∧ ¬M ⇒ readers == 0                  (a writer is alone, pins aside)
/// M ∧ ¬W ⇒ readers == 0 ∧ pins == 0      (a mover is alone)
/// readers ≤ MAX_READERS, pins ≤ MAX_PINS (a full count refuses more: Busy / wait)
/// occupied g → vacant g + 1  only when readers == pins == 0 and nobody else holds W or M:
///                            one CAS from a free word or from the remover's W, or the
///                            remover's plain store from W ∧ M
/// vacant g → occupied g + 1  only by the thread that popped the slot off the free list
///                            (or, in a table with process-unique handles, when g ends
///                            its leased window: → the first generation of a new window)
/// occupied u32::MAX → retired (state 0, never on the free list again)
/// P ⇒ some guard or pin is held, or its last holder is between its release and clearing P
/// W ∧ M ⇒ a remove holds the slot alone (readers == pins == 0): it leaves by a plain
///         store of the vacated word, or by clearing W, M and P; nobody sets P meanwhile
/// ```
///
/// The last line is what lets a store's remove vacate without a second
/// read-modify-write (`Slot::try_lock_remove`, internal): while `W ∧ M` is set,
/// no guard, pin or move can be taken, and a waiter spins instead of setting `P`, so the
/// remover's plain store cannot overwrite anyone's change.
///
/// Because every compare-exchange that takes a guard expects an *odd* generation, nobody
/// but the free-list owner ever writes the state of a vacant slot; that is why
/// [`HandleTable::insert`](super::HandleTable::insert) can publish with a plain store.
///
/// # Waiting
///
/// A blocked `read` / `write` / `pin` / `remove` backs off briefly, then sets `P` (by CAS,
/// only while the conflict is still there) and parks on the slot's address with
/// `parking_lot_core`, re-validating under the parking-lot bucket lock that `P` is still
/// set. Whoever clears `P` calls `unpark_all` afterwards, so a waiter either sees `P`
/// cleared and does not park, or is already queued when the wake-up comes: no lost
/// wake-ups. Exclusive unlocks clear `P` in the same atomic that releases; the last reader
/// or last pin out (or the one leaving a full count) clears it with a second atomic, only
/// when it was set. Woken threads re-check everything (the slot may have been freed:
/// `Stale`). Under `cfg(tidyheap_loom)` the parking lot is modelled by a loom mutex (the bucket
/// lock) and condition variable, so loom checks the same protocol, and a lost wake-up
/// shows up as a deadlock.
///
/// Slots live inside a [`HandleTable`](super::HandleTable) and never move; get one with
/// [`HandleTable::get`](super::HandleTable::get) or
/// [`HandleTable::slot`](super::HandleTable::slot). The lock methods take the generation
/// the caller's handle carries and grant a guard only if it still matches; the `unlock_*`
/// methods are `unsafe` because releasing a guard one does not hold would break the
/// invariants. The safe RAII guards ([`SlotRead`](super::SlotRead) and friends) are the
/// usual way in.
#[repr(C)]
pub struct Slot {
    /// `generation << 32 | lock word`; see the layout above.
    state: AtomicU64,
    /// Occupied: the block address. Vacant and on the free list: the next free index,
    /// as an address without provenance. Atomic because a free-list pop may read it while
    /// another thread reoccupies the slot (the pop's tag check then discards it).
    ptr: AtomicPtr<u8>,
    /// Under loom, the parking lot is modelled by this mutex (the bucket lock, guarding
    /// a wake-up counter) and condition variable; see `park`.
    #[cfg(tidyheap_loom)]
    lot: (loom::sync::Mutex<u64>, loom::sync::Condvar),
}

impl Slot {
    /// A vacant slot with generation 0, the state all-zero memory also represents.
    #[cfg(tidyheap_loom)]
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            ptr: AtomicPtr::new(ptr::null_mut()),
            lot: (loom::sync::Mutex::new(0), loom::sync::Condvar::new()),
        }
    }

    /// The current generation (Acquire): odd while occupied, even while vacant.
    #[inline]
    pub fn generation(&self) -> u32 {
        generation_of(self.state.load(Acquire))
    }

    /// True if the slot holds a block right now.
    #[inline]
    pub fn is_occupied(&self) -> bool {
        self.generation() & 1 == 1
    }

    /// A decoded snapshot of the state word.
    pub fn snapshot(&self) -> SlotState {
        SlotState::decode(self.state.load(Acquire))
    }

    /// The block address (Acquire load).
    ///
    /// It is the current block only while the caller holds a guard or pin on this slot
    /// (then it cannot change); otherwise it may be stale, or a free-list link of a
    /// vacant slot, and must not be dereferenced.
    #[inline]
    pub fn ptr(&self) -> *mut u8 {
        self.ptr.load(Acquire)
    }

    /// The block address of an occupied slot the caller holds a guard on.
    ///
    /// # Safety
    ///
    /// * the caller holds a read, write, pin or move guard on this slot, so it is
    ///   occupied and its `ptr` is the (non-null) block address.
    #[inline]
    pub(crate) unsafe fn locked_ptr(&self) -> NonNull<u8> {
        let p = self.ptr.load(Acquire);
        debug_assert!(!p.is_null() && self.is_occupied());
        // SAFETY:
        // - the caller holds a guard, so the slot is occupied, and an occupied slot's ptr
        //   is the non-null block address (slot invariant; `occupy` takes a `NonNull`).
        unsafe { NonNull::new_unchecked(p) }
    }

    /// One attempt at `op`: succeeds, or reports why not. `Busy` only after seeing the
    /// conflict; CAS failures caused by unrelated changes are retried.
    #[inline(always)]
    fn try_acquire(&self, generation: u32, op: Op) -> Result<u64, HandleError> {
        let mut s = self.state.load(Relaxed);
        loop {
            if !matches(s, generation) {
                return Err(HandleError::Stale);
            }
            if op.blocked(s) {
                return Err(HandleError::Busy);
            }
            let ordering = if op == Op::Free { AcqRel } else { Acquire };
            match self
                .state
                .compare_exchange_weak(s, op.next(s, generation), ordering, Relaxed)
            {
                Ok(_) => return Ok(s),
                Err(now) => s = now,
            }
        }
    }

    /// `try_acquire`, waiting (back-off, then park) while the slot is busy.
    #[inline]
    fn acquire(&self, generation: u32, op: Op) -> Result<u64, HandleError> {
        match self.try_acquire(generation, op) {
            Err(HandleError::Busy) => self.acquire_slow(generation, op),
            r => r,
        }
    }

    #[cold]
    #[inline(never)]
    fn acquire_slow(&self, generation: u32, op: Op) -> Result<u64, HandleError> {
        let mut backoff = crate::sync::Backoff::new();
        loop {
            match self.try_acquire(generation, op) {
                Err(HandleError::Busy) => {}
                r => return r,
            }
            // Under loom go straight to the parking protocol: that is what we model.
            if cfg!(not(tidyheap_loom)) && !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            let s = self.state.load(Relaxed);
            if !matches(s, generation) || !op.blocked(s) {
                continue;
            }
            if s & (WRITER | MOVER) == WRITER | MOVER {
                // A remove holds the slot alone for a few instructions and leaves with a
                // plain store, which would lose a `PARKED` set now: wait without parking.
                backoff.snooze();
                continue;
            }
            if s & PARKED == 0
                && self
                    .state
                    .compare_exchange_weak(s, s | PARKED, Relaxed, Relaxed)
                    .is_err()
            {
                continue;
            }
            self.park();
        }
    }

    /// Parks until some thread clears `PARKED` and wakes the slot's waiters; returns at
    /// once if `PARKED` is already clear.
    #[cfg(not(tidyheap_loom))]
    fn park(&self) {
        let key = ptr::from_ref(self).addr();
        // SAFETY:
        // - the key is this slot's address: a slot is ours alone and lives as long as its
        //   table, so no other primitive parks on it while it lives;
        // - `validate` only loads an atomic: it neither panics nor calls parking_lot;
        // - `before_sleep` and `timed_out` do nothing (and there is no timeout).
        unsafe {
            parking_lot_core::park(
                key,
                || self.state.load(Relaxed) & PARKED != 0,
                || {},
                |_, _| {},
                parking_lot_core::DEFAULT_PARK_TOKEN,
                None,
            );
        }
    }

    /// Wakes every thread parked on this slot. Call after clearing `PARKED`.
    #[cfg(not(tidyheap_loom))]
    #[cold]
    fn unpark_all(&self) {
        let key = ptr::from_ref(self).addr();
        // SAFETY:
        // - the key is this slot's address, used only by this slot's waiters (see `park`).
        unsafe {
            parking_lot_core::unpark_all(key, parking_lot_core::DEFAULT_UNPARK_TOKEN);
        }
    }

    /// Loom model of `park`, mirroring parking_lot: validate under the bucket lock, then
    /// sleep until an `unpark_all` (which takes the same lock) bumps the counter. The
    /// waiter is blocked, not spinning, so a lost wake-up is a deadlock loom reports.
    #[cfg(tidyheap_loom)]
    fn park(&self) {
        let (lock, condvar) = &self.lot;
        let mut wakes = lock.lock().unwrap();
        if self.state.load(SeqCst) & PARKED == 0 {
            return;
        }
        let seen = *wakes;
        while *wakes == seen {
            wakes = condvar.wait(wakes).unwrap();
        }
    }

    /// Loom model of `unpark_all`.
    #[cfg(tidyheap_loom)]
    #[cold]
    fn unpark_all(&self) {
        let (lock, condvar) = &self.lot;
        *lock.lock().unwrap() += 1;
        condvar.notify_all();
    }

    /// Clears `PARKED` (if still set) and wakes the waiters: the slow path of the shared
    /// unlocks, taken only when `PARKED` was seen.
    #[cold]
    #[inline(never)]
    fn wake_waiters(&self) {
        if self.state.fetch_and(!PARKED, Release) & PARKED != 0 {
            self.unpark_all();
        }
    }

    // ----- read -----

    /// Takes a shared guard if `generation` matches and no writer or mover holds the slot.
    /// Never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation;
    /// [`HandleError::Busy`] if a writer or the compactor holds it (or
    /// [`MAX_READERS`] readers do).
    #[inline]
    pub fn try_read(&self, generation: u32) -> Result<(), HandleError> {
        self.try_acquire(generation, Op::Read).map(drop)
    }

    /// Takes a shared guard, waiting while a writer or the compactor holds the slot (the
    /// compactor holds it for at most one block copy).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation, now or
    /// after the wait (the block was freed meanwhile).
    #[inline]
    pub fn read(&self, generation: u32) -> Result<(), HandleError> {
        self.acquire(generation, Op::Read).map(drop)
    }

    /// Releases a shared guard: one `fetch_sub`, plus a wake-up only if someone parked.
    ///
    /// # Safety
    ///
    /// * the caller holds a read guard on this slot (from [`read`](Self::read) or
    ///   [`try_read`](Self::try_read)) and gives it up: it is not released twice.
    #[inline]
    pub unsafe fn unlock_read(&self) {
        let old = self.state.fetch_sub(READER_ONE, Release);
        debug_assert!(old & READER_MASK != 0, "unlock_read without a reader");
        // Readers only block writers, movers and frees (all wait for zero readers) and
        // readers waiting on a full count.
        let readers = old & READER_MASK;
        if old & PARKED != 0 && (readers == READER_ONE || readers == READER_MASK) {
            self.wake_waiters();
        }
    }

    // ----- write -----

    /// Takes the exclusive guard if `generation` matches and no reader, writer or mover
    /// holds the slot (pins do not exclude writers). Never waits.
    ///
    /// This is the deadlock-free way to "upgrade": with a read guard held by this thread
    /// it answers `Busy`, where [`write`](Self::write) would wait forever.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for [`try_read`](Self::try_read); [`HandleError::Busy`]
    /// if any reader, writer or the compactor holds the slot.
    #[inline]
    pub fn try_write(&self, generation: u32) -> Result<(), HandleError> {
        self.try_acquire(generation, Op::Write).map(drop)
    }

    /// Takes the exclusive guard, waiting for readers, a writer or the compactor to leave.
    ///
    /// Calling this while the same thread holds a read or write guard on this slot waits
    /// forever; use [`try_write`](Self::try_write) there.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation, now or
    /// after the wait.
    #[inline]
    pub fn write(&self, generation: u32) -> Result<(), HandleError> {
        self.acquire(generation, Op::Write).map(drop)
    }

    /// Releases the exclusive guard and wakes any waiters, in one `fetch_and`.
    ///
    /// # Safety
    ///
    /// * the caller holds the write guard on this slot and gives it up.
    #[inline]
    pub unsafe fn unlock_write(&self) {
        let old = self.state.fetch_and(!(WRITER | PARKED), Release);
        debug_assert!(old & WRITER != 0, "unlock_write without the writer");
        if old & PARKED != 0 {
            self.unpark_all();
        }
    }

    // ----- pin -----

    /// Pins the block: its address stays put (no move, no free) until [`unpin`]. Readers
    /// and writers are not excluded. Never waits.
    ///
    /// [`unpin`]: Self::unpin
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] as for [`try_read`](Self::try_read); [`HandleError::Busy`]
    /// if the compactor is moving the block (or [`MAX_PINS`] pins are held).
    #[inline]
    pub fn try_pin(&self, generation: u32) -> Result<(), HandleError> {
        self.try_acquire(generation, Op::Pin).map(drop)
    }

    /// Pins the block, waiting at most for an in-flight move to finish.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation, now or
    /// after the wait.
    #[inline]
    pub fn pin(&self, generation: u32) -> Result<(), HandleError> {
        self.acquire(generation, Op::Pin).map(drop)
    }

    /// Releases a pin.
    ///
    /// # Safety
    ///
    /// * the caller holds a pin on this slot and gives it up.
    #[inline]
    pub unsafe fn unpin(&self) {
        let old = self.state.fetch_sub(PIN_ONE, Release);
        debug_assert!(old & PIN_MASK != 0, "unpin without a pin");
        // Pins only block frees (waiting for zero pins) and pins waiting on a full count.
        let pins = old & PIN_MASK;
        if old & PARKED != 0 && (pins == PIN_ONE || pins == PIN_MASK) {
            self.wake_waiters();
        }
    }

    // ----- move (the compactor) -----

    /// Takes the slot exclusively for a move, without ever waiting: succeeds only if the
    /// slot is occupied, points at `expected`, and no reader, writer, pin or other mover
    /// holds it. Returns the slot's generation.
    ///
    /// On success the caller copies the block, calls
    /// [`set_ptr_locked`](Self::set_ptr_locked) with the copy's address and then
    /// [`unlock_move`](Self::unlock_move). Readers and writers that arrive meanwhile wait
    /// for that one copy.
    ///
    /// # Errors
    ///
    /// [`MoveSkip::Gone`] if the slot is vacant or holds another block,
    /// [`MoveSkip::Pinned`] if pinned, [`MoveSkip::Busy`] if any other guard is held.
    pub fn try_lock_move(&self, expected: *mut u8) -> Result<u32, MoveSkip> {
        let mut s = self.state.load(Relaxed);
        loop {
            let generation = generation_of(s);
            if generation & 1 == 0 {
                return Err(MoveSkip::Gone);
            }
            if s & (WRITER | MOVER | READER_MASK) != 0 {
                return Err(MoveSkip::Busy);
            }
            if s & PIN_MASK != 0 {
                return Err(MoveSkip::Pinned);
            }
            // Cheap pre-check; the binding check is after the lock, when ptr is frozen.
            if self.ptr.load(Relaxed) != expected {
                return Err(MoveSkip::Gone);
            }
            match self
                .state
                .compare_exchange_weak(s, s | MOVER, Acquire, Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // We hold the slot exclusively and occupied: only a mover or writer could change
        // ptr, and the Acquire CAS made the last change visible.
        if self.ptr.load(Relaxed) != expected {
            // SAFETY:
            // - we took the move lock just above and give it up here.
            unsafe { self.unlock_move() };
            return Err(MoveSkip::Gone);
        }
        Ok(generation_of(s))
    }

    /// Points the slot at the block's new address.
    ///
    /// # Safety
    ///
    /// * the caller holds the move lock ([`try_lock_move`](Self::try_lock_move)) or the
    ///   write guard on this slot;
    /// * `new` points at a block holding the same contents (a complete copy), valid for as
    ///   long as the slot refers to it.
    #[inline]
    pub unsafe fn set_ptr_locked(&self, new: NonNull<u8>) {
        debug_assert!(self.state.load(Relaxed) & (MOVER | WRITER) != 0);
        // Relaxed: the unlock's Release publishes it together with the copied bytes.
        self.ptr.store(new.as_ptr(), Relaxed);
    }

    /// Releases the move lock and wakes any waiters, in one `fetch_and`.
    ///
    /// # Safety
    ///
    /// * the caller holds the move lock on this slot and gives it up.
    #[inline]
    pub unsafe fn unlock_move(&self) {
        let old = self.state.fetch_and(!(MOVER | PARKED), Release);
        debug_assert!(old & MOVER != 0, "unlock_move without the move lock");
        if old & PARKED != 0 {
            self.unpark_all();
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("state", &self.snapshot())
            .field("ptr", &self.ptr())
            .finish()
    }
}
