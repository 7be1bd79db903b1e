//! The Bevy plugin (feature `bevy`, Bevy 0.20): heap-backed asset and component
//! storage, per-frame scratch memory, a compaction slice every frame, and diagnostics.
//!
//! This module sits at the edge of the crate: it uses the public API of
//! [`Store`](crate::Store), [`Heap`](crate::Heap), [`FrameArena`](crate::frame::FrameArena) and the compaction observer hook,
//! and no core module imports it (DESIGN invariant 6).
//!
//! # What the plugin adds
//!
//! | item | what it is |
//! |---|---|
//! | [`TidyheapPlugin`] | the plugin; configured with [`TidyheapConfig`], checked by [`TidyheapPlugin::try_new`] |
//! | [`TidyHeap`] | resource: the movable heap every store lives in |
//! | [`HeapAssets<T>`] | resource: a defragmentable `Assets<T>`; [`HeapAssetsAppExt::init_heap_assets`] |
//! | [`HeapHandle<T>`] / [`HeapBlob<T>`] | components: shared / unique owning handles; the last drop frees the value |
//! | [`HeapAssetEvent<T>`] | message: `Added`, `Modified`, `Removed` |
//! | [`HeapQuery`] | system parameter: resolves many entities' [`HeapBlob`]s through one reader |
//! | [`FrameAlloc`] / [`FrameMemory`] | system parameter / resource: per-frame scratch memory |
//! | [`TidyheapSystems`] | system sets: `BeginFrame` (`First`), `Upkeep` → `Compact` → `Report` (default `Last`) |
//! | [`TidyheapStats`] | resource: what the compactor did this frame and in total |
//! | [`TidyheapDiagnosticsPlugin`] | the numbers as `tidyheap/*` diagnostics |
//!
//! # Example
//!
//! ```
//! use bevy_app::{App, Update};
//! use bevy_ecs::prelude::*;
//! use tidyheap::bevy::{
//!     FrameAlloc, HeapAssets, HeapAssetsAppExt, HeapHandle, TidyheapConfig,
//!     TidyheapDiagnosticsPlugin, TidyheapPlugin,
//! };
//! use tidyheap::Budget;
//!
//! struct Mesh(Vec<[f32; 3]>);
//!
//! fn bounds(meshes: Res<HeapAssets<Mesh>>, scratch: FrameAlloc, q: Query<&HeapHandle<Mesh>>) {
//!     let meshes = meshes.read(); // one reader for the whole system
//!     let mut tops = allocator_api2::vec::Vec::new_in(&scratch);
//!     for h in &q {
//!         let mesh = meshes.get(h).expect("owned by the entity");
//!         tops.push(mesh.0.iter().map(|v| v[1]).fold(f32::MIN, f32::max));
//!     }
//!     assert_eq!(tops.len(), 2);
//! }
//!
//! let plugin = TidyheapPlugin::try_new(
//!     TidyheapConfig::new().with_budget(Budget::blocks(256).with_bytes(1 << 20)),
//! )?;
//! let mut app = App::new();
//! app.add_plugins((plugin, TidyheapDiagnosticsPlugin))
//!     .init_heap_assets::<Mesh>()
//!     .add_systems(Update, bounds);
//! for i in 0..2 {
//!     let mesh = Mesh(vec![[0.0, i as f32, 0.0]; 100]);
//!     let handle = app.world_mut().resource_mut::<HeapAssets<Mesh>>().add(mesh);
//!     app.world_mut().spawn(handle);
//! }
//! app.update();
//! # Ok::<(), tidyheap::bevy::ConfigError>(())
//! ```
//!
//! # Reads, writes and the compactor
//!
//! `Res<HeapAssets<T>>` reads, `ResMut<HeapAssets<T>>` adds, writes and removes; see
//! [`HeapReader`] for how they map onto the store's guards. The compactor moves a value
//! only while nobody reads or writes it: a pass skips busy values and retries them in a
//! later frame, so it never waits for a system and a system never sees a torn value.
//!
//! # Malformed configuration
//!
//! [`TidyheapPlugin::try_new`] refuses a configuration with zero scratch frames in
//! flight, a compaction budget with no limit or a zero limit, or a threshold outside
//! `0.0 ..= 1.0`, with a [`ConfigError`]; `build()` never sees one.

mod assets;
mod background;
mod config;
mod diagnostics;
mod plugin;
mod query;
mod read;
mod scratch;

use core::fmt;

pub use assets::{AssetId, HeapAssetEvent, HeapAssets, HeapAssetsAppExt, HeapBlob, HeapHandle};
pub use config::{BudgetLimit, CompactionMode, ConfigError, TidyheapConfig, TidyheapPlugin};
pub use diagnostics::TidyheapDiagnosticsPlugin;
pub use plugin::{FrameCompaction, TidyHeap, TidyheapStats, TidyheapSystems};
pub use query::{HeapQuery, HeapQueryError};
pub use read::{AssetRef, HeapReader};
pub use scratch::{FrameAlloc, FrameMemory};

/// Why the plugin, or a store registration, could not be set up.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{HeapAssetsAppExt, TidyheapError};
/// let err = App::new().try_init_heap_assets::<u8>().map(|_| ()).unwrap_err();
/// assert!(matches!(err, TidyheapError::PluginMissing));
/// assert!(err.to_string().contains("TidyheapPlugin"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TidyheapError {
    /// The configuration is malformed.
    Config(ConfigError),
    /// A store was registered before [`TidyheapPlugin`] was added.
    PluginMissing,
    /// The heap could not be created, or has no store id left.
    Heap(crate::HandleError),
    /// The background compaction thread could not be spawned.
    Thread(std::io::Error),
}

impl fmt::Display for TidyheapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::PluginMissing => f.write_str("add TidyheapPlugin to the app first"),
            Self::Heap(e) => write!(f, "heap: {e}"),
            Self::Thread(e) => write!(f, "cannot spawn the background compactor: {e}"),
        }
    }
}

impl std::error::Error for TidyheapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::PluginMissing => None,
            Self::Heap(e) => Some(e),
            Self::Thread(e) => Some(e),
        }
    }
}

impl From<ConfigError> for TidyheapError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}
