//! tidyheap: a handle-based, defragmenting memory system for game engines.
#![warn(missing_docs)]

mod error;
pub mod frame;
pub mod os;
pub mod size_class;
pub(crate) mod sync;

pub use error::{AllocError, HandleError};
pub use frame::{Frame, FrameArena, FrameConfig, FrameShared, FrameStats};
