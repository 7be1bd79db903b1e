//! Typed stores: `Store<T>`, like Bevy's `Assets<T>`, but over movable memory.
//!
//! A store keeps values of one type in handle-addressed blocks of a [`Heap`], so the
//! compactor can move them while the game holds [`Handle<T>`]s. Values are read through
//! [`Ref`] (shared) and [`RefMut`] (exclusive) guards; while a guard lives its value
//! neither moves nor is freed.
//!
//! Several stores can share one heap (and its compactor and handle table). Each store's
//! slots carry the store's tag (see [`crate::movable`]), unique in the process, so a
//! handle of one store never resolves in another — on the same heap or any other: a
//! `Handle<T>` of the wrong store answers `None` (DESIGN invariant 8). A process can
//! create [`MAX_STORES`] stores in all; tags are never reused, so after that
//! [`Store::try_new_in`] answers [`HandleError::StoresExhausted`] for good.
//!
//! # Waiting, and waiting for oneself
//!
//! [`Store::get`], [`Store::get_mut`] and [`Store::remove`] wait while another guard
//! on the same value conflicts with them (a writer for `get`; any guard for `get_mut`
//! and `remove`). If that guard is the calling thread's own, the wait never ends: in
//! debug builds such a call panics with a message naming the handle and the guard held;
//! in release builds it deadlocks. The `try_` forms never wait and answer
//! [`HandleError::Busy`] instead. The same holds for dropping an [`Owned`] (or the last
//! [`Shared`]) while this thread holds a guard on its value.
//!
//! # Read scopes
//!
//! [`Store::read`] opens a [`ReadScope`]: one atomic add, then every
//! [`ReadScope::get`] and [`ReadScope::iter`] item costs plain loads, no atomic
//! read-modify-write. While any scope of the store is open, its values do not move or
//! change: the compactor skips them, and `get_mut` / `remove` (and dropping an
//! [`Owned`] or the last [`Shared`]) wait for every open scope of the store — so a
//! thread must not call them while it holds a scope of the same store (debug builds
//! panic; release builds deadlock; the `try_` forms answer `Busy`), nor hold a
//! [`RefMut`] while waiting for another write or remove (a scope may be waiting for
//! that `RefMut`). See [`ReadScope`] for how Bevy's `Res` / `ResMut` map onto scopes.
//!
//! Values are moved by the compactor with a plain byte copy, which is how Rust moves
//! every value; stores never hand out `Pin<&mut T>`.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use std::sync::Arc;

use crate::HandleError;
use crate::handle::scope::{mine, scopes_of, write_scoped};
use crate::handle::{Handle, RawHandle, SlotRead, SlotWrite};
use crate::heap::Heap;
use crate::movable::{
    MAX_TAG, Tag, new_store_tag, peek_tag, skip_store_tags_to, tag_bits, untag_live_if,
};
use crate::numa::migration::{any_sampling, on_guarded_read};

#[cfg(all(test, tidyheap_loom))]
mod loom_members;
mod members;
mod owned;
mod scope;
use members::Members;
pub use owned::{Owned, Shared};
pub use scope::ReadScope;

/// The most stores one process can ever create (2^20 − 1 = 1 048 575), counting every
/// heap; see the [module docs](self).
pub const MAX_STORES: u32 = MAX_TAG;

/// Moves the process-wide store counter forward so that the next store created gets
/// identity `next` (or fails with [`HandleError::StoresExhausted`] if `next` is above
/// [`MAX_STORES`]). It never moves the counter back, so it cannot make an identity
/// repeat. For tests of exhaustion; not part of the stable API.
#[doc(hidden)]
pub fn __skip_store_ids_to(next: u32) {
    skip_store_tags_to(next);
}

struct StoreInner<T> {
    heap: Arc<Heap>,
    tag: Tag,
    /// `tag_bits(tag)`: what the tag sets in a slot pointer, for the one-compare check.
    bits: usize,
    /// The store's slots (module `members`): iteration and the length.
    members: Members,
    _values: PhantomData<T>,
}

impl<T> StoreInner<T> {
    /// Takes the value of `h` out and frees its block.
    fn take(&self, h: Handle<T>, wait: bool) -> Result<T, HandleError> {
        let mut out = None;
        self.heap
            .free_movable(h.raw(), self.tag, wait, |block, lane| {
                // The slot is vacant and not yet reusable: it leaves the list now.
                // SAFETY: `lane` is the calling thread's (`free_movable`).
                unsafe { self.members.remove(lane) };
                // SAFETY: the block held an initialised `T` and is now exclusively ours
                // (its slot is vacant); reading moves the value out exactly once.
                out = Some(unsafe { block.cast::<T>().read() });
            })?;
        Ok(out.expect("free_movable runs the hook on success"))
    }

    /// The value's address if `ptr`, the pointer of a slot this thread holds a guard
    /// on, is a block of this store.
    #[inline(always)]
    fn owns(&self, ptr: NonNull<u8>) -> Option<NonNull<T>> {
        // SAFETY: a guarded slot is occupied, so its pointer is a block address that
        // `tag_ptr` tagged (the guard keeps it from changing).
        unsafe { untag_live_if(ptr, self.bits) }.map(NonNull::cast)
    }
}

impl<T> StoreInner<T> {
    /// Whether the slot of `h` holds a block of this store, judged by a peek at its
    /// pointer without taking a guard (see `movable`): exact while `h` is current.
    fn peek_mine(&self, h: RawHandle) -> bool {
        self.heap
            .handles()
            .get(h)
            .is_some_and(|s| peek_tag(s.ptr()) == Some(self.tag))
    }

    /// The handles of the store's values, from its member list (module `members`): the
    /// members whose slot holds a value of this store, at the slot's generation.
    fn handles(&self) -> impl Iterator<Item = RawHandle> + '_ {
        let table = self.heap.handles();
        let list = self.members.snapshot(table);
        (0..list.len()).filter_map(move |i| {
            let index = list[i];
            members::live_generation(table, self.tag, index)
                .map(|generation| RawHandle::from_odd(index, generation))
        })
    }
}

/// Removes and drops the values of `rest`, one by one. Also its own `Drop`: if one
/// value's `Drop` panics, unwinding drops this guard, which goes on with the values
/// after it, so none leaks and every block goes back to the heap (DESIGN invariant 10).
/// A second panic during that unwinding aborts, as in `Vec`'s drop.
struct DropRest<'a, T> {
    inner: &'a StoreInner<T>,
    rest: std::vec::IntoIter<RawHandle>,
}

impl<T> DropRest<'_, T> {
    fn run(&mut self) {
        for h in self.rest.by_ref() {
            // `take` frees the block before the value is dropped, so a panicking `Drop`
            // cannot strand the block.
            if let Ok(v) = self.inner.take(Handle::from_raw(h), true) {
                drop(v);
            }
        }
    }
}

impl<T> Drop for DropRest<'_, T> {
    fn drop(&mut self) {
        self.run();
    }
}

impl<T> Drop for StoreInner<T> {
    fn drop(&mut self) {
        let mine: Vec<RawHandle> = self.handles().collect();
        // Nobody else can reach this store any more, so no guard on its values is held
        // (at most the compactor's move lock, briefly): this drops each remaining value
        // exactly once.
        DropRest {
            inner: self,
            rest: mine.into_iter(),
        }
        .run();
    }
}

/// A typed store of movable values. See the [module docs](self).
///
/// `Store<T>` is cheap to clone (clones share the same values) and `Send + Sync`.
///
/// # Examples
///
/// ```
/// use tidyheap::Store;
///
/// let meshes: Store<Vec<f32>> = Store::new();
/// let h = meshes.insert(vec![1.0, 2.0, 3.0]);
/// assert_eq!(meshes.get(h).unwrap()[1], 2.0);
/// meshes.get_mut(h).unwrap().push(4.0);
/// assert_eq!(meshes.remove(h), Some(vec![1.0, 2.0, 3.0, 4.0]));
/// assert!(meshes.get(h).is_none()); // stale
/// ```
pub struct Store<T> {
    inner: Arc<StoreInner<T>>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> core::fmt::Debug for Store<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Store")
            .field("type", &core::any::type_name::<T>())
            .field("len", &self.len())
            .finish()
    }
}

impl<T: Send + Sync> Default for Store<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Store<T> {
    /// Number of values. Takes the store's list lock briefly (it sums the inserts and
    /// removes counted in every thread's ring: module `members`); exact when no other
    /// thread is inserting or removing.
    pub fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// Whether the store holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + Sync> Store<T> {
    /// A store on a heap of its own.
    ///
    /// # Panics
    ///
    /// If the OS refuses the heap's bookkeeping, or the process has created
    /// [`MAX_STORES`] stores already; see [`Store::try_new`].
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("tidyheap: cannot create a store: {e}"))
    }

    /// A store on a heap of its own, or the error.
    ///
    /// # Errors
    ///
    /// [`HandleError::Alloc`] if the heap cannot be created;
    /// [`HandleError::StoresExhausted`] as for [`Store::try_new_in`].
    pub fn try_new() -> Result<Self, HandleError> {
        Self::try_new_in(Arc::new(Heap::try_new()?))
    }

    /// A store sharing `heap` (and its compactor) with other stores.
    ///
    /// # Panics
    ///
    /// If the process has created [`MAX_STORES`] stores already; see
    /// [`Store::try_new_in`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tidyheap::{Heap, Store};
    /// let heap = Arc::new(Heap::new());
    /// let names: Store<String> = Store::new_in(heap.clone());
    /// let ages: Store<u32> = Store::new_in(heap.clone());
    /// let n = names.insert("Ada".into());
    /// let a = ages.insert(36);
    /// assert_eq!(*names.get(n).unwrap(), "Ada");
    /// assert_eq!(*ages.get(a).unwrap(), 36);
    /// ```
    pub fn new_in(heap: Arc<Heap>) -> Self {
        Self::try_new_in(heap).unwrap_or_else(|e| panic!("tidyheap: cannot create a store: {e}"))
    }

    /// A store sharing `heap`, or the error.
    ///
    /// # Errors
    ///
    /// [`HandleError::StoresExhausted`] if the process has created [`MAX_STORES`] stores
    /// already (on any heaps): permanent, since store identities are never reused. A
    /// failed call uses up no identity.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tidyheap::{Heap, Store};
    /// let heap = Arc::new(Heap::new());
    /// let a: Store<u32> = Store::try_new_in(heap.clone())?;
    /// let b: Store<u32> = Store::try_new_in(heap)?;
    /// let h = a.insert(1);
    /// assert!(b.get(h).is_none()); // another store's handle
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn try_new_in(heap: Arc<Heap>) -> Result<Self, HandleError> {
        let tag = new_store_tag()?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                heap,
                tag,
                bits: tag_bits(tag),
                members: Members::new(tag),
                _values: PhantomData,
            }),
        })
    }

    /// The heap the values live in (compact it to defragment them).
    pub fn heap(&self) -> &Arc<Heap> {
        &self.inner.heap
    }

    /// Moves `value` into the store.
    ///
    /// # Panics
    ///
    /// If memory runs out; see [`Store::try_insert`].
    pub fn insert(&self, value: T) -> Handle<T> {
        match self.try_insert(value) {
            Ok(h) => h,
            Err((_, e)) => panic!("tidyheap: Store::insert failed: {e}"),
        }
    }

    /// Moves `value` into the store, or gives it back with the error.
    ///
    /// # Errors
    ///
    /// The value and [`HandleError::Alloc`] if memory runs out.
    pub fn try_insert(&self, value: T) -> Result<Handle<T>, (T, HandleError)> {
        let value = core::cell::Cell::new(Some(value));
        let r = self.inner.heap.alloc_movable(
            Layout::new::<T>(),
            self.inner.tag,
            |block| {
                let v = value.take().expect("init runs once");
                // SAFETY: the fresh block is valid and aligned for a `T` (its class
                // honours `align_of::<T>()`).
                unsafe { block.cast::<T>().write(v) };
            },
            // SAFETY: `undo` runs only after `init` wrote the value, on a block nobody
            // else can reach; reading moves the value back out exactly once.
            |block| value.set(Some(unsafe { block.cast::<T>().read() })),
        );
        match r {
            Ok((h, lane)) => {
                // SAFETY: `lane` is the calling thread's (`alloc_movable`).
                unsafe {
                    self.inner
                        .members
                        .add(self.inner.heap.handles(), lane, h.index())
                };
                Ok(Handle::from_raw(h))
            }
            Err(e) => Err((
                value
                    .take()
                    .expect("the value is back: never taken, or returned by undo"),
                e,
            )),
        }
    }

    /// A shared guard on the value of `h`, waiting while a writer holds it; `None` if
    /// `h` is stale or not of this store (a handle of another store is refused without
    /// waiting for its guards).
    ///
    /// Do not call it while this thread holds a [`RefMut`] of `h`: it would wait for
    /// itself (see the [module docs](self#waiting-and-waiting-for-oneself));
    /// [`Store::try_get`] answers `Busy` there.
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a [`RefMut`] of `h` (in release builds it
    /// deadlocks).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(7u8);
    /// let a = s.get(h).unwrap();
    /// let b = s.get(h).unwrap(); // read guards nest
    /// assert_eq!(*a + *b, 14);
    /// ```
    pub fn get(&self, h: Handle<T>) -> Option<Ref<'_, T>> {
        // NUMA: the reader sample hook (`numa::migration`), tested first so that a get
        // with no sampling heap keeps nothing live for it.
        if any_sampling() {
            return self.get_sampled(h);
        }
        self.get_unsampled(h)
    }

    /// [`Store::get`] while some heap samples reads: the get, then the sample hook.
    #[inline(never)]
    fn get_sampled(&self, h: Handle<T>) -> Option<Ref<'_, T>> {
        let r = self.get_unsampled(h)?;
        on_guarded_read(&self.inner.heap, h.raw(), r.ptr.cast());
        Some(r)
    }

    #[inline(always)]
    fn get_unsampled(&self, h: Handle<T>) -> Option<Ref<'_, T>> {
        let table = self.inner.heap.handles();
        let g = match table.try_read(h.raw()) {
            Ok(g) => g,
            Err(HandleError::Busy) if self.inner.peek_mine(h.raw()) => table.read(h.raw()).ok()?,
            Err(_) => return None,
        };
        self.make_ref(g).ok()
    }

    /// Like [`Store::get`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`], or [`HandleError::Busy`] if a writer holds the value
    /// (this thread's [`RefMut`] included).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::HandleError;
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(1u32);
    /// let w = s.get_mut(h).unwrap();
    /// assert_eq!(s.try_get(h).unwrap_err(), HandleError::Busy);
    /// drop(w);
    /// assert_eq!(*s.try_get(h)?, 1);
    /// # Ok::<(), HandleError>(())
    /// ```
    pub fn try_get(&self, h: Handle<T>) -> Result<Ref<'_, T>, HandleError> {
        // NUMA: the reader sample hook (`numa::migration`), as in `get`.
        if any_sampling() {
            return self.try_get_sampled(h);
        }
        self.make_ref(self.inner.heap.handles().try_read(h.raw())?)
    }

    /// [`Store::try_get`] while some heap samples reads: the get, then the sample hook.
    #[inline(never)]
    fn try_get_sampled(&self, h: Handle<T>) -> Result<Ref<'_, T>, HandleError> {
        let r = self.make_ref(self.inner.heap.handles().try_read(h.raw())?)?;
        on_guarded_read(&self.inner.heap, h.raw(), r.ptr.cast());
        Ok(r)
    }

    fn make_ref<'a>(&'a self, g: SlotRead<'a>) -> Result<Ref<'a, T>, HandleError> {
        let ptr = self.inner.owns(g.ptr()).ok_or(HandleError::Stale)?;
        Ok(Ref { _guard: g, ptr })
    }

    /// An exclusive guard on the value of `h`, waiting while any other guard holds it;
    /// `None` if `h` is stale or not of this store.
    ///
    /// Do not call it while this thread holds a [`Ref`] or [`RefMut`] of `h`: it would
    /// wait for itself; [`Store::try_get_mut`] answers `Busy` there.
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a [`Ref`] or [`RefMut`] of `h` (in release
    /// builds it deadlocks).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(String::from("a"));
    /// s.get_mut(h).unwrap().push('b');
    /// assert_eq!(*s.get(h).unwrap(), "ab");
    /// ```
    pub fn get_mut(&self, h: Handle<T>) -> Option<RefMut<'_, T>> {
        let g = match self.write_guard(h, false) {
            Ok(g) => g,
            Err(HandleError::Busy) if self.inner.peek_mine(h.raw()) => {
                self.write_guard(h, true).ok()?
            }
            Err(_) => return None,
        };
        self.make_mut(g).ok()
    }

    /// The write guard of `h` once no read scope of this store is open (module
    /// `handle::scope`), waiting for guards and scopes if `wait`.
    fn write_guard(&self, h: Handle<T>, wait: bool) -> Result<SlotWrite<'_>, HandleError> {
        let tag = self.inner.tag;
        write_scoped(
            self.inner.heap.handles(),
            scopes_of(tag),
            h.raw(),
            wait,
            || mine::check(tag, &|| format!("Store::get_mut({h:?})")),
        )
    }

    /// Like [`Store::get_mut`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`], or [`HandleError::Busy`] if any guard holds the value
    /// (this thread's included).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::HandleError;
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(1u32);
    /// let r = s.get(h).unwrap();
    /// assert_eq!(s.try_get_mut(h).unwrap_err(), HandleError::Busy); // no upgrade
    /// drop(r);
    /// *s.try_get_mut(h)? += 1;
    /// # Ok::<(), HandleError>(())
    /// ```
    pub fn try_get_mut(&self, h: Handle<T>) -> Result<RefMut<'_, T>, HandleError> {
        let g = self.write_guard(h, false)?;
        self.make_mut(g)
    }

    fn make_mut<'a>(&'a self, g: SlotWrite<'a>) -> Result<RefMut<'a, T>, HandleError> {
        let ptr = self.inner.owns(g.ptr()).ok_or(HandleError::Stale)?;
        Ok(RefMut {
            _guard: g,
            ptr,
            _mut: PhantomData,
        })
    }

    /// Takes the value of `h` out, waiting for guards on it; `None` if `h` is stale or
    /// not of this store (a second remove is harmless).
    ///
    /// Do not call it while this thread holds a [`Ref`] or [`RefMut`] of `h`: it would
    /// wait for itself; [`Store::try_remove`] answers `Busy` there.
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a [`Ref`] or [`RefMut`] of `h` (in release
    /// builds it deadlocks).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(vec![1u8]);
    /// assert_eq!(s.remove(h), Some(vec![1]));
    /// assert_eq!(s.remove(h), None);
    /// ```
    pub fn remove(&self, h: Handle<T>) -> Option<T> {
        self.inner.take(h, true).ok()
    }

    /// Takes the value of `h` out without waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if a guard is held, this thread's included (nothing
    /// changes), or [`HandleError::Stale`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::HandleError;
    /// let s = tidyheap::Store::new();
    /// let h = s.insert(3u64);
    /// let r = s.get(h).unwrap();
    /// assert_eq!(s.try_remove(h).unwrap_err(), HandleError::Busy);
    /// drop(r);
    /// assert_eq!(s.try_remove(h)?, 3);
    /// # Ok::<(), HandleError>(())
    /// ```
    pub fn try_remove(&self, h: Handle<T>) -> Result<T, HandleError> {
        self.inner.take(h, false)
    }

    /// Whether `h` names a value of this store.
    pub fn contains(&self, h: Handle<T>) -> bool {
        // Tag first, generation second: if the generation still matches afterwards, the
        // peeked pointer was `h`'s own.
        self.inner.peek_mine(h.raw()) && self.inner.heap.handles().contains(h.raw())
    }

    /// Every value with its handle, each behind a shared guard. Values inserted or
    /// removed during the iteration may or may not be seen.
    ///
    /// Visits this store's values only (from a copy of the store's own list of slots),
    /// never other stores' handles on the same heap, and never waits for (or blocks)
    /// another store's guards. It does wait, like [`Store::get`], while another thread
    /// writes one of this store's values.
    ///
    /// # Panics
    ///
    /// In debug builds, if it reaches a value of which this thread holds a [`RefMut`]
    /// (in release builds it deadlocks there): drop write guards before iterating.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// for i in 0..3u32 { s.insert(i); }
    /// let mut all: Vec<u32> = s.iter().map(|(_, v)| *v).collect();
    /// all.sort();
    /// assert_eq!(all, [0, 1, 2]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Handle<T>, Ref<'_, T>)> + '_ {
        let table = self.inner.heap.handles();
        self.inner.handles().filter_map(move |raw| {
            if !self.inner.peek_mine(raw) {
                return None;
            }
            let h = Handle::from_raw(raw);
            // A slot freed and reused since the peek has another generation: `read`
            // answers `Stale` at once instead of waiting.
            let g = table.read(raw).ok()?;
            self.make_ref(g).ok().map(|r| (h, r))
        })
    }

    /// Moves `value` in and returns an owning handle that removes it when dropped.
    ///
    /// # Panics
    ///
    /// If memory runs out.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let owned = s.insert_owned(5u8);
    /// assert_eq!(*s.get(owned.handle()).unwrap(), 5);
    /// let h = owned.handle();
    /// drop(owned);
    /// assert!(!s.contains(h));
    /// ```
    pub fn insert_owned(&self, value: T) -> Owned<T> {
        Owned {
            handle: self.insert(value),
            store: self.clone(),
        }
    }

    /// Moves `value` in and returns a reference-counted handle: clones share the value,
    /// the last drop removes it (like Bevy's strong handles).
    ///
    /// # Panics
    ///
    /// If memory runs out.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = tidyheap::Store::new();
    /// let a = s.insert_shared(String::from("texture"));
    /// let b = a.clone();
    /// drop(a);
    /// assert_eq!(*s.get(b.handle()).unwrap(), "texture");
    /// let h = b.handle();
    /// drop(b);
    /// assert!(!s.contains(h));
    /// ```
    pub fn insert_shared(&self, value: T) -> Shared<T> {
        Shared(Arc::new(self.insert_owned(value)))
    }
}

/// A shared guard on a store value.
#[must_use = "the guard releases the value when dropped"]
pub struct Ref<'a, T> {
    _guard: SlotRead<'a>,
    ptr: NonNull<T>,
}

// SAFETY: a `Ref` gives `&T` only; the slot lock it holds is a plain atomic that any
// thread may release.
unsafe impl<T: Sync> Send for Ref<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Ref<'_, T> {}

impl<T> Deref for Ref<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the read guard keeps the initialised value in place and writers out.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for Ref<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

/// An exclusive guard on a store value.
#[must_use = "the guard releases the value when dropped"]
pub struct RefMut<'a, T> {
    _guard: SlotWrite<'a>,
    ptr: NonNull<T>,
    _mut: PhantomData<&'a mut T>,
}

// SAFETY: a `RefMut` is an exclusive borrow of the value; the slot lock it holds is a
// plain atomic that any thread may release.
unsafe impl<T: Send> Send for RefMut<'_, T> {}
// SAFETY: sharing `&RefMut` only gives `&T`.
unsafe impl<T: Sync> Sync for RefMut<'_, T> {}

impl<T> Deref for RefMut<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write guard gives exclusive access to the initialised value.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for RefMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; `&mut self` makes this the only view.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for RefMut<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}
