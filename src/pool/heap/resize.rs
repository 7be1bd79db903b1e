//! Reallocation of fixed pool blocks: in place within the block's class and, for
//! classes of at least [`SHRINK_MIN`] bytes, down to half the block (the block is then
//! marked in its span, see
//! [`Span::shrunk`](crate::pool::span::Span::shrunk)); otherwise a new block, a copy and a free.
//! Large blocks go to the large allocator (`mremap`).
//!
//! # Blocks grown out of the pools
//!
//! A realloc that grows a pool block into a class of [`GROW_OUT_MIN`] bytes or more
//! does not move it to another pool block: it moves it, once, into a large mapping of
//! [`MAX_SMALL`] bytes (a *grown* block), where every later resize within the pool range
//! is in place (no copy, no system call), and growth past the pools is an `mremap` of
//! that mapping. A large block resized into the pool range, to [`GROWN_KEEP_MIN`] bytes
//! or more, becomes a grown block too (its mapping shrunk in place, not copied). A grown
//! block resized below [`GROWN_KEEP_MIN`] moves back into the pools.
//!
//! A grown block keeps the layouts of the pool range, so `dealloc` cannot tell it from
//! the layout: it tells it by address. A block in no span of this heap freed or resized
//! with a pool layout is a grown block if the large registry knows it with the grown
//! mapping's length (else it is misuse, reported as before). Its mapping length is
//! fixed ([`grown_map`]), so no lookup is needed to free it, and it is at least the
//! usable size (`HeapInner::usable_size`, the class size) of every layout it can have.
//! The large allocator counts it as its requested size (`LargeAllocator::recount`).
//!
//! ```text
//!  pool block ──grow to ≥ GROW_OUT_MIN──▶ grown (MAX_SMALL mapping) ──past MAX_SMALL──▶ large
//!      ▲                                    │  ▲ in place within        (exact mapping)
//!      └──────── below GROWN_KEEP_MIN ───────┘  └──── ≥ GROWN_KEEP_MIN (mremap shrink) ─┘
//! ```

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::HeapInner;
use crate::AllocError;
#[cfg(feature = "hardened")]
use crate::pool::hardened;
use crate::pool::span::{SHRINK_MIN, Span, SpanKind};
use crate::size_class::{self, MAX_SMALL};

/// A realloc that grows a pool block into a class of at least this many bytes makes it
/// a grown block (see the module docs).
pub(crate) const GROW_OUT_MIN: usize = 64 << 10;

/// A grown or large block resized to at least this many bytes (within the pool range)
/// stays out of the pools; below, it moves back into them.
pub(crate) const GROWN_KEEP_MIN: usize = 32 << 10;

/// The layout a grown block's mapping is made, resized and freed with.
pub(crate) fn grown_map(align: usize) -> Layout {
    // Pool layouts have alignments up to `MAX_POOL_ALIGN` (4 KiB), which divides
    // `MAX_SMALL`: always a valid layout.
    Layout::from_size_align(MAX_SMALL, align).expect("a pool alignment")
}

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
        let cn = size_class::class_for(new_size, align);
        let Some(co) = size_class::class_for(old.size(), align) else {
            // SAFETY: forwarded from the caller: a large block of `old`.
            return unsafe { self.realloc_large(ptr, old, new) };
        };
        let Some(span) = self.span_of(ptr) else {
            // In no span of this heap: a grown block, or misuse.
            // SAFETY: forwarded from the caller.
            return unsafe { self.realloc_grown(ptr, old, new, co) };
        };
        if let Some(cn) = cn
            && let Some(real) = self.resize_in_place(span, ptr, co, cn, new_size)
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
            return Ok(ptr);
        }
        if new_size > old.size()
            && cn.is_some_and(|c| size_class::size(c) >= GROW_OUT_MIN)
            && let Some(fresh) = self.grown_block(align, new_size)
        {
            // Growing into a big class: out of the pools, once.
            // SAFETY: forwarded from the caller; `fresh` is a distinct live block of at
            // least `MAX_SMALL >= new_size` bytes.
            unsafe { self.copy_and_free(ptr, old, fresh, new_size) };
            return Ok(fresh);
        }
        let fresh = self.alloc(new)?;
        // SAFETY: forwarded from the caller; `fresh` is a distinct block of `new`.
        unsafe { self.copy_and_free(ptr, old, fresh, new_size) };
        Ok(fresh)
    }

    /// A fresh grown block (a mapping of [`grown_map`]) counted as `new_size` bytes, or
    /// `None` when the commit limit or the OS refuses it (out of mappings, for one: each
    /// grown block is a mapping of its own); the caller then stays in the pools, whose
    /// smaller block may still fit.
    fn grown_block(&self, align: usize, new_size: usize) -> Option<NonNull<u8>> {
        self.check_commit(MAX_SMALL).ok()?;
        self.large
            .alloc_counted_uninit(grown_map(align), new_size)
            .ok()
    }

    /// Copies what `ptr` (a live block of `old`) and a fresh block of `new_size` bytes
    /// have in common into `fresh`, then frees `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this heap of `old` (any kind), dead afterwards; `fresh`
    /// is another live block of at least `new_size` bytes.
    unsafe fn copy_and_free(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        fresh: NonNull<u8>,
        new_size: usize,
    ) {
        // SAFETY: both blocks are valid for the copied length and distinct; the old
        // block is dead after the copy.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old.size().min(new_size));
            self.dealloc(ptr, old);
        }
    }

    /// Reallocates a large block (a layout of no pool class) to `new`.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::realloc`]; `old` has no pool class.
    unsafe fn realloc_large(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let new_size = new.size();
        match size_class::class_for(new_size, new.align()) {
            None => {
                self.check_commit(new_size.saturating_sub(old.size()))?;
                // SAFETY: forwarded from the caller: a large block with this layout.
                unsafe { self.large.realloc(ptr, old, new_size) }
            }
            Some(_) => {
                if new_size >= GROWN_KEEP_MIN {
                    // Into the pool range but big: a grown block, its mapping shrunk in
                    // place (`old.size() > MAX_SMALL`: a pool alignment with no class).
                    // On failure the block is unchanged and moves into the pools below.
                    // SAFETY: forwarded from the caller: a large block with this layout.
                    if let Ok(p) = unsafe { self.large.realloc(ptr, old, MAX_SMALL) } {
                        self.large.recount(MAX_SMALL, new_size);
                        return Ok(p);
                    }
                }
                let fresh = self.alloc(new)?;
                // SAFETY: forwarded from the caller; `fresh` is a distinct block of `new`.
                unsafe { self.copy_and_free(ptr, old, fresh, new_size) };
                Ok(fresh)
            }
        }
    }

    /// Reallocates `ptr`, freed with the pool layout `old` (of class `co`) but in no
    /// span of this heap: a grown block (see the module docs), or misuse, which aborts.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::realloc`].
    unsafe fn realloc_grown(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        co: usize,
    ) -> Result<NonNull<u8>, AllocError> {
        let map = grown_map(old.align());
        if !self.large.may_be_live(ptr, map) {
            // Not a grown block either: `misuse` names the pointer and aborts.
            self.misuse(ptr, co);
        }
        let new_size = new.size();
        if size_class::class_for(new_size, new.align()).is_none() {
            // Past the pools: the mapping grows (`mremap`) into an ordinary large block.
            self.check_commit(new_size.saturating_sub(MAX_SMALL))?;
            self.large.recount(old.size(), MAX_SMALL);
            // SAFETY: forwarded from the caller: a live grown block, mapped for `map`.
            let r = unsafe { self.large.realloc(ptr, map, new_size) };
            if r.is_err() {
                self.large.recount(MAX_SMALL, old.size());
            }
            r
        } else if new_size >= GROWN_KEEP_MIN {
            // The mapping holds every pool size: in place.
            self.large.recount(old.size(), new_size);
            Ok(ptr)
        } else {
            let fresh = self.alloc(new)?;
            // SAFETY: forwarded from the caller; both blocks are valid for the copied
            // length and distinct; the grown block is dead after the copy and freed
            // with its mapping's layout and requested size.
            unsafe {
                ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), old.size().min(new_size));
                self.large.dealloc_counted(ptr, map, old.size());
            }
            Ok(fresh)
        }
    }

    /// Frees `ptr`, freed with the pool layout `layout` (of class `class`) but in no span
    /// of this heap: a grown block (see the module docs), or misuse, which aborts.
    ///
    /// # Safety
    ///
    /// `ptr` was allocated by this heap with `layout` (or last reallocated to it) and is
    /// dead from now on.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn dealloc_grown(&self, ptr: NonNull<u8>, layout: Layout, class: usize) {
        let map = grown_map(layout.align());
        if !self.large.may_be_live(ptr, map) {
            // Not a grown block either: `misuse` names the pointer and aborts.
            self.misuse(ptr, class);
            return;
        }
        // SAFETY: forwarded from the caller: a live grown block, mapped for `map` and
        // counted as `layout.size()` bytes.
        unsafe { self.large.dealloc_counted(ptr, map, layout.size()) }
    }

    /// Keeps the live fixed block at `ptr` (in `span`), allocated (or last reallocated)
    /// with a layout of class `co`, in place for `new_size` bytes of class `cn` if it can:
    /// returns the block's own class then, `None` if the caller must move it.
    ///
    /// A block stays while `new_size` fits it and, below its own class, still fills at
    /// least half of it (mimalloc's rule: a shrink keeps at most half a block idle).
    /// Blocks of classes below [`SHRINK_MIN`] stay only within their class (a copy is
    /// cheap there). The block's own class comes from its span: a block shrunk in place is in a bigger class than
    /// its layout says. A block kept in a bigger class than its new layout's is marked in
    /// its span ([`Span::shrunk`](crate::pool::span::Span::shrunk)), so that a free with that layout, which `dealloc`
    /// would take for a wrong one, finds the block's own class; a block back at its own
    /// class is unmarked. A misused pointer aborts here, as its free would.
    fn resize_in_place(
        &self,
        span: &Span,
        ptr: NonNull<u8>,
        co: usize,
        cn: usize,
        new_size: usize,
    ) -> Option<usize> {
        let addr = ptr.as_ptr() as usize;
        let Some(i) = Some(span)
            .filter(|s| s.kind() == SpanKind::Fixed)
            .and_then(|s| s.block_index(addr))
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
