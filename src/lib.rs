//! tidyheap: a handle-based, defragmenting memory system for game engines.
#![warn(missing_docs)]

mod error;
pub mod handle;
pub mod os;
pub mod size_class;
pub(crate) mod sync;

pub use error::{AllocError, HandleError};
pub use handle::{Handle, HandleTable, RawHandle};
