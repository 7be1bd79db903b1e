//! Error types shared by every layer.
//!
//! Callers' mistakes (a stale handle, a double free, an impossible size or alignment)
//! come back as these values and change nothing; panics are reserved for bugs in
//! tidyheap itself.

use core::fmt;

/// Why an allocation request could not be served. Nothing was allocated.
///
/// # Examples
///
/// ```
/// use tidyheap::AllocError;
/// let e = AllocError::InvalidAlignment { align: 3 };
/// assert_eq!(e.to_string(), "alignment 3 is not a power of two");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllocError {
    /// The alignment is zero or not a power of two.
    InvalidAlignment {
        /// The alignment that was asked for.
        align: usize,
    },
    /// The size, rounded up to the alignment, overflows or exceeds what the address
    /// space can ever hold (`isize::MAX`).
    TooLarge {
        /// The size that was asked for.
        size: usize,
    },
    /// The operating system refused to provide memory.
    OutOfMemory {
        /// The number of bytes the failed OS request asked for.
        size: usize,
        /// The `errno` the OS returned.
        errno: i32,
    },
    /// Serving the request would take the heap's committed memory past its commit
    /// limit (`HeapConfig::commit_limit`): the memory could never all be backed.
    CommitLimit {
        /// The bytes the request would have added.
        size: usize,
        /// The heap's limit, in bytes.
        limit: usize,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidAlignment { align } => {
                write!(f, "alignment {align} is not a power of two")
            }
            Self::TooLarge { size } => {
                write!(f, "allocation of {size} bytes exceeds the address space")
            }
            Self::OutOfMemory { size, errno } => write!(
                f,
                "the OS refused {size} bytes: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
            Self::CommitLimit { size, limit } => write!(
                f,
                "{size} more bytes would exceed the heap's commit limit of {limit} bytes"
            ),
        }
    }
}

impl std::error::Error for AllocError {}

impl From<AllocError> for allocator_api2::alloc::AllocError {
    fn from(_: AllocError) -> Self {
        allocator_api2::alloc::AllocError
    }
}

/// Why a handle operation failed. The heap and the handle's block are unchanged.
///
/// # Examples
///
/// ```
/// use tidyheap::HandleError;
/// assert_eq!(HandleError::Stale.to_string(), "stale handle: its block was freed or it belongs to another heap");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandleError {
    /// The handle's block was freed (its generation no longer matches), the handle
    /// came from another heap, or its index was never issued. A double free reports this.
    Stale,
    /// The block is guarded in a way that conflicts with the request (a `try_` form
    /// found a writer, or readers when it wanted to write).
    Busy,
    /// Allocating the block failed.
    Alloc(AllocError),
    /// No store can be created any more in this process: every store identity (tag) has
    /// been handed out ([`MAX_STORES`](crate::store::MAX_STORES) of them). Tags are never
    /// reused, so that a handle can never resolve in a store that did not make it; this
    /// error is permanent for the life of the process.
    StoresExhausted,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stale => {
                f.write_str("stale handle: its block was freed or it belongs to another heap")
            }
            Self::Busy => f.write_str("block is busy: a conflicting guard is held"),
            Self::Alloc(e) => write!(f, "allocation failed: {e}"),
            Self::StoresExhausted => write!(
                f,
                "store identities exhausted: this process has created all {} stores it can",
                crate::store::MAX_STORES
            ),
        }
    }
}

impl std::error::Error for HandleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Alloc(e) => Some(e),
            _ => None,
        }
    }
}

impl From<AllocError> for HandleError {
    fn from(e: AllocError) -> Self {
        Self::Alloc(e)
    }
}
