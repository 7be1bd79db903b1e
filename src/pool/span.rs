//! Spans: runs of [`SPAN_UNIT`]-aligned pages carved into blocks of one size class.
//!
//! ```text
//!  base                                                    base + bytes
//!  │ block 0 │ block 1 │ ... │ block cap-1 │ tail (and, fixed + hardened, guard page) │
//! ```
//!
//! Metadata lives outside the region: the [`Span`] record sits in the heap's span
//! table, and a movable span's per-block side table (owner slot + requested length, 6 B
//! a block) in the table area behind its chunk (module `table`). Block `i` is at
//! `base + i·size`; since `base` is 64 KiB-aligned, every block of a class that is a
//! multiple of `align` is `align`-aligned (see [`crate::size_class`]).
//!
//! # Committed pages
//!
//! A span counts as committed only the pages it may have written: its region up to the
//! end of the last block carved, and the side-table pages its entries reached (module
//! `table`, [`Pages`]). They stay counted while the span is retained empty and
//! reused, and stop counting when its pages are handed back ([`Span::decommit`]).
//!
//! # Block accounting (under the owning arena's lock)
//!
//! Every block of a span is in exactly one of three states: *uncarved* (index ≥
//! `carved`), *home* (in the span's home set, a bitmap by block index: see
//! [`home`]), or *out* (handed out: live in user hands, or cached in a thread cache,
//! a remote list, the central list or the owner's local set, see `pool::owned`). So
//!
//! ```text
//! carved − free_count == out        capacity − carved == uncarved
//! out == 0  ⇔  the span is empty and may be reused or decommitted
//! ```
//!
//! `free_count` counts the home set's bits. Home blocks hold nothing the span reads:
//! a refill takes the lowest home indices first (address order, no link chased), and
//! putting a block home twice is caught exactly (its bit is already set).
//!
//! A span is on exactly one arena list: `partial` (some block is home or uncarved),
//! `full` (none is), `evacuating` (a compaction source: never refilled from, so it
//! only drains), or an `empty` list (out == 0, not serving any class).
//!
//! # Lives of a region
//!
//! A span record describes one region for the heap's life, but the region serves a
//! class and kind only from one `init` to its retirement on an empty list; `init` bumps
//! the span's *incarnation*. Whoever keeps a `&Span` across an arena-lock release
//! without holding one of its blocks (the compactor's plans) must re-check the
//! incarnation under the lock before trusting the class, kind or side table.

use core::cell::UnsafeCell;
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::owned::LocalSet;
use super::poison;
use super::thread_cache::ThreadCache;
use crate::size_class;

mod bulk;
mod purge;
mod table;
mod tail;

#[cfg(test)]
use table::META_BYTES;
pub(crate) use table::{Area, BlockMeta, Pages, pages_for, purge_pages, table_bytes};

pub(crate) mod home;
use home::HomeSet;

mod live;
pub(crate) use live::LiveCount;

/// What a span serves: raw-pointer blocks that never move, or handle-addressed blocks
/// the compactor may relocate (DESIGN invariant 1 keeps the two apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SpanKind {
    /// Raw-pointer blocks: never moved.
    Fixed = 0,
    /// Handle-addressed blocks: relocatable by the compactor.
    Movable = 1,
}

impl SpanKind {
    pub(crate) const ALL: [SpanKind; 2] = [SpanKind::Fixed, SpanKind::Movable];
}

/// Bytes at the end of a fixed span's region that hold no block: with `hardened`, one
/// page, the span's guard page (`PROT_NONE` while the span serves fixed blocks, see
/// [`Span::init`]), so a write running past the last block faults; 0 otherwise.
pub(crate) const GUARD_BYTES: usize = if cfg!(feature = "hardened") {
    crate::os::PAGE_SIZE
} else {
    0
};

/// How many blocks of `class` fit a span of `kind`: blocks fill the region from its
/// base (a movable span's side table lies outside it), less a fixed span's guard page.
pub(crate) fn capacity_of(class: usize, kind: SpanKind) -> usize {
    let bytes = size_class::span_bytes(class);
    let size = size_class::size(class);
    match kind {
        SpanKind::Fixed => (bytes - GUARD_BYTES) / size,
        SpanKind::Movable => bytes / size,
    }
}

/// Lock-protected mutable state of a span. Only touched while holding the lock of the
/// arena that owns the span.
#[derive(Debug)]
pub(crate) struct SpanState {
    /// The home blocks, by index (see [`home`]).
    pub(crate) home: HomeSet,
    /// Blocks in `home`.
    pub(crate) free_count: u32,
    /// Blocks ever carved since the span was last initialised.
    pub(crate) carved: u32,
    /// Arena list links.
    pub(crate) prev: *mut Span,
    pub(crate) next: *mut Span,
    /// Which arena list holds the span (see [`ListId`]).
    pub(crate) list: ListId,
    /// Whether the span's pages are committed (not purged). Empty spans on an arena's
    /// `empty` lists are committed; those on its `purged` lists are not.
    pub(crate) committed: bool,
    /// Purged with `MADV_FREE`: the kernel may still hold (and the span may still read
    /// back) the old pages until memory pressure takes them; `trim` purges such spans
    /// again with `MADV_DONTNEED`.
    pub(crate) lazily_purged: bool,
    /// The arena's purge clock (`Arena::tick`) when the span last emptied.
    pub(crate) emptied_at: u64,
    /// A compaction pass is reading this span's side table without the arena lock (it
    /// is the source being evacuated): while set, the span is not retired even if it
    /// empties, so it cannot be re-initialised under the pass (DESIGN invariant 7).
    /// The pass clears it, and retires an emptied span, when it stops scanning.
    pub(crate) scanning: bool,
    /// `hardened`: the region's last page ([`GUARD_BYTES`]) is `PROT_NONE` (see
    /// [`Span::init`]).
    #[cfg(feature = "hardened")]
    pub(crate) guarded: bool,
}

/// The arena list a span is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListId {
    None,
    Partial,
    Full,
    Empty,
    /// A compaction source: allocation does not refill from it.
    Evacuating,
    /// Empty, with its pages handed back to the OS.
    Purged,
}

/// One span. Lives in its heap's span table at a stable address for the heap's life.
///
/// Geometry fields are atomics written only while the span is empty and held under its
/// arena's lock, and read (Relaxed) by threads that hold one of its blocks — the block
/// handoff orders those reads after the write.
///
/// Layout (issue 12, the database workload's cache misses): the record is cache-line
/// aligned and its first line holds everything a free and the owner's local path read
/// (`owner`, `base`, `class`, `block_size`, `carved_hint`, the local set's count and
/// links), so a free of a block whose span record is cold costs one miss there, not
/// three; the local set's bitmap starts the second line, hint (`HomeSet::lo`) first (both
/// checked at compile time below).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Span {
    /// Fixed spans: the thread-cache record that owns the span (see `pool::remote`), or
    /// null. Written under the arena lock (by a refill taking blocks, and by `init`);
    /// read without it by frees, which only route on it: a free of a block of this span
    /// happens after the block was handed out, and so after the owner that handed it out
    /// was set, and the owner changes while blocks are out only by adoption of a parked
    /// record's span, where either value routes the block to a place that keeps it.
    pub(crate) owner: AtomicPtr<ThreadCache>,
    /// First byte; `SPAN_UNIT`-aligned. Fixed for the span's life.
    pub(crate) base: usize,
    /// Region length in bytes. Fixed for the span's life.
    pub(crate) bytes: usize,
    pub(crate) class: AtomicU32,
    pub(crate) block_size: AtomicU32,
    /// Fixed spans: `SpanState::carved` as of its last change (written under the arena
    /// lock with it, read without it by the owner, the only thread that carves an owned
    /// span: see `pool::owned`).
    pub(crate) carved_hint: AtomicU32,
    pub(crate) kind: AtomicU32,
    /// Fixed spans: the owner-only *local set* (see `pool::owned`), touched only by the
    /// thread of the claimed record in `owner`, without the arena lock.
    pub(crate) local: UnsafeCell<LocalSet>,
    pub(crate) capacity: AtomicU32,
    /// Owning arena. Fixed for the span's life.
    pub(crate) arena: u32,
    /// The span's side-table area (module `table`), page-aligned, `table_bytes(bytes)`
    /// long. Fixed for the span's life.
    pub(crate) table: usize,
    /// The owning arena's committed-bytes counter, which [`Span::pages`] feed. Fixed for
    /// the span's life; the arena outlives its spans.
    committed: NonNull<AtomicUsize>,
    /// The owning arena's counter of movable serving spans' committed bytes, which
    /// [`Span::pages`] also feed while the span serves movable blocks (the arena moves
    /// the span's bytes in and out of it as the span starts and stops serving).
    movable: NonNull<AtomicUsize>,
    /// The pages counted as committed (module `table`).
    pub(crate) pages: Pages,
    /// Movable spans: blocks with an owner (`BlockMeta::owner != 0`), in one word with
    /// the life counted, less the deltas still pending in the lanes' tables (module
    /// `live`, and `crate::movable::live`).
    pub(crate) live: LiveCount,
    /// Bumped by every `init`: which life of the region this is. A compaction plan
    /// records it with each span it names and uses the span only while it is unchanged
    /// (DESIGN invariant 7). Wraps after 2^32 lives, far more than a region can have in
    /// the time a plan lives (a plan is re-validated on every pass).
    pub(crate) incarnation: AtomicU32,
    /// Fixed spans of classes of at least [`SHRINK_MIN`] bytes (at most 64 blocks): bit
    /// `i` is set while block `i` is live and was shrunk in place by a realloc to a
    /// size of a smaller class (`HeapInner::realloc`), so a free with a layout of that
    /// smaller class is this block's own, not a wrong layout (`HeapInner::misuse`).
    /// Set and cleared by whoever owns the block (atomically: other bits belong to other
    /// blocks and threads); cleared for the whole span by `init`.
    pub(crate) shrunk: AtomicU64,
    pub(crate) state: UnsafeCell<SpanState>,
}

const _: () = {
    use core::mem::offset_of;
    let local = offset_of!(Span, local);
    assert!(
        offset_of!(Span, owner) < 64
            && offset_of!(Span, base) < 64
            && offset_of!(Span, class) < 64
            && offset_of!(Span, block_size) < 64
            && offset_of!(Span, carved_hint) < 64
            && local + LocalSet::HEADER_BYTES == 64,
        "a span record's hot fields share its first cache line (see `Span`)"
    );
};

/// The smallest class size whose blocks a realloc may shrink in place (see
/// [`Span::shrunk`]): below it a copy is cheap, and a span holds more than 64 blocks.
pub(crate) const SHRINK_MIN: usize = 1024;

const _: () = {
    let mut c = 0;
    while c < size_class::NUM_CLASSES {
        assert!(
            size_class::size_const(c) < SHRINK_MIN
                || size_class::span_bytes_const(c) / size_class::size_const(c) <= 64,
            "a class that may shrink in place has at most 64 blocks per span"
        );
        c += 1;
    }
};

// SAFETY: `state` is only accessed under the owning arena's lock (every accessor is an
// `unsafe fn` requiring it); `local` only by the thread of the span's claimed owner
// record (`pool::owned`, whose accessor is an `unsafe fn` requiring it); `committed`
// points to an atomic that outlives the span; all other fields are atomics or immutable.
unsafe impl Sync for Span {}
// SAFETY: as above; a span holds no thread-bound data.
unsafe impl Send for Span {}

impl Span {
    /// A span record for the region `[base, base + bytes)` with its side table at
    /// `table`, owned by `arena`, whose committed-bytes counters are `committed` (all
    /// spans) and `movable` (movable serving spans); not yet serving any class, with no
    /// page counted.
    ///
    /// # Safety
    ///
    /// * `[base, base + bytes)` and `[table, table + table_bytes(bytes))` are mapped
    ///   read-write, page-aligned (`base` `SPAN_UNIT`-aligned), and used by this span
    ///   alone for its whole life;
    /// * `committed` and `movable` outlive the span.
    pub(crate) unsafe fn new(
        base: usize,
        bytes: usize,
        table: usize,
        arena: u32,
        committed: &AtomicUsize,
        movable: &AtomicUsize,
    ) -> Self {
        Self {
            base,
            bytes,
            arena,
            table,
            committed: NonNull::from(committed),
            movable: NonNull::from(movable),
            pages: Pages::default(),
            class: AtomicU32::new(0),
            kind: AtomicU32::new(0),
            block_size: AtomicU32::new(0),
            capacity: AtomicU32::new(0),
            live: LiveCount::new(),
            incarnation: AtomicU32::new(0),
            owner: AtomicPtr::new(ptr::null_mut()),
            shrunk: AtomicU64::new(0),
            carved_hint: AtomicU32::new(0),
            local: UnsafeCell::new(LocalSet::new()),
            state: UnsafeCell::new(SpanState {
                home: HomeSet::new(),
                free_count: 0,
                carved: 0,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
                list: ListId::None,
                committed: true,
                lazily_purged: false,
                emptied_at: 0,
                scanning: false,
                #[cfg(feature = "hardened")]
                guarded: false,
            }),
        }
    }

    /// The current incarnation (see the field).
    #[inline]
    pub(crate) fn incarnation(&self) -> u32 {
        self.incarnation.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn class(&self) -> usize {
        self.class.load(Ordering::Relaxed) as usize
    }

    #[inline]
    pub(crate) fn kind(&self) -> SpanKind {
        if self.kind.load(Ordering::Relaxed) == 0 {
            SpanKind::Fixed
        } else {
            SpanKind::Movable
        }
    }

    #[inline]
    pub(crate) fn block_size(&self) -> usize {
        self.block_size.load(Ordering::Relaxed) as usize
    }

    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed) as usize
    }

    /// The owning arena's committed-bytes counter.
    #[inline]
    fn committed(&self) -> &AtomicUsize {
        // SAFETY: the counter outlives the span (`Span::new`'s contract).
        unsafe { self.committed.as_ref() }
    }

    /// The owning arena's counter of movable serving spans' committed bytes.
    #[inline]
    fn movable_counter(&self) -> &AtomicUsize {
        // SAFETY: the counter outlives the span (`Span::new`'s contract).
        unsafe { self.movable.as_ref() }
    }

    /// Bytes this span counts as committed (its [`Pages`]).
    #[inline]
    pub(crate) fn committed_bytes(&self) -> usize {
        self.pages.total() * crate::os::PAGE_SIZE
    }

    /// Bytes of side table this span counts as committed.
    #[inline]
    pub(crate) fn table_committed_bytes(&self) -> usize {
        self.pages.get(Area::Table) * crate::os::PAGE_SIZE
    }

    /// Counts the first `bytes` bytes of the side table as committed.
    #[inline]
    fn cover_table(&self, bytes: usize) {
        self.cover_entry(Area::Table, bytes);
    }

    /// Counts the first `bytes` bytes of `area` as committed (see [`Pages::cover`]).
    /// Called under the arena lock or by a holder of one of the span's blocks, so the
    /// span serves a class of a kind that cannot change meanwhile.
    #[inline]
    fn cover_entry(&self, area: Area, bytes: usize) {
        let movable = (self.kind() == SpanKind::Movable).then_some(self.movable_counter());
        self.pages
            .cover(area, pages_for(bytes), self.committed(), movable);
    }

    /// The lock-protected state.
    ///
    /// # Safety
    ///
    /// * the caller holds the lock of arena `self.arena`;
    /// * no other reference obtained from this method is alive.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub(crate) unsafe fn state(&self) -> &mut SpanState {
        // SAFETY: the caller holds the arena lock, which serialises every access to
        // `state`, and holds no other reference to it.
        unsafe { &mut *self.state.get() }
    }

    /// Sets the span up to serve `class` / `kind`. Home set emptied, nothing carved.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * the span is empty (no block out).
    pub(crate) unsafe fn init(&self, class: usize, kind: SpanKind) {
        let cap = capacity_of(class, kind);
        debug_assert_eq!(size_class::span_bytes(class), self.bytes);
        self.class.store(class as u32, Ordering::Relaxed);
        self.kind.store(kind as u32, Ordering::Relaxed);
        self.block_size
            .store(size_class::size(class) as u32, Ordering::Relaxed);
        self.capacity.store(cap as u32, Ordering::Relaxed);
        self.owner.store(ptr::null_mut(), Ordering::Relaxed);
        self.shrunk.store(0, Ordering::Relaxed);
        // Release: a thread that learns of a block of this life (through the arena lock
        // or a slot pointer published after it) also sees the new incarnation.
        let life = self
            .incarnation
            .fetch_add(1, Ordering::Release)
            .wrapping_add(1);
        // The new life counts from 0; a pending delta of the old one is refused.
        self.live.reset(life);
        // SAFETY: forwarded: we hold the arena lock and the span is ours.
        let st = unsafe { self.state() };
        st.home.clear();
        st.free_count = 0;
        st.carved = 0;
        self.carved_hint.store(0, Ordering::Relaxed);
        debug_assert!(!st.scanning, "a scanned span is never re-initialised");
        #[cfg(feature = "hardened")]
        self.set_guard(st, kind == SpanKind::Fixed);
        // ASan: every block (and the tail) is off-limits until carved and handed out.
        poison::poison(self.base, self.bytes);
        // A reused span may hold stale side-table entries (committed spans keep them,
        // and pages purged with `MADV_FREE` may read back either way): `take` clears
        // each entry as it carves the block, and nothing reads an uncarved entry.
    }

    /// `hardened`: makes the region's last page `PROT_NONE` (`on`, a fixed span) or
    /// accessible again (a movable span, whose blocks may lie there). Changing nothing
    /// when the page already is so, a span that serves fixed blocks life after life costs
    /// one `mprotect` in all. Purging the region (`madvise`) leaves the protection alone.
    /// If the kernel refuses the guard (its map-count limit), the page stays unused
    /// instead; if it refuses to lift it, the process aborts rather than hand out blocks
    /// that would fault.
    #[cfg(feature = "hardened")]
    fn set_guard(&self, st: &mut SpanState, on: bool) {
        if st.guarded == on {
            return;
        }
        let page = (self.base + self.bytes - GUARD_BYTES) as *mut u8;
        let page = NonNull::new(page).expect("a span's region is not at address 0");
        // SAFETY: the page is the last of this span's region, mapped by the heap's span
        // source and page-aligned; the span is empty (`init`'s contract), so nothing is
        // stored there.
        let done = unsafe {
            if on {
                crate::os::protect_none(page, GUARD_BYTES)
            } else {
                crate::os::protect_read_write(page, GUARD_BYTES)
            }
        };
        match done {
            Ok(()) => st.guarded = on,
            Err(_) if on => {}
            Err(e) => crate::misuse::fatal!(
                "cannot lift the guard page at {page:p} for a movable span (errno {})",
                e.errno
            ),
        }
    }

    /// Address of block `i`.
    #[inline]
    pub(crate) fn block(&self, i: usize) -> NonNull<u8> {
        debug_assert!(i < self.capacity());
        let addr = self.base + i * self.block_size();
        // SAFETY: `base` is a non-null mapping address, so any offset from it is non-null.
        unsafe { NonNull::new_unchecked(addr as *mut u8) }
    }

    /// Index of the block starting at `addr`, or `None` if `addr` is not a block start.
    #[inline]
    pub(crate) fn block_index(&self, addr: usize) -> Option<usize> {
        let off = addr.checked_sub(self.base)?;
        if off >= self.bytes {
            return None;
        }
        let i = size_class::div_size(off, self.class());
        (i * self.block_size() == off && i < self.capacity()).then_some(i)
    }

    /// Marks live block `i` as shrunk in place (see [`Span::shrunk`]), or unmarks it.
    /// The caller owns the block; `i < 64`.
    pub(crate) fn set_shrunk(&self, i: usize, shrunk: bool) {
        debug_assert!(i < 64 && self.block_size() >= SHRINK_MIN);
        let bit = 1u64 << i;
        if shrunk {
            self.shrunk.fetch_or(bit, Ordering::Relaxed);
        } else if self.shrunk.load(Ordering::Relaxed) & bit != 0 {
            self.shrunk.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Whether block `i` is marked shrunk in place (see [`Span::shrunk`]).
    pub(crate) fn is_shrunk(&self, i: usize) -> bool {
        i < 64 && self.shrunk.load(Ordering::Relaxed) & (1 << i) != 0
    }

    /// Movable spans: the side-table entry of block `i` (see [`BlockMeta`]).
    ///
    /// # Safety
    ///
    /// * the span is movable and initialised, `i < capacity`;
    /// * the span's pages are mapped (true for any span of a live heap).
    #[inline]
    pub(crate) unsafe fn meta(&self, i: usize) -> BlockMeta<'_> {
        debug_assert!(i < self.capacity());
        // SAFETY: forwarded from the caller.
        unsafe { BlockMeta::new(self, i) }
    }

    /// Takes one block from the span (the lowest home block first, then carving), or
    /// `None` if full.
    ///
    /// # Safety
    ///
    /// The caller holds the owning arena's lock.
    #[inline]
    pub(crate) unsafe fn take(&self) -> Option<NonNull<u8>> {
        let mut out = None;
        // SAFETY: forwarded: arena lock held.
        unsafe { self.take_many(1, 1, |b| out = Some(b)) };
        out
    }

    /// Takes up to `want` blocks from the span, calling `sink` with each: home blocks
    /// first, lowest address first (from the home bitmap, reading no block), then up to
    /// `fresh` freshly carved ones in address order. Returns how many home and how many
    /// carved blocks it took.
    ///
    /// # Safety
    ///
    /// The caller holds the owning arena's lock.
    #[inline]
    pub(crate) unsafe fn take_many(
        &self,
        want: usize,
        fresh: usize,
        mut sink: impl FnMut(NonNull<u8>),
    ) -> (usize, usize) {
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        let movable = self.kind() == SpanKind::Movable;
        let home = want.min(st.free_count as usize);
        let got = st.home.take_lowest(home, |i| {
            self.mark_home(i, false, movable);
            sink(self.block(i));
        });
        debug_assert_eq!(got, home, "free_count counts the home set");
        st.free_count -= got as u32;
        let carved = st.carved as usize;
        let new = (want - got).min(fresh).min(self.capacity() - carved);
        if new > 0 {
            self.cover_entry(Area::Blocks, (carved + new) * self.block_size());
        }
        for i in carved..carved + new {
            let b = self.block(i);
            if movable {
                // SAFETY: movable and initialised (we carve it under the lock), and
                // `i < capacity`.
                unsafe { self.meta(i) }.clear();
            }
            poison::carved_block(b, self.block_size());
            sink(b);
        }
        st.carved += new as u32;
        self.carved_hint.store(st.carved, Ordering::Relaxed);
        (got, new)
    }

    /// Puts a block back in the span's home set. A block that is home already (a
    /// double free no earlier check caught) aborts the process with a message.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * `block` is a block of this span that nobody uses any more.
    #[inline]
    pub(crate) unsafe fn put(&self, block: NonNull<u8>) {
        debug_assert!(self.block_index(block.as_ptr() as usize).is_some());
        let i = size_class::div_size(block.as_ptr().addr() - self.base, self.class());
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        debug_assert!(i < st.carved as usize, "only carved blocks come home");
        if !st.home.insert(i) {
            crate::misuse::fatal!("double free of {block:p} ({} B class)", self.block_size())
        }
        poison::free_block(block, self.block_size());
        st.free_count += 1;
        if st.free_count == st.carved {
            // No block is out, so no free may route on the owner any more: a free of a
            // block of this span now fails the hot path's check (`HeapInner::is_local`)
            // and is caught under the arena lock (`return_chain_home`).
            self.owner.store(ptr::null_mut(), Ordering::Relaxed);
        }
        self.mark_home(i, true, self.kind() == SpanKind::Movable);
    }

    /// Movable spans (`movable`): records in the side table whether block `i` is home
    /// (see [`BlockMeta`]); nothing for fixed spans. Called under the arena lock.
    #[inline]
    fn mark_home(&self, i: usize, home: bool, movable: bool) {
        if movable {
            // SAFETY: a movable, initialised span (the caller holds one of its blocks
            // under the arena lock) and `i` indexes that block.
            unsafe { self.meta(i) }.set_home(home);
        }
    }

    /// Blocks currently out (live or cached).
    ///
    /// # Safety
    ///
    /// The caller holds the owning arena's lock.
    #[inline]
    pub(crate) unsafe fn out(&self) -> usize {
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        (st.carved - st.free_count) as usize
    }

    /// Whether a block can still be taken.
    ///
    /// # Safety
    ///
    /// The caller holds the owning arena's lock.
    #[inline]
    pub(crate) unsafe fn has_room(&self) -> bool {
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        st.free_count > 0 || (st.carved as usize) < self.capacity()
    }
}

/// An intrusive doubly linked list of spans, threaded through `SpanState::{prev,next}`.
/// Owned by an arena and only touched under its lock.
#[derive(Debug)]
pub(crate) struct SpanList {
    pub(crate) head: *mut Span,
    /// The last span (the one pushed longest ago), or null when empty.
    pub(crate) tail: *mut Span,
}

impl SpanList {
    pub(crate) const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
        }
    }

    /// Pushes `span` at the front and records `id` as its list.
    ///
    /// # Safety
    ///
    /// * the caller holds the arena lock owning both the list and `span`;
    /// * `span` is on no list.
    pub(crate) unsafe fn push(&mut self, span: &Span, id: ListId) {
        // SAFETY: arena lock held; we take one state reference at a time.
        let st = unsafe { span.state() };
        debug_assert_eq!(st.list, ListId::None);
        st.prev = ptr::null_mut();
        st.next = self.head;
        st.list = id;
        let me = span as *const Span as *mut Span;
        if let Some(h) = NonNull::new(self.head) {
            // SAFETY: list members are live spans of this arena; lock held.
            unsafe { h.as_ref().state().prev = me };
        } else {
            self.tail = me;
        }
        self.head = me;
    }

    /// Unlinks `span`, which must be on this list.
    ///
    /// # Safety
    ///
    /// * the caller holds the arena lock;
    /// * `span` is on this list.
    pub(crate) unsafe fn remove(&mut self, span: &Span) {
        // SAFETY: arena lock held.
        let (prev, next) = unsafe {
            let st = span.state();
            let pn = (st.prev, st.next);
            st.prev = ptr::null_mut();
            st.next = ptr::null_mut();
            st.list = ListId::None;
            pn
        };
        if let Some(p) = NonNull::new(prev) {
            // SAFETY: neighbours are live spans of this list; lock held.
            unsafe { p.as_ref().state().next = next };
        } else {
            debug_assert_eq!(self.head, span as *const Span as *mut Span);
            self.head = next;
        }
        if let Some(n) = NonNull::new(next) {
            // SAFETY: as above.
            unsafe { n.as_ref().state().prev = prev };
        } else {
            debug_assert_eq!(self.tail, span as *const Span as *mut Span);
            self.tail = prev;
        }
    }

    /// Iterates the spans.
    ///
    /// # Safety
    ///
    /// The caller holds the arena lock for the iterator's whole life and does not unlink
    /// the span it is visiting before advancing (collect first if it must).
    pub(crate) unsafe fn iter(&self) -> impl Iterator<Item = &Span> + '_ {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            let s = NonNull::new(cur)?;
            // SAFETY: list members are live spans; the lock is held (caller contract).
            let span = unsafe { s.as_ref() };
            // SAFETY: as above.
            cur = unsafe { span.state().next };
            Some(span)
        })
    }
}

#[cfg(test)]
mod tests;
