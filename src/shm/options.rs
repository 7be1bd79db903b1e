//! Options for opening a segment, and its statistics.

use std::time::Duration;

/// Options for creating or attaching to a segment.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tidyheap::shm::{ShmArena, ShmOptions};
///
/// let opts = ShmOptions::new().attach_timeout(Duration::from_millis(100));
/// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
/// let again = ShmArena::from_fd_with(arena.inheritable_fd().unwrap(), &opts).unwrap();
/// assert_eq!(again.size(), arena.size());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ShmOptions {
    pub(super) attach_timeout: Duration,
    pub(super) format_delay: Duration,
}

impl Default for ShmOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ShmOptions {
    /// Default options: attach waits up to 5 s for the formatter, no format delay.
    ///
    /// # Examples
    ///
    /// ```
    /// let _ = tidyheap::shm::ShmOptions::new();
    /// ```
    pub fn new() -> Self {
        ShmOptions {
            attach_timeout: Duration::from_secs(5),
            format_delay: Duration::ZERO,
        }
    }

    /// How long an attacher waits for the segment to become ready before reporting
    /// [`ShmError::StuckFormatter`](super::ShmError::StuckFormatter).
    ///
    /// # Examples
    ///
    /// ```
    /// let _ = tidyheap::shm::ShmOptions::new().attach_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn attach_timeout(mut self, timeout: Duration) -> Self {
        self.attach_timeout = timeout;
        self
    }

    /// Makes a creator sleep this long while the segment is `FORMATTING` (to test bootstrap
    /// races: attachers must wait, not use a half-formatted header).
    ///
    /// # Examples
    ///
    /// ```
    /// let _ = tidyheap::shm::ShmOptions::new().format_delay(std::time::Duration::from_millis(1));
    /// ```
    pub fn format_delay(mut self, delay: Duration) -> Self {
        self.format_delay = delay;
        self
    }
}

/// Heap statistics of a segment, a snapshot taken under the lock.
///
/// `used_bytes + free_bytes == heap_bytes` always.
///
/// # Examples
///
/// ```
/// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
/// let s = arena.stats().unwrap();
/// assert_eq!(s.free_blocks, 1);
/// assert_eq!(s.largest_free, s.free_bytes);
/// assert_eq!(s.fragmentation(), 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmStats {
    /// Bytes the TLSF heap manages (segment minus header and bitmap).
    pub heap_bytes: u64,
    /// Live (allocated) blocks.
    pub live_blocks: u64,
    /// Sum of the requested sizes of live blocks.
    pub live_bytes: u64,
    /// Bytes of live blocks including headers, rounding and alignment slack.
    pub used_bytes: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Bytes in free blocks.
    pub free_bytes: u64,
    /// Size of the largest free block (including its 16-byte header).
    pub largest_free: u64,
    /// Allocations ever made in the segment.
    pub allocs: u64,
    /// Frees ever made in the segment.
    pub frees: u64,
    /// Times the lock was taken over from a dead holder (and the heap recovered).
    pub recoveries: u32,
    /// Allocations a crashed holder left half-done, rolled back by recovery (their handles
    /// never left the lock).
    pub rolled_back_allocs: u64,
    /// Frees a crashed holder left half-done, completed by recovery.
    pub completed_frees: u64,
}

impl ShmStats {
    /// External fragmentation, `1 - largest_free / free_bytes` (0 when all free memory is one
    /// block, near 1 when it is scattered in small pieces).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let hs: Vec<_> = (0..8).map(|_| arena.alloc(512, 16).unwrap()).collect();
    /// arena.free(hs[2]).unwrap();
    /// assert!(arena.stats().unwrap().fragmentation() > 0.0);
    /// ```
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - self.largest_free as f64 / self.free_bytes as f64
        }
    }
}
