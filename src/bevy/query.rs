//! [`HeapQuery`]: resolve the [`HeapBlob`]s of many entities at once.

use bevy_ecs::entity::Entity;
use bevy_ecs::prelude::{Query, Res};
use bevy_ecs::query::QueryFilter;
use bevy_ecs::system::SystemParam;

use super::assets::{HeapAssets, HeapBlob};
use super::read::AssetRef;

/// A system parameter over the entities holding a [`HeapBlob<T>`] (filtered by `F`),
/// resolving their values in bulk through one
/// [`HeapReader`](super::HeapReader).
///
/// # Examples
///
/// ```
/// use bevy_app::{App, Update};
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, HeapQuery, TidyheapPlugin};
///
/// #[derive(Component)]
/// struct Skinned;
///
/// fn total(blobs: HeapQuery<Vec<f32>, With<Skinned>>) {
///     let mut sum = 0.0;
///     blobs.for_each(|_, v| sum += v.iter().sum::<f32>());
///     assert_eq!(sum, 2.0 * 16.0);
///     let count = std::sync::atomic::AtomicUsize::new(0);
///     blobs.par_for_each(|_, v| {
///         assert_eq!(v.len(), 16);
///         count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///     });
///     assert_eq!(count.into_inner(), 2);
/// }
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default())
///     .init_heap_assets::<Vec<f32>>()
///     .add_systems(Update, total);
/// for _ in 0..2 {
///     let blob = app.world_mut().resource_mut::<HeapAssets<Vec<f32>>>().add_blob(vec![1.0; 16]);
///     app.world_mut().spawn((blob, Skinned));
/// }
/// let blob = app.world_mut().resource_mut::<HeapAssets<Vec<f32>>>().add_blob(vec![9.0; 16]);
/// app.world_mut().spawn(blob); // not `Skinned`: filtered out
/// app.update();
/// ```
#[derive(SystemParam)]
pub struct HeapQuery<'w, 's, T: Send + Sync + 'static, F: QueryFilter + 'static = ()> {
    entities: Query<'w, 's, (Entity, &'static HeapBlob<T>), F>,
    assets: Res<'w, HeapAssets<T>>,
}

impl<T: Send + Sync + 'static, F: QueryFilter + 'static> HeapQuery<'_, '_, T, F> {
    /// Runs `f` on every matching entity and its value, in query order, through one
    /// reader. An entity whose value was removed explicitly ([`HeapAssets::remove`]) is
    /// skipped.
    pub fn for_each(&self, mut f: impl FnMut(Entity, &T)) {
        let reader = self.assets.read();
        for (e, blob) in &self.entities {
            if let Some(v) = reader.get(blob) {
                f(e, &v);
            }
        }
    }

    /// Runs `f` on every matching entity and its value, in parallel on the compute task
    /// pool (sequentially without the `multi_threaded` feature of `bevy_ecs`), all
    /// through one shared reader. Entities whose value was removed are skipped.
    pub fn par_for_each(&self, f: impl Fn(Entity, &T) + Send + Sync) {
        let reader = self.assets.read();
        self.entities.par_iter().for_each(|(e, blob)| {
            if let Some(v) = reader.get(blob) {
                f(e, &v);
            }
        });
    }

    /// The value of `entity`'s blob.
    ///
    /// # Errors
    ///
    /// [`HeapQueryError::NoMatch`] if the entity does not match the query,
    /// [`HeapQueryError::Removed`] if its value was removed explicitly.
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::{App, Update};
    /// use bevy_ecs::prelude::*;
    /// use tidyheap::bevy::{HeapAssets, HeapAssetsAppExt, HeapQuery, HeapQueryError, TidyheapPlugin};
    ///
    /// #[derive(Resource)]
    /// struct Pair(Entity, Entity);
    ///
    /// fn check(blobs: HeapQuery<u32>, pair: Res<Pair>) {
    ///     assert_eq!(*blobs.get(pair.0).unwrap(), 5);
    ///     assert_eq!(blobs.get(pair.1).unwrap_err(), HeapQueryError::NoMatch);
    /// }
    ///
    /// let mut app = App::new();
    /// app.add_plugins(TidyheapPlugin::default())
    ///     .init_heap_assets::<u32>()
    ///     .add_systems(Update, check);
    /// let blob = app.world_mut().resource_mut::<HeapAssets<u32>>().add_blob(5);
    /// let a = app.world_mut().spawn(blob).id();
    /// let b = app.world_mut().spawn_empty().id();
    /// app.insert_resource(Pair(a, b));
    /// app.update();
    /// ```
    pub fn get(&self, entity: Entity) -> Result<AssetRef<'_, T>, HeapQueryError> {
        let (_, blob) = self
            .entities
            .get(entity)
            .map_err(|_| HeapQueryError::NoMatch)?;
        self.assets.get(blob).ok_or(HeapQueryError::Removed)
    }

    /// The store the values live in.
    pub fn assets(&self) -> &HeapAssets<T> {
        &self.assets
    }
}

/// Why [`HeapQuery::get`] found no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeapQueryError {
    /// The entity does not exist, has no `HeapBlob<T>`, or fails the filter.
    NoMatch,
    /// The entity's value was removed with [`HeapAssets::remove`].
    Removed,
}

impl core::fmt::Display for HeapQueryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::NoMatch => "the entity does not match the heap query",
            Self::Removed => "the entity's heap value was removed",
        })
    }
}

impl std::error::Error for HeapQueryError {}
