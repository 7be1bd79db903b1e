//! Frame arenas: per-frame scratch memory with N frames in flight.
//!
//! A game allocates piles of short-lived data every frame (visibility lists, command
//! buffers, temporary strings) and drops all of it at once. A [`FrameArena`] serves that
//! with bump allocation and frees it wholesale, a whole frame at a time:
//!
//! ```
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! for tick in 0..3u32 {
//!     let frame = arena.begin_frame();
//!     let visible = frame.alloc_slice_fill_with(100, |i| i as u32 * tick);
//!     let label = frame.alloc_str("scratch");
//!     assert_eq!(visible[99], 99 * tick);
//!     assert_eq!(label, "scratch");
//!     frame.end(); // or just let `frame` drop
//! }
//! ```
//!
//! # The algorithm
//!
//! **Chunks.** Memory comes in chunks (256 KiB by default) mapped straight from the OS
//! with [`crate::os::reserve`], never from the Rust global allocator, so a frame arena
//! keeps working when tidyheap itself is the global allocator. A header at the start of
//! each chunk links it into one of three kinds of intrusive list: the arena's *free
//! stack*, a lane's *used* list, or an *in-flight* slot.
//!
//! **Lanes.** Each allocating thread claims one of a fixed number of lanes for the frame
//! (one `fetch_add`, once per thread per frame) and caches the lane index in a
//! thread-local. After that, allocating is: read the thread-local, compare the frame
//! serial, then *align up, add, compare with the chunk end, store* — no lock, no atomic
//! read-modify-write. When its chunk is full a lane pops a fresh one from the free stack
//! (lock-free) or maps a new one. A request that does not fit even an empty chunk gets
//! a dedicated mapping of its own. Threads beyond the lane count share one overflow lane
//! behind a spin lock. See `lane.rs` for the claim protocol.
//!
//! **Frames in flight.** With `N` = [`FrameConfig::frames_in_flight`], frame `k`'s chunks
//! go into in-flight slot `k % N` when it ends, and come back to the free stack when
//! frame `k + N` begins — not before. So a block allocated in frame `k` stays valid
//! until frame `k + N` begins: the render thread can read frame `k`'s command lists
//! while the game thread fills frame `k + 1`. Beginning a frame costs O(chunks retired +
//! chunks pooled + lanes used): nothing is zeroed, unmapped or walked block by block.
//!
//! **Trimming.** Chunks that sit in the free stack for [`FrameConfig::trim_after`] whole
//! frames without being taken are unmapped when the next frame begins, so a spike of
//! scratch use is given back to the OS once it has passed. After warm-up, a steady
//! workload maps nothing: [`FrameStats::chunk_maps`] stops moving.
//!
//! # Safety through lifetimes
//!
//! [`FrameArena::begin_frame`] takes `&mut self` and returns a [`Frame`] token that
//! borrows the arena. Every safe allocation borrows the token: `frame.alloc(x)` returns
//! `&'f mut T` where `'f` is the borrow of `frame`. Hence:
//!
//! * a reference cannot outlive its frame token, so safe code cannot touch frame memory
//!   after its frame has ended;
//! * the frame cannot end (the token cannot be dropped or moved into
//!   [`Frame::end`]) while any of its references is alive;
//! * a new frame cannot begin while the previous token, and so any of its references,
//!   is alive, because both need `&mut FrameArena`.
//!
//! Safe code therefore sees frame memory for exactly one frame — the conservative
//! subset of the `k + N` guarantee. Data that must stay in flight for the full `N`
//! frames (for another thread, or the GPU) uses the raw API, [`Frame::alloc_layout`]
//! and [`Frame::alloc_raw`], which return pointers with exactly that documented
//! lifetime.
//!
//! A reference cannot outlive its frame token:
//!
//! ```compile_fail,E0597
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let escaped: &mut u32;
//! {
//!     let frame = arena.begin_frame();
//!     escaped = frame.alloc(7);
//! } // the frame ends here
//! assert_eq!(*escaped, 7);
//! ```
//!
//! A new frame cannot begin while a previous token's borrows are alive:
//!
//! ```compile_fail,E0499
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let frame = arena.begin_frame();
//! let kept = frame.alloc(1u64);
//! let next = arena.begin_frame(); // the arena is still borrowed by `frame`
//! *kept += 1;
//! ```
//!
//! A frame cannot end while its allocations are in use:
//!
//! ```compile_fail,E0505
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let frame = arena.begin_frame();
//! let kept = frame.alloc_str("still here");
//! frame.end();
//! println!("{kept}");
//! ```
//!
//! Scratch collections are bound the same way:
//!
//! ```compile_fail,E0597
//! use allocator_api2::vec::Vec;
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let list = {
//!     let frame = arena.begin_frame();
//!     let mut list = Vec::new_in(&frame);
//!     list.push(1u8);
//!     list
//! };
//! ```
//!
//! # Drop
//!
//! Frame memory is reclaimed wholesale: **values placed in a frame are never dropped**,
//! like bumpalo's. A `String` or `Vec<T>` (on the global heap) stored in a frame leaks
//! its heap buffer. Store plain data, or frame-allocated collections
//! (`allocator_api2::vec::Vec<T, &Frame>`), whose buffers live in the frame too.

mod alloc_api;
mod chunk;
mod lane;

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;

use self::chunk::{ChunkList, Counters, FreeStack};
use self::lane::{Bump, LOCAL, Lane, OVERFLOW, OverflowLane, Refill, unique_id};
use crate::AllocError;
use crate::os::PAGE_SIZE;
use crate::sync::{AtomicUsize, Ordering};

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
    frames_in_flight: usize,
    chunk_size: usize,
    trim_after: u64,
    lanes: usize,
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

    /// Sets the number of lanes: threads that can allocate in one frame without sharing
    /// (1 ..= [`MAX_LANES`](Self::MAX_LANES)). Further threads share a locked overflow
    /// lane.
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
    fn validate(mut self) -> Result<Self, FrameConfigError> {
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

/// A snapshot of a [`FrameArena`]'s counters.
///
/// "Frame bytes" are bump extents: requested sizes plus alignment padding, minus what
/// the [`Allocator`](allocator_api2::alloc::Allocator) impl gave back by freeing or
/// shrinking the most recent block; the unused tail of a chunk that was left for a fresh
/// one is not counted.
///
/// # Examples
///
/// ```
/// use tidyheap::frame::FrameArena;
///
/// let mut arena = FrameArena::new();
/// let frame = arena.begin_frame();
/// frame.alloc([0u64; 4]);
/// frame.end();
/// let stats = arena.stats();
/// assert_eq!(stats.frames, 1);
/// assert_eq!(stats.frame_bytes, 32);
/// assert_eq!(stats.chunks_held, 1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FrameStats {
    /// Frames begun so far; also the index of the current or most recent frame.
    pub frames: u64,
    /// Bytes allocated in the most recently ended frame.
    pub frame_bytes: usize,
    /// Bytes allocated in the frame ended before that one.
    pub previous_frame_bytes: usize,
    /// High-water mark: the largest `frame_bytes` of any ended frame.
    pub high_water_bytes: usize,
    /// Chunks currently mapped (in use, in flight or pooled).
    pub chunks_held: usize,
    /// Total mapping length of those chunks.
    pub bytes_held: usize,
    /// The largest `bytes_held` ever reached.
    pub peak_bytes_held: usize,
    /// Chunk mappings made, ever (standard and dedicated). Constant once a steady
    /// workload has warmed up.
    pub chunk_maps: u64,
    /// Chunk mappings released, ever (trimmed chunks and retired dedicated ones).
    pub chunk_releases: u64,
}

/// An arena of per-frame scratch memory. See the [module docs](self) for the algorithm
/// and the lifetime rules.
///
/// # Examples
///
/// ```
/// use tidyheap::frame::FrameArena;
///
/// let mut arena = FrameArena::new();
/// let frame = arena.begin_frame();
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         let frame = &frame;
///         s.spawn(move || {
///             let mine = frame.alloc_slice_fill_with(1000, |i| t * 1000 + i as u32);
///             assert_eq!(mine[999], t * 1000 + 999);
///         });
///     }
/// });
/// frame.end();
/// assert_eq!(arena.stats().frame_bytes, 4 * 4000);
/// ```
pub struct FrameArena {
    // Touched by every thread during a frame: atomics, per-lane state under the lane
    // protocol, or read-only until the frame ends.
    lanes: Box<[Lane]>,
    overflow: OverflowLane,
    /// Lanes handed out in the current frame (may exceed `lanes.len()`: overflow claims).
    next_lane: AtomicUsize,
    free: FreeStack,
    counters: Counters,
    /// The current frame's process-unique serial; 0 before the first frame.
    serial: u64,
    config: FrameConfig,

    // Touched only under `&mut self` (frame boundaries).
    /// Slot `k % N` holds the chunks of ended frame `k` until frame `k + N` begins.
    in_flight: Box<[ChunkList]>,
    /// Frames begun.
    frame: u64,
    /// A frame has begun and not ended (its token is alive, or was leaked).
    open: bool,
    frame_bytes: usize,
    previous_frame_bytes: usize,
    high_water_bytes: usize,
}

impl FrameArena {
    /// An arena with the [default configuration](FrameConfig::new). Maps nothing until
    /// the first allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameArena;
    /// let arena = FrameArena::new();
    /// assert_eq!(arena.stats().chunks_held, 0);
    /// ```
    pub fn new() -> Self {
        Self::build(FrameConfig::new())
    }

    /// An arena with `config`.
    ///
    /// # Errors
    ///
    /// [`FrameConfigError`] naming the first field out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::{FrameArena, FrameConfig, FrameConfigError};
    /// let arena = FrameArena::with_config(FrameConfig::new().with_lanes(4))?;
    /// assert_eq!(arena.config().lanes(), 4);
    /// assert!(FrameArena::with_config(FrameConfig::new().with_chunk_size(100)).is_err());
    /// # Ok::<(), FrameConfigError>(())
    /// ```
    pub fn with_config(config: FrameConfig) -> Result<Self, FrameConfigError> {
        Ok(Self::build(config.validate()?))
    }

    fn build(config: FrameConfig) -> Self {
        Self {
            lanes: (0..config.lanes).map(|_| Lane::new()).collect(),
            overflow: OverflowLane::new(),
            next_lane: AtomicUsize::new(0),
            free: FreeStack::new(),
            counters: Counters::default(),
            serial: 0,
            config,
            in_flight: (0..config.frames_in_flight)
                .map(|_| ChunkList::new())
                .collect(),
            frame: 0,
            open: false,
            frame_bytes: 0,
            previous_frame_bytes: 0,
            high_water_bytes: 0,
        }
    }

    /// The configuration in force (chunk size rounded to pages).
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Begins the next frame and returns its token.
    ///
    /// Frame `k = stats().frames + 1` begins: the chunks of frame `k - N` return to the
    /// pool (raw pointers from that frame die now), and pooled chunks idle for
    /// [`FrameConfig::trim_after`] frames are released. Costs O(chunks retired + chunks
    /// pooled); maps nothing. If the previous token was leaked (`mem::forget`), its frame
    /// is ended first.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameArena;
    /// let mut arena = FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert_eq!(frame.index(), 1);
    /// drop(frame);
    /// assert_eq!(arena.begin_frame().index(), 2);
    /// ```
    pub fn begin_frame(&mut self) -> Frame<'_> {
        if self.open {
            self.finish_frame();
        }
        self.frame += 1;
        let now = self.frame;
        let slot = self.slot(now);
        let mut retiring = core::mem::replace(&mut self.in_flight[slot], ChunkList::new());
        let counters = &self.counters;
        let trim_after = self.config.trim_after;
        self.free.with_list(|free| {
            while let Some(c) = retiring.pop() {
                // SAFETY:
                // * `c` left the in-flight list, so it is live and in no list;
                // * it holds only frame `now - N`'s blocks, which die as this frame begins;
                //   no safe reference to them exists (their frame token is gone) and raw
                //   pointers to them are documented to be dead now.
                unsafe {
                    if chunk::is_dedicated(c) {
                        chunk::release(c, counters);
                    } else {
                        chunk::set_freed_at(c, now);
                        free.push(c);
                    }
                }
            }
            free.retain(|c| {
                // SAFETY: `c` is in the free stack, which we hold exclusively.
                let idle = now - unsafe { chunk::freed_at(c) };
                if idle < trim_after {
                    return true;
                }
                // SAFETY: a pooled chunk holds no live block; `retain` unlinks it right
                // after and never touches it again.
                unsafe { chunk::release(c, counters) };
                false
            });
        });
        self.serial = unique_id();
        self.open = true;
        Frame { arena: self }
    }

    /// Ends the open frame: every lane's chunks go to the frame's in-flight slot.
    fn finish_frame(&mut self) {
        debug_assert!(self.open);
        let slot = self.slot(self.frame);
        let claimed = self.next_lane.load(Ordering::Relaxed).min(self.lanes.len());
        let retired = &mut self.in_flight[slot];
        debug_assert!(
            retired.is_empty(),
            "the slot was emptied when the frame began"
        );
        let mut bytes = 0;
        for lane in &mut self.lanes[..claimed] {
            lane.owner.store(0, Ordering::Relaxed);
            bytes += lane.bump_mut().finish(retired);
        }
        bytes += self.overflow.bump_mut().finish(retired);
        self.next_lane.store(0, Ordering::Relaxed);
        self.previous_frame_bytes = self.frame_bytes;
        self.frame_bytes = bytes;
        self.high_water_bytes = self.high_water_bytes.max(bytes);
        self.open = false;
    }

    fn slot(&self, frame: u64) -> usize {
        // The remainder is below `frames_in_flight`, a usize.
        (frame % self.config.frames_in_flight as u64) as usize
    }

    /// Releases every pooled chunk now, without waiting for
    /// [`trim_after`](FrameConfig::trim_after). Chunks in flight are kept. Returns the
    /// number of chunks released.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::{FrameArena, FrameConfig};
    ///
    /// let mut arena = FrameArena::with_config(FrameConfig::new().with_frames_in_flight(1))?;
    /// arena.begin_frame().alloc([1u8; 100]);
    /// drop(arena.begin_frame()); // frame 1's chunk returns to the pool
    /// assert_eq!(arena.trim(), 1);
    /// assert_eq!(arena.stats().chunks_held, 0);
    /// # Ok::<(), tidyheap::frame::FrameConfigError>(())
    /// ```
    pub fn trim(&mut self) -> usize {
        let counters = &self.counters;
        self.free.with_list(|free| {
            let mut released = 0;
            while let Some(c) = free.pop() {
                // SAFETY: a pooled chunk holds no live block and has left the list.
                unsafe { chunk::release(c, counters) };
                released += 1;
            }
            released
        })
    }

    /// The counters. During a frame use [`Frame::stats`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::frame::FrameArena;
    /// assert_eq!(FrameArena::new().stats().chunk_maps, 0);
    /// ```
    pub fn stats(&self) -> FrameStats {
        let c = &self.counters;
        FrameStats {
            frames: self.frame,
            frame_bytes: self.frame_bytes,
            previous_frame_bytes: self.previous_frame_bytes,
            high_water_bytes: self.high_water_bytes,
            chunks_held: c.chunks_held.load(Ordering::Relaxed),
            bytes_held: c.bytes_held.load(Ordering::Relaxed),
            peak_bytes_held: c.peak_bytes_held.load(Ordering::Relaxed),
            chunk_maps: c.maps.load(Ordering::Relaxed),
            chunk_releases: c.releases.load(Ordering::Relaxed),
        }
    }

    fn refill(&self) -> Refill<'_> {
        Refill {
            free: &self.free,
            counters: &self.counters,
            chunk_size: self.config.chunk_size,
        }
    }

    /// Runs `f` on the calling thread's bump state for the open frame: its lane, or the
    /// overflow lane under its lock. With `claim == false` a thread that holds no lane in
    /// this frame gets `None` instead of claiming one.
    fn with_own_bump<R>(&self, claim: bool, f: impl FnOnce(&mut Bump) -> R) -> Option<R> {
        let index = LOCAL.with(|cell| {
            let mut local = cell.get();
            if local.serial == self.serial {
                return Some(local.lane);
            }
            if local.tag == 0 {
                local.tag = unique_id();
            }
            // A thread can hold a lane without the cache saying so when it used another
            // arena's frame meanwhile: look for its tag first.
            let claimed = self.next_lane.load(Ordering::Relaxed).min(self.lanes.len());
            let found = self.lanes[..claimed]
                .iter()
                .position(|lane| lane.owner.load(Ordering::Relaxed) == local.tag);
            let index = match found {
                Some(i) => i,
                None if !claim => {
                    cell.set(local);
                    return None;
                }
                None => {
                    let i = self.next_lane.fetch_add(1, Ordering::Relaxed);
                    match self.lanes.get(i) {
                        Some(lane) => {
                            lane.owner.store(local.tag, Ordering::Relaxed);
                            i
                        }
                        None => OVERFLOW,
                    }
                }
            };
            local.serial = self.serial;
            local.lane = index;
            cell.set(local);
            Some(index)
        })?;
        Some(match self.lanes.get(index) {
            // SAFETY: this thread claimed lane `index` in the open frame (its tag is in
            // `owner`), so no other thread touches its bump state; the `&mut` lives only
            // for the call of `f`, which does not re-enter the arena.
            Some(lane) => lane.bump.with_mut(|b| f(unsafe { &mut *b })),
            None => self.overflow.with(f),
        })
    }

    /// Ends a leaked frame, then unmaps every chunk: the arena's teardown.
    fn release_all(&mut self) {
        if self.open {
            self.finish_frame();
        }
        let counters = &self.counters;
        let release_all = |list: &mut ChunkList| {
            while let Some(c) = list.pop() {
                // SAFETY: `&mut self` means no token, hence no safe reference, exists;
                // raw pointers are documented to die with the arena, whose drop is
                // the only caller outside tests.
                unsafe { chunk::release(c, counters) };
            }
        };
        self.in_flight.iter_mut().for_each(release_all);
        self.free.with_list(release_all);
    }

    /// Walks every chunk between frames and checks it against the counters and the lane
    /// invariants. Returns (chunks, bytes).
    #[cfg(test)]
    fn audit(&mut self) -> (usize, usize) {
        assert!(!self.open, "audit runs between frames");
        assert_eq!(self.next_lane.load(Ordering::Relaxed), 0);
        for lane in self.lanes.iter_mut() {
            assert_eq!(lane.owner.load(Ordering::Relaxed), 0);
            assert!(lane.bump_mut().is_empty());
        }
        assert!(self.overflow.bump_mut().is_empty());
        let mut chunks = 0;
        let mut bytes = 0;
        let mut count = |list: &ChunkList, pooled: bool| {
            for c in list.iter() {
                chunks += 1;
                // SAFETY: chunks in the arena's lists are live.
                unsafe {
                    bytes += chunk::size_of_chunk(c);
                    if pooled {
                        assert!(!chunk::is_dedicated(c));
                    }
                }
            }
        };
        for list in self.in_flight.iter() {
            count(list, false);
        }
        self.free.with_list(|free| count(free, true));
        let stats = self.stats();
        assert_eq!(stats.chunks_held, chunks);
        assert_eq!(stats.bytes_held, bytes);
        assert_eq!(
            stats.chunk_maps - stats.chunk_releases,
            chunks as u64,
            "maps - releases = held"
        );
        (chunks, bytes)
    }
}

impl Default for FrameArena {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for FrameArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameArena")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for FrameArena {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The token of one open frame: everything allocated through it lives until it ends.
///
/// `&Frame` is `Send + Sync`: hand it to scoped threads (`std::thread::scope`, rayon)
/// and each allocates in its own lane. Dropping the token (or [`Frame::end`]) ends the
/// frame.
///
/// Allocation methods come in pairs: the plain one panics if the OS refuses memory, the
/// `try_` twin returns the [`AllocError`]. Values are never dropped (see the
/// [module docs](self#drop)).
///
/// # Examples
///
/// ```
/// use tidyheap::frame::FrameArena;
///
/// let mut arena = FrameArena::new();
/// let frame = arena.begin_frame();
/// let point = frame.alloc((1.0f32, 2.0f32));
/// point.0 += 1.0;
/// let copy = frame.alloc_slice_copy(&[1, 2, 3]);
/// assert_eq!((point.0, copy.len()), (2.0, 3));
/// ```
pub struct Frame<'a> {
    arena: &'a mut FrameArena,
}

impl Frame<'_> {
    /// The frame's index: 1 for the arena's first frame.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// assert_eq!(arena.begin_frame().index(), 1);
    /// ```
    pub fn index(&self) -> u64 {
        self.arena.frame
    }

    /// The arena's counters; the frame-bytes fields describe frames that have ended.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// frame.alloc(0u8);
    /// assert_eq!(frame.stats().chunk_maps, 1);
    /// ```
    pub fn stats(&self) -> FrameStats {
        self.arena.stats()
    }

    /// Ends the frame. Same as dropping the token.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// arena.begin_frame().end();
    /// assert_eq!(arena.stats().frames, 1);
    /// ```
    pub fn end(self) {
        drop(self);
    }

    /// Allocates a raw block for `layout`.
    ///
    /// The block is valid until frame `self.index() + N` begins on this arena
    /// (`N` = [`FrameConfig::frames_in_flight`]) or the arena is dropped, whichever comes
    /// first — even after this token is gone. It is never freed individually. A zero-size
    /// request returns a non-null, aligned pointer that must not be dereferenced for more
    /// than zero bytes.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] when the OS refuses a chunk,
    /// [`AllocError::TooLarge`] when no mapping can hold the request.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::frame::FrameArena;
    ///
    /// let mut arena = FrameArena::new(); // N = 2
    /// let frame = arena.begin_frame();
    /// let p = frame.alloc_layout(Layout::new::<u64>())?.cast::<u64>();
    /// // SAFETY: fresh, aligned, writable block of one u64.
    /// unsafe { p.write(42) };
    /// frame.end();
    /// let _frame2 = arena.begin_frame();
    /// // Frame 1's memory lives until frame 3 begins.
    /// // SAFETY: frame 1 + N = 3 has not begun.
    /// assert_eq!(unsafe { p.read() }, 42);
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    #[inline]
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let arena: &FrameArena = self.arena;
        let local = LOCAL.with(|cell| cell.get());
        if local.serial == arena.serial
            && let Some(lane) = arena.lanes.get(local.lane)
        {
            // SAFETY: the cached serial is this frame's, so this thread claimed `lane` in
            // this frame and is the only one touching its bump state; the `&mut` lives
            // for the bump only.
            let hit = lane
                .bump
                .with_mut(|b| unsafe { (*b).try_bump(layout.size(), layout.align()) });
            if let Some(p) = hit {
                return Ok(p);
            }
        }
        self.alloc_slow(layout)
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let arena: &FrameArena = self.arena;
        let refill = arena.refill();
        arena
            .with_own_bump(true, |b| b.alloc(&refill, layout.size(), layout.align()))
            .expect("claiming always yields a lane or the overflow lane")
    }

    /// Allocates a raw block of `size` bytes aligned to `align`; the checked form of
    /// [`alloc_layout`](Self::alloc_layout), with the same lifetime.
    ///
    /// # Errors
    ///
    /// [`AllocError::InvalidAlignment`] if `align` is not a power of two,
    /// [`AllocError::TooLarge`] if `size` rounded up to `align` exceeds `isize::MAX`,
    /// otherwise as [`alloc_layout`](Self::alloc_layout).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{AllocError, frame::FrameArena};
    ///
    /// let mut arena = FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let p = frame.alloc_raw(100, 64)?;
    /// assert_eq!(p.as_ptr() as usize % 64, 0);
    /// assert_eq!(frame.alloc_raw(8, 3), Err(AllocError::InvalidAlignment { align: 3 }));
    /// # Ok::<(), AllocError>(())
    /// ```
    pub fn alloc_raw(&self, size: usize, align: usize) -> Result<NonNull<u8>, AllocError> {
        if !align.is_power_of_two() {
            return Err(AllocError::InvalidAlignment { align });
        }
        let layout =
            Layout::from_size_align(size, align).map_err(|_| AllocError::TooLarge { size })?;
        self.alloc_layout(layout)
    }

    /// Moves `value` into the frame.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory; see [`try_alloc`](Self::try_alloc).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let n = frame.alloc(41u32);
    /// *n += 1;
    /// assert_eq!(*n, 42);
    /// ```
    // Each call returns a fresh block, disjoint from every other live one.
    #[allow(clippy::mut_from_ref)]
    pub fn alloc<T>(&self, value: T) -> &mut T {
        self.try_alloc(value).unwrap_or_else(|e| alloc_failed(e))
    }

    /// Moves `value` into the frame.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the OS refuses memory; `value` is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert_eq!(*frame.try_alloc('x')?, 'x');
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc<T>(&self, value: T) -> Result<&mut T, AllocError> {
        let p = self.alloc_layout(Layout::new::<T>())?.cast::<T>();
        // SAFETY:
        // * `p` is a fresh block of `T`'s size and alignment, disjoint from every live
        //   block, and valid while `self` is borrowed (the frame has not ended);
        // * it is initialised by the write before the reference is made.
        unsafe {
            p.write(value);
            Ok(&mut *p.as_ptr())
        }
    }

    /// Copies `src` into the frame.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory; see [`try_alloc_slice_copy`](Self::try_alloc_slice_copy).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let v = frame.alloc_slice_copy(&[1u16, 2, 3]);
    /// v[0] = 9;
    /// assert_eq!(v, &[9, 2, 3]);
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        self.try_alloc_slice_copy(src)
            .unwrap_or_else(|e| alloc_failed(e))
    }

    /// Copies `src` into the frame.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the OS refuses memory.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert_eq!(frame.try_alloc_slice_copy(b"abc")?, b"abc");
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_copy<T: Copy>(&self, src: &[T]) -> Result<&mut [T], AllocError> {
        let p = self.alloc_layout(Layout::for_value(src))?.cast::<T>();
        // SAFETY:
        // * `p` is a fresh block sized and aligned for `src.len()` values of `T`,
        //   disjoint from `src` and every other live block, valid while `self` is borrowed;
        // * `T: Copy`, so a bitwise copy initialises every element.
        unsafe {
            p.as_ptr().copy_from_nonoverlapping(src.as_ptr(), src.len());
            Ok(core::slice::from_raw_parts_mut(p.as_ptr(), src.len()))
        }
    }

    /// Allocates `len` values, the `i`-th being `f(i)`. `f` may itself allocate in the
    /// frame.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory or the size overflows; see
    /// [`try_alloc_slice_fill_with`](Self::try_alloc_slice_fill_with). A panic in `f`
    /// propagates; the elements made so far are never dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let squares = frame.alloc_slice_fill_with(4, |i| i * i);
    /// assert_eq!(squares, &[0, 1, 4, 9]);
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_with<T>(&self, len: usize, f: impl FnMut(usize) -> T) -> &mut [T] {
        self.try_alloc_slice_fill_with(len, f)
            .unwrap_or_else(|e| alloc_failed(e))
    }

    /// Allocates `len` values, the `i`-th being `f(i)`.
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] if `len` values of `T` overflow `isize::MAX` bytes,
    /// [`AllocError::OutOfMemory`] if the OS refuses memory. `f` is not called then.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::AllocError;
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert!(matches!(
    ///     frame.try_alloc_slice_fill_with(usize::MAX, |_| 0u64),
    ///     Err(AllocError::TooLarge { .. })
    /// ));
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_with<T>(
        &self,
        len: usize,
        mut f: impl FnMut(usize) -> T,
    ) -> Result<&mut [T], AllocError> {
        let layout = Layout::array::<T>(len).map_err(|_| AllocError::TooLarge {
            size: len.saturating_mul(size_of::<T>()),
        })?;
        // The space is reserved before `f` runs, so `f` may allocate in the frame too.
        let p = self.alloc_layout(layout)?.cast::<T>();
        for i in 0..len {
            // SAFETY: `i < len`, so the slot lies inside the fresh block, which is aligned
            // for `T`; each slot is written once.
            unsafe { p.as_ptr().add(i).write(f(i)) };
        }
        // SAFETY: all `len` elements were initialised above; the block is disjoint from
        // every other live block and valid while `self` is borrowed.
        Ok(unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) })
    }

    /// Copies `s` into the frame.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory; see [`try_alloc_str`](Self::try_alloc_str).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let s = frame.alloc_str("hello");
    /// s.make_ascii_uppercase();
    /// assert_eq!(s, "HELLO");
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_str(&self, s: &str) -> &mut str {
        self.try_alloc_str(s).unwrap_or_else(|e| alloc_failed(e))
    }

    /// Copies `s` into the frame.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the OS refuses memory.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert_eq!(frame.try_alloc_str("")?, "");
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_str(&self, s: &str) -> Result<&mut str, AllocError> {
        let bytes = self.try_alloc_slice_copy(s.as_bytes())?;
        // SAFETY: the bytes are a copy of a `str`, hence valid UTF-8.
        Ok(unsafe { core::str::from_utf8_unchecked_mut(bytes) })
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.arena.finish_frame();
    }
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("index", &self.index())
            .finish_non_exhaustive()
    }
}

#[cold]
#[inline(never)]
fn alloc_failed(e: AllocError) -> ! {
    panic!("frame arena allocation failed: {e}")
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
