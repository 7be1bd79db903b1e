//! Per-frame scratch memory for systems: the [`FrameMemory`] resource and the
//! [`FrameAlloc`] system parameter over a [`FrameArena`].

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError as ApiAllocError, Allocator};
use bevy_ecs::prelude::{Res, ResMut, Resource};
use bevy_ecs::system::SystemParam;

use crate::AllocError;
use crate::frame::{Frame, FrameArena, FrameShared, FrameStats};

/// The scratch arena of the app, with its open frame. Read its counters through
/// `Res<FrameMemory>`; allocate through [`FrameAlloc`].
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{FrameMemory, TidyheapPlugin};
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default());
/// assert_eq!(app.world().resource::<FrameMemory>().index(), 1);
/// app.update();
/// assert_eq!(app.world().resource::<FrameMemory>().index(), 2);
/// ```
#[derive(Resource)]
pub struct FrameMemory {
    /// The open frame's token; `None` only inside `next_frame` and `Drop`. It holds the
    /// only `&mut` to `*arena` while it lives.
    frame: Option<Frame<'static>>,
    /// The arena, owned: a leaked `Box`, freed in `Drop` after the token is gone.
    arena: NonNull<FrameArena>,
    /// The arena's counters as the open frame began.
    stats: FrameStats,
    /// Frames in flight.
    frames_in_flight: usize,
}

// SAFETY:
// * `arena` is owned like a `Box<FrameArena>`, and `FrameArena` is `Send`;
// * `Frame` is `Send`.
unsafe impl Send for FrameMemory {}
// SAFETY: through `&FrameMemory`, only `stats` and `frames_in_flight` (plain data) and
// the token's `Frame::shared` and `Frame::index` are reached. `Frame` is not `Sync`
// because `&Frame` bumps lane 0; those two methods never touch lane 0: they read the
// token's arena pointer and frame serial and the arena's frame counter, all of which
// change only under `&mut self` (`next_frame`, `Drop`).
unsafe impl Sync for FrameMemory {}

impl FrameMemory {
    /// Takes ownership of `arena` and begins its first frame.
    pub(super) fn new(arena: FrameArena) -> Self {
        let frames_in_flight = arena.config().frames_in_flight();
        let mut memory = Self {
            frame: None,
            arena: NonNull::from(Box::leak(Box::new(arena))),
            stats: FrameStats::default(),
            frames_in_flight,
        };
        memory.next_frame();
        memory
    }

    /// Ends the open frame and begins the next.
    pub(super) fn next_frame(&mut self) {
        // Dropping the token ends the frame through its `&mut FrameArena`.
        self.frame = None;
        // SAFETY:
        // * `arena` came from `Box::leak` and is freed only in `Drop`, after the token
        //   is gone, so it is live for as long as the token uses this `'static` borrow;
        // * the token was dropped above and no `FrameAlloc` borrow exists (we hold
        //   `&mut self`), so this is the only reference to the arena.
        let arena: &'static mut FrameArena = unsafe { &mut *self.arena.as_ptr() };
        self.stats = arena.stats();
        self.frame = Some(arena.begin_frame());
    }

    /// The open frame's index: 1 at build, +1 every `First`.
    pub fn index(&self) -> u64 {
        self.view().index()
    }

    /// The arena's counters as the previous frame ended (taken when the open frame
    /// began): `frames` is the previous frame's index, `frame_bytes` its scratch use,
    /// `high_water_bytes` the largest use of any frame so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::{App, Update};
    /// use tidyheap::bevy::{FrameAlloc, FrameMemory, TidyheapPlugin};
    /// let mut app = App::new();
    /// app.add_plugins(TidyheapPlugin::default())
    ///     .add_systems(Update, |scratch: FrameAlloc| {
    ///         scratch.alloc([0u64; 8]);
    ///     });
    /// app.update(); // frame 2 allocates 64 bytes
    /// app.update(); // frame 3 begins: frame 2's use is counted
    /// let memory = app.world().resource::<FrameMemory>();
    /// assert_eq!((memory.index(), memory.stats().frames), (3, 2));
    /// assert_eq!(memory.stats().frame_bytes, 64);
    /// ```
    pub fn stats(&self) -> FrameStats {
        self.stats
    }

    /// Scratch frames in flight, `N`.
    pub fn frames_in_flight(&self) -> usize {
        self.frames_in_flight
    }

    /// A view of the open frame, re-borrowed for `&self`: it cannot outlive the borrow
    /// that `next_frame` (which takes `&mut self`) would need.
    fn view(&self) -> FrameShared<'_> {
        self.frame
            .as_ref()
            .expect("a frame is open outside `next_frame` and `Drop`, which hold `&mut self`")
            .shared()
    }
}

impl Drop for FrameMemory {
    fn drop(&mut self) {
        self.frame = None;
        // SAFETY: `arena` came from `Box::leak` in `new` and is reclaimed once, here,
        // after the token that borrowed it is gone.
        drop(unsafe { Box::from_raw(self.arena.as_ptr()) });
    }
}

impl core::fmt::Debug for FrameMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameMemory")
            .field("index", &self.index())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The begin-frame system (in `First`).
pub(super) fn begin_scratch_frame(mut memory: ResMut<FrameMemory>) {
    memory.next_frame();
}

/// A system parameter handing out bump memory from the current scratch frame.
///
/// Allocation methods come in pairs: the plain one panics if the OS refuses memory, the
/// `try_` twin returns the error. `&FrameAlloc` is an allocator-api2
/// [`Allocator`], so `allocator_api2::vec::Vec::new_in(&scratch)` works, as does
/// `Vec::new_in(scratch.shared())` inside `par_iter` bodies. (On stable Rust,
/// allocator-api2's `Vec::extend` pushes element by element; for bulk fills
/// [`alloc_slice_fill_with`](Self::alloc_slice_fill_with) or `extend_from_slice` are
/// several times faster.)
///
/// # How the frame maps onto Bevy's frame
///
/// The plugin begins scratch frame 1 in `build()` (so startup systems have scratch
/// too), and every `First` the [`TidyheapSystems::BeginFrame`](super::TidyheapSystems)
/// system ends the current scratch frame and begins the next. A system gets the memory
/// through [`FrameAlloc`], which reads [`FrameMemory`] as a shared resource; the
/// begin-frame system takes it exclusively. Bevy's scheduler never runs a system that
/// borrows a resource shared at the same time as one that borrows it exclusively, so
/// the frame cannot turn over while any system is allocating from it.
///
/// # Why memory cannot escape the frame
///
/// Every safe allocation borrows the `FrameAlloc` parameter (`alloc(&self, ..) ->
/// &mut T`), and the parameter lives for one run of the system. Storing a reference in a
/// `Local`, a resource, a component or a message needs `'static`, which a borrow of the
/// parameter is not:
///
/// ```compile_fail,E0597
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::FrameAlloc;
///
/// fn keep(scratch: FrameAlloc, mut kept: Local<Option<&'static mut u32>>) {
///     *kept = Some(scratch.alloc(7));
/// }
/// ```
///
/// Collections are bound the same way:
///
/// ```compile_fail,E0597
/// use allocator_api2::vec::Vec;
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::FrameAlloc;
///
/// #[derive(Resource)]
/// struct Kept(Vec<u32, &'static FrameAlloc<'static>>);
///
/// fn keep(scratch: FrameAlloc, mut commands: Commands) {
///     let mut list = Vec::new_in(&scratch);
///     list.push(1);
///     commands.insert_resource(Kept(list));
/// }
/// ```
///
/// # Threads and `par_iter`
///
/// All allocation goes through the arena's per-thread lanes ([`FrameShared`]): the first
/// allocation of a thread in a frame claims a lane with one `fetch_add`, every later one
/// is a thread-local check and a pointer bump. So two systems running in parallel, and
/// the bodies of a `par_iter`, allocate without contending; hand the closures
/// [`FrameAlloc::shared`], which is `Copy + Send + Sync`.
///
/// # Frames in flight
///
/// With `N` frames in flight ([`TidyheapConfig::with_frames_in_flight`]), the raw API
/// ([`FrameAlloc::alloc_layout`]) returns blocks that stay valid until scratch frame
/// `index + N` begins: data handed to a render or upload thread can live `N − 1` frames
/// past the one that made it. Safe references live for one system run only.
///
/// # Not Bevy's proposed `Scratch<T>`
///
/// Bevy issue #23775 proposes a `Scratch<T>` parameter: a `Local` collection of one
/// system, cleared on each run, that keeps its capacity on the global heap. `FrameAlloc`
/// is different: one bump arena shared by every system and thread, holding any number of
/// values and collections of any types, reclaimed all at once per frame with no
/// per-value drop (values placed in it are never dropped, like bumpalo's) and no
/// per-system high-water capacity kept alive. Use `Scratch<T>` for one reused
/// collection whose elements need dropping; use `FrameAlloc` for many short-lived
/// buffers.
///
/// [`TidyheapConfig::with_frames_in_flight`]: super::TidyheapConfig::with_frames_in_flight
///
/// # Examples
///
/// ```
/// use allocator_api2::vec::Vec;
/// use bevy_app::{App, Update};
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
///
/// #[derive(Component)]
/// struct Position(f32);
///
/// fn visible(scratch: FrameAlloc, q: Query<(Entity, &Position)>) {
///    let mut near = Vec::new_in(&scratch);
///    near.extend(q.iter().filter(|(_, p)| p.0 < 10.0).map(|(e, _)| e));
///    let label = scratch.alloc_str("near");
///    assert_eq!((near.len(), &*label), (1, "near"));
/// }
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default()).add_systems(Update, visible);
/// app.world_mut().spawn(Position(1.0));
/// app.world_mut().spawn(Position(100.0));
/// app.update();
/// ```
#[derive(SystemParam)]
pub struct FrameAlloc<'w> {
    memory: Res<'w, FrameMemory>,
}

impl FrameAlloc<'_> {
    /// A `Copy + Send + Sync` view for allocating from `par_iter` bodies and tasks; its
    /// allocations live as long as this borrow.
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::{App, Update};
    /// use bevy_ecs::prelude::*;
    /// use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    ///
    /// #[derive(Component)]
    /// struct Id(u32);
    ///
    /// fn sum(scratch: FrameAlloc, q: Query<&Id>) {
    ///     let shared = scratch.shared();
    ///     q.par_iter().for_each(|id| {
    ///         let digits = shared.alloc_slice_fill_with(4, |i| id.0 + i as u32);
    ///         assert_eq!(digits[3], id.0 + 3);
    ///     });
    /// }
    ///
    /// let mut app = App::new();
    /// app.add_plugins(TidyheapPlugin::default()).add_systems(Update, sum);
    /// app.world_mut().spawn_batch((0..100).map(Id));
    /// app.update();
    /// ```
    pub fn shared(&self) -> FrameShared<'_> {
        self.memory.view()
    }

    /// The open scratch frame's index.
    pub fn index(&self) -> u64 {
        self.memory.index()
    }

    /// Scratch frames in flight, `N`.
    pub fn frames_in_flight(&self) -> usize {
        self.memory.frames_in_flight
    }

    /// Moves `value` into the frame. It is never dropped.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory; see [`try_alloc`](Self::try_alloc).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     let n = scratch.alloc(41u32);
    ///     *n += 1;
    ///     assert_eq!(*n, 42);
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc<T>(&self, value: T) -> &mut T {
        self.shared().alloc(value)
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
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert_eq!(*scratch.try_alloc('x').unwrap(), 'x');
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc<T>(&self, value: T) -> Result<&mut T, AllocError> {
        self.shared().try_alloc(value)
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
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     let v = scratch.alloc_slice_copy(&[1u16, 2, 3]);
    ///     v[0] = 9;
    ///     assert_eq!(v, &[9, 2, 3]);
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        self.shared().alloc_slice_copy(src)
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
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert_eq!(scratch.try_alloc_slice_copy(b"abc").unwrap(), b"abc");
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_copy<T: Copy>(&self, src: &[T]) -> Result<&mut [T], AllocError> {
        self.shared().try_alloc_slice_copy(src)
    }

    /// Allocates `len` values, the `i`-th being `f(i)`.
    ///
    /// # Panics
    ///
    /// If the OS refuses memory or the size overflows; see
    /// [`try_alloc_slice_fill_with`](Self::try_alloc_slice_fill_with).
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert_eq!(scratch.alloc_slice_fill_with(3, |i| i * 2), &[0, 2, 4]);
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_with<T>(&self, len: usize, f: impl FnMut(usize) -> T) -> &mut [T] {
        self.shared().alloc_slice_fill_with(len, f)
    }

    /// Allocates `len` values, the `i`-th being `f(i)`.
    ///
    /// # Errors
    ///
    /// [`AllocError::TooLarge`] if the size overflows, [`AllocError::OutOfMemory`] if
    /// the OS refuses memory; `f` is not called then.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert!(scratch.try_alloc_slice_fill_with(usize::MAX, |_| 0u64).is_err());
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_with<T>(
        &self,
        len: usize,
        f: impl FnMut(usize) -> T,
    ) -> Result<&mut [T], AllocError> {
        self.shared().try_alloc_slice_fill_with(len, f)
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
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert_eq!(scratch.alloc_str("hud"), "hud");
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_str(&self, s: &str) -> &mut str {
        self.shared().alloc_str(s)
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
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     assert_eq!(scratch.try_alloc_str("").unwrap(), "");
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_str(&self, s: &str) -> Result<&mut str, AllocError> {
        self.shared().try_alloc_str(s)
    }

    /// Allocates a raw block for `layout` that stays valid until scratch frame
    /// `self.index() + N` begins (`N` = [`frames_in_flight`](Self::frames_in_flight)) or
    /// the [`FrameMemory`] resource is dropped, whichever comes first: for data handed
    /// to another thread that outlives this system run. It is never freed individually.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] when the OS refuses a chunk,
    /// [`AllocError::TooLarge`] when no mapping can hold the request.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::alloc::Layout;
    /// # use bevy_app::{App, Update};
    /// # use tidyheap::bevy::{FrameAlloc, TidyheapPlugin};
    /// fn system(scratch: FrameAlloc) {
    ///     let p = scratch.alloc_layout(Layout::new::<u64>()).unwrap().cast::<u64>();
    ///     // SAFETY: a fresh, aligned block of one u64, valid until frame index + N.
    ///     unsafe { p.write(7) };
    /// }
    /// # let mut app = App::new();
    /// # app.add_plugins(TidyheapPlugin::default()).add_systems(Update, system);
    /// # app.update();
    /// ```
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        self.shared().alloc_layout(layout)
    }
}

// SAFETY: every method forwards to the `FrameShared` view of the same open frame, which
// implements `Allocator` soundly; all copies of the view are the same allocator, and the
// frame cannot end while `self` is borrowed (ending it needs `&mut FrameMemory`, which
// the scheduler does not grant while this parameter's `Res` lives).
unsafe impl Allocator for FrameAlloc<'_> {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, ApiAllocError> {
        self.shared().allocate(layout)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded; the caller's block came from this frame's view.
        unsafe { self.shared().deallocate(ptr, layout) }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, ApiAllocError> {
        // SAFETY: forwarded; the caller upholds `Allocator::grow`'s contract.
        unsafe { self.shared().grow(ptr, old_layout, new_layout) }
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, ApiAllocError> {
        // SAFETY: forwarded; the caller upholds `Allocator::grow_zeroed`'s contract.
        unsafe { self.shared().grow_zeroed(ptr, old_layout, new_layout) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, ApiAllocError> {
        // SAFETY: forwarded; the caller upholds `Allocator::shrink`'s contract.
        unsafe { self.shared().shrink(ptr, old_layout, new_layout) }
    }
}
