//! Read scopes over a store: [`Store::read`] and [`ReadScope`].
//!
//! A scope is taken once (one atomic add on the store's scope word) and then resolves
//! any number of handles with plain loads: the slot lookup, a generation check on the
//! slot's state word, one load of the address and the tag check. While it is open, no
//! value of the store moves, changes or is freed: the compactor skips the store's blocks,
//! and `get_mut` / `remove` wait for the scope to close (their `try_` forms answer
//! `Busy`). The protocol and its proof are in the `handle::scope` module docs; the loom
//! models in `handle/loom_scope.rs` check it.
//!
//! The Bevy mapping is on [`ReadScope`].

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::members::Member;
use super::{Store, StoreInner};
use crate::HandleError;
use crate::handle::scope::{Scopes, mine, scoped_get, scopes_of, try_scoped_get};
use crate::handle::{Handle, HandleTable, RawHandle, Slot};
use crate::movable::untag_live_if;
use crate::numa::scoped::{resolve_sampled, scope_tag};

/// An open read scope of a [`Store`]: resolves handles to `&T` with no atomic
/// read-modify-write per get. Made by [`Store::read`]; closes when dropped.
///
/// While it lives, the store's values neither move nor change nor are freed: the
/// compactor skips them, and [`Store::get_mut`] / [`Store::remove`] (and dropping an
/// [`Owned`](super::Owned)) wait for it to close. Inserting does not wait.
///
/// A scope is tied to the thread that opened it (it is not `Send`); `&ReadScope` may be
/// shared with other threads when `T: Sync`.
///
/// # Bevy: `Res` and `ResMut`
///
/// A store kept as a resource maps onto scopes like this:
///
/// * `Res<Store<T>>` — a system that reads many values opens one scope at its start:
///   `let meshes = meshes.read();` and then `meshes.get(h)` per entity (or
///   `meshes.iter()`). The scope lives for the system's run, which is exactly when the
///   system holds `&Store<T>`; systems that read the same store in parallel each open
///   their own scope (scopes nest and overlap freely).
/// * `ResMut<Store<T>>` — a system that writes uses `get_mut` per value (one guard
///   each), or `insert` / `remove`. Those wait for every open scope of the store, so a
///   writing system must not hold a scope of the same store while it writes: close it
///   first (debug builds panic if a thread would wait for its own scope). With Bevy's
///   scheduler a `ResMut` system never runs beside a `Res` system of the same resource,
///   so its writes never wait for another system's scope.
/// * The compactor (e.g. in a `Last` system or on a background thread) skips the store
///   while any scope is open and catches up once they close: keep scopes within one
///   system's run, never across frames.
///
/// # Examples
///
/// ```
/// let s = tidyheap::Store::new();
/// let hs: Vec<_> = (0..4u64).map(|i| s.insert(i * 10)).collect();
/// let view = s.read();
/// let sum: u64 = hs.iter().map(|&h| *view.get(h).unwrap()).sum();
/// assert_eq!(sum, 60);
/// drop(view); // close it before writing
/// *s.get_mut(hs[0]).unwrap() += 1;
/// ```
#[must_use = "the scope closes when dropped"]
pub struct ReadScope<'a, T> {
    inner: &'a StoreInner<T>,
    table: &'a HandleTable,
    scopes: &'static Scopes,
    /// The tag bits gets compare a slot pointer with (`movable::tag_bits`): the store's,
    /// or, in a scope that samples its reads for NUMA migration (`numa::scoped`),
    /// [`NO_STORE`], which no pointer carries.
    bits: usize,
    /// Not `Send`: the thread's record of its open scopes must see the close.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: sharing `&ReadScope` gives other threads `&T`s of values that stay put and
// unchanged while the scope lives (the scope protocol), which `T: Sync` allows; the
// scope itself is only closed by its owner's drop.
unsafe impl<T: Sync> Sync for ReadScope<'_, T> {}

impl<T> Store<T> {
    /// Opens a read scope: after one atomic add here, every [`ReadScope::get`] is plain
    /// loads. See [`ReadScope`].
    ///
    /// Waits, if a `get_mut` or `remove` of this store is waiting for scopes to close
    /// and this thread holds no other scope, until that writer is through (so writers
    /// are not starved).
    ///
    /// On a heap with more than one node and NUMA migration on, about one scope in
    /// [`sample_period`](crate::numa::NumaMigration::sample_period) samples its reads
    /// for migration: its gets take an out-of-line path (module `numa::scoped`).
    ///
    /// Do not call [`Store::get_mut`] or [`Store::remove`] of this store while the
    /// scope is open on this thread: they wait for every scope to close, the thread's own
    /// included (debug builds panic; the `try_` forms answer `Busy`).
    ///
    /// # Panics
    ///
    /// If 2^32 − 1 scopes of the store are open at once.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(String::from("mesh"));
    /// let view = s.read();
    /// assert_eq!(view.get(h).map(String::as_str), Some("mesh"));
    /// assert!(s.try_get_mut(h).is_err()); // Busy while a scope is open
    /// ```
    pub fn read(&self) -> ReadScope<'_, T> {
        let inner = &*self.inner;
        let scopes = scopes_of(inner.tag);
        let nested = mine::enter(inner.tag);
        scopes.open(nested);
        ReadScope {
            inner,
            table: inner.heap.handles(),
            scopes,
            bits: if scope_tag(&inner.heap, inner.tag) == inner.tag {
                inner.bits
            } else {
                NO_STORE
            },
            _not_send: PhantomData,
        }
    }
}

impl<'a, T> ReadScope<'a, T> {
    /// The value of `h`; `None` if `h` is stale or not of this store.
    ///
    /// No read-modify-write: a slot lookup, one load of its state, one of its address.
    /// Waits only if a writer took the value before this scope opened (until it drops
    /// its guard) or the compactor is copying it right now.
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a [`RefMut`](super::RefMut) of `h` (it
    /// would wait for itself; release builds deadlock). [`ReadScope::try_get`] answers
    /// `Busy` there.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(3u32);
    /// let view = s.read();
    /// assert_eq!(view.get(h), Some(&3));
    /// ```
    #[inline]
    pub fn get(&self, h: Handle<T>) -> Option<&T> {
        let p = match try_scoped_get(self.table, h.raw()) {
            Ok(p) => p,
            // Wait only for a value of this store (another store's guards are not ours
            // to wait for): exact while `h` is current.
            Err(HandleError::Busy) if self.inner.peek_mine(h.raw()) => {
                scoped_get(self.table, h.raw()).ok()?
            }
            Err(_) => return None,
        };
        // SAFETY: the scope keeps the value in place, initialised and unwritten for
        // as long as `&self` lives (module `handle::scope`); `resolve` checked the tag.
        self.resolve(h.raw(), p).map(|p| unsafe { p.as_ref() })
    }

    /// Like [`ReadScope::get`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is stale or not of this store;
    /// [`HandleError::Busy`] if a writer or the compactor holds the value right now.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(1u8);
    /// let view = s.read();
    /// assert_eq!(view.try_get(h), Ok(&1));
    /// ```
    #[inline]
    pub fn try_get(&self, h: Handle<T>) -> Result<&T, HandleError> {
        let p = try_scoped_get(self.table, h.raw())?;
        // SAFETY: as in `get`.
        self.resolve(h.raw(), p)
            .map(|p| unsafe { p.as_ref() })
            .ok_or(HandleError::Stale)
    }

    /// The value's address if `p`, the slot pointer of `h` loaded in this scope, holds a
    /// value of this store. A sampling scope's tag matches no address, so its gets take
    /// the cold path, which checks the store's tag and samples (`numa::scoped`).
    #[inline(always)]
    fn resolve(&self, h: RawHandle, p: NonNull<u8>) -> Option<NonNull<T>> {
        // SAFETY: `p` was read from an occupied slot inside this scope (`scoped_get`), so
        // it is the tagged address of a block (module `handle::scope`).
        match unsafe { untag_live_if(p, self.bits) } {
            Some(block) => Some(block.cast()),
            None => self.resolve_miss(h, p),
        }
    }

    /// [`ReadScope::resolve`] when the fast compare failed: a value of another store, or
    /// any value in a sampling scope.
    #[inline(never)]
    fn resolve_miss(&self, h: RawHandle, p: NonNull<u8>) -> Option<NonNull<T>> {
        // SAFETY: `p` is the slot pointer of `h` loaded inside this scope of the store
        // (tag `inner.tag`, on `inner.heap`), which is open while `&self` lives.
        unsafe { resolve_sampled(&self.inner.heap, self.inner.tag, h, p) }.map(NonNull::cast)
    }

    /// Whether `h` names a value of this store.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(1u8);
    /// assert!(s.read().contains(h));
    /// ```
    pub fn contains(&self, h: Handle<T>) -> bool {
        self.get(h).is_some()
    }

    /// Every value of the store with its handle, with no atomic read-modify-write per
    /// item. Visits this store's slots only (a copy of its list, taken when the
    /// iteration starts), never other stores' handles on the same heap. Values inserted
    /// during the iteration may or may not be seen.
    ///
    /// # Panics
    ///
    /// In debug builds, if it reaches a value of which this thread holds a
    /// [`RefMut`](super::RefMut) (release builds deadlock there).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// for i in 0..3u32 { s.insert(i); }
    /// let view = s.read();
    /// let mut all: Vec<u32> = view.iter().map(|(_, v)| *v).collect();
    /// all.sort();
    /// assert_eq!(all, [0, 1, 2]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Handle<T>, &T)> + '_ {
        ScopedIter {
            scope: self,
            list: self.inner.members.snapshot(self.table),
            at: 0,
            start: 0,
            slots: &[],
            bits: self.bits,
        }
    }

    /// Number of values in the store.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// s.insert(1u8);
    /// assert_eq!(s.read().len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// Whether the store holds no value.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::<u8>::new();
    /// assert!(s.read().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The iterator of [`ReadScope::iter`]: the store's list, copied when it starts, resolved
/// one index at a time with plain loads (its state, its address, the tag). The handle
/// table's segment of the last index is kept, so nearby indexes (the common case: a
/// store's slots are handed out in runs) skip the segment lookup.
struct ScopedIter<'s, 'a, T> {
    scope: &'s ReadScope<'a, T>,
    /// The members (live and dead: `item` checks each slot), shared with the store's
    /// list (module `members`).
    list: std::sync::Arc<Vec<Member>>,
    /// Position of the next index in `list`.
    at: usize,
    /// First index of `slots`.
    start: u32,
    /// The segment of the last index looked up (empty before the first).
    slots: &'s [Slot],
    /// The scope's tag bits ([`ReadScope`]'s `bits`).
    bits: usize,
}

/// Tag bits no slot pointer carries (its address bits are all set), for a sampling
/// scope: every get misses the one-compare check and takes `ReadScope::resolve_miss`.
const NO_STORE: usize = usize::MAX;

impl<'s, T> ScopedIter<'s, '_, T> {
    /// The slot of `index`, from the kept segment if it holds it.
    #[inline(always)]
    fn slot(&mut self, index: u32) -> Option<&'s Slot> {
        if let Some(slot) = self.slots.get(index.wrapping_sub(self.start) as usize) {
            return Some(slot);
        }
        let (start, slots) = self.scope.table.segment_of(index)?;
        (self.start, self.slots) = (start, slots);
        slots.get((index - start) as usize)
    }

    /// The item of member `index`, if its slot holds a value of this store (the member
    /// is live).
    #[inline(always)]
    fn item(&mut self, index: Member) -> Option<(Handle<T>, &'s T)> {
        let slot = self.slot(index)?;
        match slot.scoped_entry() {
            Ok((generation, p)) => {
                let raw = RawHandle::from_odd(index, generation);
                // SAFETY: `p` was read from an occupied slot inside the scope
                // (`scoped_entry`): the tagged address of a block.
                let p = match unsafe { untag_live_if(p, self.bits) } {
                    Some(p) => p.cast::<T>(),
                    // Another store's value (the slot was reused), or a sampling scope.
                    None => self.scope.resolve_miss(raw, p)?,
                };
                // SAFETY: as in `ReadScope::get`: the scope keeps the value in place and
                // unwritten for as long as `'s`; the tag was checked above.
                Some((Handle::from_raw(raw), unsafe { p.as_ref() }))
            }
            Err(Some(generation)) => self.busy(index, generation),
            Err(None) => None,
        }
    }

    /// A writer or the compactor holds listed slot `index`: wait as `get` does (only
    /// for a value of this store).
    #[cold]
    #[inline(never)]
    fn busy(&self, index: u32, generation: u32) -> Option<(Handle<T>, &'s T)> {
        let h = Handle::from_raw(RawHandle::from_odd(index, generation));
        self.scope.get(h).map(|v| (h, v))
    }
}

impl<'s, T> Iterator for ScopedIter<'s, '_, T> {
    type Item = (Handle<T>, &'s T);

    /// Inlined into the caller's loop (also across crates: a call per item costs more
    /// than the item).
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        while let Some(&member) = self.list.get(self.at) {
            self.at += 1;
            if let Some(item) = self.item(member) {
                return Some(item);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.list.len() - self.at))
    }
}

impl<T> Drop for ReadScope<'_, T> {
    fn drop(&mut self) {
        self.scopes.close();
        mine::leave(self.inner.tag);
    }
}

impl<T> core::fmt::Debug for ReadScope<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReadScope")
            .field("type", &core::any::type_name::<T>())
            .finish()
    }
}
