//! Typed stores: `Store<T>`, like Bevy's `Assets<T>`, but over movable memory.
//!
//! A store keeps values of one type in handle-addressed blocks of a [`Heap`], so the
//! compactor can move them while the game holds [`Handle<T>`]s. Values are read through
//! [`Ref`] (shared) and [`RefMut`] (exclusive) guards; while a guard lives its value
//! neither moves nor is freed.
//!
//! Several stores can share one heap (and its compactor and handle table). Each store's
//! slots carry the store's tag (see [`crate::movable`]), so a handle of one store never
//! resolves in another: a `Handle<T>` forged for the wrong store answers `None`.
//!
//! Values are moved by the compactor with a plain byte copy, which is how Rust moves
//! every value; stores never hand out `Pin<&mut T>`.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::handle::{Handle, RawHandle, SlotRead, SlotWrite};
use crate::heap::Heap;
use crate::movable::untag;
use crate::{AllocError, HandleError};

struct StoreInner<T> {
    heap: Arc<Heap>,
    tag: u16,
    len: AtomicUsize,
    _values: PhantomData<T>,
}

impl<T> StoreInner<T> {
    /// Takes the value of `h` out and frees its block.
    fn take(&self, h: Handle<T>, wait: bool) -> Result<T, HandleError> {
        let mut out = None;
        self.heap.free_movable(h.raw(), self.tag, wait, |block| {
            // SAFETY: the block held an initialised `T` and is now exclusively ours
            // (its slot is vacant); reading moves the value out exactly once.
            out = Some(unsafe { block.cast::<T>().read() });
        })?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Ok(out.expect("free_movable runs the hook on success"))
    }

    fn owns(&self, ptr: NonNull<u8>) -> Option<NonNull<T>> {
        let (block, tag) = untag(ptr);
        (tag == self.tag).then(|| block.cast())
    }
}

impl<T> Drop for StoreInner<T> {
    fn drop(&mut self) {
        let mine: Vec<RawHandle> = self
            .heap
            .handles()
            .iter()
            .filter(|h| {
                self.heap
                    .handles()
                    .get(*h)
                    .and_then(|s| NonNull::new(s.ptr()))
                    .is_some_and(|p| untag(p).1 == self.tag)
            })
            .collect();
        for h in mine {
            // Nobody else can reach this store any more, so no guard is held: this
            // drops each remaining value exactly once.
            if let Ok(v) = self.take(Handle::from_raw(h), true) {
                drop(v);
            }
        }
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
    /// Number of values.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
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
    /// If the OS refuses the heap's bookkeeping; see [`Store::try_new`].
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("tidyheap: cannot create a store: {e}"))
    }

    /// A store on a heap of its own, or the error.
    ///
    /// # Errors
    ///
    /// [`HandleError::Alloc`] if the heap cannot be created.
    pub fn try_new() -> Result<Self, HandleError> {
        Self::try_new_in(Arc::new(Heap::try_new()?))
    }

    /// A store sharing `heap` (and its compactor) with other stores.
    ///
    /// # Panics
    ///
    /// If the heap has served 65 535 stores already; see [`Store::try_new_in`].
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
    /// [`HandleError::Alloc`] with [`AllocError::OutOfMemory`] if the heap has no store
    /// tag left (65 535 per heap).
    pub fn try_new_in(heap: Arc<Heap>) -> Result<Self, HandleError> {
        let tag = heap.new_tag().ok_or(AllocError::OutOfMemory {
            size: 0,
            errno: libc::ENOSPC,
        })?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                heap,
                tag,
                len: AtomicUsize::new(0),
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
            Ok(h) => {
                self.inner.len.fetch_add(1, Ordering::Relaxed);
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
    /// `h` is stale or not of this store.
    pub fn get(&self, h: Handle<T>) -> Option<Ref<'_, T>> {
        let g = self.inner.heap.handles().read(h.raw()).ok()?;
        self.make_ref(g).ok()
    }

    /// Like [`Store::get`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] or [`HandleError::Busy`].
    pub fn try_get(&self, h: Handle<T>) -> Result<Ref<'_, T>, HandleError> {
        let g = self.inner.heap.handles().try_read(h.raw())?;
        self.make_ref(g)
    }

    fn make_ref<'a>(&'a self, g: SlotRead<'a>) -> Result<Ref<'a, T>, HandleError> {
        let ptr = self.inner.owns(g.ptr()).ok_or(HandleError::Stale)?;
        Ok(Ref { _guard: g, ptr })
    }

    /// An exclusive guard on the value of `h`. Do not call it while this thread holds a
    /// guard on `h` (use [`Store::try_get_mut`]).
    pub fn get_mut(&self, h: Handle<T>) -> Option<RefMut<'_, T>> {
        let g = self.inner.heap.handles().write(h.raw()).ok()?;
        self.make_mut(g).ok()
    }

    /// Like [`Store::get_mut`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] or [`HandleError::Busy`].
    pub fn try_get_mut(&self, h: Handle<T>) -> Result<RefMut<'_, T>, HandleError> {
        let g = self.inner.heap.handles().try_write(h.raw())?;
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

    /// Takes the value of `h` out, waiting for guards on it; `None` if `h` is stale
    /// (a second remove is harmless).
    pub fn remove(&self, h: Handle<T>) -> Option<T> {
        self.inner.take(h, true).ok()
    }

    /// Takes the value of `h` out without waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if a guard is held (nothing changes), or
    /// [`HandleError::Stale`].
    pub fn try_remove(&self, h: Handle<T>) -> Result<T, HandleError> {
        self.inner.take(h, false)
    }

    /// Whether `h` names a value of this store.
    pub fn contains(&self, h: Handle<T>) -> bool {
        let table = self.inner.heap.handles();
        table.contains(h.raw())
            && table
                .get(h.raw())
                .and_then(|s| NonNull::new(s.ptr()))
                .is_some_and(|p| self.inner.owns(p).is_some())
    }

    /// Every value with its handle, each behind a shared guard. Values inserted or
    /// removed during the iteration may or may not be seen.
    ///
    /// Walks the heap's whole handle table: with many stores on one heap, that is the
    /// handles of all of them.
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
        self.inner.heap.handles().iter().filter_map(move |raw| {
            let h = Handle::from_raw(raw);
            self.get(h).map(|r| (h, r))
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

/// An owning handle: removes (and drops) its value when dropped.
pub struct Owned<T: Send + Sync> {
    handle: Handle<T>,
    store: Store<T>,
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
pub struct Shared<T: Send + Sync>(Arc<Owned<T>>);

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
