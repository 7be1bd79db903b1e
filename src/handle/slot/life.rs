//! The life of a slot beside its guards: scoped reads (plain loads under the protocol of
//! `handle::scope`), vacating (remove), occupying (insert) and the free-list link a
//! vacant slot carries.

use core::ptr::{self, NonNull};

use super::{
    GEN_SHIFT, MOVER, Op, PARKED, PIN_MASK, Slot, WRITER, generation_of, matches, vacated,
};
use crate::HandleError;
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

impl Slot {
    // ----- scoped reads (see `handle::scope`) -----

    /// The block address for a reader inside an open read scope, with no
    /// read-modify-write: one Acquire load of the state word, one load of the address.
    ///
    /// The answer is only meaningful under the scope protocol of `handle::scope`: the
    /// caller's scope is open (its opening `fence(SeqCst)` precedes this load), so every
    /// writer, remover and mover that takes the slot after this load sees the scope and
    /// backs off before touching the block or the address.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation;
    /// [`HandleError::Busy`] if a writer or the compactor holds it (one that took the
    /// slot before the scope opened, or is about to back off).
    #[inline(always)]
    pub(crate) fn scoped_ptr(&self, generation: u32) -> Result<NonNull<u8>, HandleError> {
        let s = self.state.load(Acquire);
        if !matches(s, generation) {
            return Err(HandleError::Stale);
        }
        if s & (WRITER | MOVER) != 0 {
            return Err(HandleError::Busy);
        }
        // Relaxed is enough: the last store to ptr (an insert, a move, a writer's
        // `set_ptr`) was published by the Release of the state word we just Acquired, and
        // no later one can happen while the scope is open (see above).
        let p = self.ptr.load(Relaxed);
        debug_assert!(!p.is_null());
        // SAFETY:
        // - the slot was occupied at `generation` when we loaded the state, and an
        //   occupied slot's ptr is non-null; it cannot have been vacated (and turned into
        //   a free-list link) since, because a remover takes the write lock first and then
        //   sees the open scope (module `handle::scope`).
        Ok(unsafe { NonNull::new_unchecked(p) })
    }

    /// [`scoped_ptr`](Self::scoped_ptr) for a scan that does not know the generation:
    /// `Ok((generation, address))` if occupied and free of writer and mover,
    /// `Err(Some(generation))` if occupied but a writer or mover holds it, `Err(None)` if
    /// vacant. The same scope protocol applies.
    #[inline(always)]
    pub(crate) fn scoped_entry(&self) -> Result<(u32, NonNull<u8>), Option<u32>> {
        let s = self.state.load(Acquire);
        let generation = generation_of(s);
        // One compare for the common case: occupied (odd), no writer or mover.
        if s & (1 << GEN_SHIFT | WRITER | MOVER) != 1 << GEN_SHIFT {
            return Err((generation & 1 == 1).then_some(generation));
        }
        let p = self.ptr.load(Relaxed);
        debug_assert!(!p.is_null());
        // SAFETY:
        // - as in `scoped_ptr`: occupied when the state was loaded, and not vacated since
        //   while the caller's scope is open.
        Ok((generation, unsafe { NonNull::new_unchecked(p) }))
    }

    /// Vacates a slot on which the caller holds the write guard (a remove that had to
    /// check for read scopes first): bumps the generation in one compare-exchange,
    /// which also releases the write guard. Returns the block address and whether the
    /// slot was retired.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if a pin is held: nothing changed, the caller still holds
    /// the write guard.
    ///
    /// # Safety
    ///
    /// * the caller holds the write guard on this slot at `generation`, and on success
    ///   gives it up without unlocking it.
    pub(crate) unsafe fn vacate_written(
        &self,
        generation: u32,
    ) -> Result<(NonNull<u8>, bool), HandleError> {
        let mut s = self.state.load(Relaxed);
        loop {
            debug_assert!(matches(s, generation) && s & WRITER != 0);
            if s & PIN_MASK != 0 {
                return Err(HandleError::Busy);
            }
            match self
                .state
                .compare_exchange_weak(s, vacated(generation), AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        if s & PARKED != 0 {
            // Our CAS cleared PARKED: waiters wake up to a vacant slot (`Stale`).
            self.unpark_all();
        }
        // We held the write guard, so ptr is the block address and nobody else changes it.
        let p = self.ptr.load(Relaxed);
        debug_assert!(!p.is_null());
        // SAFETY:
        // - the slot was occupied (we held its write guard) until our CAS, and an occupied
        //   slot's ptr is a non-null block address.
        let block = unsafe { NonNull::new_unchecked(p) };
        Ok((block, generation == u32::MAX))
    }

    /// Takes the slot alone for a remove (`W | M`: no guard, pin or move can be taken,
    /// and waiters spin instead of parking), never waiting: the first step of a store's
    /// remove, which then checks the store's read scopes and either vacates with
    /// [`vacate_removing`](Self::vacate_removing) (no second read-modify-write) or gives
    /// the slot back with [`unlock_remove`](Self::unlock_remove). Returns the word it
    /// replaced.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if the slot is vacant or at another generation;
    /// [`HandleError::Busy`] if any guard, pin or move is held.
    #[inline]
    pub(crate) fn try_lock_remove(&self, generation: u32) -> Result<u64, HandleError> {
        self.try_acquire(generation, Op::Remove)
    }

    /// Vacates the slot the caller holds for a remove: one Release store of the next
    /// generation (or the retired word), which also gives the lock up. Returns the block
    /// address and whether the slot was retired.
    ///
    /// # Safety
    ///
    /// * the caller holds the remove lock on this slot at `generation`
    ///   ([`try_lock_remove`](Self::try_lock_remove), which returned `old`), and gives it
    ///   up here.
    #[inline]
    pub(crate) unsafe fn vacate_removing(&self, generation: u32, old: u64) -> (NonNull<u8>, bool) {
        debug_assert_eq!(
            self.state.load(Relaxed) & (WRITER | MOVER | PIN_MASK),
            WRITER | MOVER
        );
        // We hold the slot alone, so ptr is the block address and nobody changes it.
        let p = self.ptr.load(Relaxed);
        // A plain store: while `W | M` is set no other thread writes the word except a
        // last reader or pin clearing the `PARKED` it saw (old & PARKED), which this store
        // clears as well (see `Slot`'s invariants). Release, as the vacate CAS: the next
        // occupant's Acquire sees our uses of the block end.
        self.state.store(vacated(generation), Release);
        if old & PARKED != 0 {
            // Waiters parked before we took the slot: they wake up to `Stale`.
            self.unpark_all();
        }
        debug_assert!(!p.is_null());
        // SAFETY:
        // - the slot was occupied (we held it alone) until our store, and an occupied
        //   slot's ptr is a non-null block address.
        (unsafe { NonNull::new_unchecked(p) }, generation == u32::MAX)
    }

    /// Gives the remove lock back without vacating (a read scope is open), waking any
    /// waiter, in one `fetch_and`.
    ///
    /// # Safety
    ///
    /// * the caller holds the remove lock on this slot and gives it up.
    #[inline]
    pub(crate) unsafe fn unlock_remove(&self) {
        let old = self.state.fetch_and(!(WRITER | MOVER | PARKED), Release);
        debug_assert_eq!(old & (WRITER | MOVER), WRITER | MOVER);
        if old & PARKED != 0 {
            self.unpark_all();
        }
    }

    // ----- occupancy (the table's side) -----

    /// Vacates the slot if `generation` matches: waits (if `wait`) until no guard or pin is
    /// held, then bumps the generation in one compare-exchange. Returns the block address
    /// and whether the slot was retired instead of becoming reusable.
    pub(crate) fn vacate(
        &self,
        generation: u32,
        wait: bool,
    ) -> Result<(NonNull<u8>, bool), HandleError> {
        let old = if wait {
            self.acquire(generation, Op::Free)?
        } else {
            self.try_acquire(generation, Op::Free)?
        };
        if old & PARKED != 0 {
            // Our CAS cleared PARKED, so we owe the wake-up: this happens when we vacate
            // between the last reader's (or pin's) `fetch_sub` and its `wake_waiters`,
            // which will then find PARKED clear. The woken threads find the slot vacant
            // (`Stale`); loom model (d) covers it.
            self.unpark_all();
        }
        // The slot is vacant now and nobody else writes ptr (the next writer is our
        // caller's free-list push), and the AcqRel CAS saw the last mover's store.
        let p = self.ptr.load(Relaxed);
        debug_assert!(!p.is_null());
        // SAFETY:
        // - the slot was occupied at `generation` until our CAS, and an occupied slot's
        //   ptr is a non-null block address; nobody changed it since (see above).
        let block = unsafe { NonNull::new_unchecked(p) };
        Ok((block, generation == u32::MAX))
    }

    /// Makes a vacant slot, owned by the caller (fresh, or popped off the free list),
    /// occupied at `generation` (odd) pointing at `block`.
    #[inline]
    pub(crate) fn occupy(&self, block: NonNull<u8>, generation: u32) {
        debug_assert!(generation & 1 == 1);
        debug_assert_eq!(self.state.load(Relaxed) & 0xFFFF_FFFF, 0);
        self.ptr.store(block.as_ptr(), Relaxed);
        // A plain store is enough: nobody else writes a vacant slot's state (see `Slot`).
        // Release publishes ptr and the block's contents to the next guard's Acquire.
        self.state
            .store(u64::from(generation) << GEN_SHIFT, Release);
    }

    /// The generation of a vacant slot the caller owns.
    #[inline]
    pub(crate) fn vacant_generation(&self) -> u32 {
        let s = self.state.load(Relaxed);
        debug_assert!(s & 1 << GEN_SHIFT == 0 && s & 0xFFFF_FFFF == 0);
        generation_of(s)
    }

    /// The free-list link of a vacant slot (garbage if the slot was reoccupied meanwhile;
    /// the free list's tag check discards it then).
    #[inline]
    pub(crate) fn next_free(&self) -> u32 {
        self.ptr.load(Relaxed).addr() as u32
    }

    /// Sets the free-list link of a vacant slot the caller owns.
    #[inline]
    pub(crate) fn set_next_free(&self, next: u32) {
        self.ptr
            .store(ptr::without_provenance_mut(next as usize), Relaxed);
    }
}
