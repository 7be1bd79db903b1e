#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[macro_use]
pub mod events;
mod alloc_api;
#[cfg(feature = "bevy")]
pub mod bevy;
pub mod compact;
mod error;
pub mod frame;
mod global;
pub mod handle;
mod heap;
pub mod large;
mod misuse;
pub mod movable;
pub mod numa;
mod occupancy;
pub mod os;
pub(crate) mod pool;
#[cfg(feature = "profiling")]
pub mod profile;
pub mod shm;
pub mod size_class;
pub mod stats;
pub mod store;
pub(crate) mod sync;
#[cfg(feature = "tracy")]
pub mod tracy;

pub use compact::{
    BackgroundCompactor, Budget, ClassFragmentation, CompactionObserver, CompactionPolicy,
    CompactionReport, Fragmentation, MoveEvent,
};
pub use error::{AllocError, HandleError};
pub use frame::{Frame, FrameArena, FrameConfig, FrameShared, FrameStats};
pub use global::Global;
pub use handle::{Handle, HandleTable, RawHandle};
pub use heap::Heap;
pub use large::{HugePages, LargeAllocator, LargeConfig, LargeStats, MappedAsset};
pub use movable::{PinGuard, ReadGuard, WriteGuard};
pub use occupancy::{BlockState, OccupancyMap, SpanOccupancy};
pub use pool::heap::HeapConfig;
pub use pool::span::SpanKind;
pub use shm::{ShmArena, ShmError, ShmHandle, ShmPod, ShmStats};
pub use stats::{
    ArenaStats, CentralCounters, HeapStats, HeapWalk, NodeStats, NumaStats, PoolCounters,
};
pub use store::{Owned, ReadScope, Ref, RefMut, Shared, Store};
