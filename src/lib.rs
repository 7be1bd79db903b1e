//! tidyheap: a handle-based, defragmenting memory system for game engines.
#![warn(missing_docs)]

mod alloc_api;
mod error;
mod global;
mod heap;
pub mod large;
pub mod os;
pub(crate) mod pool;
pub mod size_class;
pub mod stats;
pub(crate) mod sync;

pub use error::{AllocError, HandleError};
pub use global::Global;
pub use heap::Heap;
pub use pool::heap::HeapConfig;
pub use pool::span::SpanKind;
pub use stats::{ArenaStats, HeapStats, PoolCounters};
