//! Purging an arena's empty spans: which spans go (retention, purge delay, the pass's
//! deadline) and how: in address order, with one `madvise` per run of adjacent regions
//! and one per run of their side tables, not two per span.
//!
//! Each call costs the kernel a TLB flush and a walk set-up whatever its length, so on a
//! machine where those are dear (virtual machines) a purge of many small spans pays
//! mostly per call. Regions of one chunk are carved back to back, and their side tables
//! lie back to back in the same order (`CHUNK_BYTES + o · 3/8` for the region at offset
//! `o`), so a run of adjacent regions has a run of adjacent tables.
//!
//! # What stays committed
//!
//! A purged page that the program writes again costs more than the purge saved on a
//! machine where the first write after `MADV_FREE` is dear (0.6–0.8 µs a page on the
//! Firecracker guest the benchmarks run on). So the retention follows the program's
//! own history rather than a fixed age:
//!
//! * a *gradual fall* of demand (serving bytes shrinking pass after pass as a game
//!   streams out) is followed closely: the high-water mark decays quickly, so the end
//!   of a fall holds little beyond what serves (what a rise writes again is then at
//!   most the fall's own swing);
//! * a *sudden drop* (serving bytes falling by more than `1 / DROP_SHARE` of the mark
//!   between two passes: a level unloaded, a batch of work thrown away at once) goes to
//!   a reserve that decays over about `RESERVE_DECAY` passes, since a program that
//!   drops everything at once usually builds it up again;
//! * spans empty for fewer than the policy's delay passes stay, whatever the above.
//!
//! `trim` and a full compaction ignore all of it and give every empty span back.

use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::{Arena, ArenaState, DROP_SHARE, HIGH_WATER_DECAY, MIN_RETAIN_BYTES, RESERVE_DECAY};
use crate::os::PAGE_SIZE;
use crate::pool::span::{Area, ListId, Span, purge_pages, table_bytes};
use crate::size_class::{MAX_SPAN, SPAN_UNIT};

/// Spans chosen for purging before they are sorted and handed back (a buffer on the
/// stack: purging runs under the arena lock, where allocating could re-enter the heap).
const PURGE_BATCH: usize = 32;

impl Arena {
    /// Purges (`MADV_FREE`) empty spans, oldest first, while more than the retention
    /// stays committed, and only spans empty for at least `min_age` ticks, until
    /// `deadline` (checked before each `madvise`). Called once per compaction pass,
    /// which also advances the clock the age counts in.
    ///
    /// The retention follows the program's own rise and fall (see the module docs):
    /// the larger of
    ///
    /// * the gap between the decaying high-water mark of committed serving bytes and
    ///   what serves now (a gradual fall is followed closely: the mark closes
    ///   `1 / HIGH_WATER_DECAY` of its gap a pass);
    /// * the reserve: bytes that a sudden drop released (serving bytes falling by more
    ///   than `1 / DROP_SHARE` of the mark between two passes, as when a level is
    ///   unloaded), which decays far more slowly (`1 / RESERVE_DECAY` a pass) and
    ///   shrinks as the program takes those empty spans back;
    /// * [`MIN_RETAIN_BYTES`].
    pub(crate) fn purge_for_pass(
        &self,
        min_age: u64,
        deadline: Option<std::time::Instant>,
    ) -> usize {
        self.tick.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        let retain = Self::retention(&mut st, self.counters.committed.load(Ordering::Relaxed));
        // SAFETY: we hold the lock.
        unsafe { self.purge_locked(&mut st, retain, min_age, true, deadline) }
    }

    /// Advances the retention state of one pass (`committed`: the arena's committed
    /// bytes) and returns the bytes of empty spans to keep committed (see
    /// [`Arena::purge_for_pass`]).
    fn retention(st: &mut ArenaState, committed: usize) -> usize {
        let in_use = committed - st.empty_committed;
        let gap = st.high_water.saturating_sub(in_use);
        st.high_water = in_use.max(st.high_water - gap / HIGH_WATER_DECAY);
        let drop = st.last_in_use.saturating_sub(in_use);
        st.last_in_use = in_use;
        if drop > st.high_water / DROP_SHARE {
            st.reserve += drop;
        }
        st.reserve -= st.reserve / RESERVE_DECAY;
        // What the program took back is no longer reserved. The slack of one longest
        // span keeps a pass that reuses nothing from purging a whole span for each
        // sliver of decay: the reserve drains at its own rate, not a span a pass.
        st.reserve = st.reserve.min(st.empty_committed + MAX_SPAN);
        (st.high_water - in_use)
            .max(MIN_RETAIN_BYTES)
            .max(st.reserve)
    }

    /// Purges empty spans, oldest first, while more than `retain` bytes of them stay
    /// committed: only spans empty for at least `min_age` ticks, and only until
    /// `deadline`. `lazy` purges with `MADV_FREE` (cheap; the kernel takes the pages
    /// under memory pressure), otherwise with `MADV_DONTNEED` (the pages go back at
    /// once). Returns the bytes purged.
    ///
    /// The spans are chosen as one at a time would choose them (each length's list from
    /// its oldest end, lengths in order), up to [`PURGE_BATCH`] at once, then handed back
    /// in address order, one run of adjacent regions at a time ([`Arena::purge_run`]);
    /// with a `deadline`, a run spans at most `MAX_SPAN` bytes of regions, so that no
    /// single call runs much past it.
    ///
    /// # Safety
    ///
    /// `st` is this arena's locked state.
    pub(super) unsafe fn purge_locked(
        &self,
        st: &mut ArenaState,
        retain: usize,
        min_age: u64,
        lazy: bool,
        deadline: Option<std::time::Instant>,
    ) -> usize {
        let now = self.tick.load(Ordering::Relaxed);
        let mut freed = 0;
        loop {
            let mut batch: [*const Span; PURGE_BATCH] = [ptr::null(); PURGE_BATCH];
            let mut n = 0;
            // Committed bytes of the spans chosen so far: they stay on their lists (and
            // counted) until handed back.
            let mut chosen = 0;
            for list in &st.empty {
                let mut cur = list.tail;
                while n < PURGE_BATCH && st.empty_committed - chosen > retain {
                    let Some(s) = NonNull::new(cur) else { break };
                    // SAFETY: list members are live spans of this arena; lock held.
                    let span = unsafe { s.as_ref() };
                    // SAFETY: lock held; no other reference to the span's state is alive.
                    let state = unsafe { span.state() };
                    if now.wrapping_sub(state.emptied_at) < min_age {
                        // The oldest end first: nothing younger on this list qualifies.
                        break;
                    }
                    cur = state.prev;
                    batch[n] = span;
                    n += 1;
                    chosen += span.committed_bytes();
                }
            }
            if n == 0 {
                return freed;
            }
            let batch = &mut batch[..n];
            // SAFETY: every pointer in the batch is a live span of this arena.
            batch.sort_unstable_by_key(|&s| unsafe { (*s).base });
            let mut i = 0;
            while i < n {
                // SAFETY: as above.
                let adjacent =
                    |a: *const Span, b: *const Span| unsafe { (*a).base + (*a).bytes == (*b).base };
                // SAFETY: as above.
                let len = |s: *const Span| unsafe { (*s).bytes };
                let (mut j, mut run_bytes) = (i + 1, len(batch[i]));
                while j < n
                    && adjacent(batch[j - 1], batch[j])
                    && (deadline.is_none() || run_bytes + len(batch[j]) <= MAX_SPAN)
                {
                    run_bytes += len(batch[j]);
                    j += 1;
                }
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return freed;
                }
                // SAFETY: lock held; the run's spans are on this arena's empty lists,
                // sorted by address, each region ending where the next one starts.
                match unsafe { self.purge_run(st, &batch[i..j], lazy) } {
                    Some(bytes) => freed += bytes,
                    None => return freed,
                }
                i = j;
            }
            if n < PURGE_BATCH {
                return freed;
            }
        }
    }

    /// Hands back a run of adjacent empty spans: their [`Span::purge_extent`]s, with one
    /// `madvise` for the regions (from the first span's base to the end of the last
    /// one's extent) and one for the side tables, then moves each span to the purged
    /// list. The ranges cover whole regions and table areas of the run's middle spans,
    /// which are empty too. A run of one span, or a run whose `madvise` fails, is
    /// handed back span by span ([`Arena::decommit_span`]). Returns the bytes that
    /// stopped counting as committed, or `None` if a span could not be handed back (the
    /// purge stops there).
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `run` is not empty, its spans are on this arena's empty lists,
    /// sorted by base, and each region ends where the next one starts.
    unsafe fn purge_run(
        &self,
        st: &mut ArenaState,
        run: &[*const Span],
        lazy: bool,
    ) -> Option<usize> {
        // SAFETY: live spans of this arena (caller).
        let (first, last) = unsafe { (&*run[0], &*run[run.len() - 1]) };
        debug_assert!(run.windows(2).all(|w| {
            // SAFETY: live spans of this arena (caller).
            let (a, b) = unsafe { (&*w[0], &*w[1]) };
            a.base + a.bytes == b.base && a.table + table_bytes(a.bytes) == b.table
        }));
        let together = run.len() > 1 && {
            let extent = |area| {
                let (start, _) = first.purge_extent(area, lazy);
                let (end, pages) = last.purge_extent(area, lazy);
                (start, (end + pages * PAGE_SIZE - start) / PAGE_SIZE)
            };
            let ((blocks, nb), (tables, nt)) = (extent(Area::Blocks), extent(Area::Table));
            // SAFETY: the ranges run from the first span's region (table area) to the
            // end of the last one's extent: the run's regions (table areas) lie back to
            // back (caller; tables follow their regions, module docs), all of empty
            // spans, which hold nothing live.
            unsafe {
                purge_pages(blocks, nb, lazy).is_ok() && purge_pages(tables, nt, lazy).is_ok()
            }
        };
        let mut freed = 0;
        for &s in run {
            // SAFETY: a live span of this arena (caller).
            let span = unsafe { &*s };
            let bytes = span.committed_bytes();
            // SAFETY: lock held; an empty-list span is committed with no block out and
            // no pass scanning it; when `together`, both its extents were just handed
            // back.
            let done = unsafe {
                if together {
                    span.forget_pages(Area::Blocks);
                    span.forget_pages(Area::Table);
                    self.mark_purged(span, lazy);
                    true
                } else {
                    self.decommit_span(span, lazy)
                }
            };
            if !done {
                st.empty_committed -= bytes - span.committed_bytes();
                return None;
            }
            let units = span.bytes / SPAN_UNIT;
            // SAFETY: lock held; the span is on this empty list.
            unsafe {
                st.empty[units - 1].remove(span);
                st.purged[units - 1].push(span, ListId::Purged);
            }
            st.empty_committed -= bytes;
            freed += bytes;
        }
        Some(freed)
    }

    /// Hands every empty span's pages back to the OS at once (`MADV_DONTNEED`, also for
    /// spans purged lazily before); returns the bytes that stopped counting as committed.
    pub(crate) fn trim(&self) -> usize {
        let mut st = self.lock();
        // SAFETY: we hold the lock.
        let freed = unsafe { self.purge_locked(&mut st, 0, 0, false, None) };
        for list in &st.purged {
            // SAFETY: lock held for the iteration; purging does not unlink.
            for span in unsafe { list.iter() } {
                // SAFETY: lock held; purged spans have no block out and dead contents.
                unsafe {
                    if span.state().lazily_purged && span.decommit_lazy_again() {
                        span.state().lazily_purged = false;
                    }
                }
            }
        }
        freed
    }

    /// Hands `span`'s pages back to the OS (lazily with `MADV_FREE` if `lazy`, where the
    /// kernel supports it); returns whether it did.
    ///
    /// # Safety
    ///
    /// Lock held; `span` belongs to this arena, is committed and has no block out.
    unsafe fn decommit_span(&self, span: &Span, lazy: bool) -> bool {
        // SAFETY: lock held, no block out (caller); an empty-list span is not scanned.
        let ok = unsafe { span.decommit(lazy) };
        if ok {
            // SAFETY: lock held (caller); its pages were just handed back.
            unsafe { self.mark_purged(span, lazy) };
        }
        ok
    }

    /// Records that `span`'s pages went back (lazily if `lazy`) and counts it.
    ///
    /// # Safety
    ///
    /// Lock held; `span` belongs to this arena and its pages were handed back.
    unsafe fn mark_purged(&self, span: &Span, lazy: bool) {
        // SAFETY: lock held (caller).
        let state = unsafe { span.state() };
        state.committed = false;
        state.lazily_purged = lazy;
        self.counters.decommits.fetch_add(1, Ordering::Relaxed);
    }
}
