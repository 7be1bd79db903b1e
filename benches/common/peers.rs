//! The allocators compared: one trait, three implementations.
//!
//! `tidyheap` is a `tidyheap::Heap` value (one per workload, kept from run to run as the
//! other peers keep their process-wide heaps), `system` is glibc malloc through `std::alloc::System`, `mimalloc` is
//! `mimalloc::MiMalloc`. The benchmark binaries themselves run on the system allocator;
//! only the measured calls go to each peer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::{self, NonNull};

use mimalloc::MiMalloc;
use tidyheap::Heap;

/// The three names every allocator-level workload runs on, in table order.
pub const NAMES: [&str; 3] = ["tidyheap", "system", "mimalloc"];

/// An allocator under test.
pub trait Peer: Sync {
    /// Allocates a block for `layout`; null on failure.
    ///
    /// # Safety
    ///
    /// `layout` has a nonzero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `p` came from this peer's `alloc`/`realloc` with `layout` (for `realloc`, the
    /// layout with the new size) and is not used afterwards.
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout);

    /// Resizes a block to `new_size` bytes (same alignment); null on failure, and the
    /// old block is then still live.
    ///
    /// # Safety
    ///
    /// As `dealloc` for `p` and `layout`; `new_size` is nonzero and, rounded up to the
    /// alignment, does not overflow `isize`.
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8;

    /// The allocator's own fragmentation figure, where it has one.
    fn own_fragmentation(&self) -> Option<f64> {
        None
    }
}

/// `1 - live / committed` of a heap's pools (fixed and movable blocks; large blocks are
/// exact mappings and not counted).
pub fn pool_fragmentation(heap: &Heap) -> f64 {
    let s = heap.stats();
    if s.committed_bytes == 0 {
        return 0.0;
    }
    let live = s.fixed.live_bytes() + s.movable.live_bytes();
    1.0 - live as f64 / s.committed_bytes as f64
}

impl Peer for Heap {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Heap::alloc(self, layout).map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY:
        // - `p` is a live block of this heap allocated with `layout` (caller), so it is
        //   non-null;
        // - it is not used afterwards (caller).
        unsafe { Heap::dealloc(self, NonNull::new_unchecked(p), layout) }
    }

    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY:
        // - `p` is a live block of this heap allocated with `layout` (caller), non-null;
        // - the caller uses only the returned pointer afterwards.
        unsafe { Heap::realloc(self, NonNull::new_unchecked(p), layout, new_size) }
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    fn own_fragmentation(&self) -> Option<f64> {
        Some(pool_fragmentation(self))
    }
}

/// glibc malloc, through `std::alloc::System`.
pub struct Sys;

/// mimalloc, through `mimalloc::MiMalloc`.
pub struct Mi;

/// Forwards the three calls to a `GlobalAlloc` value.
macro_rules! global_peer {
    ($peer:ty, $alloc:expr) => {
        impl Peer for $peer {
            #[inline(always)]
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                // SAFETY: `layout` has a nonzero size (caller).
                unsafe { $alloc.alloc(layout) }
            }

            #[inline(always)]
            unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
                // SAFETY: `p` is a live block of this allocator with `layout`, not used
                // afterwards (caller).
                unsafe { $alloc.dealloc(p, layout) }
            }

            #[inline(always)]
            unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                // SAFETY:
                // - `p` is a live block of this allocator with `layout` (caller);
                // - `new_size` is nonzero and does not overflow when rounded (caller).
                unsafe { $alloc.realloc(p, layout, new_size) }
            }
        }
    };
}

global_peer!(Sys, System);
global_peer!(Mi, MiMalloc);

unsafe extern "C" {
    /// mimalloc's `mi_collect`: frees retained memory it can (linked in with the
    /// `mimalloc` crate's static library).
    fn mi_collect(force: bool);
}

/// Hands the free memory that glibc and mimalloc retain back to the OS, so an RSS
/// baseline taken next is not lowered by memory a previous run left cached.
pub fn settle() {
    // SAFETY: `malloc_trim` has no preconditions.
    unsafe { libc::malloc_trim(0) };
    // SAFETY: `mi_collect` has no preconditions; it only touches mimalloc's own state.
    unsafe { mi_collect(true) };
}

/// Allocates through `peer`, panicking on failure (a benchmark cannot go on without
/// memory).
///
/// # Safety
///
/// `layout` has a nonzero size.
#[inline(always)]
pub unsafe fn alloc_or_die<P: Peer + ?Sized>(peer: &P, layout: Layout) -> *mut u8 {
    // SAFETY: `layout` has a nonzero size (caller).
    let p = unsafe { peer.alloc(layout) };
    assert!(!p.is_null(), "out of memory for {layout:?}");
    p
}

/// A block pointer that may cross threads.
#[derive(Clone, Copy, Debug)]
pub struct SendPtr(pub *mut u8);

// SAFETY: a `SendPtr` is only an address; whoever holds it owns the block it points
// to, and every peer's allocator accepts frees from any thread.
unsafe impl Send for SendPtr {}

impl SendPtr {
    /// The address (a method, so closures capture the whole `SendPtr`).
    pub fn ptr(self) -> *mut u8 {
        self.0
    }
}

/// A layout of `size` bytes aligned to 8.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}
