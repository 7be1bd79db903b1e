//! The one error type of the shared-memory arena.

use std::fmt;
use std::time::Duration;

/// What went wrong creating, attaching to or using a shared-memory segment.
///
/// Every failure of [`ShmArena`](super::ShmArena) is one of these: a bad segment, a bad
/// handle or a bad request is reported, never undefined behaviour and never a panic.
///
/// # Examples
///
/// ```
/// use tidyheap::shm::{ShmArena, ShmError};
///
/// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
/// assert!(matches!(arena.alloc(16, 3), Err(ShmError::InvalidAlign { align: 3 })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShmError {
    /// A system call failed; `errno` is the OS error number.
    Os {
        /// The call that failed (`"shm_open"`, `"mmap"`, ...).
        op: &'static str,
        /// `errno` after the call.
        errno: i32,
    },
    /// A segment name must be `/` followed by 1–250 bytes without `/` or NUL.
    InvalidName,
    /// [`ShmArena::create`](super::ShmArena::create) found a segment of that name.
    AlreadyExists,
    /// [`ShmArena::open`](super::ShmArena::open) found no segment of that name.
    NotFound,
    /// The requested segment size is out of range.
    InvalidSize {
        /// The size asked for.
        size: usize,
        /// Smallest size accepted.
        min: usize,
        /// Largest size accepted.
        max: usize,
    },
    /// The segment does not start with tidyheap's magic: it is not a tidyheap segment.
    BadMagic {
        /// The first 8 bytes found.
        found: u64,
    },
    /// The segment was formatted by an incompatible layout version.
    BadVersion {
        /// Version in the segment.
        found: u32,
        /// Version this build understands.
        expected: u32,
    },
    /// The file is shorter than its header says (or than a header).
    Truncated {
        /// Bytes the file has.
        file_len: u64,
        /// Bytes it needs.
        expected: u64,
    },
    /// The segment did not become ready within the attach timeout.
    StuckFormatter {
        /// pid of the process formatting it (0 if none has started).
        pid: u32,
        /// Whether that process is still alive.
        alive: bool,
        /// How long we waited.
        waited: Duration,
    },
    /// Alignment must be a power of two no greater than 4096.
    InvalidAlign {
        /// The alignment asked for.
        align: usize,
    },
    /// No free block of the requested size and alignment.
    OutOfMemory {
        /// Bytes requested.
        size: usize,
        /// Alignment requested.
        align: usize,
    },
    /// The handle does not name a live block: freed (stale), never allocated, or foreign.
    Stale,
    /// An access ran past the end of the block.
    OutOfBounds {
        /// Start of the access within the block.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Usable bytes of the block.
        usable: usize,
    },
    /// The heap's metadata is inconsistent (a writer outside this crate, or a crash that
    /// recovery could not repair). The segment is poisoned: every later operation fails.
    Corrupt {
        /// What check failed.
        what: &'static str,
        /// Segment offset where it failed.
        offset: u32,
    },
}

impl ShmError {
    pub(super) fn last_os(op: &'static str) -> Self {
        ShmError::Os {
            op,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
    }
}

impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmError::Os { op, errno } => write!(
                f,
                "{op} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            ShmError::InvalidName => {
                f.write_str("segment name must be '/' then 1-250 bytes without '/' or NUL")
            }
            ShmError::AlreadyExists => f.write_str("a segment of that name already exists"),
            ShmError::NotFound => f.write_str("no segment of that name"),
            ShmError::InvalidSize { size, min, max } => {
                write!(f, "segment size {size} outside {min}..={max}")
            }
            ShmError::BadMagic { found } => {
                write!(f, "not a tidyheap segment (magic {found:#018x})")
            }
            ShmError::BadVersion { found, expected } => write!(
                f,
                "segment layout version {found}, this build understands {expected}"
            ),
            ShmError::Truncated { file_len, expected } => write!(
                f,
                "segment file truncated: {file_len} bytes, header needs {expected}"
            ),
            ShmError::StuckFormatter { pid, alive, waited } => write!(
                f,
                "segment not ready after {waited:?}: formatter pid {pid} ({})",
                if *alive { "still alive" } else { "dead" }
            ),
            ShmError::InvalidAlign { align } => {
                write!(f, "alignment {align} is not a power of two <= 4096")
            }
            ShmError::OutOfMemory { size, align } => {
                write!(f, "no free block for {size} bytes aligned to {align}")
            }
            ShmError::Stale => f.write_str("handle does not name a live block"),
            ShmError::OutOfBounds {
                offset,
                len,
                usable,
            } => write!(
                f,
                "access {offset}..{offset}+{len} past the block's {usable} usable bytes"
            ),
            ShmError::Corrupt { what, offset } => {
                write!(f, "segment corrupt at offset {offset}: {what}")
            }
        }
    }
}

impl std::error::Error for ShmError {}
