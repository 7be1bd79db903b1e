//! The guard entry points of [`HandleTable`]: a handle in, a read, write or pin guard
//! (or the compactor's move lock) out. Each is the slot lookup, one compare-exchange on
//! the slot word, and a guard that owns the lock from then on.

use core::ptr::NonNull;

use super::HandleTable;
use crate::HandleError;
use crate::handle::RawHandle;
use crate::handle::guard::{SlotMove, SlotPin, SlotRead, SlotWrite};
#[cfg(all(debug_assertions, not(tidyheap_loom)))]
use crate::handle::held::{self, Want};
use crate::handle::slot::MoveSkip;

impl HandleTable {
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
    /// `expected` and nobody holds it. Never waits (see [`Slot::try_lock_move`](crate::handle::Slot::try_lock_move)).
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
}
