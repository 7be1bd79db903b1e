//! The allocator-api2 `Allocator` impls: frame-backed scratch collections.
//!
//! [`Frame`] and [`FrameShared`] implement [`Allocator`] (and so does `&Frame`, through
//! allocator-api2's blanket impl for references): `allocator_api2::vec::Vec::new_in(&frame)`
//! and `hashbrown::HashMap::new_in(frame.shared())` build collections whose buffers live
//! in the frame and whose type borrows the token, so they cannot outlive it.
//!
//! Bump allocation makes the most recent block of the caller's lane special: growing it
//! extends it in place (a growing `Vec` that nobody allocated after does not copy),
//! shrinking it and freeing it give the space back. Any other free is a no-op and any
//! other grow copies into a fresh block; the old one is reclaimed with the frame.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};

use super::lane::Bump;
use super::{Frame, FrameShared};

/// What the `Allocator` impls need from a frame handle.
trait LastBlock {
    /// Allocates a fresh block.
    fn fresh(&self, layout: Layout) -> Result<NonNull<u8>, AllocError>;
    /// Runs `f` on the caller's bump state, if the caller has one in this frame.
    fn with_last<R>(&self, f: impl FnOnce(&mut Bump) -> R) -> Option<R>;
}

impl LastBlock for Frame<'_> {
    #[inline]
    fn fresh(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        Ok(self.alloc_layout(layout)?)
    }

    #[inline]
    fn with_last<R>(&self, f: impl FnOnce(&mut Bump) -> R) -> Option<R> {
        Some(self.with_bump(f))
    }
}

impl LastBlock for FrameShared<'_> {
    #[inline]
    fn fresh(&self, layout: Layout) -> Result<NonNull<u8>, AllocError> {
        Ok(self.alloc_layout(layout)?)
    }

    #[inline]
    fn with_last<R>(&self, f: impl FnOnce(&mut Bump) -> R) -> Option<R> {
        // A thread without a lane in this frame made no block there: nothing to resize.
        self.with_own_bump(false, f)
    }
}

#[inline]
fn allocate(h: &impl LastBlock, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
    let p = h.fresh(layout)?;
    Ok(NonNull::slice_from_raw_parts(p, layout.size()))
}

/// Gives the space back only if `ptr` is the lane's most recent block.
#[inline]
fn deallocate(h: &impl LastBlock, ptr: NonNull<u8>, layout: Layout) {
    h.with_last(|b| b.resize_last(ptr.as_ptr().addr(), layout.size(), 0));
}

/// # Safety
///
/// `ptr` is a live block of `old` from `h`'s frame; `new.size() >= old.size()`.
unsafe fn grow(
    h: &impl LastBlock,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
) -> Result<NonNull<[u8]>, AllocError> {
    debug_assert!(new.size() >= old.size());
    let addr = ptr.as_ptr().addr();
    if addr.is_multiple_of(new.align()) {
        let grown = h.with_last(|b| b.resize_last(addr, old.size(), new.size()));
        if grown == Some(true) {
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
    }
    let fresh = h.fresh(new)?;
    // SAFETY:
    // * the caller guarantees `ptr` is a live block of `old.size()` bytes;
    // * `fresh` is a new block of at least that size, disjoint from it.
    unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old.size()) };
    Ok(NonNull::slice_from_raw_parts(fresh, new.size()))
}

/// # Safety
///
/// `ptr` is a live block of `old` from `h`'s frame; `new.size() <= old.size()`.
unsafe fn shrink(
    h: &impl LastBlock,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
) -> Result<NonNull<[u8]>, AllocError> {
    debug_assert!(new.size() <= old.size());
    let addr = ptr.as_ptr().addr();
    if addr.is_multiple_of(new.align()) {
        // Any block can shrink where it is; the most recent one also gives its tail back.
        h.with_last(|b| b.resize_last(addr, old.size(), new.size()));
        return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
    }
    let fresh = h.fresh(new)?;
    // SAFETY:
    // * the caller guarantees `ptr` is a live block of `old.size() >= new.size()` bytes;
    // * `fresh` is a new block of `new.size()` bytes, disjoint from it.
    unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), new.size()) };
    Ok(NonNull::slice_from_raw_parts(fresh, new.size()))
}

/// # Safety
///
/// As [`grow`].
unsafe fn grow_zeroed(
    h: &impl LastBlock,
    ptr: NonNull<u8>,
    old: Layout,
    new: Layout,
) -> Result<NonNull<[u8]>, AllocError> {
    // SAFETY: forwarded from the caller.
    let block = unsafe { grow(h, ptr, old, new) }?;
    // SAFETY: the grown block holds `new.size()` bytes; the tail past `old.size()` is ours
    // to initialise.
    unsafe {
        block
            .cast::<u8>()
            .as_ptr()
            .add(old.size())
            .write_bytes(0, new.size() - old.size());
    }
    Ok(block)
}

/// Implements `Allocator` for a handle by delegating to the functions above.
macro_rules! frame_allocator {
    ($ty:ty) => {
        // SAFETY:
        // * `allocate` returns fresh blocks, disjoint from every live block, that stay
        //   valid until the frame ends — which needs the token, hence not while this
        //   allocator (which borrows it) is alive;
        // * copies of a handle are the same allocator: any may resize or free a block
        //   made through another;
        // * the in-place paths touch only the caller's own lane, and only its most
        //   recent block `[ptr, ptr + old_size)`, which the caller owns.
        unsafe impl Allocator for $ty {
            #[inline]
            fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
                allocate(self, layout)
            }

            #[inline]
            unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
                deallocate(self, ptr, layout);
            }

            unsafe fn grow(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, AllocError> {
                // SAFETY: the caller upholds `Allocator::grow`'s contract, which is
                // `grow`'s.
                unsafe { grow(self, ptr, old_layout, new_layout) }
            }

            unsafe fn grow_zeroed(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, AllocError> {
                // SAFETY: as for `grow`.
                unsafe { grow_zeroed(self, ptr, old_layout, new_layout) }
            }

            unsafe fn shrink(
                &self,
                ptr: NonNull<u8>,
                old_layout: Layout,
                new_layout: Layout,
            ) -> Result<NonNull<[u8]>, AllocError> {
                // SAFETY: the caller upholds `Allocator::shrink`'s contract, which is
                // `shrink`'s.
                unsafe { shrink(self, ptr, old_layout, new_layout) }
            }
        }
    };
}

frame_allocator!(Frame<'_>);
frame_allocator!(FrameShared<'_>);
