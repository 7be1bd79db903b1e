//! The byte guards of raw movable blocks: [`ReadGuard`], [`WriteGuard`], [`PinGuard`].

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::handle::{SlotPin, SlotRead, SlotWrite};

fn fmt_guard(
    f: &mut core::fmt::Formatter<'_>,
    name: &str,
    ptr: NonNull<u8>,
    len: usize,
) -> core::fmt::Result {
    f.debug_struct(name)
        .field("ptr", &ptr)
        .field("len", &len)
        .finish()
}

/// Shared access to a movable block's bytes; the block neither moves nor is freed
/// while the guard lives.
#[must_use = "the guard releases the block when dropped"]
pub struct ReadGuard<'a> {
    pub(super) _guard: SlotRead<'a>,
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the read guard keeps the block in place and writers out; the block's
        // first `len` bytes were initialised when it was allocated.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl core::fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fmt_guard(f, "ReadGuard", self.ptr, self.len)
    }
}

/// Exclusive access to a movable block's bytes.
#[must_use = "the guard releases the block when dropped"]
pub struct WriteGuard<'a> {
    pub(super) _guard: SlotWrite<'a>,
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl Deref for WriteGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the write guard gives exclusive access; `len` bytes are initialised.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only view.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl core::fmt::Debug for WriteGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fmt_guard(f, "WriteGuard", self.ptr, self.len)
    }
}

/// A pin on a movable block: its address is stable while the pin lives. Accessing the
/// bytes through [`PinGuard::as_ptr`] is `unsafe` and must be synchronised with any
/// readers and writers by the caller.
#[must_use = "the pin is released when dropped"]
pub struct PinGuard<'a> {
    pub(super) _guard: SlotPin<'a>,
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl PinGuard<'_> {
    /// The block's address, stable while the pin lives.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The block's requested length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block is zero-sized.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl core::fmt::Debug for PinGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        fmt_guard(f, "PinGuard", self.ptr, self.len)
    }
}
