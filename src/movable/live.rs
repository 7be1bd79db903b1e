//! Span live counts off the store's hot path: per-lane tables of pending deltas.
//!
//! A store insert adds one to its block's span's live count and a remove takes one
//! off. As a locked read-modify-write on the span's word that was two full fences per
//! pair. Instead each lane (a heap's thread-cache record, as for the handle table's
//! lanes) owns a direct-mapped table of [`SLOTS`] entries:
//!
//! ```text
//! entry = (span, incarnation << 32 | delta)     written by the lane's owner only
//! ```
//!
//! * **hit** (the entry names the span in its current life): the owner adds to the
//!   delta with a load and a store, no read-modify-write;
//! * **miss**: the owner *flushes* the entry's delta into its span's word with
//!   `LiveCount::add`, which refuses a delta of a life that ended (see
//!   `pool::span::live` for why dropping it is exact), then installs the new span;
//! * a thread without a lane adds to the word directly;
//! * the compactor's moves add to the words directly, with the life they pinned (a
//!   scanned source, a target with reserved blocks out).
//!
//! So at quiescence `live = count(word) + Σ pending deltas of the span's current life`
//! (module `pool::span::live`), which [`PendingLive::for_each`] lets the planner sum.
//! The incarnation is read by a thread that holds one of the span's blocks (the block
//! it just allocated, or the one it is freeing), so it is the life the block belongs
//! to: the span cannot be re-initialised while the block is out.
//!
//! Readers race with owners: an entry read while its owner installs another span can
//! pair one span with another's delta, and a delta being flushed can be seen both in
//! the word and in the entry. Such a read is an estimate of a heuristic (a plan is
//! re-validated at every use, DESIGN invariant 7) and never happens at quiescence.
//! A thread that exits leaves its table with its record, as it leaves its stash: the
//! next claimant flushes the entries as they are evicted.

use crate::handle::LANES;
use crate::pool::span::Span;
use crate::sync::{
    AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

/// Entries per lane's table.
#[cfg(not(tidyheap_loom))]
pub(crate) const SLOTS: usize = 64;
#[cfg(tidyheap_loom)]
pub(crate) const SLOTS: usize = 2;

const _: () = assert!(size_of::<Span>() >= 64, "records spread over the entries");

/// One pending delta: `span` (an address, 0: empty) and `incarnation << 32 | delta`.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Entry {
    span: AtomicUsize,
    word: AtomicU64,
}

impl Entry {
    /// An empty entry.
    #[cfg(any(test, tidyheap_loom))]
    pub(crate) fn new() -> Self {
        Self {
            span: AtomicUsize::new(0),
            word: AtomicU64::new(0),
        }
    }

    /// The hit path: adds `delta` if the entry holds `key` in life `incarnation`.
    /// Owner only (a load and a store).
    #[inline(always)]
    pub(crate) fn bump(&self, key: usize, incarnation: u32, delta: u32) -> bool {
        let w = self.word.load(Relaxed);
        if self.span.load(Relaxed) != key || (w >> 32) as u32 != incarnation {
            return false;
        }
        let low = u64::from((w as u32).wrapping_add(delta));
        self.word.store(w & !u64::from(u32::MAX) | low, Relaxed);
        true
    }

    /// The miss path: hands the entry's delta (if any) to `flush` with its span and
    /// life, then holds `delta` for `key` in life `incarnation`. Owner only.
    pub(crate) fn replace(
        &self,
        key: usize,
        incarnation: u32,
        delta: u32,
        flush: impl FnOnce(usize, u32, u32),
    ) {
        let old = self.span.load(Relaxed);
        let w = self.word.load(Relaxed);
        if old != 0 && w as u32 != 0 {
            flush(old, (w >> 32) as u32, w as u32);
        }
        self.span.store(0, Relaxed);
        self.word
            .store(u64::from(incarnation) << 32 | u64::from(delta), Release);
        self.span.store(key, Release);
    }

    /// The entry as a reader sees it: `(span, incarnation, delta)`, or `None` if empty.
    pub(crate) fn read(&self) -> Option<(usize, u32, u32)> {
        let key = self.span.load(Acquire);
        let w = self.word.load(Acquire);
        (key != 0).then_some((key, (w >> 32) as u32, w as u32))
    }
}

/// Flushes a pending delta into `span`'s word (refused if its life ended).
fn flush_into(span: &Span, incarnation: u32, delta: u32) {
    span.live.add(incarnation, delta);
}

/// The lanes' tables (see the module docs), reserved on first use.
#[derive(Debug)]
pub(crate) struct PendingLive {
    tables: AtomicPtr<Entry>,
    /// Lanes `[0, used)` may hold entries.
    used: AtomicUsize,
}

// SAFETY: entries are written by their lane's owner and read through atomics; the
// table memory is owned by this value and released in `drop`.
unsafe impl Send for PendingLive {}
// SAFETY: as above.
unsafe impl Sync for PendingLive {}

impl PendingLive {
    /// No table reserved yet.
    pub(crate) fn new() -> Self {
        Self {
            tables: AtomicPtr::new(core::ptr::null_mut()),
            used: AtomicUsize::new(0),
        }
    }

    /// Lane `lane`'s table, reserving the tables on first use; `None` if that fails.
    #[inline(always)]
    fn table(&self, lane: usize) -> Option<&[Entry; SLOTS]> {
        debug_assert!(lane < LANES);
        let mut base = self.tables.load(Acquire);
        if base.is_null() {
            base = self.install()?;
        }
        // SAFETY:
        // - `base` holds `LANES · SLOTS` initialised entries (installed by CAS, which we
        //   Acquired), released only when `self` drops; `lane < LANES` (caller).
        Some(unsafe { &*base.add(lane * SLOTS).cast::<[Entry; SLOTS]>() })
    }

    #[cold]
    fn install(&self) -> Option<*mut Entry> {
        let fresh = alloc_tables()?;
        match self
            .tables
            .compare_exchange(core::ptr::null_mut(), fresh, AcqRel, Acquire)
        {
            Ok(_) => Some(fresh),
            Err(winner) => {
                // SAFETY: `fresh` was never published.
                unsafe { free_tables(fresh) };
                Some(winner)
            }
        }
    }

    /// Adds `delta` (wrapping: `u32::MAX` is −1) to `span`'s live count through lane
    /// `lane`'s table, or directly without a lane.
    ///
    /// # Safety
    ///
    /// * `span` is a movable span of this heap, and the caller holds one of its blocks
    ///   (so its incarnation is that block's life);
    /// * if `lane` is `Some(l)`, the calling thread owns lane `l` (its thread-cache
    ///   record).
    #[inline(always)]
    pub(crate) unsafe fn record(&self, lane: Option<usize>, span: &Span, delta: u32) {
        let incarnation = span.incarnation();
        let table = lane.and_then(|l| self.table(l));
        let Some(table) = table else {
            flush_into(span, incarnation, delta);
            return;
        };
        let key = core::ptr::from_ref(span).addr();
        // Span records lie in one table at a stride of `size_of::<Span>()` bytes (above
        // 64): consecutive records fall in different entries.
        let e = &table[(key >> 6) % SLOTS];
        if !e.bump(key, incarnation, delta) {
            // SAFETY: forwarded: `lane` is `Some` here and the caller owns it.
            unsafe { self.miss(lane.unwrap_or_default(), e, key, incarnation, delta) };
        }
    }

    /// The miss path of `record`: flushes the entry and installs `key`.
    ///
    /// # Safety
    ///
    /// * the caller owns lane `lane`, whose table holds `e`.
    #[cold]
    #[inline(never)]
    unsafe fn miss(&self, lane: usize, e: &Entry, key: usize, incarnation: u32, delta: u32) {
        if self.used.load(Relaxed) <= lane {
            self.used.fetch_max(lane + 1, Relaxed);
        }
        e.replace(key, incarnation, delta, |old, life, d| {
            // SAFETY: entries of this heap's tables name span records of this heap,
            // which stay at their addresses for the heap's life (which bounds `self`).
            flush_into(unsafe { &*(old as *const Span) }, life, d);
        });
    }

    /// Calls `f(span, incarnation, delta)` for every pending entry (see the module
    /// docs for what a read racing with an owner may see).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Span, u32, u32)) {
        let base = self.tables.load(Acquire);
        if base.is_null() {
            return;
        }
        let used = self.used.load(Relaxed).min(LANES);
        for i in 0..used * SLOTS {
            // SAFETY: as in `table`: an installed array of `LANES · SLOTS` entries.
            let e = unsafe { &*base.add(i) };
            if let Some((key, life, delta)) = e.read() {
                // SAFETY: as in `miss`: a span record of this heap.
                f(unsafe { &*(key as *const Span) }, life, delta);
            }
        }
    }
}

impl Drop for PendingLive {
    fn drop(&mut self) {
        let base = self.tables.load(Relaxed);
        if !base.is_null() {
            // SAFETY: `base` came from `alloc_tables`, and `&mut self` means nobody uses
            // it any more.
            unsafe { free_tables(base) };
        }
    }
}

/// Reserves every lane's table: natively zero pages (empty entries), under loom
/// constructed atomics.
#[cfg(not(tidyheap_loom))]
fn alloc_tables() -> Option<*mut Entry> {
    let bytes = LANES * SLOTS * size_of::<Entry>();
    let base = crate::os::reserve(bytes, crate::os::PAGE_SIZE).ok()?;
    Some(base.as_ptr().cast())
}

/// # Safety
///
/// `base` came from `alloc_tables` and is released once; nothing uses it afterwards.
#[cfg(not(tidyheap_loom))]
unsafe fn free_tables(base: *mut Entry) {
    // SAFETY:
    // - a live mapping of `LANES · SLOTS` entries made by `os::reserve` (caller), not
    //   used afterwards.
    unsafe {
        crate::os::release(
            core::ptr::NonNull::new_unchecked(base).cast(),
            LANES * SLOTS * size_of::<Entry>(),
        );
    }
}

#[cfg(tidyheap_loom)]
fn alloc_tables() -> Option<*mut Entry> {
    let t: Box<[Entry]> = (0..LANES * SLOTS).map(|_| Entry::new()).collect();
    Some(Box::into_raw(t).cast())
}

/// # Safety
///
/// `base` came from `alloc_tables` and is released once; nothing uses it afterwards.
#[cfg(tidyheap_loom)]
unsafe fn free_tables(base: *mut Entry) {
    // SAFETY:
    // - a `Box<[Entry]>` of `LANES · SLOTS` entries leaked by `alloc_tables`, freed once.
    drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(base, LANES * SLOTS)) });
}

/// Adds the pending deltas of `pending` to a live count read from a span's word: the
/// sum (wrapping) as a count, clamped to `0..=max`.
pub(crate) fn settle(count: u32, pending: u32, max: u32) -> u32 {
    let v = count.wrapping_add(pending) as i32;
    (v.max(0) as u32).min(max)
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests;

#[cfg(all(test, tidyheap_loom))]
mod loom_live;
