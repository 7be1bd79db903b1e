//! A movable span's side table, kept outside the span's region, and a span's page
//! accounting: which of its pages count as committed.
//!
//! # Where the side table lives
//!
//! Each 64 MiB chunk of span regions is reserved together with a *table area* behind
//! it, [`table_bytes`] of it: 6 bytes for every [`MIN_SIZE`] bytes of the chunk. The
//! span at offset `o` of its chunk owns the table bytes from `o · 3/8` on
//! (page-aligned: `o` is a multiple of 64 KiB), enough for an entry per block of any
//! class. In each life the table holds the class's `capacity` owners, then as many
//! slacks:
//!
//! ```text
//!  table               table + 4·cap          table + 6·cap       table + bytes·3/8
//!  │ owners: u32 each  │ slacks: u16 each     │ (unused this life)  │
//! ```
//!
//! So a movable span's blocks start at its base and fill its region, and the table's
//! pages are touched only as far as blocks were carved and written.
//!
//! # Page accounting
//!
//! A span counts as committed the pages that may hold data: two high marks, in pages,
//! of its region and of its table area (see [`Pages`]). A mark grows
//! when a write reaches a page past it (carving a block, storing an entry) and the
//! arena's committed counter grows with it; it falls to 0 only when the span's pages
//! are handed back ([`Span::decommit`]). Writes that would store the value an entry
//! already holds are skipped, so an untouched page (read back as zeros) stays
//! untouched: a span whose blocks all have their class's exact size never touches its
//! slack area. Reads of untouched pages map the kernel's zero page and commit nothing.
//!
//! [`Span::decommit`]: super::Span::decommit

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicUsize, Ordering};

use super::Span;
use crate::os::{self, OsError, PAGE_SIZE};
use crate::size_class::MIN_SIZE;

/// Side-table bytes reserved per byte of span region: a `u32` owner and a `u16` slack
/// for every [`MIN_SIZE`] bytes, as eighths (`6 / 16 == 3 / 8`).
pub(crate) const fn table_bytes(region_bytes: usize) -> usize {
    region_bytes / MIN_SIZE * META_BYTES
}

/// Bytes of side table per movable block (owner + slack).
pub(crate) const META_BYTES: usize = size_of::<u32>() + size_of::<u16>();

/// The owner value that marks a home block (in its span's home set). Slot indexes
/// stop below `u32::MAX - 1` in a heap's handle table (`HeapInner` caps it), so no live
/// block's `index + 1` equals it.
pub(crate) const HOME: u32 = u32::MAX;

/// The areas a span's pages are counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Area {
    /// The span's region.
    Blocks = 0,
    /// Its side table.
    Table = 1,
}

/// High marks, in pages from each area's start, of the pages a span may have written:
/// `Pages · PAGE_SIZE` is what the span adds to its arena's committed bytes.
///
/// Grown by whoever writes (under the arena lock, or by a thread that holds one of the
/// span's blocks, for an entry of that block), with `fetch_max` so racing growers
/// count each page once; reset under the arena lock when the span, empty, is purged.
#[derive(Debug, Default)]
pub(crate) struct Pages {
    marks: [AtomicU32; 2],
}

impl Pages {
    /// The mark of `area`.
    #[inline]
    pub(crate) fn get(&self, area: Area) -> usize {
        self.marks[area as usize].load(Ordering::Relaxed) as usize
    }

    /// Both marks, in pages.
    #[inline]
    pub(crate) fn total(&self) -> usize {
        self.get(Area::Blocks) + self.get(Area::Table)
    }

    /// Raises the mark of `area` to cover its first `pages` pages, adding what it grew
    /// by to `committed`, and to `movable` if given (a movable span serving a class).
    #[inline]
    pub(crate) fn cover(
        &self,
        area: Area,
        pages: usize,
        committed: &AtomicUsize,
        movable: Option<&AtomicUsize>,
    ) {
        let mark = &self.marks[area as usize];
        if mark.load(Ordering::Relaxed) as usize >= pages {
            return;
        }
        let old = mark.fetch_max(pages as u32, Ordering::Relaxed) as usize;
        if old < pages {
            let grew = (pages - old) * PAGE_SIZE;
            committed.fetch_add(grew, Ordering::Relaxed);
            if let Some(m) = movable {
                m.fetch_add(grew, Ordering::Relaxed);
            }
        }
    }

    /// Lowers the mark of `area` to `pages` (its pages past them were handed back),
    /// taking what it fell by from `committed`, and from `movable` if given (a movable
    /// span serving a class). Called under the arena lock.
    pub(crate) fn lower(
        &self,
        area: Area,
        pages: usize,
        committed: &AtomicUsize,
        movable: Option<&AtomicUsize>,
    ) {
        let old = self.marks[area as usize].swap(pages as u32, Ordering::Relaxed) as usize;
        debug_assert!(old >= pages);
        let fell = (old - pages) * PAGE_SIZE;
        committed.fetch_sub(fell, Ordering::Relaxed);
        if let Some(m) = movable {
            m.fetch_sub(fell, Ordering::Relaxed);
        }
    }
}

/// Pages covering the first `bytes` bytes of an area.
#[inline]
pub(crate) const fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}

/// Per-block metadata of a movable span: which handle slot owns the block, and how
/// many bytes its owner asked for. A view of entry `i` of the span's side table.
///
/// * `owner == 0` ⇔ the block is out but not live (cached, or between a take and its
///   allocation's publication) or not carved; `owner == HOME` ⇔ the block is home, in
///   its span's home set (written only under the arena lock, by `Span::put` and
///   `Span::put_indices` (set), `Span::take_many` and `Span::detach_home` (cleared), so
///   a pass scanning a source tells free blocks from live ones by the owner alone);
///   otherwise it is `slot index + 1` of the handle-table slot whose pointer addresses
///   this block. [`BlockMeta::owner`] reads home as 0.
/// * `slack = block_size − requested length`. A class is chosen for
///   `round_up(len, align)`, which lies less than one class step (≤ 32 KiB) below the
///   class size, and rounding to `align ≤ 4 KiB` adds less than `align`; so the slack is
///   below 36 KiB and fits 16 bits for every class (checked in `set_len`). Carving a
///   block clears its slack, so a carved block's slack is its own.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockMeta<'a> {
    span: &'a Span,
    i: usize,
    owner: &'a AtomicU32,
    slack: &'a AtomicU16,
    block_size: usize,
}

impl<'a> BlockMeta<'a> {
    /// Entry `i` of `span`'s side table.
    ///
    /// # Safety
    ///
    /// `span` is movable and initialised (its table is its own), `i < capacity`.
    #[inline]
    pub(super) unsafe fn new(span: &'a Span, i: usize) -> Self {
        let slacks = span.table + span.capacity() * size_of::<u32>();
        // SAFETY: the table area of `span` (`table_bytes(bytes)` long: room for
        // `bytes / MIN_SIZE ≥ capacity` entries) holds `capacity > i` owners (`u32`,
        // aligned: `table` is page-aligned) then as many slacks (`u16`, 2-aligned),
        // inside the chunk's reservation, mapped read-write for the heap's life
        // (caller: `i < capacity`); any bytes are valid atomics.
        unsafe {
            Self {
                span,
                i,
                owner: &*(span.table as *const AtomicU32).add(i),
                slack: &*(slacks as *const AtomicU16).add(i),
                block_size: span.block_size(),
            }
        }
    }

    /// `slot index + 1` of the block's owner, or 0 if it is not live (home reads 0).
    #[inline]
    pub(crate) fn owner(&self, order: Ordering) -> u32 {
        let o = self.owner.load(order);
        if o == HOME { 0 } else { o }
    }

    /// Records the block's owner (`slot index + 1`), or 0 (not live).
    #[inline]
    pub(crate) fn set_owner(&self, owner: u32, order: Ordering) {
        debug_assert_ne!(owner, HOME, "slot index u32::MAX - 1 is never issued");
        self.store_owner(owner, order);
    }

    /// Clears the owner of a live block (it held one, so its entry's page is counted
    /// already: nothing to cover).
    #[inline]
    pub(crate) fn clear_owner(&self, order: Ordering) {
        debug_assert!(!matches!(self.owner.load(Ordering::Relaxed), 0 | HOME));
        self.owner.store(0, order);
    }

    #[inline]
    fn store_owner(&self, owner: u32, order: Ordering) {
        self.span.cover_table((self.i + 1) * size_of::<u32>());
        self.owner.store(owner, order);
    }

    /// Whether the block is home (see [`HOME`]).
    #[inline]
    pub(super) fn is_home(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == HOME
    }

    /// Marks the block home (`true`) or out and not live (`false`).
    #[inline]
    pub(super) fn set_home(&self, home: bool) {
        self.store_owner(if home { HOME } else { 0 }, Ordering::Relaxed);
    }

    /// [`BlockMeta::set_home`] for an entry written before in this life (a block that
    /// was live or home: its page is counted already, so nothing to cover).
    #[inline]
    pub(super) fn set_home_written(&self, home: bool) {
        self.owner
            .store(if home { HOME } else { 0 }, Ordering::Relaxed);
    }

    /// A freshly carved block: not live, slack 0. Stores only what differs from the
    /// entry's current contents (stale from an earlier life, or zeros).
    #[inline]
    pub(super) fn clear(&self) {
        if self.owner.load(Ordering::Relaxed) != 0 {
            self.store_owner(0, Ordering::Relaxed);
        }
        self.store_slack(0);
    }

    /// The requested length. Meaningful only while the block is live; a reader that
    /// raced with the block's free may see any value up to the block size.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.block_size
            .saturating_sub(usize::from(self.slack.load(Ordering::Relaxed)))
    }

    /// Records the requested length (at most the block size).
    #[inline]
    pub(crate) fn set_len(&self, len: usize) {
        let slack = self.block_size - len;
        debug_assert!(
            slack <= usize::from(u16::MAX),
            "slack {slack} exceeds 16 bits"
        );
        self.store_slack(slack as u16);
    }

    /// Stores `slack` unless the entry already holds it (an untouched page stays so).
    #[inline]
    fn store_slack(&self, slack: u16) {
        if self.slack.load(Ordering::Relaxed) != slack {
            let owners = self.span.capacity() * size_of::<u32>();
            self.span
                .cover_table(owners + (self.i + 1) * size_of::<u16>());
            self.slack.store(slack, Ordering::Relaxed);
        }
    }
}

/// Hands back `[base, base + pages · PAGE_SIZE)` (lazily with `MADV_FREE` if `lazy`).
///
/// # Safety
///
/// The range lies in a mapping of the heap's span source and holds nothing anyone
/// reads as live data.
pub(crate) unsafe fn purge_pages(base: usize, pages: usize, lazy: bool) -> Result<(), OsError> {
    if pages == 0 {
        return Ok(());
    }
    let p = NonNull::new(base as *mut u8).expect("a span's memory is not at address 0");
    // SAFETY: forwarded from the caller; `base` is page-aligned (a span base or a
    // table area start).
    unsafe {
        if lazy {
            os::purge_lazily(p, pages * PAGE_SIZE)
        } else {
            os::decommit(p, pages * PAGE_SIZE)
        }
    }
}
