//! Lanes: one bump allocator per allocating thread, and how a thread finds its lane.
//!
//! # Claiming a lane
//!
//! The arena has a fixed array of lanes. Lane 0 belongs to the frame token, which is
//! not `Sync` and needs no lookup. Threads allocating through `FrameShared` claim the
//! others: the first time a thread allocates in a frame it takes the next unclaimed
//! index with one `fetch_add` on `next_lane` (which starts each frame at 1), writes its
//! thread tag into the lane's `owner`, and caches `(frame serial, lane pointer)` in a
//! thread-local. Every later allocation of that thread in that frame compares the cached
//! serial with the frame's and goes straight to its lane: no atomic read-modify-write,
//! no lock.
//!
//! Frame serials come from one process-wide counter, so a cached entry can never be
//! mistaken for a lane of another frame or another arena. When a thread alternates
//! between arenas the single-entry cache misses; the thread then scans the claimed lanes
//! for its own tag before claiming a new one, so it keeps one lane per frame. When every
//! lane is claimed, later threads share the arena's overflow lane behind a spin lock.
//!
//! All claim state (`owner`, `next_lane`) is reset at the frame boundary, under
//! `&mut FrameArena`; a thread that exits mid-frame therefore loses its lane for the rest
//! of that frame only.

use core::alloc::Layout;
use core::cell::Cell;
use core::num::NonZeroUsize;
use core::ptr::{self, NonNull};

use super::chunk::{self, ChunkList, Counters, FreeStack, HEADER_SIZE};
use crate::AllocError;
use crate::os::PAGE_SIZE;
use crate::sync::{AtomicBool, AtomicU64, Backoff, Ordering, UnsafeCell};

/// Where a lane can get a fresh chunk: the shared parts of the arena.
pub(super) struct Refill<'a> {
    pub(super) free: &'a FreeStack,
    pub(super) counters: &'a Counters,
    /// Mapping length of a standard chunk (a multiple of [`PAGE_SIZE`]).
    pub(super) chunk_size: usize,
}

/// A lane's bump state.
///
/// Invariants:
/// * `ptr` is a multiple of [`MIN_ALIGN`] and at most `isize::MAX`; so is `end`;
/// * either EMPTY (`ptr == MIN_ALIGN`, `end == 0`, `start == usize::MAX`: every bump
///   fails, no block is "last"), or `start <= ptr <= end` where `[start, end)` is the
///   bump space of the current chunk, a chunk in `used`, and `base` is that chunk's
///   mapping pointer (the provenance every returned pointer is derived from);
/// * `[start, ptr)` holds this frame's blocks of the current chunk, each taking its size
///   rounded up to [`MIN_ALIGN`] plus alignment padding; `[ptr, end)` is free;
/// * `retired_bytes` is the bump extent of this frame's chunks other than the current
///   one (chunks left behind and oversize blocks), so the frame's byte count is
///   `retired_bytes + (ptr - start)`.
pub(super) struct Bump {
    ptr: usize,
    end: usize,
    start: usize,
    base: *mut u8,
    used: ChunkList,
    retired_bytes: usize,
}

impl Bump {
    /// The empty state: no chunk.
    pub(super) const EMPTY: Bump = Bump {
        ptr: MIN_ALIGN,
        end: 0,
        start: usize::MAX,
        base: ptr::null_mut(),
        used: ChunkList::new(),
        retired_bytes: 0,
    };

    /// The hot path: bump `ptr` by the size rounded to [`MIN_ALIGN`], check against
    /// `end`.
    ///
    /// For alignments up to [`MIN_ALIGN`] (constant after inlining for typed requests)
    /// `ptr` is already aligned, so this is an add, a compare and a store; larger
    /// alignments first round `ptr` up (an add and a mask).
    #[inline(always)]
    pub(super) fn try_bump(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let align = layout.align();
        let size = round_min(layout.size());
        // No overflow below: `ptr <= isize::MAX` (invariant), `align - 1 <= isize::MAX`,
        // and `size <= isize::MAX + 7` (a `Layout` size is at most `isize::MAX`); the
        // only sum that can exceed `usize::MAX` is checked.
        let (block, new_ptr) = if align <= MIN_ALIGN {
            (self.ptr, self.ptr + size)
        } else {
            let aligned = (self.ptr + (align - 1)) & !(align - 1);
            (aligned, aligned.checked_add(size)?)
        };
        if new_ptr > self.end {
            return None;
        }
        self.ptr = new_ptr;
        // `new_ptr <= end` rules out the EMPTY state, so `block >= start > 0` lies in the
        // current chunk and `base` carries its provenance.
        debug_assert!(block >= self.start && block != 0 && block % align == 0);
        let p = self.base.with_addr(block);
        // SAFETY: `block` is non-zero (see above).
        Some(unsafe { NonNull::new_unchecked(p) })
    }

    /// The slow path: bump, else take a fresh chunk (or map a dedicated one) and bump.
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] when the request cannot fit any mapping,
    /// [`AllocError::OutOfMemory`] when the OS refuses.
    pub(super) fn alloc(
        &mut self,
        refill: &Refill<'_>,
        layout: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        if let Some(p) = self.try_bump(layout) {
            return Ok(p);
        }
        let (size, align) = (layout.size(), layout.align());
        if size == 0 {
            // A zero-size block needs only a non-null, aligned address.
            return Ok(dangling(align));
        }
        let usable = refill.chunk_size - HEADER_SIZE;
        match round_min(size).checked_add(align - 1) {
            // Worst-case padding included, the request fits a fresh standard chunk.
            Some(need) if need <= usable => {
                self.take_chunk(refill)?;
                Ok(self
                    .try_bump(layout)
                    .expect("a fresh chunk fits any request of at most its usable size"))
            }
            _ => self.alloc_dedicated(refill, size, align),
        }
    }

    /// Leaves the current chunk (its tail stays unused this frame) and makes a chunk from
    /// the free stack, or a new mapping, current.
    fn take_chunk(&mut self, refill: &Refill<'_>) -> Result<(), AllocError> {
        let chunk = match refill.free.pop() {
            Some(c) => c,
            None => chunk::map(refill.chunk_size, PAGE_SIZE, false, refill.counters)?,
        };
        if self.ptr <= self.end {
            self.retired_bytes += self.ptr - self.start;
        }
        // SAFETY: `chunk` was just popped or mapped, so it is live and in no list.
        unsafe { self.used.push(chunk) };
        // SAFETY: a standard chunk is `chunk_size` bytes long, all ours.
        let size = unsafe { chunk::size_of_chunk(chunk) };
        debug_assert_eq!(size, refill.chunk_size);
        self.base = chunk.as_ptr().cast();
        self.start = chunk.as_ptr() as usize + HEADER_SIZE;
        self.ptr = self.start;
        self.end = chunk.as_ptr() as usize + size;
        // User-space mappings lie far below 2^63 on every 64-bit target; the hot path's
        // overflow reasoning rests on it.
        assert!(
            self.end <= isize::MAX as usize,
            "chunk mapped above isize::MAX"
        );
        Ok(())
    }

    /// Serves an oversize request from a mapping of its own; the current chunk stays
    /// current.
    fn alloc_dedicated(
        &mut self,
        refill: &Refill<'_>,
        size: usize,
        align: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let too_large = AllocError::TooLarge { size };
        let offset = crate::os::round_up(HEADER_SIZE, align).ok_or(too_large)?;
        let total = offset.checked_add(size).ok_or(too_large)?;
        if total > isize::MAX as usize {
            return Err(too_large);
        }
        let chunk = chunk::map(total, align.max(PAGE_SIZE), true, refill.counters)?;
        // SAFETY: the chunk was just mapped, so it is live and in no list.
        unsafe { self.used.push(chunk) };
        self.retired_bytes += size;
        // SAFETY: `offset + size <= total <=` the mapping length, so the block lies inside
        // the mapping; `offset` is a multiple of `align` and the mapping is aligned to
        // `align.max(PAGE_SIZE)`, so the block is aligned.
        Ok(unsafe { chunk.cast::<u8>().add(offset) })
    }

    /// Whether `[p, p + size)` is the most recent block of the current chunk.
    #[inline]
    fn is_last(&self, p: usize, size: usize) -> bool {
        p >= self.start && p.wrapping_add(round_min(size)) == self.ptr
    }

    /// Resizes the most recent block in place; false (and no change) when `[p, p + old)`
    /// is not the most recent block or `new` bytes do not fit. Sizes are at most
    /// `isize::MAX` (`Layout` sizes).
    pub(super) fn resize_last(&mut self, p: usize, old: usize, new: usize) -> bool {
        let new = round_min(new);
        if self.is_last(p, old) && new <= self.end - p {
            self.ptr = p + new;
            true
        } else {
            false
        }
    }

    /// True in the EMPTY state with no chunk held (a lane between frames).
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.ptr == MIN_ALIGN && self.end == 0 && self.start == usize::MAX && self.used.is_empty()
    }

    /// Ends the frame for this lane: moves its chunks to `retired`, returns the frame's
    /// byte count, and leaves the lane EMPTY.
    pub(super) fn finish(&mut self, retired: &mut ChunkList) -> usize {
        let mut bytes = self.retired_bytes;
        if self.ptr <= self.end {
            bytes += self.ptr - self.start;
        }
        let used = core::mem::replace(&mut self.used, ChunkList::new());
        retired.prepend(used);
        *self = Bump::EMPTY;
        bytes
    }
}

/// Every bump pointer is a multiple of this, and every block size is rounded up to it,
/// so requests aligned to at most this need no alignment arithmetic.
pub(super) const MIN_ALIGN: usize = 8;

/// `size` rounded up to [`MIN_ALIGN`]; `size <= isize::MAX`, so this cannot overflow.
#[inline(always)]
fn round_min(size: usize) -> usize {
    (size + (MIN_ALIGN - 1)) & !(MIN_ALIGN - 1)
}

/// A well-aligned, non-null address for a zero-size block.
#[inline]
fn dangling(align: usize) -> NonNull<u8> {
    debug_assert!(align.is_power_of_two());
    // SAFETY: `align` is a power of two, hence non-zero.
    NonNull::without_provenance(unsafe { NonZeroUsize::new_unchecked(align) })
}

/// One per-thread bump allocator.
///
/// Invariant: during a frame, `bump` is accessed by one party only: for lane 0, the
/// frame token (not `Sync`, so one thread at a time); for the other lanes, the thread
/// whose tag is in `owner`; for the overflow lane, the holder of its lock. Between frames
/// (under `&mut FrameArena`) every lane is unclaimed (`owner == 0`) and EMPTY.
#[repr(align(128))]
pub(super) struct Lane {
    /// Tag of the thread that claimed this lane in the current frame; 0 = unclaimed.
    pub(super) owner: AtomicU64,
    pub(super) bump: UnsafeCell<Bump>,
}

// SAFETY:
// * `Bump` holds raw pointers into chunk mappings, which have no thread affinity, so a
//   lane may move between threads.
unsafe impl Send for Lane {}
// SAFETY:
// * `owner` is atomic;
// * `bump` is only touched by the one party the struct's invariant names, or under
//   `&mut FrameArena` between frames. Claims are exclusive because each index from 1 on
//   is handed out once per frame by `fetch_add` and each thread tag is unique; lane 0 is
//   never handed out.
unsafe impl Sync for Lane {}

impl Lane {
    pub(super) fn new() -> Self {
        Self {
            owner: AtomicU64::new(0),
            bump: UnsafeCell::new(Bump::EMPTY),
        }
    }

    /// Exclusive access between frames.
    pub(super) fn bump_mut(&mut self) -> &mut Bump {
        // SAFETY: `&mut self` excludes every other access for the returned borrow.
        self.bump.with_mut(|b| unsafe { &mut *b })
    }
}

/// A spin lock around the overflow lane, for threads beyond the lane count.
pub(super) struct OverflowLane {
    locked: AtomicBool,
    lane: Lane,
}

impl OverflowLane {
    pub(super) fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
            lane: Lane::new(),
        }
    }

    /// Runs `f` on the overflow lane's bump state under the lock.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Bump) -> R) -> R {
        let mut backoff = Backoff::new();
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff.snooze();
        }
        // SAFETY: the lock is held, so no other thread touches the overflow bump state;
        // `f` gets it for the duration of the call only.
        let result = self.lane.bump.with_mut(|b| f(unsafe { &mut *b }));
        self.locked.store(false, Ordering::Release);
        result
    }

    /// Exclusive access between frames.
    pub(super) fn bump_mut(&mut self) -> &mut Bump {
        self.lane.bump_mut()
    }
}

/// What a thread remembers about its lane.
#[derive(Clone, Copy)]
pub(super) struct LocalLane {
    /// Serial of the open frame in which this thread owns `lane`; 0 = none.
    pub(super) serial: u64,
    /// The owned lane. Valid while `serial` is the serial of an open frame: serials are
    /// process-unique and the frame's token keeps its arena, hence the lane, alive.
    pub(super) lane: *const Lane,
    /// Serial of the open frame in which this thread uses the overflow lane; 0 = none.
    pub(super) overflow_serial: u64,
    /// This thread's unique tag; 0 until first needed.
    pub(super) tag: u64,
}

impl LocalLane {
    const NONE: LocalLane = LocalLane {
        serial: 0,
        lane: ptr::null(),
        overflow_serial: 0,
        tag: 0,
    };
}

#[cfg(not(tidyheap_loom))]
std::thread_local! {
    // Const-initialised with no destructor: access is a thread-pointer-relative load and
    // works even while other thread-locals are being destroyed.
    pub(super) static LOCAL: Cell<LocalLane> = const { Cell::new(LocalLane::NONE) };
}

#[cfg(tidyheap_loom)]
loom::thread_local! {
    pub(super) static LOCAL: Cell<LocalLane> = Cell::new(LocalLane::NONE);
}

/// A process-wide unique non-zero number (thread tags and frame serials).
///
/// This counter only has to hand out distinct values; no other memory is synchronised
/// through it, so it is a plain std atomic even under loom (loom has nothing to model
/// here, and its atomics cannot live in a `static`).
pub(super) fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    fn with_chunk(f: impl FnOnce(&mut Bump, &Refill<'_>)) {
        let free = FreeStack::new();
        let counters = Counters::default();
        let refill = Refill {
            free: &free,
            counters: &counters,
            chunk_size: PAGE_SIZE,
        };
        let mut bump = Bump::EMPTY;
        f(&mut bump, &refill);
        let mut retired = ChunkList::new();
        bump.finish(&mut retired);
        while let Some(c) = retired.pop() {
            // SAFETY: popped, in no list, and nothing refers to it any more.
            unsafe { chunk::release(c, &counters) };
        }
    }

    fn lay(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    fn check_invariant(b: &Bump) {
        if b.ptr == MIN_ALIGN && b.end == 0 {
            assert_eq!(b.start, usize::MAX);
        } else {
            assert!(b.start <= b.ptr && b.ptr <= b.end);
            assert_eq!(b.ptr % MIN_ALIGN, 0);
            assert_eq!(b.start, b.base as usize + HEADER_SIZE);
        }
    }

    #[test]
    fn empty_lane_never_bumps() {
        let mut b = Bump::EMPTY;
        for (size, align) in [(0, 1), (0, 4096), (1, 1), (8, 8)] {
            assert!(
                b.try_bump(Layout::from_size_align(size, align).unwrap())
                    .is_none()
            );
        }
        assert!(!b.resize_last(MIN_ALIGN, 0, 8));
        check_invariant(&b);
    }

    #[test]
    fn bumps_are_aligned_disjoint_and_counted() {
        with_chunk(|b, refill| {
            let mut last_end = 0;
            let mut total = 0;
            for (size, align) in [(3, 1), (8, 8), (1, 2), (100, 64), (0, 16), (7, 4)] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let p = b.alloc(refill, layout).unwrap().as_ptr() as usize;
                assert_eq!(p % align, 0);
                assert!(p >= last_end);
                last_end = p + round_min(size);
                total = last_end - b.start;
                check_invariant(b);
            }
            let mut sink = ChunkList::new();
            assert_eq!(b.finish(&mut sink), total);
            check_invariant(b);
            // Keep the chunk alive for `with_chunk`'s cleanup.
            let c = sink.pop().unwrap();
            // SAFETY: popped from `sink`, so in no list.
            unsafe { b.used.push(c) };
        });
    }

    #[test]
    fn last_block_resizes_in_place_only() {
        with_chunk(|b, refill| {
            let a = b.alloc(refill, lay(16, 8)).unwrap().as_ptr() as usize;
            let c = b.alloc(refill, lay(16, 8)).unwrap().as_ptr() as usize;
            assert!(!b.resize_last(a, 16, 32), "a is not the last block");
            assert!(b.resize_last(c, 16, 64));
            assert_eq!(b.ptr, c + 64);
            assert!(b.resize_last(c, 64, 8));
            assert_eq!(b.ptr, c + 8);
            assert!(!b.resize_last(c, 8, PAGE_SIZE), "does not fit the chunk");
            check_invariant(b);
        });
    }

    #[test]
    fn full_chunk_moves_on_and_oversize_gets_its_own() {
        with_chunk(|b, refill| {
            let usable = PAGE_SIZE - HEADER_SIZE;
            b.alloc(refill, lay(usable - 10, 1)).unwrap();
            let first = b.base;
            b.alloc(refill, lay(20, 1)).unwrap();
            assert_ne!(b.base, first, "a fresh chunk became current");
            let big = b.alloc(refill, lay(3 * PAGE_SIZE, 8192)).unwrap();
            assert_eq!(big.as_ptr() as usize % 8192, 0);
            assert_ne!(b.base.cast::<u8>(), big.as_ptr(), "current chunk unchanged");
            assert_eq!(refill.counters.chunks_held.load(Ordering::Relaxed), 3);
            assert_eq!(b.used.iter().count(), 3);
            check_invariant(b);
        });
    }
}
