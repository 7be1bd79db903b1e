//! The plugin's read path: every read of a [`HeapAssets`](super::HeapAssets) value goes
//! through this file.
//!
//! [`HeapReader`] is a read view of one store, taken once per system (or loop) with
//! [`HeapAssets::read`](super::HeapAssets::read); [`AssetRef`] is what a get returns.
//! Today a get takes the value's slot read guard ([`Store::get`]): one atomic
//! read-modify-write to take it and one to release it. When the store gains scoped reads
//! (`store.read()`: one reader registration per scope, then plain loads per get), only
//! this file changes: `HeapReader` holds the scope and `AssetRef` becomes a plain `&T`;
//! the types' names, lifetimes and methods stay as they are.

use core::ops::Deref;

use super::assets::AssetId;
use crate::{Handle, Ref, Store};

/// A read view of a [`HeapAssets`](super::HeapAssets) store. `Sync`: share it with
/// `par_iter` bodies.
///
/// Today each get takes the value's slot read guard (an atomic read-modify-write to take
/// it and one to release it). Once the store has scoped reads, a `HeapReader` will be one
/// read scope (one registration per system run) and each get plain loads; its API will
/// not change.
///
/// # How `Res` and `ResMut` map onto it
///
/// `Res<HeapAssets<T>>` is shared access: readers in parallel systems, each through a
/// `HeapReader` (one scope per system run once scopes exist). `ResMut<HeapAssets<T>>` is
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
    store: &'a Store<T>,
    /// The store's identity, checked against owning handles.
    key: usize,
}

impl<'a, T: Send + Sync> HeapReader<'a, T> {
    pub(super) fn new(store: &'a Store<T>, key: usize) -> Self {
        Self { store, key }
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
        get_one(self.store, self.key, id.parts())
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
        self.store.iter().map(|(h, r)| (h, AssetRef(r)))
    }
}

/// One read outside a [`HeapReader`] (what `HeapAssets::get` does).
pub(super) fn get_one<T: Send + Sync>(
    store: &Store<T>,
    key: usize,
    parts: (Handle<T>, Option<usize>),
) -> Option<AssetRef<'_, T>> {
    store.get(mine(key, parts)?).map(AssetRef)
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
pub struct AssetRef<'a, T>(Ref<'a, T>);

impl<T> Deref for AssetRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for AssetRef<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}
