//! The allocator-api2 `Allocator` impl: frame-backed scratch collections.
//!
//! `Frame` implements [`Allocator`], so `&Frame` does too (allocator-api2's blanket impl
//! for references): `allocator_api2::vec::Vec::new_in(&frame)` and
//! `hashbrown::HashMap::new_in(&frame)` build collections whose buffers live in the
//! frame and whose type borrows the token, so they cannot outlive it.
//!
//! Bump allocation makes the most recent block of the calling thread's lane special:
//! growing it extends it in place (a growing `Vec` that nobody allocated after does not
//! copy), shrinking it and freeing it give the space back. Any other free is a no-op and
//! any other grow copies into a fresh block; the old one is reclaimed with the frame.

use core::alloc::Layout;
use core::ptr::{self, NonNull};

use allocator_api2::alloc::{AllocError, Allocator};

use super::Frame;

// SAFETY:
// * `allocate` returns fresh blocks, disjoint from every live block, that stay valid
//   until the frame ends — which needs the token, so not while this allocator (or a
//   reference to it) is alive;
// * `&Frame` copies are the same allocator: any of them may resize or free a block
//   made through another;
// * the in-place paths touch only the calling thread's own lane, and only its most
//   recent block `[ptr, ptr + old_size)`, which the caller owns.
unsafe impl Allocator for Frame<'_> {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = self.alloc_layout(layout)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // Gives the space back only if this is the lane's most recent block.
        self.arena.with_own_bump(false, |b| {
            b.resize_last(ptr.as_ptr().addr(), layout.size(), 0)
        });
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() >= old_layout.size());
        let addr = ptr.as_ptr().addr();
        if addr % new_layout.align() == 0 {
            let grown = self.arena.with_own_bump(false, |b| {
                b.resize_last(addr, old_layout.size(), new_layout.size())
            });
            if grown == Some(true) {
                return Ok(NonNull::slice_from_raw_parts(ptr, new_layout.size()));
            }
        }
        let fresh = self.alloc_layout(new_layout)?;
        // SAFETY:
        // * the caller guarantees `ptr` is a live block of `old_layout.size()` bytes;
        // * `fresh` is a new block of at least that size, disjoint from it.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old_layout.size()) };
        Ok(NonNull::slice_from_raw_parts(fresh, new_layout.size()))
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded from the caller.
        let block = unsafe { self.grow(ptr, old_layout, new_layout) }?;
        // SAFETY: the grown block holds `new_layout.size()` bytes; the tail past the old
        // size is ours to initialise.
        unsafe {
            block
                .cast::<u8>()
                .as_ptr()
                .add(old_layout.size())
                .write_bytes(0, new_layout.size() - old_layout.size());
        }
        Ok(block)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old_layout: Layout,
        new_layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        debug_assert!(new_layout.size() <= old_layout.size());
        let addr = ptr.as_ptr().addr();
        if addr % new_layout.align() == 0 {
            // Any block can shrink where it is; the most recent one also gives its tail
            // back to the lane.
            self.arena.with_own_bump(false, |b| {
                b.resize_last(addr, old_layout.size(), new_layout.size())
            });
            return Ok(NonNull::slice_from_raw_parts(ptr, new_layout.size()));
        }
        let fresh = self.alloc_layout(new_layout)?;
        // SAFETY:
        // * the caller guarantees `ptr` is a live block of `old_layout.size()` bytes, at
        //   least `new_layout.size()`;
        // * `fresh` is a new block of `new_layout.size()` bytes, disjoint from it.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), new_layout.size()) };
        Ok(NonNull::slice_from_raw_parts(fresh, new_layout.size()))
    }
}
