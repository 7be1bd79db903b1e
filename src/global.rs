//! The `GlobalAlloc` adapter: tidyheap as the process allocator.
//!
//! [`Global`] holds a heap core inline, so it can be built in a `const` context and
//! placed in a `static`:
//!
//! ```text
//! static A: Global = Global::new();      // the heap lives in the static: no indirection
//! A.alloc(layout)  ─▶ call global_alloc (out of line, in tidyheap) ─▶ HeapInner::alloc
//!                  ─▶ thread cache ─▶ central list ─▶ arena
//! ```
//!
//! # Opaque entry points
//!
//! Like mimalloc's, the `GlobalAlloc` methods are calls into tidyheap
//! (`#[inline(never)]` functions compiled in this crate), not its internals inlined
//! into every crate that allocates. That costs one call per operation (measured in
//! `benches/README.md`) and keeps the user's code generation independent of ours:
//! rustc 1.95.0's LLVM crashed ("Referencing function in another module!") building a
//! crate dense in `select!` loops with several codegen units when the whole fast path,
//! thread-local access included, was inlined into it (`tests/global_select.rs`). A
//! [`Heap`](crate::Heap) keeps the inlined path for the callers who want it.
//!
//! Everything below the adapter already avoids the Rust heap (its bookkeeping comes
//! from OS mappings made on first use), which is what lets it serve the Rust heap
//! itself. The adapter adds two rules of its own:
//!
//! * **No error escapes as a panic.** Failures become null pointers, as `GlobalAlloc`
//!   demands.
//! * **No unwinding.** `GlobalAlloc` makes an unwinding allocator undefined behaviour.
//!   A panic inside the heap (an internal bug) prints its message through the panic
//!   hook and then aborts the process instead of unwinding; see [`no_unwind`]. Misuse
//!   the heap detects (a double free, a wrong layout passed to `dealloc`) aborts with
//!   its own message, as for a `Heap` (see `Heap::dealloc`).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use crate::pool::heap::{HeapConfig, HeapInner};
use crate::pool::span::SpanKind;
use crate::pool::thread_cache::{self, GLOBAL_SLOT, ThreadCache};
use crate::size_class;
use crate::stats::{HeapStats, PoolCounters};
use crate::sync::const_fn_unless_loom;

/// A tidyheap heap usable as the process's global allocator.
///
/// # Examples
///
/// ```
/// use tidyheap::Global;
///
/// #[global_allocator]
/// static A: Global = Global::new();
///
/// fn main() {
///     let before = A.thread_cache_stats().map_or(0, |c| c.allocations);
///     let v: Vec<u64> = (0..1000).collect();
///     let after = A.thread_cache_stats().unwrap().allocations;
///     assert!(after > before, "tidyheap served the Vec");
///     assert_eq!(v[999], 999);
/// }
/// ```
///
/// # Where a `Global` may live
///
/// A `Global` is meant to sit in a `static`. It may also be an ordinary value (for
/// example to give a subsystem its own `GlobalAlloc`), under one rule that joins the
/// contract of the (unsafe) [`GlobalAlloc`] methods: **once it has served an
/// allocation, it must stay at the same address until it is dropped.** Thread caches
/// and the heap registry remember its address. Dropping it returns all its memory to
/// the OS (blocks still allocated from it die with it). Its safe methods never start
/// that tracking, so calling them on a `Global` that then moves is fine. For the same
/// reason the `allocator-api2` `Allocator` impl is for `&'static Global` only.
///
/// A `Global` is large (about 420 KiB: the heap core's per-arena tables live inline so
/// that a `static` needs no indirection), so build it in a `static`, or in a `Box` from
/// a thread with a generous stack.
pub struct Global {
    inner: HeapInner,
    /// The allocation profiler (`src/profile/`).
    #[cfg(feature = "profiling")]
    pub(crate) profiler: crate::profile::Profiler,
}

impl Global {
    const_fn_unless_loom! {
        /// A global allocator with the default configuration. Nothing is mapped until the
        /// first allocation.
        ///
        /// # Examples
        ///
        /// ```
        /// static A: tidyheap::Global = tidyheap::Global::new();
        /// assert_eq!(A.stats().live_bytes(), 0);
        /// ```
        pub fn new() -> Self {
            Self::with_config(HeapConfig::DEFAULT)
        }
    }

    const_fn_unless_loom! {
        /// A global allocator with `config`.
        ///
        /// # Examples
        ///
        /// ```
        /// use tidyheap::{Global, HeapConfig};
        /// static A: Global = Global::with_config(HeapConfig { arenas: 2, ..HeapConfig::DEFAULT });
        /// assert_eq!(A.arena_count(), 2);
        /// ```
        pub fn with_config(config: HeapConfig) -> Self {
            Self {
                inner: HeapInner::new(config, GLOBAL_SLOT),
                #[cfg(feature = "profiling")]
                profiler: crate::profile::Profiler::new(crate::profile::ProfilingConfig::DEFAULT),
            }
        }
    }

    const_fn_unless_loom! {
        #[cfg(feature = "profiling")]
        /// A global allocator with `config` whose allocations are profiled with
        /// `profiling` (feature `profiling`; [`Global::new`] and [`Global::with_config`]
        /// record every allocation).
        ///
        /// # Examples
        ///
        /// ```
        /// use tidyheap::profile::{ProfilingConfig, Sampling};
        /// use tidyheap::{Global, HeapConfig};
        /// static A: Global = Global::with_profiling(
        ///     HeapConfig::DEFAULT,
        ///     ProfilingConfig::new().with_sampling(Sampling::EveryBytes(1 << 20)),
        /// );
        /// assert_eq!(A.profiling_config().sampling, Sampling::EveryBytes(1 << 20));
        /// ```
        pub fn with_profiling(config: HeapConfig, profiling: crate::profile::ProfilingConfig) -> Self {
            Self {
                inner: HeapInner::new(config, GLOBAL_SLOT),
                profiler: crate::profile::Profiler::new(profiling),
            }
        }
    }

    #[inline(always)]
    pub(crate) fn inner(&self) -> &HeapInner {
        &self.inner
    }

    /// A snapshot of the heap's counters (see [`crate::stats`]). This allocates the
    /// returned per-arena list, so do not call it from inside an allocator.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// let l = Layout::new::<[u8; 100]>();
    /// // SAFETY: `A` is a static, so it never moves; `l` is not zero-sized.
    /// let p = unsafe { A.alloc(l) };
    /// assert_eq!(A.stats().fixed.live_bytes(), 100);
    /// // SAFETY: `p` came from `A` with `l`.
    /// unsafe { A.dealloc(p, l) };
    /// assert_eq!(A.stats().fixed.live_bytes(), 0);
    /// ```
    pub fn stats(&self) -> HeapStats {
        self.inner.stats()
    }

    /// The calling thread's cache counters, or `None` if this thread has no cache of
    /// this heap (no allocation through it yet, or the thread is exiting).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert!(A.thread_cache_stats().is_none(), "nothing allocated yet");
    /// let l = Layout::new::<u64>();
    /// // SAFETY: `A` is a static; `l` is not zero-sized.
    /// let p = unsafe { A.alloc(l) };
    /// assert_eq!(A.thread_cache_stats().unwrap().allocations, 1);
    /// // SAFETY: `p` came from `A` with `l`.
    /// unsafe { A.dealloc(p, l) };
    /// ```
    pub fn thread_cache_stats(&self) -> Option<PoolCounters> {
        self.inner.thread_cache_stats()
    }

    /// Returns the calling thread's cached free blocks and the central lists' batches
    /// to their spans, then hands every empty span's pages and every cached large
    /// mapping back to the OS. Returns the bytes decommitted or unmapped. Other threads'
    /// caches are untouched (they go home when those threads exit).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// let l = Layout::new::<[u8; 4096]>();
    /// // SAFETY: `A` is a static; `l` is not zero-sized. `p` is freed with `l`.
    /// unsafe {
    ///     let p = A.alloc(l);
    ///     A.dealloc(p, l);
    /// }
    /// assert!(A.trim() > 0);
    /// assert_eq!(A.stats().committed_bytes, 0);
    /// ```
    pub fn trim(&self) -> usize {
        self.inner.flush_and_trim() + self.inner.large.purge(core::time::Duration::ZERO)
    }

    /// The bytes usable in any block allocated with `layout`: its size class, or the
    /// page-rounded length of a large mapping.
    ///
    /// # Examples
    ///
    /// ```
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert_eq!(A.usable_size(std::alloc::Layout::from_size_align(100, 8).unwrap()), 112);
    /// ```
    pub fn usable_size(&self, layout: Layout) -> usize {
        self.inner.usable_size(layout)
    }

    /// Number of arenas.
    ///
    /// # Examples
    ///
    /// ```
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert!(A.arena_count() >= 1);
    /// ```
    pub fn arena_count(&self) -> usize {
        self.inner.arena_count()
    }
}

impl Default for Global {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Global {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Global")
            .field("arenas", &self.arena_count())
            .finish_non_exhaustive()
    }
}

impl Drop for Global {
    fn drop(&mut self) {
        // Profiler hook: the at-drop report (the profiler leaves the exit list when it
        // is dropped, after this).
        #[cfg(feature = "profiling")]
        self.finish_profiling();
        // SAFETY:
        // - `&mut self`: nobody else can use the heap now, and by the type's contract
        //   (see "Where a `Global` may live") it has not moved since it was registered,
        //   so the registry's record of it is this very value;
        // - its blocks die with it, per the same contract.
        unsafe { self.inner.destroy() };
    }
}

/// Aborts the process when dropped during unwinding; see [`no_unwind`].
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        // Only reached while a panic unwinds out of an allocator method; the panic hook
        // has already printed the message.
        std::process::abort();
    }
}

/// Runs `f`, turning any unwinding panic out of it into an abort. Free on the normal
/// path: the guard is forgotten, and its drop exists only in the landing pad.
#[inline(always)]
fn no_unwind<R>(f: impl FnOnce() -> R) -> R {
    let guard = AbortOnUnwind;
    let r = f();
    core::mem::forget(guard);
    r
}

// SAFETY: the methods below meet the `GlobalAlloc` contract:
// - pool blocks are aligned to `layout.align()` by construction of the size classes
//   (see `crate::size_class`), large blocks by the mapping; every block holds at least
//   `layout.size()` bytes and is owned by one caller until freed;
// - no method unwinds (`no_unwind`) and no method allocates on the Rust heap (the heap
//   core takes its bookkeeping from OS mappings);
// - failures return null.
unsafe impl GlobalAlloc for Global {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = global_alloc(&self.inner, layout);
        // Profiler hook (it never unwinds): recorded before the pointer is returned.
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_ptr(p, layout.size());
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = global_alloc_zeroed(&self.inner, layout);
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_ptr(p, layout.size());
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Profiler hook: the record goes before the block can be reused.
        #[cfg(feature = "profiling")]
        self.profiler.on_free_ptr(ptr);
        // SAFETY: the caller guarantees `ptr` is a live block of this allocator
        // allocated with `layout` (the `GlobalAlloc::dealloc` contract).
        unsafe { global_dealloc(&self.inner, ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Profiler hook: the record moves with the block (see `Heap::realloc`).
        #[cfg(feature = "profiling")]
        let taken = self.profiler.before_realloc(ptr);
        // SAFETY: forwarded from the caller (the `GlobalAlloc::realloc` contract).
        let p = unsafe { global_realloc(&self.inner, ptr, layout, new_size) };
        #[cfg(feature = "profiling")]
        self.profiler.after_realloc(taken, ptr, p, new_size);
        p
    }
}

/// `Global::alloc`, out of line (see "Opaque entry points" in the module docs).
///
/// The hit path (a list pop, for requests up to 8 KiB at alignment up to 16) cannot
/// panic, so it needs no unwind guard, which lets the miss be a tail call; other
/// requests take the miss call, which serves every size.
///
/// What it costs over `Heap`'s inlined path is mostly not the call: compiled in this
/// crate (a library, so position-independent), the thread-local access is generated
/// as a call to `__tls_get_addr`, which makes LLVM keep the arguments in callee-saved
/// registers (pushed and popped on every call) even though the linker later relaxes
/// the access into one `fs:` load. Inlined into an executable, as `Heap`'s path is,
/// it is generated as that load from the start. Stable Rust cannot pick the TLS model.
#[inline(never)]
fn global_alloc(heap: &HeapInner, layout: Layout) -> *mut u8 {
    if let Some(tc) = thread_cache::current_fast_at(heap, GLOBAL_SLOT)
        && let Some(class) = size_class::class_for_small(layout.size(), layout.align())
        && let Some(b) = heap.pop_cached(tc, class, layout.size())
    {
        return b.as_ptr();
    }
    global_alloc_miss(heap, layout)
}

/// Every allocation `global_alloc`'s hit path does not serve.
#[cold]
#[inline(never)]
fn global_alloc_miss(heap: &HeapInner, layout: Layout) -> *mut u8 {
    no_unwind(|| match heap.alloc(layout) {
        Ok(p) => p.as_ptr(),
        Err(_) => ptr::null_mut(),
    })
}

/// `Global::alloc_zeroed`, out of line.
#[inline(never)]
fn global_alloc_zeroed(heap: &HeapInner, layout: Layout) -> *mut u8 {
    no_unwind(|| match heap.alloc_zeroed(layout) {
        Ok(p) => p.as_ptr(),
        Err(_) => ptr::null_mut(),
    })
}

/// `Global::dealloc`, out of line. Like `global_alloc`, the hit path (a list push, for a
/// block of a span this thread's record owns: see `pool::remote`) cannot panic; the rest is in cold calls that guard against unwinding. Debug builds
/// always take the checked path (`HeapInner::dealloc` checks the layout).
///
/// # Safety
///
/// `ptr` is null or a live block of `heap` allocated with `layout`, dead from now on.
#[inline(never)]
unsafe fn global_dealloc(heap: &HeapInner, ptr: *mut u8, layout: Layout) {
    if !cfg!(debug_assertions)
        && let Some(p) = NonNull::new(ptr)
        && let Some(class) = size_class::class_for_small(layout.size(), layout.align())
        && let Some(tc) = thread_cache::current_fast_at(heap, GLOBAL_SLOT)
        && heap.is_local(tc, p, class)
    {
        // SAFETY: forwarded from the caller; `tc` is this thread's record.
        if unsafe { heap.free_cached(tc, p, class, layout.size(), SpanKind::Fixed) } {
            global_overflow(heap, tc, class);
        }
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { global_dealloc_miss(heap, ptr, layout) }
}

/// The list `global_dealloc` pushed on is full.
#[cold]
#[inline(never)]
fn global_overflow(heap: &HeapInner, tc: &ThreadCache, class: usize) {
    no_unwind(|| heap.overflow(tc, class, SpanKind::Fixed));
}

/// Every free `global_dealloc`'s hit path does not serve.
///
/// # Safety
///
/// As `global_dealloc`.
#[cold]
#[inline(never)]
unsafe fn global_dealloc_miss(heap: &HeapInner, ptr: *mut u8, layout: Layout) {
    let Some(p) = NonNull::new(ptr) else { return };
    // SAFETY: forwarded from the caller.
    no_unwind(|| unsafe { heap.dealloc(p, layout) })
}

/// `Global::realloc`, out of line.
///
/// # Safety
///
/// `ptr` is a live block of `heap` allocated with `layout`, and `new_size` rounded up
/// to `layout.align()` does not overflow `isize`.
#[inline(never)]
unsafe fn global_realloc(
    heap: &HeapInner,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let Some(p) = NonNull::new(ptr) else {
        return ptr::null_mut();
    };
    // SAFETY: forwarded from the caller. On error the old block is intact and still
    // the caller's, as `GlobalAlloc` requires.
    no_unwind(|| match unsafe { heap.realloc(p, layout, new_size) } {
        Ok(p) => p.as_ptr(),
        Err(_) => ptr::null_mut(),
    })
}

// Statics of `Global` need its `const` constructor, which loom builds do not have.
#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a stack big enough for `Global` values (~420 KiB
    /// each, and debug builds keep several temporaries while building one).
    fn with_big_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// A `Global` that is not a static: used in place, then dropped. Dropping must
    /// unregister it, so that a thread which used it and exits afterwards skips its
    /// (already unmapped) cache record instead of touching freed memory.
    #[test]
    fn owned_global_drops_cleanly_before_its_threads_exit() {
        with_big_stack(owned_global_drops_cleanly);
    }

    fn owned_global_drops_cleanly() {
        let g = Global::with_config(HeapConfig {
            arenas: 1,
            ..HeapConfig::DEFAULT
        });
        let l = Layout::from_size_align(48, 16).unwrap();
        let (used_tx, used_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let g = &g;
            let t = s.spawn(move || {
                // SAFETY: `g` stays in place for the whole scope; `l` is not zero-sized.
                unsafe {
                    let p = g.alloc(l);
                    assert!(!p.is_null());
                    g.dealloc(p, l);
                }
                used_tx.send(()).unwrap();
                // Keep the thread (and its cache of `g`) alive until told to exit.
                exit_rx.recv().unwrap();
            });
            used_rx.recv().unwrap();
            assert_eq!(g.stats().fixed.allocations, 1);
            exit_tx.send(()).unwrap();
            t.join().unwrap();
        });
        // The thread exited with `g` alive: its cache went home.
        assert_eq!(g.stats().fixed.live_bytes(), 0);
        assert!(g.trim() > 0);
        assert_eq!(g.stats().committed_bytes, 0);

        // Now the other order: drop the heap first, then let the thread exit.
        let (used_tx, used_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let boxed = Box::new(Global::new());
        let addr = &*boxed as *const Global as usize;
        let t = std::thread::spawn(move || {
            // SAFETY: the boxed Global does not move; it is dropped only after this
            // block has finished with it (the channel orders that).
            unsafe {
                let g = &*(addr as *const Global);
                let p = g.alloc(l);
                assert!(!p.is_null());
                g.dealloc(p, l);
            }
            used_tx.send(()).unwrap();
            exit_rx.recv().unwrap();
        });
        used_rx.recv().unwrap();
        drop(boxed);
        exit_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn safe_methods_do_not_register_the_heap() {
        with_big_stack(safe_methods_do_not_register);
    }

    fn safe_methods_do_not_register() {
        let g = Global::new();
        assert!(g.thread_cache_stats().is_none());
        assert_eq!(g.trim(), 0);
        assert_eq!(
            g.inner.id(),
            0,
            "no cache claimed, so the heap is untracked"
        );
        // Moving it is therefore fine.
        let moved = [g];
        assert!(moved[0].thread_cache_stats().is_none());
    }

    #[test]
    fn errors_become_null() {
        with_big_stack(errors_are_null);
    }

    fn errors_are_null() {
        let g = Global::new();
        let huge = Layout::from_size_align(1 << 62, 8).unwrap();
        // SAFETY: `g` stays in place until dropped; the layout is not zero-sized.
        unsafe {
            assert!(g.alloc(huge).is_null());
            assert!(g.alloc_zeroed(huge).is_null());
            let l = Layout::from_size_align(64, 8).unwrap();
            let p = g.alloc(l);
            assert!(!p.is_null());
            p.write(0xAB);
            assert!(g.realloc(p, l, 1 << 62).is_null(), "the OS refuses 4 EiB");
            assert_eq!(p.read(), 0xAB, "a failed realloc leaves the block intact");
            g.dealloc(p, l);
            g.dealloc(ptr::null_mut(), l);
        }
        assert_eq!(g.stats().fixed.live_bytes(), 0);
    }
}
