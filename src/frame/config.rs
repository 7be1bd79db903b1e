//! How a [`FrameArena`] is configured: [`FrameConfig`] and its validation error.

use core::fmt;

#[cfg(doc)]
use super::{Frame, FrameArena, FrameShared};
use crate::os::PAGE_SIZE;

/// How a [`FrameArena`] behaves: frames in flight, chunk size, trimming, lanes.
///
/// # Examples
///
/// ```
/// use tidyheap::frame::{FrameArena, FrameConfig};
///
/// let config = FrameConfig::new()
///     .with_frames_in_flight(3)
///     .with_chunk_size(64 * 1024)
///     .with_trim_after(120);
/// let arena = FrameArena::with_config(config)?;
/// assert_eq!(arena.config().frames_in_flight(), 3);
/// # Ok::<(), tidyheap::frame::FrameConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameConfig {
    pub(super) frames_in_flight: usize,
    pub(super) chunk_size: usize,
    pub(super) trim_after: u64,
    pub(super) lanes: usize,
}

impl FrameConfig {
    /// Default [`frames_in_flight`](Self::frames_in_flight): double buffering.
    pub const DEFAULT_FRAMES_IN_FLIGHT: usize = 2;
    /// Default [`chunk_size`](Self::chunk_size): 256 KiB.
    pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;
    /// Default [`trim_after`](Self::trim_after): one second at 60 frames per second.
    pub const DEFAULT_TRIM_AFTER: u64 = 60;
    /// Default [`lanes`](Self::lanes).
    pub const DEFAULT_LANES: usize = 64;
    /// Largest accepted [`frames_in_flight`](Self::frames_in_flight).
    pub const MAX_FRAMES_IN_FLIGHT: usize = 64;
    /// Largest accepted [`chunk_size`](Self::chunk_size): 1 GiB.
    pub const MAX_CHUNK_SIZE: usize = 1 << 30;
    /// Largest accepted [`lanes`](Self::lanes).
    pub const MAX_LANES: usize = 4096;

    /// The defaults: 2 frames in flight, 256 KiB chunks, trim after 60 idle frames, 64
    /// lanes.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameConfig;
    /// assert_eq!(FrameConfig::new().frames_in_flight(), 2);
    /// assert_eq!(FrameConfig::new(), FrameConfig::default());
    /// ```
    pub const fn new() -> Self {
        Self {
            frames_in_flight: Self::DEFAULT_FRAMES_IN_FLIGHT,
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            trim_after: Self::DEFAULT_TRIM_AFTER,
            lanes: Self::DEFAULT_LANES,
        }
    }

    /// Sets `N`: memory allocated in frame `k` stays valid until frame `k + N` begins
    /// (1 ..= [`MAX_FRAMES_IN_FLIGHT`](Self::MAX_FRAMES_IN_FLIGHT)).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameConfig;
    /// assert_eq!(FrameConfig::new().with_frames_in_flight(3).frames_in_flight(), 3);
    /// ```
    #[must_use]
    pub const fn with_frames_in_flight(mut self, frames: usize) -> Self {
        self.frames_in_flight = frames;
        self
    }

    /// Sets the mapping length of a standard chunk, rounded up to whole pages when the
    /// arena is built ([`PAGE_SIZE`] ..= [`MAX_CHUNK_SIZE`](Self::MAX_CHUNK_SIZE)).
    /// Requests that do not fit an empty chunk get a dedicated mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::{FrameArena, FrameConfig};
    /// let arena = FrameArena::with_config(FrameConfig::new().with_chunk_size(10_000))?;
    /// assert_eq!(arena.config().chunk_size(), 12_288); // three pages
    /// # Ok::<(), tidyheap::frame::FrameConfigError>(())
    /// ```
    #[must_use]
    pub const fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets how many whole frames a chunk may sit unused in the pool before it is
    /// released to the OS. 0 releases every chunk as soon as its frame retires.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameConfig;
    /// assert_eq!(FrameConfig::new().with_trim_after(5).trim_after(), 5);
    /// ```
    #[must_use]
    pub const fn with_trim_after(mut self, frames: u64) -> Self {
        self.trim_after = frames;
        self
    }

    /// Sets the number of lanes (1 ..= [`MAX_LANES`](Self::MAX_LANES)): lane 0 serves
    /// the [`Frame`] token, the others serve one thread each through [`FrameShared`].
    /// Threads beyond `lanes - 1` share a locked overflow lane.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameConfig;
    /// assert_eq!(FrameConfig::new().with_lanes(8).lanes(), 8);
    /// ```
    #[must_use]
    pub const fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes;
        self
    }

    /// Frames in flight, `N`.
    pub const fn frames_in_flight(&self) -> usize {
        self.frames_in_flight
    }

    /// Standard chunk length in bytes.
    pub const fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Idle frames before a pooled chunk is released.
    pub const fn trim_after(&self) -> u64 {
        self.trim_after
    }

    /// Number of lanes.
    pub const fn lanes(&self) -> usize {
        self.lanes
    }

    /// Checks the ranges and rounds the chunk size up to whole pages.
    pub(super) fn validate(mut self) -> Result<Self, FrameConfigError> {
        if !(1..=Self::MAX_FRAMES_IN_FLIGHT).contains(&self.frames_in_flight) {
            return Err(FrameConfigError::FramesInFlight(self.frames_in_flight));
        }
        if !(1..=Self::MAX_LANES).contains(&self.lanes) {
            return Err(FrameConfigError::Lanes(self.lanes));
        }
        if !(PAGE_SIZE..=Self::MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(FrameConfigError::ChunkSize(self.chunk_size));
        }
        // Cannot overflow: the size is at most MAX_CHUNK_SIZE, itself a page multiple.
        self.chunk_size = self.chunk_size.next_multiple_of(PAGE_SIZE);
        Ok(self)
    }
}

impl Default for FrameConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A [`FrameConfig`] value out of range. The value is carried.
///
/// # Examples
///
/// ```
/// use tidyheap::frame::{FrameArena, FrameConfig, FrameConfigError};
/// let err = FrameArena::with_config(FrameConfig::new().with_frames_in_flight(0)).unwrap_err();
/// assert_eq!(err, FrameConfigError::FramesInFlight(0));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameConfigError {
    /// `frames_in_flight` is 0 or above [`FrameConfig::MAX_FRAMES_IN_FLIGHT`].
    FramesInFlight(usize),
    /// `chunk_size` is below [`PAGE_SIZE`] or above [`FrameConfig::MAX_CHUNK_SIZE`].
    ChunkSize(usize),
    /// `lanes` is 0 or above [`FrameConfig::MAX_LANES`].
    Lanes(usize),
}

impl fmt::Display for FrameConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::FramesInFlight(n) => write!(
                f,
                "frames_in_flight must be 1..={}, got {n}",
                FrameConfig::MAX_FRAMES_IN_FLIGHT
            ),
            Self::ChunkSize(n) => write!(
                f,
                "chunk_size must be {PAGE_SIZE}..={} bytes, got {n}",
                FrameConfig::MAX_CHUNK_SIZE
            ),
            Self::Lanes(n) => write!(f, "lanes must be 1..={}, got {n}", FrameConfig::MAX_LANES),
        }
    }
}

impl std::error::Error for FrameConfigError {}
