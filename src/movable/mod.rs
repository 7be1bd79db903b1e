//! Movable blocks: handle-addressed memory the compactor may relocate.
//!
//! A movable block lives in a *movable* span (never a fixed one, so raw-pointer memory
//! is never moved: DESIGN invariant 1). Its handle's slot holds the block address, and
//! the span's side table records the block's owner slot and requested length, so the
//! compactor can walk a span block → handle.
//!
//! # Store tags
//!
//! One heap's handle table can serve many typed [`Store`](crate::Store)s. So that a
//! handle of one store can never resolve in another (which could read a `U` as a `T`),
//! every slot's pointer carries its owner's 20-bit *tag* in bits the block address never
//! uses: the 16 bits above 47 (user-space addresses on x86-64 and aarch64 fit in 48 bits;
//! asserted when a block is tagged) and the 4 bits below 4 (every movable block is at
//! least 16-byte aligned: pool blocks by their class, large ones by their page). A guard
//! checks the tag after taking the slot, so the check costs no extra memory access.
//!
//! Tags are unique **process-wide** and never reused (DESIGN invariant 8): raw handles
//! from [`Heap::alloc_handle`] carry tag 0, and every store, on whatever heap, takes the
//! next value of one global counter. So a handle of store `A` is `Stale` in every other
//! store, on the same heap or another (a handle carries no heap identity, and two heaps
//! issue the same slot indexes and generations). The counter is advanced by a checked
//! compare-exchange that refuses to pass [`MAX_STORES`](crate::store::MAX_STORES): once
//! 2^20 − 1 = 1 048 575 stores have been created in the process, creating another fails
//! with [`HandleError::StoresExhausted`] for good — it never wraps back to tag 0 or to a
//! live store's tag.
//!
//! Why 20 bits: 65 535 stores (16 bits) can run out in a long session of a game that
//! makes a few stores per streamed level or per match; a million cannot in practice
//! (a store a second for 12 days), and 20 bits is all the slot's pointer word has free
//! without growing the 16-byte slot.
//!
//! Reading a slot's pointer without a guard (to skip other stores' slots before
//! waiting for a guard) is a *peek*: exact while the handle that led there is current,
//! since a block's tag never changes while it lives (moves keep it); otherwise it may be
//! another incarnation's pointer or a vacant slot's free-list link, which is why every
//! peek is followed by a generation-checked guard or removal before anything is trusted.
//!
//! # Life of a movable block
//!
//! ```text
//! alloc:  block ← pools (movable kind) → contents written → slot ← table.insert(tagged block)
//!         → side table[block] = (owner = slot + 1, len) → span live += 1 (pending, `live`)
//! free:   table.remove(handle) (waits for guards, bumps the generation) → side table cleared
//!         → span live −= 1 (pending) → block back to the pools
//! move:   see `compact`: only under the slot's move lock, never waiting for it
//! ```
//!
//! # Large movable blocks
//!
//! Requests above the pool limits (256 KiB, or alignment above 4 KiB) are mapped
//! directly by the large allocator, with a *header* of `max(4 KiB, align)` bytes in
//! front of the user bytes holding the requested length; the header is not counted in
//! the live bytes ([`LargeStats::live_bytes`](crate::LargeStats::live_bytes) counts the
//! requested length only, as for every block). Such a block is relocated by
//! [`Heap::relocate_large`] with `mremap`, without copying: the pages move to a new
//! address under the slot's move lock, header included.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::HandleError;
#[cfg(feature = "events")]
use crate::events::Pool;
use crate::handle::scope::{self, remove_scoped_at, scopes_of};
use crate::handle::{RawHandle, SlotPin, SlotRead, SlotWrite};
use crate::heap::{Heap, layout_for};
use crate::numa::migration::{any_sampling, on_guarded_read};
use crate::pool::heap::HeapInner;
use crate::pool::span::{Span, SpanKind};
use crate::pool::thread_cache::{self, HEAP_SLOT, ThreadCache};
use crate::size_class;

mod guards;
mod large;
pub(crate) mod live;
mod tag;

pub use guards::{PinGuard, ReadGuard, WriteGuard};
use large::{LARGE_MAGIC, LargeHeader, large_header, large_layout};
pub(crate) use large::{large_header_of, large_vote};
pub(crate) use live::PendingLive;
#[cfg(test)]
use tag::take_tag;
pub(crate) use tag::{
    MAX_TAG, RAW_TAG, Tag, new_store_tag, peek_tag, skip_store_tags_to, tag_bits, tag_ptr, untag,
    untag_live_if,
};

// Every thread-cache record has a lane of the handle table (`lane_of`).
#[cfg(not(tidyheap_loom))]
const _: () = assert!(crate::pool::heap::MAX_THREAD_CACHES <= crate::handle::LANES);

impl HeapInner {
    /// Flushes this thread's movable lists (`tc` is its record) if the compactor asked
    /// for it since the thread last looked: one relaxed load on the common path.
    #[inline(always)]
    pub(crate) fn honor_movable_epoch(&self, tc: &crate::pool::thread_cache::ThreadCache) {
        let want = self.movable_epoch.load(Ordering::Relaxed);
        if tc.movable_epoch.load(Ordering::Relaxed) != want {
            tc.movable_epoch.store(want, Ordering::Relaxed);
            self.flush_evacuated_classes(tc);
        }
    }

    /// The slow path of `honor_movable_epoch`. The class mask is only a hint (a thread
    /// that races with a new plan may flush the previous plan's classes): flushing
    /// helps sources empty sooner, it is never needed for soundness.
    #[cold]
    #[inline(never)]
    fn flush_evacuated_classes(&self, tc: &crate::pool::thread_cache::ThreadCache) {
        let [lo, hi] = &self.movable_flush_classes;
        let mask =
            u128::from(lo.load(Ordering::Relaxed)) | u128::from(hi.load(Ordering::Relaxed)) << 64;
        // SAFETY: the calling thread owns its record.
        unsafe { self.flush_classes(tc, Some(SpanKind::Movable), mask) };
    }

    /// The span and index of movable block `block`.
    #[inline]
    pub(crate) fn movable_block(&self, block: NonNull<u8>) -> (&Span, usize) {
        let span = self
            .span_of(block)
            .expect("a movable block lies in a span of its heap");
        debug_assert_eq!(span.kind(), SpanKind::Movable);
        let i = span
            .block_index(block.as_ptr().addr())
            .expect("a movable block starts a block");
        (span, i)
    }
}

impl Heap {
    /// Allocates a movable block for `layout`, lets `init` write its contents, and
    /// gives it a handle tagged `tag`. If the handle cannot be made, `undo` gets the
    /// initialised block back (to take its contents out) before it is freed.
    ///
    /// Returns the handle and the calling thread's lane (`lane_of` its thread-cache
    /// record), if it has one: the lane stays the thread's for the rest of the call.
    pub(crate) fn alloc_movable(
        &self,
        layout: Layout,
        tag: Tag,
        init: impl FnOnce(NonNull<u8>),
        undo: impl FnOnce(NonNull<u8>),
    ) -> Result<(RawHandle, Option<usize>), HandleError> {
        let Some(class) = size_class::class_for(layout.size(), layout.align()) else {
            let h = self.alloc_large_movable(layout, tag, init, undo)?;
            // Profiler hook: recorded (by handle) before the handle is returned.
            #[cfg(feature = "profiling")]
            self.profiler.on_alloc_handle(h, layout.size());
            return Ok((h, None));
        };
        let inner = self.inner();
        // The thread's record, looked up once (one thread-local access): its block
        // cache serves the block and its lane the slot. A miss looks again.
        let tc = thread_cache::current_fast_at(inner, HEAP_SLOT);
        let block = match tc
            .and_then(|tc| inner.alloc_cached(tc, class, layout.size(), SpanKind::Movable))
        {
            Some(b) => b,
            None => inner.alloc_block(class, layout.size(), SpanKind::Movable)?,
        };
        let tc = tc.or_else(|| thread_cache::current_fast_at(inner, HEAP_SLOT));
        // Event hook: alloc before the owner is published to the compactor.
        emit!(
            self,
            on_alloc(Pool::Movable, block.as_ptr().addr(), layout.size())
        );
        init(block);
        let (span, i) = inner.movable_block(block);
        // SAFETY: `span` is movable and `i` is one of its blocks.
        let meta = unsafe { span.meta(i) };
        // The length is written before the slot is published, so a compactor that
        // takes the slot (after `insert`'s Release) reads this block's own length.
        meta.set_len(layout.size());
        let tagged = tag_ptr(block, tag);
        let lane = tc.map(|tc| inner.lane_of(tc));
        let h = match lane {
            // SAFETY: the lane is `tc`'s, the record this thread owns (`lane_of`).
            Some(lane) => unsafe { self.handles().insert_in(lane, tagged) },
            None => self.handles().insert(tagged),
        };
        let h = match h {
            Ok(h) => h,
            Err(e) => {
                undo(block);
                // Event hook: free before the block goes back to a free list.
                emit!(
                    self,
                    on_free(Pool::Movable, block.as_ptr().addr(), layout.size())
                );
                // SAFETY: the block was allocated above and never published.
                unsafe { inner.free_block(block, class, layout.size(), SpanKind::Movable) };
                return Err(e);
            }
        };
        // SAFETY:
        // - `span` is a movable span of this heap and `block`, one of its blocks, is ours;
        // - the lane is `tc`'s, the record this thread owns (`lane_of`).
        unsafe { self.pending_live.record(lane, span, 1) };
        // Release, and last: the compactor moves a block only once it sees its owner
        // (Acquire), and then also sees the live counts.
        meta.set_owner(h.index() + 1, Ordering::Release);
        // Profiler hook: by handle, so compaction moves need no update.
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_handle(h, layout.size());
        Ok((h, lane))
    }

    /// The large path of `alloc_movable`: a direct mapping with a header in front.
    fn alloc_large_movable(
        &self,
        layout: Layout,
        tag: Tag,
        init: impl FnOnce(NonNull<u8>),
        undo: impl FnOnce(NonNull<u8>),
    ) -> Result<RawHandle, HandleError> {
        let header = large_header(layout.align());
        let map = large_layout(layout.size(), header)?;
        self.inner().check_commit(map.size())?;
        let large = &self.inner().large;
        // Counted as the requested bytes: the header is ours, not the caller's. Not
        // zeroed: every caller's `init` writes the whole block (`alloc_handle` zeroes it
        // itself), and the header is written below.
        let base = large.alloc_counted_uninit(map, layout.size())?;
        // SAFETY: the mapping is `header + size` bytes; the block starts after the header.
        let block = unsafe { base.add(header) };
        // SAFETY: the header's last bytes are inside the mapping, 8-aligned, and ours.
        unsafe {
            block
                .as_ptr()
                .sub(size_of::<LargeHeader>())
                .cast::<LargeHeader>()
                .write(LargeHeader {
                    magic: LARGE_MAGIC,
                    len: layout.size(),
                    header,
                    vote: AtomicU16::new(0),
                });
        }
        // Event hook: alloc before the handle exists.
        emit!(
            self,
            on_alloc(Pool::Large, block.as_ptr().addr(), layout.size())
        );
        init(block);
        match self.handles().insert(tag_ptr(block, tag)) {
            Ok(h) => Ok(h),
            Err(e) => {
                undo(block);
                // Event hook: free before the mapping is unmapped.
                emit!(
                    self,
                    on_free(Pool::Large, block.as_ptr().addr(), layout.size())
                );
                // SAFETY: the mapping was made above with `map`, counted with the
                // requested size, and never published.
                unsafe { large.dealloc_counted(base, map, layout.size()) };
                Err(e)
            }
        }
    }

    /// Frees the movable block of `h` if it carries `tag`: `wait` for guards (or answer
    /// `Busy`), run `before_free` on the block (which the caller now owns exclusively)
    /// with the calling thread's lane (as for `alloc_movable`), then return it to the
    /// pools.
    pub(crate) fn free_movable(
        &self,
        h: RawHandle,
        tag: Tag,
        wait: bool,
        before_free: impl FnOnce(NonNull<u8>, Option<usize>),
    ) -> Result<(), HandleError> {
        let table = self.handles();
        // While `h` is current its slot's tag cannot change (moves keep it), so peeking
        // is exact for live handles; a stale handle fails `remove` below anyway. Peeking
        // first means a handle of another store is refused without waiting for its guards.
        let slot = table.get(h).ok_or(HandleError::Stale)?;
        if peek_tag(slot.ptr()) != Some(tag) {
            return Err(HandleError::Stale);
        }
        let inner = self.inner();
        // The thread's record, looked up once: its block cache takes the block and its
        // lane (module `handle::table::lanes`) the slot.
        let tc = thread_cache::current_fast_at(inner, HEAP_SLOT);
        let (tagged, retired) = if tag != RAW_TAG {
            // A store's value: not while a read scope of the store is open.
            remove_scoped_at(table, scopes_of(tag), slot, h, wait, || {
                scope::mine::check(tag, &|| {
                    format!("removing {h:?} (remove / dropping an Owned)")
                });
            })?
        } else {
            // Raw handles: the shared path, which also recycles the slot.
            let tagged = if wait {
                table.remove(h)?
            } else {
                table.try_remove(h)?
            };
            // Profiler hook: the handle is dead now (its generation moved on).
            #[cfg(feature = "profiling")]
            self.profiler.on_free(crate::profile::Key::Handle(h));
            self.free_vacated(tagged, None, None, |b| before_free(b, None));
            return Ok(());
        };
        // Profiler hook: the handle is dead now (its generation moved on).
        #[cfg(feature = "profiling")]
        self.profiler.on_free(crate::profile::Key::Handle(h));
        let lane = tc.map(|tc| inner.lane_of(tc));
        self.free_vacated(tagged, tc, lane, |b| before_free(b, lane));
        // SAFETY:
        // - we vacated the slot just now (`remove_scoped_at`) and gave it to nobody;
        // - the lane is `tc`'s, the record this thread owns (`lane_of`).
        unsafe {
            table.recycle(lane, h.index(), retired);
        }
        Ok(())
    }

    /// Frees the block of a slot the caller has just vacated (`tagged` is the slot's
    /// last pointer) after `before_free`, through `tc`, the calling thread's record, if
    /// it has one, and `lane`, its lane (`lane_of`): one page-map lookup.
    fn free_vacated(
        &self,
        tagged: NonNull<u8>,
        tc: Option<&ThreadCache>,
        lane: Option<usize>,
        before_free: impl FnOnce(NonNull<u8>),
    ) {
        let (block, _) = untag(tagged);
        let inner = self.inner();
        let Some(span) = inner.span_of(block) else {
            // SAFETY: a movable block outside every span is a large movable block.
            let (len, header) = unsafe { large_header_of(block) };
            // Event hook: the slot is vacant (no move can race); free before unmapping.
            emit!(self, on_free(Pool::Large, block.as_ptr().addr(), len));
            before_free(block);
            // SAFETY: the slot is vacant, so the mapping is ours; it was made with this
            // layout (`large_layout` of the same length and header) at `block - header`
            // and counted with the requested length `len`.
            unsafe {
                let map = large_layout(len, header).expect("validated when allocated");
                inner.large.dealloc_counted(block.sub(header), map, len);
            }
            return;
        };
        debug_assert_eq!(span.kind(), SpanKind::Movable);
        let i = span
            .block_index(block.as_ptr().addr())
            .expect("a movable block starts a block");
        // SAFETY: movable span, valid index.
        let meta = unsafe { span.meta(i) };
        let len = meta.len();
        // Event hook: the slot is vacant (no move can race); free before the block
        // goes back to a free list.
        emit!(self, on_free(Pool::Movable, block.as_ptr().addr(), len));
        meta.set_owner(0, Ordering::Release);
        // SAFETY:
        // - `span` is a movable span of this heap, and `block`, one of its blocks, is
        //   ours until it goes back to the pools below;
        // - `lane` is `tc`'s (the caller's), the record this thread owns.
        unsafe { self.pending_live.record(lane, span, u32::MAX) };
        before_free(block);
        let class = span.class();
        match tc {
            Some(tc) => {
                // SAFETY:
                // - the slot is vacant, so nobody else can reach the block; it is a live
                //   movable block of `class` allocated for `len` bytes;
                // - `tc` is this thread's record.
                if unsafe { inner.free_cached(tc, block, class, len, SpanKind::Movable) } {
                    inner.overflow(tc, class, SpanKind::Movable);
                }
            }
            // SAFETY:
            // - as above: a live movable block of `class` for `len` bytes, ours alone.
            None => unsafe { inner.free_block(block, class, len, SpanKind::Movable) },
        }
    }

    /// The number of large movable blocks and the sum of their requested lengths, found
    /// through the handle table (they lie in no span), for [`Heap::walk`]. Exact at
    /// quiescence; a block the compactor holds right now is skipped.
    pub(crate) fn walk_large_movable(&self) -> (usize, usize) {
        let table = self.handles();
        let (mut blocks, mut bytes) = (0, 0);
        for h in table.iter() {
            let Ok(pin) = table.try_pin(h) else {
                continue;
            };
            let (block, _) = untag(pin.ptr());
            if self.inner().span_of(block).is_none() {
                // SAFETY: the pin keeps the block alive and in place, and a movable block
                // outside every span is a large movable block.
                let (len, _) = unsafe { large_header_of(block) };
                blocks += 1;
                bytes += len;
            }
        }
        (blocks, bytes)
    }

    /// The requested length of movable block `block`.
    #[inline]
    fn block_len(&self, block: NonNull<u8>) -> usize {
        if self.inner().span_of(block).is_none() {
            // SAFETY: the caller holds a guard on `block`, a live movable block outside
            // every span: a large one.
            return unsafe { large_header_of(block) }.0;
        }
        let (span, i) = self.inner().movable_block(block);
        // SAFETY: movable span, valid index.
        unsafe { span.meta(i) }.len()
    }

    /// Allocates a zero-filled movable block of `size` bytes at `align` and returns its
    /// handle. Up to 256 KiB (and alignment 4 KiB) it comes from the pools and the
    /// compactor may move it; above, it is mapped directly and moves only through
    /// [`Heap::relocate_large`].
    ///
    /// # Errors
    ///
    /// [`HandleError::Alloc`] with [`AllocError::InvalidAlignment`](crate::AllocError::InvalidAlignment) for a
    /// non-power-of-two `align`, [`AllocError::TooLarge`](crate::AllocError::TooLarge) if the size overflows,
    /// [`AllocError::CommitLimit`](crate::AllocError::CommitLimit) past the heap's commit limit, or
    /// [`AllocError::OutOfMemory`](crate::AllocError::OutOfMemory).
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.alloc_handle(100, 16)?;
    /// heap.write(h)?.fill(7);
    /// assert_eq!(heap.read(h)?.len(), 100);
    /// assert!(heap.read(h)?.iter().all(|&b| b == 7));
    /// heap.free_handle(h)?;
    /// assert!(heap.read(h).is_err()); // stale now
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn alloc_handle(&self, size: usize, align: usize) -> Result<RawHandle, HandleError> {
        let layout = layout_for(size, align)?;
        self.alloc_movable(
            layout,
            RAW_TAG,
            |b| {
                // SAFETY: the fresh block holds at least `size` writable bytes.
                unsafe { b.as_ptr().write_bytes(0, size) }
            },
            |_| (),
        )
        .map(|(h, _)| h)
    }

    /// Moves a large movable block (one above the pool limits) to a new address with
    /// `mremap`, without copying its bytes. Never waits: a guarded or pinned block
    /// answers `Busy`. Returns `false` (and does nothing) for a pool block, which the
    /// compactor moves instead.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is not live here, [`HandleError::Busy`] if a guard
    /// or pin is held, [`HandleError::Alloc`] if the kernel refuses the remap (the
    /// block then stays where it was).
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.alloc_handle(4 << 20, 16)?;
    /// heap.write(h)?[12345] = 7;
    /// let before = heap.pin(h)?.as_ptr();
    /// assert!(heap.relocate_large(h)?);
    /// assert_ne!(heap.pin(h)?.as_ptr(), before);
    /// assert_eq!(heap.read(h)?[12345], 7);
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn relocate_large(&self, h: RawHandle) -> Result<bool, HandleError> {
        let table = self.handles();
        // The generation first: a stale handle's slot may hold anyone's block now.
        if !table.contains(h) {
            return Err(HandleError::Stale);
        }
        let slot = table.get(h).ok_or(HandleError::Stale)?;
        let tagged = NonNull::new(slot.ptr()).ok_or(HandleError::Stale)?;
        let (block, tag) = untag(tagged);
        let inner = self.inner();
        if inner.span_of(block).is_some() {
            // Checked again: the pointer read above is `h`'s only if `h` is still current
            // (a pool block stays a pool block while its handle lives; moves keep that).
            return if table.contains(h) {
                Ok(false)
            } else {
                Err(HandleError::Stale)
            };
        }
        let mut mv = table
            .try_lock_move(h.index(), tagged)
            .map_err(|e| match e {
                crate::handle::MoveSkip::Gone => HandleError::Stale,
                _ => HandleError::Busy,
            })?;
        if mv.handle() != h {
            return Err(HandleError::Stale);
        }
        // Never under an open read scope of the block's store (module `handle::scope`).
        if tag != RAW_TAG && !scopes_of(tag).admits_writer() {
            return Err(HandleError::Busy);
        }
        // SAFETY: we hold the move lock on a live large movable block.
        let (len, header) = unsafe { large_header_of(block) };
        let map = large_layout(len, header)?;
        // Event hook (move lock held): free(old) before the remap unmaps it; on failure
        // the block stays, so alloc(old) again.
        emit!(self, on_free(Pool::Large, block.as_ptr().addr(), len));
        // SAFETY: the mapping at `block - header` was made with `map`; the move lock
        // keeps every other thread away from it until the slot points at the new place.
        let base = match unsafe { inner.large.relocate(block.sub(header), map) } {
            Ok(base) => base,
            Err(e) => {
                emit!(self, on_alloc(Pool::Large, block.as_ptr().addr(), len));
                return Err(e.into());
            }
        };
        // SAFETY: the block's bytes (header included) moved with the pages.
        let moved = unsafe { base.add(header) };
        // Event hook (move lock held): alloc(new) before anyone else can reach it.
        emit!(self, on_alloc(Pool::Large, moved.as_ptr().addr(), len));
        // SAFETY: we hold the move lock; `moved` holds the same bytes.
        unsafe { mv.set_ptr(tag_ptr(moved, tag)) };
        drop(mv);
        self.notify_move(crate::compact::MoveEvent {
            handle: h,
            from: block.as_ptr().addr(),
            to: moved.as_ptr().addr(),
            size: len,
            class_size: len,
        });
        Ok(true)
    }

    /// Allocates a movable block holding a copy of `bytes` (16-byte aligned).
    ///
    /// # Errors
    ///
    /// As [`Heap::alloc_handle`].
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.insert_bytes(b"hello")?;
    /// assert_eq!(&*heap.read(h)?, b"hello");
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn insert_bytes(&self, bytes: &[u8]) -> Result<RawHandle, HandleError> {
        let layout = layout_for(bytes.len(), 16)?;
        self.alloc_movable(
            layout,
            RAW_TAG,
            |b| {
                // SAFETY: the fresh block holds `bytes.len()` writable bytes and cannot
                // overlap the caller's slice.
                unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), b.as_ptr(), bytes.len()) }
            },
            |_| (),
        )
        .map(|(h, _)| h)
    }

    /// Frees the block of `h`, waiting for any guard on it to be dropped.
    ///
    /// A thread must not hold a guard or pin on `h` itself when it calls this (it would
    /// wait for itself); use [`Heap::try_free_handle`] where that can happen.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` was already freed (a double free: nothing changes)
    /// or does not belong to this heap's raw handles.
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a guard or pin on `h` (in release builds
    /// it deadlocks).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::HandleError;
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.alloc_handle(8, 8)?;
    /// heap.free_handle(h)?;
    /// assert_eq!(heap.free_handle(h), Err(HandleError::Stale));
    /// # Ok::<(), HandleError>(())
    /// ```
    pub fn free_handle(&self, h: RawHandle) -> Result<(), HandleError> {
        self.free_movable(h, RAW_TAG, true, |_, _| ())
    }

    /// Frees the block of `h` without waiting.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if any guard or pin is held on it (nothing changes), else
    /// as [`Heap::free_handle`].
    pub fn try_free_handle(&self, h: RawHandle) -> Result<(), HandleError> {
        self.free_movable(h, RAW_TAG, false, |_, _| ())
    }

    /// Whether `h` is a live raw handle of this heap.
    pub fn contains_handle(&self, h: RawHandle) -> bool {
        self.peek_raw(h) && self.handles().contains(h)
    }

    /// A shared guard on the bytes of `h`, waiting while a writer holds it.
    ///
    /// Do not call it while this thread holds a write guard on `h` (use
    /// [`Heap::try_read`], which answers `Busy`).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is not live in this heap (a store's handle is
    /// refused without waiting for its guards).
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a write guard on `h` (in release builds it
    /// deadlocks).
    pub fn read(&self, h: RawHandle) -> Result<ReadGuard<'_>, HandleError> {
        // NUMA: the reader sample hook (`numa::migration`), tested first so that a read
        // with no sampling heap keeps nothing live for it.
        if any_sampling() {
            return self.read_sampled(h);
        }
        self.read_unsampled(h)
    }

    /// [`Heap::read`] while some heap samples reads: the read, then the sample hook.
    #[inline(never)]
    fn read_sampled(&self, h: RawHandle) -> Result<ReadGuard<'_>, HandleError> {
        let g = self.read_unsampled(h)?;
        on_guarded_read(self, h, g.ptr);
        Ok(g)
    }

    #[inline(always)]
    fn read_unsampled(&self, h: RawHandle) -> Result<ReadGuard<'_>, HandleError> {
        let table = self.handles();
        let guard = match table.try_read(h) {
            Err(HandleError::Busy) if self.peek_raw(h) => table.read(h)?,
            r => r?,
        };
        self.make_read(guard)
    }

    /// Whether `h`'s slot holds a raw-handle block, by a peek without a guard (exact
    /// while `h` is current): so that a store's handle is refused before waiting.
    fn peek_raw(&self, h: RawHandle) -> bool {
        self.handles()
            .get(h)
            .is_some_and(|s| peek_tag(s.ptr()) == Some(RAW_TAG))
    }

    /// Like [`Heap::read`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if a writer (or the compactor) holds it, else as `read`.
    pub fn try_read(&self, h: RawHandle) -> Result<ReadGuard<'_>, HandleError> {
        // NUMA: the reader sample hook (`numa::migration`), as in `read`.
        if any_sampling() {
            return self.try_read_sampled(h);
        }
        self.make_read(self.handles().try_read(h)?)
    }

    /// [`Heap::try_read`] while some heap samples reads: the read, then the sample hook.
    #[inline(never)]
    fn try_read_sampled(&self, h: RawHandle) -> Result<ReadGuard<'_>, HandleError> {
        let g = self.make_read(self.handles().try_read(h)?)?;
        on_guarded_read(self, h, g.ptr);
        Ok(g)
    }

    /// The block address and length behind a guarded raw-handle slot pointer, or
    /// `Stale` if the slot belongs to a store (another tag).
    fn raw_block(&self, guarded: NonNull<u8>) -> Result<(NonNull<u8>, usize), HandleError> {
        let (ptr, tag) = untag(guarded);
        if tag != RAW_TAG {
            return Err(HandleError::Stale);
        }
        Ok((ptr, self.block_len(ptr)))
    }

    fn make_read<'a>(&'a self, guard: SlotRead<'a>) -> Result<ReadGuard<'a>, HandleError> {
        let (ptr, len) = self.raw_block(guard.ptr())?;
        Ok(ReadGuard {
            _guard: guard,
            ptr,
            len,
        })
    }

    /// An exclusive guard on the bytes of `h`, waiting for readers and writers to leave.
    ///
    /// Do not call it while this thread holds a read or write guard on `h` (use
    /// [`Heap::try_write`], which answers `Busy`).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is not live in this heap (a store's handle is
    /// refused without waiting for its guards).
    ///
    /// # Panics
    ///
    /// In debug builds, if this thread holds a read or write guard on `h` (in release
    /// builds it deadlocks).
    pub fn write(&self, h: RawHandle) -> Result<WriteGuard<'_>, HandleError> {
        let table = self.handles();
        let guard = match table.try_write(h) {
            Err(HandleError::Busy) if self.peek_raw(h) => table.write(h)?,
            r => r?,
        };
        self.make_write(guard)
    }

    /// Like [`Heap::write`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if any reader, writer or the compactor holds it.
    pub fn try_write(&self, h: RawHandle) -> Result<WriteGuard<'_>, HandleError> {
        self.make_write(self.handles().try_write(h)?)
    }

    fn make_write<'a>(&'a self, guard: SlotWrite<'a>) -> Result<WriteGuard<'a>, HandleError> {
        let (ptr, len) = self.raw_block(guard.ptr())?;
        Ok(WriteGuard {
            _guard: guard,
            ptr,
            len,
        })
    }

    /// Pins `h`: its address stays put until the pin is dropped (the compactor skips
    /// it). Readers and writers are not excluded.
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is not live in this heap.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.insert_bytes(&[1, 2, 3])?;
    /// let pin = heap.pin(h)?;
    /// let addr = pin.as_ptr();
    /// heap.compact_full();
    /// assert_eq!(heap.pin(h)?.as_ptr(), addr);
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn pin(&self, h: RawHandle) -> Result<PinGuard<'_>, HandleError> {
        self.make_pin(self.handles().pin(h)?)
    }

    /// Like [`Heap::pin`], but never waits.
    ///
    /// # Errors
    ///
    /// [`HandleError::Busy`] if the compactor holds it right now.
    pub fn try_pin(&self, h: RawHandle) -> Result<PinGuard<'_>, HandleError> {
        self.make_pin(self.handles().try_pin(h)?)
    }

    fn make_pin<'a>(&'a self, guard: SlotPin<'a>) -> Result<PinGuard<'a>, HandleError> {
        let (ptr, len) = self.raw_block(guard.ptr())?;
        Ok(PinGuard {
            _guard: guard,
            ptr,
            len,
        })
    }
}

#[cfg(test)]
mod tests;
