//! tidyheap: a handle-based, defragmenting memory system for game engines.
#![warn(missing_docs)]

mod error;
pub mod os;
pub(crate) mod pool;
pub mod size_class;
pub(crate) mod sync;

pub use error::{AllocError, HandleError};
