//! The frame token and its shared view: the allocation API.
//!
//! [`Frame`] owns lane 0 of its arena and is not `Sync`, so its fast path needs no
//! thread-local lookup. [`FrameShared`] is the `Copy + Sync` view that threads use; it
//! finds the calling thread's lane through the thread-local cache of `lane.rs`.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use super::lane::{Bump, LOCAL, Lane, unique_id};
use super::{FrameArena, FrameStats};
use crate::AllocError;
use crate::sync::Ordering;

/// The token of one open frame: everything allocated through it lives until it ends.
///
/// The token is `Send` (a frame may begin on one thread and end on another) but not
/// `Sync`: it allocates from a lane of its own with a plain pointer bump. To allocate
/// from several threads at once, give them [`Frame::shared`]. Dropping the token (or
/// [`Frame::end`]) ends the frame.
///
/// Allocation methods come in pairs: the plain one panics if the OS refuses memory, the
/// `try_` twin returns the [`AllocError`]. Values are never dropped (see the
/// [module docs](super#drop)).
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
    pub(super) arena: &'a mut FrameArena,
    /// Lane 0 of `arena`, which only the token touches during the frame.
    lane: NonNull<Lane>,
    /// Process-unique: identifies this frame in threads' lane caches.
    serial: u64,
    /// Not `Sync`: `&Frame` on two threads would bump lane 0 at once.
    _not_sync: PhantomData<core::cell::Cell<()>>,
}

// SAFETY:
// * the arena is `Send`;
// * `lane` points to lane 0 of that arena, which belongs to the token: moving the token
//   moves the right to use it, and the move itself orders the old thread's accesses
//   before the new thread's.
unsafe impl Send for Frame<'_> {}

/// A `Copy + Send + Sync` view of a [`Frame`] for allocating from many threads at once.
///
/// Each thread that allocates through it claims a lane of its own for the frame (once)
/// and then bumps without locks or atomic read-modify-writes. Allocations live as long
/// as the frame's borrow `'f`, whichever thread made them.
///
/// # Examples
///
/// ```
/// use tidyheap::frame::FrameArena;
///
/// let mut arena = FrameArena::new();
/// let frame = arena.begin_frame();
/// let shared = frame.shared();
/// let blocks: Vec<&mut [u32]> = std::thread::scope(|s| {
///     let jobs: Vec<_> = (0..3u32)
///         .map(|t| s.spawn(move || shared.alloc_slice_fill_with(8, |i| t * 8 + i as u32)))
///         .collect();
///     jobs.into_iter().map(|j| j.join().unwrap()).collect()
/// });
/// assert_eq!(blocks[2][7], 23);
/// ```
#[derive(Clone, Copy)]
pub struct FrameShared<'f> {
    pub(super) arena: &'f FrameArena,
    serial: u64,
}

/// The typed helpers, written once for both handles on top of `alloc_layout`.
/// `$ret` is the lifetime of returned references; `$setup` is a doc-example line that
/// turns `frame` (a token) into the handle being documented.
macro_rules! typed_helpers {
    ($ret:lifetime, $setup:literal) => {
        /// Allocates a raw block of `size` bytes aligned to `align`; the checked form of
        /// [`alloc_layout`](Self::alloc_layout), with the same lifetime.
        ///
        /// # Errors
        ///
        /// [`AllocError::InvalidAlignment`] if `align` is not a power of two,
        /// [`AllocError::TooLarge`] if `size` rounded up to `align` exceeds
        /// `isize::MAX`, otherwise as [`alloc_layout`](Self::alloc_layout).
        ///
        /// # Examples
        ///
        /// ```
        /// use tidyheap::{AllocError, frame::FrameArena};
        ///
        /// let mut arena = FrameArena::new();
        /// let frame = arena.begin_frame();
        #[doc = $setup]
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
        #[doc = $setup]
        /// let n = frame.alloc(41u32);
        /// *n += 1;
        /// assert_eq!(*n, 42);
        /// ```
        // Each call returns a fresh block, disjoint from every other live one.
        #[allow(clippy::mut_from_ref)]
        pub fn alloc<T>(&self, value: T) -> &$ret mut T {
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
        #[doc = $setup]
        /// assert_eq!(*frame.try_alloc('x')?, 'x');
        /// # Ok::<(), tidyheap::AllocError>(())
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn try_alloc<T>(&self, value: T) -> Result<&$ret mut T, AllocError> {
            let p = self.alloc_layout(Layout::new::<T>())?.cast::<T>();
            // `p` is fresh, disjoint from every live block, and lives as long as the frame.
            // SAFETY: * `p` has `T`'s size and alignment and is valid for the lifetime;
            // * the write initialises it before the reference is made.
            unsafe {
                p.write(value);
                Ok(&mut *p.as_ptr())
            }
        }

        /// Copies `src` into the frame.
        ///
        /// # Panics
        ///
        /// If the OS refuses memory; see
        /// [`try_alloc_slice_copy`](Self::try_alloc_slice_copy).
        ///
        /// # Examples
        ///
        /// ```
        /// let mut arena = tidyheap::frame::FrameArena::new();
        /// let frame = arena.begin_frame();
        #[doc = $setup]
        /// let v = frame.alloc_slice_copy(&[1u16, 2, 3]);
        /// v[0] = 9;
        /// assert_eq!(v, &[9, 2, 3]);
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &$ret mut [T] {
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
        #[doc = $setup]
        /// assert_eq!(frame.try_alloc_slice_copy(b"abc")?, b"abc");
        /// # Ok::<(), tidyheap::AllocError>(())
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn try_alloc_slice_copy<T: Copy>(
            &self,
            src: &[T],
        ) -> Result<&$ret mut [T], AllocError> {
            let p = self.alloc_layout(Layout::for_value(src))?.cast::<T>();
            // `p` is fresh, disjoint from `src` and every live block, and lives as long
            // as the frame.
            // SAFETY: * `p` is sized and aligned for `src.len()` values of `T`;
            // * `T: Copy`, so the bitwise copy initialises every element.
            unsafe {
                p.as_ptr().copy_from_nonoverlapping(src.as_ptr(), src.len());
                Ok(core::slice::from_raw_parts_mut(p.as_ptr(), src.len()))
            }
        }

        /// Allocates `len` values, the `i`-th being `f(i)`. `f` may itself allocate in
        /// the frame.
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
        #[doc = $setup]
        /// let squares = frame.alloc_slice_fill_with(4, |i| i * i);
        /// assert_eq!(squares, &[0, 1, 4, 9]);
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn alloc_slice_fill_with<T>(
            &self,
            len: usize,
            f: impl FnMut(usize) -> T,
        ) -> &$ret mut [T] {
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
        #[doc = $setup]
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
        ) -> Result<&$ret mut [T], AllocError> {
            let layout = Layout::array::<T>(len).map_err(|_| AllocError::TooLarge {
                size: len.saturating_mul(size_of::<T>()),
            })?;
            // The space is reserved before `f` runs, so `f` may allocate in the frame.
            let p = self.alloc_layout(layout)?.cast::<T>();
            for i in 0..len {
                // SAFETY: `i < len`, so the slot lies inside the fresh block, which is
                // aligned for `T`; each slot is written once.
                unsafe { p.as_ptr().add(i).write(f(i)) };
            }
            // SAFETY: all `len` elements were initialised above; the block is disjoint
            // from every other live block and valid for the returned lifetime.
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
        #[doc = $setup]
        /// let s = frame.alloc_str("hello");
        /// s.make_ascii_uppercase();
        /// assert_eq!(s, "HELLO");
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn alloc_str(&self, s: &str) -> &$ret mut str {
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
        #[doc = $setup]
        /// assert_eq!(frame.try_alloc_str("")?, "");
        /// # Ok::<(), tidyheap::AllocError>(())
        /// ```
        #[allow(clippy::mut_from_ref)]
        pub fn try_alloc_str(&self, s: &str) -> Result<&$ret mut str, AllocError> {
            let bytes = self.try_alloc_slice_copy(s.as_bytes())?;
            // SAFETY: the bytes are a copy of a `str`, hence valid UTF-8.
            Ok(unsafe { core::str::from_utf8_unchecked_mut(bytes) })
        }
    };
}

impl<'a> Frame<'a> {
    /// The token of the frame `arena` has just begun.
    pub(super) fn new(arena: &'a mut FrameArena, serial: u64) -> Self {
        // Lane 0 exists: the configuration asks for at least one lane.
        let lane = arena.lanes.cast::<Lane>();
        Self {
            arena,
            lane,
            serial,
            _not_sync: PhantomData,
        }
    }

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

    /// A view of this frame that many threads can allocate through at once.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let shared = frame.shared();
    /// let n = std::thread::scope(|s| s.spawn(move || shared.alloc(7u8)).join().unwrap());
    /// assert_eq!(*n, 7);
    /// ```
    pub fn shared(&self) -> FrameShared<'_> {
        FrameShared {
            arena: self.arena,
            serial: self.serial,
        }
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
    /// (`N` = [`FrameConfig::frames_in_flight`](super::FrameConfig::frames_in_flight))
    /// or the arena is dropped, whichever comes first — even after this token is gone.
    /// It is never freed individually. A zero-size request returns a non-null, aligned
    /// pointer that must not be dereferenced for more than zero bytes.
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
        match self.with_bump(|b| b.try_bump(layout)) {
            Some(p) => Ok(p),
            None => self.alloc_slow(layout),
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let refill = self.arena.refill();
        self.with_bump(|b| b.alloc(&refill, layout))
    }

    /// Runs `f` on lane 0's bump state.
    #[inline(always)]
    pub(super) fn with_bump<R>(&self, f: impl FnOnce(&mut Bump) -> R) -> R {
        // SAFETY: `lane` is lane 0 of the arena the token borrows, so it is live.
        let lane = unsafe { self.lane.as_ref() };
        lane.bump.with_mut(|b| {
            // Lane 0 is touched only through the token, which is not `Sync`
            // (`FrameShared` claims start at lane 1).
            // SAFETY: only this thread is inside lane 0, and the `&mut` lives only for
            // the call of `f`, which does not re-enter the arena.
            f(unsafe { &mut *b })
        })
    }

    typed_helpers!('_, "");
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

impl<'f> FrameShared<'f> {
    /// The frame's index: 1 for the arena's first frame.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// assert_eq!(frame.shared().index(), 1);
    /// ```
    pub fn index(&self) -> u64 {
        self.arena.frame
    }

    /// Allocates a raw block for `layout` in the calling thread's lane.
    ///
    /// The block is valid until frame `self.index() + N` begins on this arena
    /// (`N` = [`FrameConfig::frames_in_flight`](super::FrameConfig::frames_in_flight))
    /// or the arena is dropped, whichever comes first. It is never freed individually.
    /// A zero-size request returns a non-null, aligned pointer.
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
    /// let mut arena = tidyheap::frame::FrameArena::new();
    /// let frame = arena.begin_frame();
    /// let shared = frame.shared();
    /// let p = std::thread::scope(|s| {
    ///     s.spawn(move || shared.alloc_layout(Layout::new::<u32>()).unwrap().addr())
    ///         .join()
    ///         .unwrap()
    /// });
    /// assert_eq!(p.get() % 4, 0);
    /// ```
    #[inline]
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let local = LOCAL.with(|cell| cell.get());
        if local.serial == self.serial {
            // The cached serial is this frame's, so `local.lane` is the lane this thread
            // claimed in this frame of this (live, borrowed) arena.
            // SAFETY: that lane outlives the frame, which `self` borrows.
            let lane = unsafe { &*local.lane };
            let hit = lane.bump.with_mut(|b| {
                // SAFETY: only the claiming thread touches its bump state, and the
                // `&mut` lives for this bump only.
                unsafe { (*b).try_bump(layout) }
            });
            if let Some(p) = hit {
                return Ok(p);
            }
        }
        self.alloc_slow(layout)
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        let refill = self.arena.refill();
        self.with_own_bump(true, |b| b.alloc(&refill, layout))
            .expect("claiming always yields a lane or the overflow lane")
    }

    /// Runs `f` on the calling thread's bump state: its lane, or the overflow lane under
    /// its lock. With `claim == false` a thread that holds no lane in this frame gets
    /// `None` instead of claiming one.
    pub(super) fn with_own_bump<R>(
        &self,
        claim: bool,
        f: impl FnOnce(&mut Bump) -> R,
    ) -> Option<R> {
        let arena = self.arena;
        let lanes = arena.lanes();
        // `Some(Some(lane))`: own lane; `Some(None)`: overflow lane; `None`: no claim.
        let lane = LOCAL.with(|cell| {
            let mut local = cell.get();
            if local.serial == self.serial {
                // SAFETY: a matching serial means `local.lane` is this thread's lane in
                // this frame of `arena`, which outlives `'f`.
                return Some(Some(unsafe { &*local.lane }));
            }
            if local.overflow_serial == self.serial {
                return Some(None);
            }
            if local.tag == 0 {
                local.tag = unique_id();
            }
            // A thread can hold a lane without the cache saying so when it used another
            // arena's frame meanwhile: look for its tag first.
            let claimed = arena.next_lane.load(Ordering::Relaxed).min(lanes.len());
            let found = lanes[..claimed]
                .iter()
                .find(|lane| lane.owner.load(Ordering::Relaxed) == local.tag);
            let lane = match found {
                Some(lane) => Some(lane),
                None if !claim => {
                    cell.set(local);
                    return None;
                }
                None => {
                    let i = arena.next_lane.fetch_add(1, Ordering::Relaxed);
                    let lane = lanes.get(i);
                    if let Some(lane) = lane {
                        lane.owner.store(local.tag, Ordering::Relaxed);
                    }
                    lane
                }
            };
            match lane {
                Some(lane) => {
                    local.serial = self.serial;
                    local.lane = lane;
                }
                None => local.overflow_serial = self.serial,
            }
            cell.set(local);
            Some(lane)
        })?;
        Some(match lane {
            // SAFETY: this thread claimed `lane` in this frame (its tag is in `owner`),
            // so no other thread touches its bump state; the `&mut` lives only for the
            // call of `f`, which does not re-enter the arena.
            Some(lane) => lane.bump.with_mut(|b| f(unsafe { &mut *b })),
            None => arena.overflow.with(f),
        })
    }

    typed_helpers!('f, " let frame = frame.shared();");
}

impl fmt::Debug for FrameShared<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameShared")
            .field("index", &self.index())
            .finish_non_exhaustive()
    }
}

#[cold]
#[inline(never)]
fn alloc_failed(e: AllocError) -> ! {
    panic!("frame arena allocation failed: {e}")
}
