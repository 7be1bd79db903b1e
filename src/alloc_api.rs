//! `allocator-api2` (0.2, the version hashbrown and bumpalo use) adapters: `&Heap` and
//! `&'static Global` are [`Allocator`]s, so collections can live in a tidyheap heap:
//!
//! ```
//! use tidyheap::Heap;
//! let heap = Heap::new();
//! let mut v = allocator_api2::vec::Vec::new_in(&heap);
//! v.extend_from_slice(&[1u32, 2, 3]);
//! assert_eq!(v.iter().sum::<u32>(), 6);
//! ```
//!
//! # Sizes: a block is accounted at its usable size
//!
//! [`Allocator::allocate`] returns the whole usable block (its size class, or the
//! page-rounded mapping), and the `Allocator` contract then lets the caller free it
//! with any size from the requested one up to that length. Fixed pool blocks keep no
//! per-block size, so to keep the heap's byte counters exact the adapter allocates,
//! resizes and frees every block *as its usable size*: `usable_size` maps every size
//! between the request and the usable length to the same usable length (one size
//! class; one page run), so whatever size the caller frees with, the same number is
//! charged and credited. Consequently `live_bytes` counts these blocks at their usable
//! size, not the requested one.
//!
//! # Zero-size layouts
//!
//! A zero-size layout gets a real block (the smallest class that fits the alignment),
//! exactly as [`Heap::alloc`] does, not a dangling pointer; `deallocate` frees it like
//! any other. Every zero-size allocation is therefore unique and must be freed.
//!
//! # Alignment changes
//!
//! `grow` and `shrink` go through the heap's `realloc` (in place while the size class
//! still fits) when the alignment is unchanged. A different alignment may change the
//! size class a later `deallocate` computes, so then the block always moves.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};

use crate::pool::heap::HeapInner;
use crate::{Global, Heap};

/// The layout a block requested with `layout` is allocated, resized and freed as: its
/// full usable size. `None` if that size is not a valid layout (then the request could
/// not be served anyway).
#[inline]
fn full_layout(heap: &HeapInner, layout: Layout) -> Option<Layout> {
    Layout::from_size_align(heap.usable_size(layout), layout.align()).ok()
}

/// [`full_layout`] of a layout that fits a block allocated through this adapter.
///
/// # Safety
///
/// `layout` fits a block allocated through this adapter (so its full layout was valid
/// when the block was allocated).
#[inline]
unsafe fn full_layout_of_block(heap: &HeapInner, layout: Layout) -> Layout {
    let size = heap.usable_size(layout);
    debug_assert!(Layout::from_size_align(size, layout.align()).is_ok());
    // SAFETY: the block was allocated with exactly this layout (every size a fitting
    // layout may carry maps to the same usable size), which was valid then.
    unsafe { Layout::from_size_align_unchecked(size, layout.align()) }
}

#[inline]
fn allocate(heap: &HeapInner, layout: Layout, zeroed: bool) -> Result<NonNull<[u8]>, AllocError> {
    let full = full_layout(heap, layout).ok_or(AllocError)?;
    let p = if zeroed {
        heap.alloc_zeroed(full)?
    } else {
        heap.alloc(full)?
    };
    Ok(NonNull::slice_from_raw_parts(p, full.size()))
}

/// # Safety
///
/// `ptr` is a block allocated through this adapter from `heap` that `layout` fits, and
/// it is dead from now on.
#[inline]
unsafe fn deallocate(heap: &HeapInner, ptr: NonNull<u8>, layout: Layout) {
    // SAFETY: forwarded from the caller: `layout` fits the block.
    let full = unsafe { full_layout_of_block(heap, layout) };
    // SAFETY: the block was allocated with `full` (see the module docs) and is dead.
    unsafe { heap.dealloc(ptr, full) }
}

/// Grows or shrinks a block; with `zero_tail`, zeroes everything past `old.size()`.
///
/// # Safety
///
/// `ptr` is a block allocated through this adapter from `heap` that `old` fits. On
/// success it must not be used again (unless returned); on error it is unchanged.
unsafe fn resize(
    heap: &HeapInner,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
    zero_tail: bool,
) -> Result<NonNull<[u8]>, AllocError> {
    // SAFETY: forwarded from the caller: `old` fits the block.
    let old_full = unsafe { full_layout_of_block(heap, old) };
    let new_full = full_layout(heap, new).ok_or(AllocError)?;
    let p = if new.align() == old.align() {
        // SAFETY:
        // - the block was allocated with `old_full` (module docs);
        // - `new_full` is a valid layout, so its size rounded to the alignment fits isize.
        unsafe { heap.realloc(ptr, old_full, new_full.size())? }
    } else {
        let fresh = heap.alloc(new_full)?;
        // SAFETY:
        // - both blocks are valid for `min(old_full, new_full)` bytes and distinct;
        // - the old block was allocated with `old_full` and is dead after the copy.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr.as_ptr(),
                fresh.as_ptr(),
                old_full.size().min(new_full.size()),
            );
            heap.dealloc(ptr, old_full);
        }
        fresh
    };
    if zero_tail && new_full.size() > old.size() {
        // SAFETY: the block holds `new_full.size()` bytes and `old.size()` is below that.
        unsafe {
            p.as_ptr()
                .add(old.size())
                .write_bytes(0, new_full.size() - old.size())
        };
    }
    Ok(NonNull::slice_from_raw_parts(p, new_full.size()))
}

/// `resize` with the profiler's record moved along (feature `profiling`).
macro_rules! profiled_resize {
    ($a:expr, $ptr:expr, $old:expr, $new:expr, $zero:expr) => {{
        #[cfg(feature = "profiling")]
        let taken = $a.profiler.before_realloc($ptr.as_ptr());
        let r = resize($a.inner(), $ptr, $old, $new, $zero);
        #[cfg(feature = "profiling")]
        $a.profiler.after_realloc(
            taken,
            $ptr.as_ptr(),
            r.map_or(ptr::null_mut(), |b| b.cast::<u8>().as_ptr()),
            r.map_or(0, |b| b.len()),
        );
        r
    }};
}

/// Generates the `Allocator` methods for a type with `fn inner(&self) -> &HeapInner`.
macro_rules! allocator_methods {
    () => {
        #[inline]
        fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            let r = allocate(self.inner(), layout, false);
            // Profiler hook: recorded at the usable size it is accounted at.
            #[cfg(feature = "profiling")]
            if let Ok(b) = r {
                self.profiler.on_alloc_ptr(b.cast().as_ptr(), b.len());
            }
            r
        }

        #[inline]
        fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
            let r = allocate(self.inner(), layout, true);
            #[cfg(feature = "profiling")]
            if let Ok(b) = r {
                self.profiler.on_alloc_ptr(b.cast().as_ptr(), b.len());
            }
            r
        }

        #[inline]
        unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
            // Profiler hook: the record goes before the block can be reused.
            #[cfg(feature = "profiling")]
            self.profiler.on_free_ptr(ptr.as_ptr());
            // SAFETY: the `Allocator::deallocate` contract: `ptr` is currently allocated
            // by this allocator and `layout` fits it.
            unsafe { deallocate(self.inner(), ptr, layout) }
        }

        unsafe fn grow(
            &self,
            ptr: NonNull<u8>,
            old_layout: Layout,
            new_layout: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: the `Allocator::grow` contract: `ptr` is currently allocated by this
            // allocator and `old_layout` fits it.
            unsafe { profiled_resize!(self, ptr, old_layout, new_layout, false) }
        }

        unsafe fn grow_zeroed(
            &self,
            ptr: NonNull<u8>,
            old_layout: Layout,
            new_layout: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: as in `grow`.
            unsafe { profiled_resize!(self, ptr, old_layout, new_layout, true) }
        }

        unsafe fn shrink(
            &self,
            ptr: NonNull<u8>,
            old_layout: Layout,
            new_layout: Layout,
        ) -> Result<NonNull<[u8]>, AllocError> {
            // SAFETY: as in `grow`.
            unsafe { profiled_resize!(self, ptr, old_layout, new_layout, false) }
        }
    };
}

// SAFETY:
// - blocks stay valid until deallocated or the heap is dropped, which cannot happen
//   while a `&Heap` (and so any copy of this allocator) is alive;
// - copies of `&Heap` are the same heap, so any of them may free any block;
// - blocks are aligned and sized per `Heap::alloc`; sizes are handled per the module
//   docs, so every layout that fits a block frees it correctly.
unsafe impl Allocator for &Heap {
    allocator_methods!();
}

// SAFETY: as for `&Heap`. `'static` makes sure the `Global` never moves or drops while
// it may hold blocks (see "Where a `Global` may live" on [`Global`]): `allocate` is a
// safe method, so it must not be able to pin a value that could move afterwards.
unsafe impl Allocator for &'static Global {
    allocator_methods!();
}

// Statics of `Global` need its `const` constructor, which loom builds do not have.
#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    #[test]
    fn usable_size_is_idempotent_on_every_class_and_alignment() {
        // The accounting rule in the module docs needs: every size from a request up
        // to its usable size maps to the same usable size.
        let heap = Heap::new();
        let mut align = 1;
        while align <= 8192 {
            for size in (0..=300_000)
                .step_by(97)
                .chain([0, 1, 4096, 262_144, 262_145])
            {
                let l = Layout::from_size_align(size, align).unwrap();
                let u = heap.usable_size(l);
                assert!(u >= size);
                for probe in [size, (size + u) / 2, u] {
                    let lp = Layout::from_size_align(probe, align).unwrap();
                    assert_eq!(
                        heap.usable_size(lp),
                        u,
                        "size {size} align {align} probe {probe}"
                    );
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn slice_length_is_the_usable_size_and_any_fitting_size_frees() {
        let heap = Heap::new();
        let a = &heap;
        for (size, align) in [
            (0, 1),
            (1, 1),
            (100, 8),
            (100, 64),
            (5000, 4096),
            (300_000, 16),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            let u = heap.usable_size(l);
            for free_size in [size, u] {
                let b = a.allocate(l).unwrap();
                assert_eq!(b.len(), u);
                assert_eq!(b.cast::<u8>().as_ptr() as usize % align, 0);
                // SAFETY: the whole slice is the caller's; it is freed with a size in
                // `[size, u]`, which fits.
                unsafe {
                    b.cast::<u8>().as_ptr().write_bytes(0x5A, u);
                    a.deallocate(b.cast(), Layout::from_size_align(free_size, align).unwrap());
                }
            }
        }
        let s = heap.stats();
        assert_eq!(s.fixed.live_bytes(), 0);
        assert_eq!(s.fixed.live_blocks(), 0);
    }
}
