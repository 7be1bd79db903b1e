//! RAII guards over one slot: they hold the slot's lock and the block address, and
//! release the lock when dropped.
//!
//! These are the low-level guards typed stores build on: they hand out the block address
//! as a `NonNull<u8>`, and every access through it is the caller's `unsafe` business. What
//! a guard does guarantee is that the address is the block's current one for the guard's
//! whole life, because the block cannot move or be freed while the guard lives:
//!
//! | guard | others may meanwhile | the bytes behind `ptr()` may be |
//! |---|---|---|
//! | [`SlotRead`] | read, pin | read |
//! | [`SlotWrite`] | pin | read and written |
//! | [`SlotPin`] | read, write, pin | accessed only under the caller's own synchronisation |
//! | [`SlotMove`] | nothing | read (to copy them elsewhere) |

use core::fmt;
use core::ptr::NonNull;

#[cfg(all(debug_assertions, not(tidyheap_loom)))]
use super::held::{Held, Kind};
use super::{RawHandle, Slot};

/// A shared guard on a slot: while it lives the block neither moves nor is freed, and no
/// writer holds it. Made by [`HandleTable::read`](super::HandleTable::read) /
/// [`try_read`](super::HandleTable::try_read).
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::HandleTable;
///
/// let table = HandleTable::new();
/// let value = Box::leak(Box::new(42u64));
/// let h = table.insert(NonNull::from(&mut *value).cast())?;
/// {
///     let r = table.read(h)?;
///     // SAFETY: the read guard keeps the block in place and excludes writers.
///     assert_eq!(unsafe { *r.ptr().cast::<u64>().as_ptr() }, 42);
/// }
/// let block = table.remove(h)?;
/// // SAFETY: the slot is vacant now; nobody else refers to the leaked box.
/// drop(unsafe { Box::from_raw(block.cast::<u64>().as_ptr()) });
/// # Ok::<(), tidyheap::HandleError>(())
/// ```
#[must_use = "the guard releases the slot when dropped"]
pub struct SlotRead<'a> {
    slot: &'a Slot,
    ptr: NonNull<u8>,
    /// Debug builds: this thread's record of the guard (see `held`).
    #[cfg(all(debug_assertions, not(tidyheap_loom)))]
    _held: Held,
}

/// The exclusive guard on a slot: while it lives the block neither moves nor is freed,
/// and nobody else reads or writes it (pins may coexist). Made by
/// [`HandleTable::write`](super::HandleTable::write) /
/// [`try_write`](super::HandleTable::try_write).
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::HandleTable;
///
/// let table = HandleTable::new();
/// let value = Box::leak(Box::new(1u64));
/// let h = table.insert(NonNull::from(&mut *value).cast())?;
/// {
///     let w = table.write(h)?;
///     // SAFETY: the write guard gives exclusive access to the block.
///     unsafe { *w.ptr().cast::<u64>().as_ptr() += 1 };
///     assert!(table.try_read(h).is_err()); // Busy while the writer lives
/// }
/// let block = table.remove(h)?;
/// // SAFETY: the slot is vacant now; nobody else refers to the leaked box.
/// assert_eq!(*unsafe { Box::from_raw(block.cast::<u64>().as_ptr()) }, 2);
/// # Ok::<(), tidyheap::HandleError>(())
/// ```
#[must_use = "the guard releases the slot when dropped"]
pub struct SlotWrite<'a> {
    slot: &'a Slot,
    ptr: NonNull<u8>,
    /// Debug builds: this thread's record of the guard (see `held`).
    #[cfg(all(debug_assertions, not(tidyheap_loom)))]
    _held: Held,
}

/// A pin on a slot: while it lives the block's address stays put (the compactor skips
/// it and it cannot be freed), but readers and writers are not excluded. Made by
/// [`HandleTable::pin`](super::HandleTable::pin) / [`try_pin`](super::HandleTable::try_pin).
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::{HandleError, HandleTable};
///
/// let table = HandleTable::new();
/// let h = table.insert(NonNull::<u64>::dangling().cast())?;
/// let pin = table.pin(h)?;
/// assert_eq!(table.try_remove(h), Err(HandleError::Busy)); // pinned blocks are not freed
/// drop(pin);
/// assert!(table.try_remove(h).is_ok());
/// # Ok::<(), HandleError>(())
/// ```
#[must_use = "the pin is released when dropped"]
pub struct SlotPin<'a> {
    slot: &'a Slot,
    ptr: NonNull<u8>,
    /// Debug builds: this thread's record of the guard (see `held`).
    #[cfg(all(debug_assertions, not(tidyheap_loom)))]
    _held: Held,
}

/// The compactor's exclusive hold on a slot for one move. Made by
/// [`HandleTable::try_lock_move`](super::HandleTable::try_lock_move), which never waits.
/// Copy the block, [`set_ptr`](Self::set_ptr) to the copy, drop: readers and writers that
/// arrived meanwhile then proceed on the new address.
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use tidyheap::HandleTable;
///
/// let table = HandleTable::new();
/// let old = Box::leak(Box::new(7u64));
/// let old = NonNull::from(&mut *old).cast::<u8>();
/// let h = table.insert(old)?;
/// let mut mv = table.try_lock_move(h.index(), old).expect("nobody holds it");
/// assert_eq!(mv.handle(), h);
/// // SAFETY: the move lock excludes every other access to the old block while we copy.
/// let new = Box::leak(Box::new(unsafe { *old.cast::<u64>().as_ptr() }));
/// // SAFETY: we hold the move lock and `new` is a complete copy that outlives the slot's use.
/// unsafe { mv.set_ptr(NonNull::from(&mut *new).cast()) };
/// drop(mv);
/// // SAFETY: nothing refers to the old block any more.
/// drop(unsafe { Box::from_raw(old.cast::<u64>().as_ptr()) });
/// let r = table.read(h)?;
/// // SAFETY: the read guard keeps the (new) block in place.
/// assert_eq!(unsafe { *r.ptr().cast::<u64>().as_ptr() }, 7);
/// # drop(r);
/// # let b = table.remove(h)?;
/// # // SAFETY: the slot is vacant; nobody refers to the block any more.
/// # drop(unsafe { Box::from_raw(b.cast::<u64>().as_ptr()) });
/// # Ok::<(), tidyheap::HandleError>(())
/// ```
#[must_use = "the move lock is released when dropped"]
pub struct SlotMove<'a> {
    slot: &'a Slot,
    ptr: NonNull<u8>,
    handle: RawHandle,
}

impl<'a> SlotRead<'a> {
    /// Wraps a read lock the caller holds on `slot`.
    ///
    /// # Safety
    ///
    /// * the caller holds a read guard on `slot` and hands it to the returned value.
    #[inline]
    pub(crate) unsafe fn new(slot: &'a Slot) -> Self {
        // SAFETY:
        // - the caller holds a read guard on `slot` (forwarded precondition).
        let ptr = unsafe { slot.locked_ptr() };
        Self {
            slot,
            ptr,
            #[cfg(all(debug_assertions, not(tidyheap_loom)))]
            _held: Held::new(slot, Kind::Read),
        }
    }

    /// The block's address, stable while the guard lives.
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The slot this guard holds.
    #[inline]
    pub fn slot(&self) -> &'a Slot {
        self.slot
    }
}

impl<'a> SlotWrite<'a> {
    /// Wraps the write lock the caller holds on `slot`.
    ///
    /// # Safety
    ///
    /// * the caller holds the write guard on `slot` and hands it to the returned value.
    #[inline]
    pub(crate) unsafe fn new(slot: &'a Slot) -> Self {
        // SAFETY:
        // - the caller holds the write guard on `slot` (forwarded precondition).
        let ptr = unsafe { slot.locked_ptr() };
        Self {
            slot,
            ptr,
            #[cfg(all(debug_assertions, not(tidyheap_loom)))]
            _held: Held::new(slot, Kind::Write),
        }
    }

    /// The block's address, stable while the guard lives (unless changed by
    /// [`set_ptr`](Self::set_ptr)).
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The slot this guard holds.
    #[inline]
    pub fn slot(&self) -> &'a Slot {
        self.slot
    }

    /// Points the slot at a new block (for example after growing it) and returns the old
    /// address, which the caller now owns.
    ///
    /// # Safety
    ///
    /// * `new` points at a live block holding the value the handle names, valid for as
    ///   long as the slot refers to it.
    #[inline]
    pub unsafe fn set_ptr(&mut self, new: NonNull<u8>) -> NonNull<u8> {
        // SAFETY:
        // - this guard holds the write lock;
        // - `new` is a valid block for the handle's value (forwarded precondition).
        unsafe { self.slot.set_ptr_locked(new) };
        core::mem::replace(&mut self.ptr, new)
    }
}

impl SlotWrite<'_> {
    /// Gives the guard up without unlocking: the caller vacated the slot with
    /// `Slot::vacate_written`, which released the write lock in the same atomic.
    #[inline]
    pub(crate) fn forget_vacated(self) {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so its debug record (the only
        // field with a destructor) is moved out and dropped exactly once here.
        #[cfg(all(debug_assertions, not(tidyheap_loom)))]
        drop(unsafe { core::ptr::read(&this._held) });
        let _ = &this;
    }
}

impl<'a> SlotPin<'a> {
    /// Wraps a pin the caller holds on `slot`.
    ///
    /// # Safety
    ///
    /// * the caller holds a pin on `slot` and hands it to the returned value.
    #[inline]
    pub(crate) unsafe fn new(slot: &'a Slot) -> Self {
        // SAFETY:
        // - the caller holds a pin on `slot` (forwarded precondition).
        let ptr = unsafe { slot.locked_ptr() };
        Self {
            slot,
            ptr,
            #[cfg(all(debug_assertions, not(tidyheap_loom)))]
            _held: Held::new(slot, Kind::Pin),
        }
    }

    /// The block's address, stable while the pin lives. A pin does not exclude readers
    /// or writers: accessing the bytes needs the caller's own synchronisation.
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The slot this pin holds.
    #[inline]
    pub fn slot(&self) -> &'a Slot {
        self.slot
    }
}

impl<'a> SlotMove<'a> {
    /// Wraps the move lock the caller holds on `slot`, which `handle` names.
    ///
    /// # Safety
    ///
    /// * the caller holds the move lock on `slot` and hands it to the returned value.
    #[inline]
    pub(crate) unsafe fn new(slot: &'a Slot, handle: RawHandle) -> Self {
        // SAFETY:
        // - the caller holds the move lock on `slot` (forwarded precondition).
        let ptr = unsafe { slot.locked_ptr() };
        Self { slot, ptr, handle }
    }

    /// The block's current address (the one expected when locking, until
    /// [`set_ptr`](Self::set_ptr)).
    #[inline]
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The handle that owns the block (the slot's index and current generation).
    #[inline]
    pub fn handle(&self) -> RawHandle {
        self.handle
    }

    /// The slot this lock holds.
    #[inline]
    pub fn slot(&self) -> &'a Slot {
        self.slot
    }

    /// Points the slot at the block's new copy; readers see it once this lock drops.
    ///
    /// # Safety
    ///
    /// * `new` points at a complete copy of the block, valid for as long as the slot
    ///   refers to it.
    #[inline]
    pub unsafe fn set_ptr(&mut self, new: NonNull<u8>) {
        // SAFETY:
        // - this guard holds the move lock;
        // - `new` is a complete copy of the block (forwarded precondition).
        unsafe { self.slot.set_ptr_locked(new) };
        self.ptr = new;
    }
}

impl Drop for SlotRead<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY:
        // - this guard holds one read lock on the slot (taken when it was made) and
        //   releases it exactly once, here.
        unsafe { self.slot.unlock_read() }
    }
}

impl Drop for SlotWrite<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY:
        // - this guard holds the write lock on the slot and releases it once, here.
        unsafe { self.slot.unlock_write() }
    }
}

impl Drop for SlotPin<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY:
        // - this guard holds one pin on the slot and releases it once, here.
        unsafe { self.slot.unpin() }
    }
}

impl Drop for SlotMove<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY:
        // - this guard holds the move lock on the slot and releases it once, here.
        unsafe { self.slot.unlock_move() }
    }
}

// SAFETY: (this comment covers all eight impls below)
// - a guard is a lock on a slot plus an address. The slot's lock word is not tied to a
//   thread, so releasing it from another thread (Send) is fine, and `&guard` only hands
//   out the address and `&Slot`, which is Sync (Sync);
// - the guards give no safe access to the bytes behind the address: every access is an
//   `unsafe` dereference whose caller takes on the synchronisation the guard documents.
unsafe impl Send for SlotRead<'_> {}
// SAFETY: see above.
unsafe impl Sync for SlotRead<'_> {}
// SAFETY: see above.
unsafe impl Send for SlotWrite<'_> {}
// SAFETY: see above.
unsafe impl Sync for SlotWrite<'_> {}
// SAFETY: see above.
unsafe impl Send for SlotPin<'_> {}
// SAFETY: see above.
unsafe impl Sync for SlotPin<'_> {}
// SAFETY: see above.
unsafe impl Send for SlotMove<'_> {}
// SAFETY: see above.
unsafe impl Sync for SlotMove<'_> {}

impl fmt::Debug for SlotRead<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotRead").field("ptr", &self.ptr).finish()
    }
}

impl fmt::Debug for SlotWrite<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotWrite").field("ptr", &self.ptr).finish()
    }
}

impl fmt::Debug for SlotPin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotPin").field("ptr", &self.ptr).finish()
    }
}

impl fmt::Debug for SlotMove<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotMove")
            .field("handle", &self.handle)
            .field("ptr", &self.ptr)
            .finish()
    }
}
