//! Heap-backed asset and component storage: [`HeapAssets<T>`], its owning handles
//! ([`HeapHandle<T>`], shared; [`HeapBlob<T>`], unique) and its change messages.

use std::sync::Arc;

use bevy_app::App;
use bevy_ecs::prelude::{Component, DetectChangesMut, Message, MessageWriter, ResMut, Resource};
use bevy_ecs::schedule::IntoScheduleConfigs;
use parking_lot::Mutex;

use super::TidyheapError;
use super::plugin::{Settings, TidyHeap, TidyheapSystems};
use super::read::{self, AssetRef, HeapReader};
use crate::{Handle, HandleError, RefMut, Store};

/// Ids whose last owning handle was dropped, waiting for the upkeep system.
struct DropQueue<T>(Mutex<Vec<Handle<T>>>);

impl<T> DropQueue<T> {
    fn push(&self, id: Handle<T>) {
        self.0.lock().push(id);
    }

    fn pop(&self) -> Option<Handle<T>> {
        self.0.lock().pop()
    }
}

impl<T> DropQueue<T> {
    /// The store's identity: the queue's address, which no other queue can have while
    /// any owning handle (each holds the queue's `Arc`) or the store is alive.
    fn key(&self) -> usize {
        core::ptr::from_ref(self).addr()
    }
}

/// The owner of one value: queues its id for removal when dropped.
struct Owner<T> {
    id: Handle<T>,
    drops: Arc<DropQueue<T>>,
}

impl<T> Drop for Owner<T> {
    fn drop(&mut self) {
        self.drops.push(self.id);
    }
}

/// A reference-counted owning handle to a [`HeapAssets<T>`] value, usable as a
/// component: clones share the value; when the last clone is dropped the value is
/// removed (by the next upkeep) and [`HeapAssetEvent::Removed`] is sent.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<Vec<f32>>();
/// let mesh = app.world_mut().resource_mut::<HeapAssets<Vec<f32>>>().add(vec![1.0; 64]);
/// let id = mesh.id();
/// let e = app.world_mut().spawn(mesh).id();
/// app.update();
/// assert!(app.world().resource::<HeapAssets<Vec<f32>>>().contains(id));
/// app.world_mut().despawn(e); // the last owner
/// app.update();
/// assert!(!app.world().resource::<HeapAssets<Vec<f32>>>().contains(id));
/// ```
#[derive(Component)]
pub struct HeapHandle<T: Send + Sync + 'static> {
    /// A copy of `owner.id`, inline so that resolving the handle reads the component
    /// only, not the shared owner behind the `Arc` (one cache miss fewer per get).
    id: Handle<T>,
    owner: Arc<Owner<T>>,
}

impl<T: Send + Sync + 'static> HeapHandle<T> {
    /// The plain (non-owning, `Copy`) id of the value.
    pub fn id(&self) -> Handle<T> {
        self.id
    }

    /// How many clones of this handle exist.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u8>();
    /// let h = app.world_mut().resource_mut::<HeapAssets<u8>>().add(1);
    /// let h2 = h.clone();
    /// assert_eq!(h.strong_count(), 2);
    /// drop(h2);
    /// assert_eq!(h.strong_count(), 1);
    /// ```
    pub fn strong_count(&self) -> usize {
        Arc::strong_count(&self.owner)
    }
}

impl<T: Send + Sync + 'static> Clone for HeapHandle<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            owner: self.owner.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> core::fmt::Debug for HeapHandle<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("HeapHandle").field(&self.id).finish()
    }
}

impl<T: Send + Sync + 'static> From<&HeapHandle<T>> for Handle<T> {
    fn from(h: &HeapHandle<T>) -> Self {
        h.id()
    }
}

/// A uniquely owned value in a [`HeapAssets<T>`] store, as a component: for large
/// per-entity data (skinning buffers, navigation data) that should live in the
/// defragmentable heap rather than in the entity's table. Not `Clone`; the value is
/// removed (by the next upkeep) when the component is dropped. Resolve many at once with
/// [`HeapQuery`](super::HeapQuery).
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<[u8; 4096]>();
/// let blob = app.world_mut().resource_mut::<HeapAssets<[u8; 4096]>>().add_blob([7; 4096]);
/// let id = blob.id();
/// app.world_mut().spawn(blob);
/// assert_eq!(app.world().resource::<HeapAssets<[u8; 4096]>>().get(id).unwrap()[10], 7);
/// ```
#[derive(Component)]
pub struct HeapBlob<T: Send + Sync + 'static>(Owner<T>);

impl<T: Send + Sync + 'static> HeapBlob<T> {
    /// The plain (non-owning, `Copy`) id of the value.
    pub fn id(&self) -> Handle<T> {
        self.0.id
    }
}

impl<T: Send + Sync + 'static> core::fmt::Debug for HeapBlob<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("HeapBlob").field(&self.0.id).finish()
    }
}

impl<T: Send + Sync + 'static> From<&HeapBlob<T>> for Handle<T> {
    fn from(h: &HeapBlob<T>) -> Self {
        h.id()
    }
}

/// What names a value of a [`HeapAssets<T>`]: a plain [`Handle<T>`], or a reference to
/// an owning handle ([`HeapHandle<T>`], [`HeapBlob<T>`]).
///
/// An owning handle also knows the store that made it, so it never resolves in another
/// `HeapAssets<T>` (another app's, say). A plain `Handle<T>` carries no store identity:
/// it is checked against the store's slots and generations only.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
///
/// let app = || {
///     let mut app = App::new();
///     app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
///     app
/// };
/// let (mut a, mut b) = (app(), app());
/// let from_a = a.world_mut().resource_mut::<HeapAssets<u64>>().add(1);
/// let _from_b = b.world_mut().resource_mut::<HeapAssets<u64>>().add(2);
/// assert_eq!(*a.world().resource::<HeapAssets<u64>>().get(&from_a).unwrap(), 1);
/// assert!(b.world().resource::<HeapAssets<u64>>().get(&from_a).is_none());
/// ```
pub trait AssetId<T>: sealed::Parts<T> {}

impl<T, I: sealed::Parts<T>> AssetId<T> for I {}

pub(super) mod sealed {
    use crate::Handle;

    /// The id, and the address of the owning store's drop queue if known.
    pub trait Parts<T> {
        fn parts(&self) -> (Handle<T>, Option<usize>);
    }
}

impl<T> sealed::Parts<T> for Handle<T> {
    fn parts(&self) -> (Handle<T>, Option<usize>) {
        (*self, None)
    }
}

impl<T: Send + Sync + 'static> sealed::Parts<T> for &HeapHandle<T> {
    fn parts(&self) -> (Handle<T>, Option<usize>) {
        (self.id, Some(self.owner.drops.key()))
    }
}

impl<T: Send + Sync + 'static> sealed::Parts<T> for &HeapBlob<T> {
    fn parts(&self) -> (Handle<T>, Option<usize>) {
        (self.0.id, Some(self.0.drops.key()))
    }
}

/// A change to a [`HeapAssets<T>`] store, sent as a Bevy message by the upkeep system
/// (like Bevy's `AssetEvent`). Read it with `MessageReader<HeapAssetEvent<T>>`.
///
/// Messages are sent in the frame's [`TidyheapSystems::Upkeep`](super::TidyheapSystems)
/// and readable until the end of the next frame.
#[derive(Message)]
pub enum HeapAssetEvent<T: Send + Sync + 'static> {
    /// A value was added.
    Added {
        /// Its id.
        id: Handle<T>,
    },
    /// A value was borrowed mutably ([`HeapAssets::get_mut`]).
    Modified {
        /// Its id.
        id: Handle<T>,
    },
    /// A value was removed: explicitly, or because its last owning handle was dropped.
    Removed {
        /// Its (now stale) id.
        id: Handle<T>,
    },
}

impl<T: Send + Sync + 'static> HeapAssetEvent<T> {
    /// The id the message is about.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssetEvent, HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u8>();
    /// let h = app.world_mut().resource_mut::<HeapAssets<u8>>().add(1);
    /// let event = HeapAssetEvent::Added { id: h.id() };
    /// assert_eq!(event.id(), h.id());
    /// ```
    pub fn id(&self) -> Handle<T> {
        match *self {
            Self::Added { id } | Self::Modified { id } | Self::Removed { id } => id,
        }
    }
}

impl<T: Send + Sync + 'static> Clone for HeapAssetEvent<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Send + Sync + 'static> Copy for HeapAssetEvent<T> {}

impl<T: Send + Sync + 'static> PartialEq for HeapAssetEvent<T> {
    fn eq(&self, other: &Self) -> bool {
        core::mem::discriminant(self) == core::mem::discriminant(other) && self.id() == other.id()
    }
}

impl<T: Send + Sync + 'static> Eq for HeapAssetEvent<T> {}

impl<T: Send + Sync + 'static> core::fmt::Debug for HeapAssetEvent<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self {
            Self::Added { .. } => "Added",
            Self::Modified { .. } => "Modified",
            Self::Removed { .. } => "Removed",
        };
        f.debug_struct(kind).field("id", &self.id()).finish()
    }
}

/// Values of type `T` in the plugin's movable heap, like Bevy's `Assets<T>` but
/// defragmentable. Read through `Res<HeapAssets<T>>` ([`get`](Self::get), or
/// [`read`](Self::read) once per system for many gets); add, write and remove through
/// `ResMut`. Register it with [`HeapAssetsAppExt::init_heap_assets`].
///
/// # Ownership
///
/// An owning handle does not free its value itself: its last drop (a despawn, a
/// component replaced, a clone dropped anywhere, on any thread) queues the value's id,
/// and the [`TidyheapSystems::Upkeep`](super::TidyheapSystems::Upkeep) system removes
/// the queued values from the store, drops them, and sends
/// [`HeapAssetEvent::Removed`]. This is how Bevy's own `Assets<T>` frees an asset whose
/// last strong handle went away, and it keeps every `Drop` of user values on the
/// upkeep system, never inside a despawn.
///
/// A value removed explicitly with [`HeapAssets::remove`] while owning handles exist is
/// gone at once; their later drop queues an id that no longer resolves (generations
/// never repeat), which the upkeep skips.
///
/// # Examples
///
/// ```
/// use bevy_app::{App, Update};
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, HeapHandle, TidyheapPlugin};
///
/// struct Mesh(Vec<[f32; 3]>);
///
/// fn count(meshes: Res<HeapAssets<Mesh>>, q: Query<&HeapHandle<Mesh>>) {
///     let meshes = meshes.read();
///     let vertices: usize = q.iter().filter_map(|h| meshes.get(h)).map(|m| m.0.len()).sum();
///     assert_eq!(vertices, 30);
/// }
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default())
///     .init_heap_assets::<Mesh>()
///     .add_systems(Update, count);
/// let mut meshes = app.world_mut().resource_mut::<HeapAssets<Mesh>>();
/// let handles: Vec<_> = (0..3).map(|_| meshes.add(Mesh(vec![[0.0; 3]; 10]))).collect();
/// app.world_mut().spawn_batch(handles);
/// app.update();
/// ```
#[derive(Resource)]
pub struct HeapAssets<T: Send + Sync + 'static> {
    store: Store<T>,
    drops: Arc<DropQueue<T>>,
    /// Messages not yet sent by the upkeep system.
    pending: Vec<HeapAssetEvent<T>>,
}

impl<T: Send + Sync + 'static> HeapAssets<T> {
    fn new(store: Store<T>) -> Self {
        Self {
            store,
            drops: Arc::new(DropQueue(Mutex::new(Vec::new()))),
            pending: Vec::new(),
        }
    }

    /// Moves `value` in and returns a shared owning handle.
    ///
    /// # Panics
    ///
    /// If memory runs out; see [`try_add`](Self::try_add).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let h = assets.add(1);
    /// let again = h.clone(); // a second owner of the same value
    /// assert_eq!(*assets.get(&again).unwrap(), 1);
    /// ```
    pub fn add(&mut self, value: T) -> HeapHandle<T> {
        self.try_add(value)
            .unwrap_or_else(|(_, e)| panic!("tidyheap: HeapAssets::add failed: {e}"))
    }

    /// Moves `value` in and returns a shared owning handle, or gives it back.
    ///
    /// # Errors
    ///
    /// The value and [`HandleError::Alloc`] if memory runs out.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let h = assets.try_add(9).map_err(|(_, e)| e)?;
    /// assert_eq!(*assets.get(&h).unwrap(), 9);
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn try_add(&mut self, value: T) -> Result<HeapHandle<T>, (T, HandleError)> {
        let owner = self.try_own(value)?;
        Ok(HeapHandle {
            id: owner.id,
            owner: Arc::new(owner),
        })
    }

    /// Moves `value` in and returns its unique owner, a component.
    ///
    /// # Panics
    ///
    /// If memory runs out; see [`try_add_blob`](Self::try_add_blob).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let blob = assets.add_blob(2);
    /// assert_eq!(*assets.get(&blob).unwrap(), 2);
    /// ```
    pub fn add_blob(&mut self, value: T) -> HeapBlob<T> {
        self.try_add_blob(value)
            .unwrap_or_else(|(_, e)| panic!("tidyheap: HeapAssets::add_blob failed: {e}"))
    }

    /// Moves `value` in and returns its unique owner, or gives the value back.
    ///
    /// # Errors
    ///
    /// The value and [`HandleError::Alloc`] if memory runs out.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let blob = assets.try_add_blob(3).map_err(|(_, e)| e)?;
    /// assert_eq!(*assets.get(&blob).unwrap(), 3);
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn try_add_blob(&mut self, value: T) -> Result<HeapBlob<T>, (T, HandleError)> {
        Ok(HeapBlob(self.try_own(value)?))
    }

    fn try_own(&mut self, value: T) -> Result<Owner<T>, (T, HandleError)> {
        let id = self.store.try_insert(value)?;
        self.pending.push(HeapAssetEvent::Added { id });
        Ok(Owner {
            id,
            drops: self.drops.clone(),
        })
    }

    /// The value of `id` (a [`Handle`], `&HeapHandle` or `&HeapBlob`; see [`AssetId`]),
    /// or `None` if it was removed. For many gets in one system, take [`read`](Self::read) once.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let h = assets.add(3);
    /// let id = h.id(); // a plain, `Copy` id
    /// assert_eq!(*assets.get(id).unwrap(), 3);
    /// assets.remove(id);
    /// assert!(assets.get(id).is_none());
    /// ```
    pub fn get(&self, id: impl AssetId<T>) -> Option<AssetRef<'_, T>> {
        read::get_one(&self.store, self.drops.key(), id.parts())
    }

    /// A read view for many gets (see [`HeapReader`]).
    pub fn read(&self) -> HeapReader<'_, T> {
        HeapReader::new(&self.store, self.drops.key())
    }

    /// The plain id of `id` if it may belong to this store.
    fn mine(&self, id: impl AssetId<T>) -> Option<Handle<T>> {
        read::mine(self.drops.key(), id.parts())
    }

    /// The value of `id`, exclusively; sends [`HeapAssetEvent::Modified`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<String>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<String>>();
    /// let h = assets.add("grass".into());
    /// assets.get_mut(&h).unwrap().push_str("_01");
    /// assert_eq!(*assets.get(&h).unwrap(), "grass_01");
    /// ```
    pub fn get_mut(&mut self, id: impl AssetId<T>) -> Option<RefMut<'_, T>> {
        let id = self.mine(id)?;
        let value = self.store.get_mut(id)?;
        self.pending.push(HeapAssetEvent::Modified { id });
        Some(value)
    }

    /// Removes the value of `id` now (owning handles of it become dangling ids) and
    /// sends [`HeapAssetEvent::Removed`]; `None` if it was already removed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u8>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u8>>();
    /// let h = assets.add(1);
    /// assert_eq!(assets.remove(&h), Some(1));
    /// assert_eq!(assets.remove(&h), None);
    /// ```
    pub fn remove(&mut self, id: impl AssetId<T>) -> Option<T> {
        let id = self.mine(id)?;
        let value = self.store.remove(id)?;
        self.pending.push(HeapAssetEvent::Removed { id });
        Some(value)
    }

    /// Whether `id` names a value of this store.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let h = assets.add(4);
    /// assert!(assets.contains(&h));
    /// assets.remove(&h);
    /// assert!(!assets.contains(&h));
    /// ```
    pub fn contains(&self, id: impl AssetId<T>) -> bool {
        self.mine(id).is_some_and(|id| self.store.contains(id))
    }

    /// Number of values.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::App;
    /// # use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<u64>();
    /// let mut assets = app.world_mut().resource_mut::<HeapAssets<u64>>();
    /// let _a = assets.add(5);
    /// let _b = assets.add_blob(6);
    /// assert_eq!(assets.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there is no value.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The underlying store (its heap is the plugin's [`TidyHeap`]).
    pub fn store(&self) -> &Store<T> {
        &self.store
    }

    /// Removes the values whose last owner was dropped and queues their `Removed`
    /// messages; returns whether anything changed. One id at a time, so a panicking
    /// `Drop` of a value loses no other queued id, and values whose drop releases more
    /// owners are handled in the same call.
    fn collect_dropped(&mut self) -> bool {
        let mut changed = false;
        while let Some(id) = self.drops.pop() {
            if let Some(value) = self.store.remove(id) {
                self.pending.push(HeapAssetEvent::Removed { id });
                changed = true;
                drop(value);
            }
        }
        changed
    }
}

impl<T: Send + Sync + 'static> core::fmt::Debug for HeapAssets<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeapAssets")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// The upkeep system of `HeapAssets<T>`: frees values whose last owner was dropped and
/// sends the queued messages.
fn upkeep<T: Send + Sync + 'static>(
    mut assets: ResMut<HeapAssets<T>>,
    mut messages: MessageWriter<HeapAssetEvent<T>>,
) {
    // Only a removal is a change of the resource; sending messages is not.
    let inner = assets.bypass_change_detection();
    let changed = inner.collect_dropped();
    if !inner.pending.is_empty() {
        messages.write_batch(inner.pending.drain(..));
    }
    if changed {
        assets.set_changed();
    }
}

/// Registers heap-backed stores on an [`App`].
pub trait HeapAssetsAppExt {
    /// Adds a [`HeapAssets<T>`] resource on the plugin's heap, its
    /// [`HeapAssetEvent<T>`] messages and its upkeep system. Calling it again for the
    /// same `T` does nothing.
    ///
    /// # Panics
    ///
    /// If [`TidyheapPlugin`](super::TidyheapPlugin) was not added first, or the heap has
    /// no store id left; see [`try_init_heap_assets`](Self::try_init_heap_assets).
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::App;
    /// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, TidyheapPlugin};
    /// let mut app = App::new();
    /// app.add_plugins(TidyheapPlugin::default()).init_heap_assets::<String>();
    /// assert!(app.world().contains_resource::<HeapAssets<String>>());
    /// ```
    fn init_heap_assets<T: Send + Sync + 'static>(&mut self) -> &mut Self;

    /// Like [`init_heap_assets`](Self::init_heap_assets), or the error.
    ///
    /// # Errors
    ///
    /// [`TidyheapError::PluginMissing`] if the plugin was not added first,
    /// [`TidyheapError::Heap`] if the heap has no store id left (65 535 per heap).
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::App;
    /// use tidyheap::bevy::{HeapAssetsAppExt, TidyheapError};
    /// let mut app = App::new();
    /// assert!(matches!(
    ///     app.try_init_heap_assets::<u8>(),
    ///     Err(TidyheapError::PluginMissing)
    /// ));
    /// ```
    fn try_init_heap_assets<T: Send + Sync + 'static>(
        &mut self,
    ) -> Result<&mut Self, TidyheapError>;
}

impl HeapAssetsAppExt for App {
    fn init_heap_assets<T: Send + Sync + 'static>(&mut self) -> &mut Self {
        self.try_init_heap_assets::<T>().unwrap_or_else(|e| {
            panic!(
                "tidyheap: init_heap_assets::<{}>: {e}",
                core::any::type_name::<T>()
            )
        })
    }

    fn try_init_heap_assets<T: Send + Sync + 'static>(
        &mut self,
    ) -> Result<&mut Self, TidyheapError> {
        if self.world().contains_resource::<HeapAssets<T>>() {
            return Ok(self);
        }
        let world = self.world();
        let (Some(heap), Some(settings)) = (
            world.get_resource::<TidyHeap>(),
            world.get_resource::<Settings>(),
        ) else {
            return Err(TidyheapError::PluginMissing);
        };
        let schedule = settings.config.schedule();
        let store = Store::<T>::try_new_in(heap.heap().clone()).map_err(TidyheapError::Heap)?;
        self.insert_resource(HeapAssets::new(store))
            .add_message::<HeapAssetEvent<T>>()
            .add_systems(schedule, upkeep::<T>.in_set(TidyheapSystems::Upkeep));
        Ok(self)
    }
}
