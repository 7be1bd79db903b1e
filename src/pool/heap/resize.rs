//! Reallocation of fixed pool blocks: in place within the block's class and, for
//! classes of at least [`SHRINK_MIN`] bytes, down to half the block (the block is then
//! marked in its span, see
//! [`Span::shrunk`](crate::pool::span::Span::shrunk)); otherwise a new block, a copy and a free.
//! Large blocks go to the large allocator (`mremap`).

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::HeapInner;
use crate::AllocError;
#[cfg(feature = "hardened")]
use crate::pool::hardened;
use crate::pool::span::{SHRINK_MIN, SpanKind};
use crate::size_class;

impl HeapInner {
    /// Reallocates a fixed block; see `Heap::realloc`.
    ///
    /// # Safety
    ///
    /// `ptr` was allocated by this heap with `old`, and `new_size` rounded up to
    /// `old.align()` does not overflow `isize`.
    pub(crate) unsafe fn realloc(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new_size: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let align = old.align();
        let new = Layout::from_size_align(new_size, align)
            .map_err(|_| AllocError::TooLarge { size: new_size })?;
        let co = size_class::class_for(old.size(), align);
        let cn = size_class::class_for(new_size, align);
        match (co, cn) {
            // In place while the new size fits the block (see `resize_in_place`).
            (Some(co), Some(cn))
                if let Some(real) = self.resize_in_place(ptr, co, cn, new_size) =>
            {
                #[cfg(feature = "hardened")]
                // SAFETY: forwarded from the caller: `ptr` is a live block of class
                // `real` asked for as `old.size()`; `new_size` fits it.
                unsafe {
                    let key = self.key.load(Ordering::Relaxed);
                    hardened::check_canary(key, ptr, size_class::size(real), old.size());
                    hardened::write_canary(key, ptr, size_class::size(real), new_size);
                }
                #[cfg(not(feature = "hardened"))]
                let _ = real;
                self.account_resize(old.size(), new_size);
                Ok(ptr)
            }
            (None, None) => {
                self.check_commit(new_size.saturating_sub(old.size()))?;
                // SAFETY: forwarded from the caller: a large block with this layout.
                unsafe { self.large.realloc(ptr, old, new_size) }
            }
            _ => {
                let fresh = self.alloc(new)?;
                // SAFETY: both blocks are valid for the copied length and distinct; the
                // old block is dead after the copy.
                unsafe {
                    ptr::copy_nonoverlapping(
                        ptr.as_ptr(),
                        fresh.as_ptr(),
                        old.size().min(new_size),
                    );
                    self.dealloc(ptr, old);
                }
                Ok(fresh)
            }
        }
    }

    /// Keeps the live fixed block at `ptr`, allocated (or last reallocated) with a
    /// layout of class `co`, in place for `new_size` bytes of class `cn` if it can:
    /// returns the block's own class then, `None` if the caller must move it.
    ///
    /// A block stays while `new_size` fits it and, below its own class, still fills at
    /// least half of it (mimalloc's rule: a shrink keeps at most half a block idle).
    /// Blocks of classes below [`SHRINK_MIN`] stay only within their class (a copy is
    /// cheap there). The block's own class comes from its span (a page-map lookup, small
    /// next to the copy it may save): a block shrunk in place is in a bigger class than
    /// its layout says. A block kept in a bigger class than its new layout's is marked in
    /// its span ([`Span::shrunk`](crate::pool::span::Span::shrunk)), so that a free with that layout, which `dealloc`
    /// would take for a wrong one, finds the block's own class; a block back at its own
    /// class is unmarked. A misused pointer aborts here, as its free would.
    fn resize_in_place(
        &self,
        ptr: NonNull<u8>,
        co: usize,
        cn: usize,
        new_size: usize,
    ) -> Option<usize> {
        let addr = ptr.as_ptr() as usize;
        let Some((span, i)) = self
            .span_of(ptr)
            .filter(|s| s.kind() == SpanKind::Fixed)
            .and_then(|s| Some((s, s.block_index(addr)?)))
        else {
            // Not a fixed block start of this heap: `misuse` names it and aborts.
            self.misuse(ptr, co);
            return None;
        };
        let real = span.class();
        if real != co && !(real > co && span.is_shrunk(i)) {
            // A wrong layout (or a double free): `misuse` names it and aborts.
            self.misuse(ptr, co);
            return None;
        }
        let real_size = size_class::size(real);
        let fits =
            cn == real || (cn < real && real_size >= SHRINK_MIN && 2 * new_size >= real_size);
        if fits && real_size >= SHRINK_MIN {
            // A class of at least `SHRINK_MIN` bytes has at most 64 blocks: `i < 64`.
            span.set_shrunk(i, cn != real);
        }
        fits.then_some(real)
    }

    fn account_resize(&self, old: usize, new: usize) {
        let c = match self.thread_cache() {
            Some(tc) => &tc.counters[0],
            None => &self.shared[0],
        };
        // Live bytes = alloc_bytes − free_bytes: charge the new size, credit the old.
        c.alloc_bytes.fetch_add(new as u64, Ordering::Relaxed);
        c.free_bytes.fetch_add(old as u64, Ordering::Relaxed);
    }
}
