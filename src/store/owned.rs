//! Handles that own their value: [`Owned`] removes it when dropped, [`Shared`] when the
//! last clone is dropped.

use std::sync::Arc;

use super::Store;
#[cfg(doc)]
use super::{Ref, RefMut};
use crate::handle::Handle;

/// An owning handle: removes (and drops) its value when dropped.
///
/// Dropping it waits, like [`Store::remove`], for guards on the value: do not drop it
/// while this thread holds a [`Ref`] or [`RefMut`] of its value (taken through another
/// clone of the store), since that would wait for itself.
///
/// # Panics
///
/// Dropping it panics in debug builds if this thread holds a guard on its value (in
/// release builds it deadlocks); a panic of the value's own `Drop` propagates.
///
/// # Examples
///
/// ```
/// let s = tidyheap::Store::new();
/// let owned = s.insert_owned(1u8);
/// let h = owned.handle();
/// {
///     let r = s.get(h).unwrap();
///     assert_eq!(*r, 1);
/// } // the guard is gone before the owner drops
/// drop(owned);
/// assert!(!s.contains(h));
/// ```
pub struct Owned<T: Send + Sync> {
    pub(super) handle: Handle<T>,
    pub(super) store: Store<T>,
}

impl<T: Send + Sync> Owned<T> {
    /// The plain handle (valid while this `Owned` lives).
    pub fn handle(&self) -> Handle<T> {
        self.handle
    }

    /// The store the value lives in.
    pub fn store(&self) -> &Store<T> {
        &self.store
    }

    /// Gives up ownership without removing the value; returns the plain handle.
    pub fn into_handle(self) -> Handle<T> {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so moving its store out (and
        // dropping it here) releases that field exactly once, and `Owned::drop` never
        // runs.
        drop(unsafe { core::ptr::read(&this.store) });
        this.handle
    }
}

impl<T: Send + Sync> Drop for Owned<T> {
    fn drop(&mut self) {
        drop(self.store.remove(self.handle));
    }
}

impl<T: Send + Sync> core::fmt::Debug for Owned<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Owned").field(&self.handle).finish()
    }
}

/// A reference-counted handle: clones share the value; the last drop removes it.
///
/// The last drop behaves as dropping an [`Owned`]: it panics in debug builds (and
/// deadlocks in release builds) if this thread holds a guard on the value.
///
/// # Examples
///
/// ```
/// let s = tidyheap::Store::new();
/// let a = s.insert_shared(5u16);
/// let b = a.clone();
/// assert_eq!(b.strong_count(), 2);
/// drop(a);
/// assert_eq!(*s.get(b.handle()).unwrap(), 5);
/// ```
pub struct Shared<T: Send + Sync>(pub(super) Arc<Owned<T>>);

impl<T: Send + Sync> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Send + Sync> Shared<T> {
    /// The plain handle (valid while a `Shared` clone lives).
    pub fn handle(&self) -> Handle<T> {
        self.0.handle
    }

    /// How many `Shared` clones exist.
    pub fn strong_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl<T: Send + Sync> core::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Shared").field(&self.0.handle).finish()
    }
}
