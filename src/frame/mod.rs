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
//! **Lanes.** A lane is one bump allocator: a current chunk and a pointer into it. The
//! [`Frame`] token owns lane 0 and is `Send` but not `Sync`, so allocating through it is
//! exactly bumpalo's fast path: *add the size, compare with the chunk end, store* (plus
//! an align-up for alignments above 8). To allocate from several threads at once, hand
//! them the token's [`FrameShared`] view (`Copy + Send + Sync`): each thread claims a
//! lane of its own for the frame (one `fetch_add`, once per thread per frame) and caches
//! it in a thread-local, so its allocations are *read the thread-local, compare the frame
//! serial, bump* — no lock, no atomic read-modify-write. When its chunk is full a lane
//! pops a fresh one from the free stack (lock-free) or maps a new one. A request that
//! does not fit even an empty chunk gets a dedicated mapping of its own. Threads beyond
//! the lane count share one overflow lane behind a spin lock. See `lane.rs` for the
//! claim protocol.
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
//! `&'f mut T` where `'f` is the borrow of `frame`, and [`Frame::shared`] returns a
//! `FrameShared<'f>` whose allocations carry the same `'f`. Hence:
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
//! and [`Frame::alloc_raw`] (and their [`FrameShared`] twins), which return pointers
//! with exactly that documented lifetime.
//!
//! Lane 0 is safe from data races because the token is not `Sync`: threads cannot
//! share `&Frame`, only `FrameShared`, which never touches lane 0.
//!
//! The examples below must not compile, each for one reason, named by the error code
//! after `compile_fail` (E0597: borrowed value does not live long enough; E0499: two
//! mutable borrows; E0505: move out while borrowed; E0277: `Frame` is not `Sync`). Stable
//! rustdoc only checks that they fail, not the code: a change that made one fail for
//! another reason would pass unnoticed there. Rustdoc checks the codes when it runs as
//! a nightly toolchain, e.g. `RUSTC_BOOTSTRAP=1 cargo test --doc frame`, and each code
//! was checked that way.
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
//! Threads share the frame through [`Frame::shared`], not `&Frame`:
//!
//! ```compile_fail,E0277
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let frame = arena.begin_frame();
//! std::thread::scope(|s| {
//!     s.spawn(|| *frame.alloc(1u32));
//! });
//! ```
//!
//! Allocations through a shared view cannot outlive the frame either:
//!
//! ```compile_fail,E0597
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let escaped = {
//!     let frame = arena.begin_frame();
//!     let shared = frame.shared();
//!     std::thread::scope(|s| s.spawn(move || shared.alloc(5u8)).join().unwrap())
//! };
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
//! # Scratch collections from many threads
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use tidyheap::frame::FrameArena;
//!
//! let mut arena = FrameArena::new();
//! let frame = arena.begin_frame();
//! let shared = frame.shared();
//! let sums: std::vec::Vec<u64> = std::thread::scope(|s| {
//!     let jobs: std::vec::Vec<_> = (0..4u64)
//!         .map(|t| {
//!             s.spawn(move || {
//!                 let mut hits = Vec::new_in(shared);
//!                 hits.extend((0..100).map(|i| t * 100 + i));
//!                 hits.iter().sum()
//!             })
//!         })
//!         .collect();
//!     jobs.into_iter().map(|j| j.join().unwrap()).collect()
//! });
//! assert_eq!(sums.iter().sum::<u64>(), (0..400).sum());
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
mod config;
mod lane;
mod token;

use core::fmt;
use core::ptr::NonNull;

pub use self::config::{FrameConfig, FrameConfigError};
pub use self::token::{Frame, FrameShared};

use self::chunk::{ChunkList, Counters, FreeStack};
use self::lane::{Lane, OverflowLane, Refill, unique_id};
use crate::sync::{AtomicUsize, Ordering};

/// A snapshot of a [`FrameArena`]'s counters.
///
/// "Frame bytes" are bump extents: requested sizes rounded up to 8 bytes, plus
/// alignment padding, minus what
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
/// let shared = frame.shared();
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         s.spawn(move || {
///             let mine = shared.alloc_slice_fill_with(1000, |i| t * 1000 + i as u32);
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
    /// The lanes, owned (a leaked `Box<[Lane]>`, freed on drop). Lane 0 belongs to the
    /// frame token; lanes from 1 on are claimed by threads through [`FrameShared`].
    /// Held as a raw pointer so the token can keep a pointer to lane 0 while it holds
    /// `&mut FrameArena`.
    lanes: NonNull<[Lane]>,
    overflow: OverflowLane,
    /// Next lane to hand out in the current frame (may exceed the lane count: overflow
    /// claims); [`FIRST_SHARED_LANE`] at the start of every frame.
    next_lane: AtomicUsize,
    free: FreeStack,
    counters: Counters,
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

/// Lane 0 is the token's; thread claims start here.
const FIRST_SHARED_LANE: usize = 1;

// SAFETY:
// * `lanes` is owned like a `Box<[Lane]>` and `Lane` is `Send + Sync`;
// * every other field is `Send + Sync`;
// * through `&FrameArena` alone only counters and configuration are readable; lane state
//   is reached only through a frame token or its shared view, under the lane protocol.
unsafe impl Send for FrameArena {}
// SAFETY: as for `Send`.
unsafe impl Sync for FrameArena {}

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
            lanes: NonNull::from(Box::leak(
                (0..config.lanes)
                    .map(|_| Lane::new())
                    .collect::<Box<[Lane]>>(),
            )),
            overflow: OverflowLane::new(),
            next_lane: AtomicUsize::new(FIRST_SHARED_LANE),
            free: FreeStack::new(),
            counters: Counters::default(),
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
                // `c` holds only frame `now - N`'s blocks: no safe reference to them exists
                // (their token is gone) and raw pointers to them are documented dead now.
                // SAFETY: * `c` left the in-flight list: it is live and on no list;
                // * its blocks die as this frame begins (see above).
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
        self.open = true;
        Frame::new(self, unique_id())
    }

    /// The lanes.
    fn lanes(&self) -> &[Lane] {
        // SAFETY: `lanes` is a live leaked box owned by `self`; shared access to `Lane`
        // is governed by its own protocol.
        unsafe { self.lanes.as_ref() }
    }

    /// The lanes, exclusively (between frames).
    #[cfg(test)]
    fn lanes_mut(&mut self) -> &mut [Lane] {
        // SAFETY: `lanes` is a live leaked box owned by `self`, and `&mut self` excludes
        // every other access (no token is alive).
        unsafe { self.lanes.as_mut() }
    }

    /// Ends the open frame: every lane's chunks go to the frame's in-flight slot.
    fn finish_frame(&mut self) {
        debug_assert!(self.open);
        let slot = self.slot(self.frame);
        let claimed = self
            .next_lane
            .load(Ordering::Relaxed)
            .min(self.lanes().len());
        // SAFETY: `&mut self`: no token, so no other access to the lanes; the lanes live
        // in their own allocation, disjoint from `in_flight`.
        let lanes = unsafe { self.lanes.as_mut() };
        let retired = &mut self.in_flight[slot];
        debug_assert!(
            retired.is_empty(),
            "the slot was emptied when the frame began"
        );
        let mut bytes = 0;
        for lane in &mut lanes[..claimed] {
            lane.owner.store(0, Ordering::Relaxed);
            bytes += lane.bump_mut().finish(retired);
        }
        bytes += self.overflow.bump_mut().finish(retired);
        self.next_lane.store(FIRST_SHARED_LANE, Ordering::Relaxed);
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
        assert_eq!(self.next_lane.load(Ordering::Relaxed), FIRST_SHARED_LANE);
        for lane in self.lanes_mut() {
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
        // SAFETY: `lanes` came from `Box::leak` in `build` and is reclaimed once, here;
        // no token is alive.
        drop(unsafe { Box::from_raw(self.lanes.as_ptr()) });
    }
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests;

#[cfg(all(test, tidyheap_loom))]
mod loom_tests;
