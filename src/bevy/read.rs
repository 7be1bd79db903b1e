//! The plugin's read path: every read of a [`HeapAssets`](super::HeapAssets) value goes
//! through this file.
//!
//! [`HeapReader`] is a read view of one store, taken once per system (or loop) with
//! [`HeapAssets::read`](super::HeapAssets::read): one read scope of the store
//! ([`Store::read`]: one reader registration when it opens, then plain loads per get, no
//! atomic read-modify-write). [`AssetRef`] is what a get returns: a plain `&T` from a
//! reader, or the value's slot read guard for a one-off
//! [`HeapAssets::get`](super::HeapAssets::get), which takes and releases the guard (two
//! atomic read-modify-writes).

use core::ops::Deref;

use super::assets::AssetId;
use crate::{Handle, ReadScope, Ref, Store};

/// A read view of a [`HeapAssets`](super::HeapAssets) store: one read scope
/// ([`ReadScope`]), so each get is plain loads. `Sync`: share it with `par_iter` bodies.
/// While it lives, the values it can see neither move nor change; drop it before the
/// same thread writes or removes values of the store (that waits for every scope).
///
/// # How `Res` and `ResMut` map onto it
///
/// `Res<HeapAssets<T>>` is shared access: readers in parallel systems, each through a
/// `HeapReader` (one scope per system run). `ResMut<HeapAssets<T>>` is
/// exclusive access: the scheduler runs no reader of the resource meanwhile, so inserts,
/// writes and removes never wait for a reader of the app (they can still meet the
/// compactor, which holds a block for one copy at most, and readers outside the app that
/// hold a clone of the [`Store`]).
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u32>();
/// let h = app.world_mut().resource_mut::<HeapAssets<u32>>().add(5);
/// let assets = app.world().resource::<HeapAssets<u32>>();
/// let reader = assets.read();
/// assert_eq!(*reader.get(&h).unwrap(), 5);
/// ```
pub struct HeapReader<'a, T> {
    scope: ReadScope<'a, T>,
    /// The store's identity, checked against owning handles.
    key: usize,
}

impl<'a, T: Send + Sync> HeapReader<'a, T> {
    pub(super) fn new(store: &'a Store<T>, key: usize) -> Self {
        Self {
            scope: store.read(),
            key,
        }
    }

    /// The value of `id`, or `None` if it was removed (or belongs to another store).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u32>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u32>>();
    /// let h = assets.add(7);
    /// let id = h.id();
    /// assert_eq!(*assets.read().get(id).unwrap(), 7);
    /// assets.remove(id);
    /// assert!(assets.read().get(id).is_none());
    /// ```
    pub fn get(&self, id: impl AssetId<T>) -> Option<AssetRef<'_, T>> {
        let value = self.scope.get(mine(self.key, id.parts())?)?;
        Some(AssetRef(Held::Scoped(value)))
    }

    /// Every value with its id. Values added or removed meanwhile may or may not be
    /// seen (they cannot be, through `Res`, since adding and removing need `ResMut`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u32>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u32>>();
    /// let owners: Vec<_> = (1..=3).map(|v| assets.add(v)).collect();
    /// let total: u32 = assets.read().iter().map(|(_, v)| *v).sum();
    /// assert_eq!(total, 6);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (Handle<T>, AssetRef<'_, T>)> + '_ {
        self.scope
            .iter()
            .map(|(h, value)| (h, AssetRef(Held::Scoped(value))))
    }
}

/// One read outside a [`HeapReader`] (what `HeapAssets::get` does).
pub(super) fn get_one<T: Send + Sync>(
    store: &Store<T>,
    key: usize,
    parts: (Handle<T>, Option<usize>),
) -> Option<AssetRef<'_, T>> {
    store
        .get(mine(key, parts)?)
        .map(|r| AssetRef(Held::Guard(r)))
}

/// The plain id, unless it comes from an owning handle of another store (`key`).
pub(super) fn mine<T>(key: usize, (id, owner): (Handle<T>, Option<usize>)) -> Option<Handle<T>> {
    match owner {
        Some(k) if k != key => None,
        _ => Some(id),
    }
}

/// A value read from a [`HeapAssets`](super::HeapAssets) store; dereferences to `&T`.
/// While it lives the value neither moves nor changes.
pub struct AssetRef<'a, T>(Held<'a, T>);

/// What keeps an [`AssetRef`]'s value in place: the reader's scope, or a guard.
enum Held<'a, T> {
    Scoped(&'a T),
    Guard(Ref<'a, T>),
}

impl<T> Deref for AssetRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            Held::Scoped(value) => value,
            Held::Guard(r) => r,
        }
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for AssetRef<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}
