//! NUMA migration by the compactor: moving handle blocks to the node that reads them.
//!
//! The read hooks (`numa::migration`) record, per block, a majority vote of the nodes
//! its sampled readers ran on, and flag the block's span when the vote names another
//! node than the span's arena's with a lead of at least the threshold. At the start of
//! each pass (before defragmenting, within [`share`] of the pass's budget):
//!
//! ```text
//! collect   per arena (its lock held): each serving movable span whose flag is set —
//!           flag taken; every live block whose vote is for its current owner, away
//!           from home, at or over the threshold → (span, incarnation, block, owner, node)
//!           while the budget's blocks and bytes allow (the rest: span flagged again)
//! per block target ← a span with room of the class in an arena of the reader's node
//!           (its partial list first; one arena lock at a time)
//!           move_one: slot move lock (never waits; busy / pinned / under an open read
//!           scope → skip, span flagged again) → source incarnation re-checked under the
//!           lock (DESIGN invariant 7) → owner re-check → copy → slot ← new
//!           old copy home to its span; votes of both places cleared
//! ```
//!
//! Large handle blocks (outside the pools) are queued by the read hook when their vote
//! (in the block's header) reaches the threshold; after the pool blocks, a pass pins
//! each queued block and, if its pages are not on the reader's node, moves them with
//! `move_pages` (address and contents unchanged). Its vote is reset either way.
//!
//! # One copy does both
//!
//! Migration runs first, within its share. What it leaves (more misplaced blocks than
//! its share allows) a defragmenting plan may meet in its sources: there a misplaced
//! block moves straight into a span of its reader's node ([`Heap::move_to_reader`])
//! instead of the plan's target on its old node, so one copy both empties the source
//! and migrates the block (the plan's target would only have carried the vote, and a
//! later pass would have copied the block again). It counts against the pass's budget
//! as any move, and in `numa_blocks_moved`. If no span of the reader's node can take
//! it, it goes to the plan's target as usual.
//!
//! A block moves only under its slot's move lock, as every compaction move (DESIGN
//! invariant 2); what was collected is only a hint, re-validated at the move. Blocks go
//! into spans that serve allocation (partial lists), never into a compaction source
//! (evacuating spans are on no partial list). A migrated block may land in a span the
//! current plan chose as a target: that target then fills sooner, and the plan drops it
//! when it is full, as for any allocation.

use core::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Budget, CompactionReport, Planned};
use crate::HandleError;
use crate::handle::MoveSkip;
use crate::heap::Heap;
use crate::movable::{large_header_of, large_vote, untag};
use crate::numa::readers::{Mapped, Vote, owner_tag, take_vote};
use crate::numa::{migrate_to_node, node_of_address};
use crate::pool::span::{Span, SpanKind};
use crate::size_class::NUM_CLASSES;

/// The part of `budget` a pass spends on migration: each limit scaled by `share`
/// (a limit that is not set stays unset).
pub(super) fn share(budget: Budget, share: f32) -> Budget {
    let share = f64::from(share);
    Budget {
        bytes: budget.bytes.map(|b| (b as f64 * share) as usize),
        blocks: budget.blocks.map(|b| (b as f64 * share) as usize),
        time: budget.time.map(|t| t.mul_f64(share)),
    }
}

/// A block a pass found misplaced.
struct Misplaced {
    span: Planned,
    class: usize,
    block: usize,
    /// Owner slot index.
    owner: u32,
    /// Dense index of the node that reads it most.
    node: usize,
}

/// What a defragmenting pass needs to send misplaced blocks of its sources to their
/// readers' nodes (see "One copy does both" in the module docs).
pub(super) struct ReaderVotes<'a> {
    map: Mapped<'a>,
    threshold: u8,
}

impl Heap {
    /// `None` with one node, with migration off, or before any read was sampled.
    pub(super) fn reader_votes(&self) -> Option<ReaderVotes<'_>> {
        let m = &self.compactor().numa;
        m.migrating()?;
        Some(ReaderVotes {
            map: m.readers.get()?,
            threshold: m.threshold(),
        })
    }

    /// If block `i` of `source` (a plan source this pass scans, so its incarnation is
    /// the planned one), owned by slot `owner`, is read mostly from another node: moves
    /// it into a span of that node, counting it in `report`, and returns true (also
    /// when the block was busy or pinned: skipped and counted). False: the block is not
    /// misplaced, or no span of its reader's node could take it; defragment it as usual.
    pub(super) fn move_to_reader(
        &self,
        votes: &ReaderVotes<'_>,
        source: Planned,
        i: usize,
        owner: u32,
        report: &mut CompactionReport,
    ) -> bool {
        let inner = self.inner();
        let span = source.span();
        let idx = inner.source.span_index(span);
        let v = votes.map.vote(idx, i);
        if v.count < votes.threshold || v.node == inner.source.numa.arena_node(span.arena) {
            return false;
        }
        let generation = self.handles().slot(owner).map_or(0, |s| s.generation());
        if v.tag != owner_tag(owner, generation) {
            return false;
        }
        let m = Misplaced {
            span: source,
            class: span.class(),
            block: i,
            owner,
            node: v.node,
        };
        match self.migrate_one(&m) {
            Ok(Some(ev)) => {
                self.count_migrated(&ev, report);
                true
            }
            Ok(None) => false,
            Err(MoveSkip::Pinned) => {
                report.skipped_pinned += 1;
                true
            }
            Err(_) => {
                report.skipped_busy += 1;
                true
            }
        }
    }

    /// Counts a block the compactor moved to its reader's node, and tells the observers.
    fn count_migrated(&self, ev: &super::MoveEvent, report: &mut CompactionReport) {
        self.inner().source.numa.compactor_moved(ev.size);
        report.blocks_moved += 1;
        report.bytes_moved += ev.size as u64;
        report.numa_blocks_moved += 1;
        report.numa_bytes_moved += ev.size as u64;
        if let Some(obs) = self.compactor().observers() {
            obs.iter().for_each(|o| o.on_move(ev));
        }
    }

    /// Moves misplaced blocks to their readers' nodes within `budget` (time measured
    /// from `start`), adding what it did to `report`.
    pub(super) fn migrate_misplaced(
        &self,
        budget: Budget,
        start: Instant,
        report: &mut CompactionReport,
    ) {
        let Some(map) = self.compactor().numa.readers.get() else {
            // No read sampled yet.
            return;
        };
        let inner = self.inner();
        let numa = &inner.source.numa;
        let threshold = self.compactor().numa.threshold();
        let table = self.handles();
        let (max_blocks, max_bytes) = (
            budget.blocks.map_or(u64::MAX, |b| b as u64),
            budget.bytes.map_or(u64::MAX, |b| b as u64),
        );
        if max_blocks == 0 || max_bytes == 0 {
            return;
        }
        // Collect, one arena lock at a time.
        let mut found: Vec<Misplaced> = Vec::new();
        let (mut blocks, mut bytes) = (0u64, 0u64);
        let k = SpanKind::Movable as usize;
        'arenas: for arena in &inner.arenas[..inner.arena_count()] {
            let st = arena.lock();
            let home = numa.arena_node(arena.index);
            for c in 0..NUM_CLASSES {
                // SAFETY: the arena lock is held while iterating its lists and reading the
                // state of their spans.
                let spans = unsafe {
                    st.partial[k][c]
                        .iter()
                        .chain(st.full[k][c].iter())
                        .chain(st.evacuating[c].iter())
                };
                for span in spans {
                    let idx = inner.source.span_index(span);
                    if !map.take_flag(idx) {
                        continue;
                    }
                    // SAFETY: arena lock held; no other reference to the state is alive.
                    let carved = unsafe { span.state().carved } as usize;
                    for i in 0..carved {
                        // SAFETY: a serving movable span (on a movable list, and we hold
                        // its arena lock, so it is not re-initialised), `i < carved`.
                        let meta = unsafe { span.meta(i) };
                        let owner = meta.owner(Ordering::Acquire);
                        if owner == 0 {
                            continue;
                        }
                        let v = map.vote(idx, i);
                        if v.node == home || v.count < threshold {
                            continue;
                        }
                        // The vote must be about the current owner (a hint: the move
                        // re-validates everything).
                        let generation = table.slot(owner - 1).map_or(0, |s| s.generation());
                        if v.tag != owner_tag(owner - 1, generation) {
                            continue;
                        }
                        let len = meta.len() as u64;
                        if blocks + 1 > max_blocks || bytes + len > max_bytes {
                            // Out of budget: the rest waits for a later pass.
                            map.set_flag(idx);
                            break 'arenas;
                        }
                        blocks += 1;
                        bytes += len;
                        found.push(Misplaced {
                            span: Planned::of(span),
                            class: c,
                            block: i,
                            owner: owner - 1,
                            node: v.node,
                        });
                    }
                }
            }
        }
        // What the pool candidates left of the budget, for large blocks.
        let left = (max_blocks - blocks, max_bytes - bytes);
        for m in &found {
            let source = m.span.span();
            let idx = inner.source.span_index(source);
            if budget.time.is_some_and(|t| start.elapsed() >= t) {
                map.set_flag(idx);
                continue;
            }
            match self.migrate_one(m) {
                Ok(Some(ev)) => self.count_migrated(&ev, report),
                Ok(None) => {}
                Err(skip) => {
                    match skip {
                        MoveSkip::Pinned => report.skipped_pinned += 1,
                        _ => report.skipped_busy += 1,
                    }
                    // Retried by a later pass.
                    map.set_flag(idx);
                }
            }
        }
        self.migrate_large(budget, start, left, report);
    }

    /// Moves the pages of the queued large blocks to their readers' nodes, within what
    /// is left of the blocks and bytes (`left`) and of the time budget.
    fn migrate_large(
        &self,
        budget: Budget,
        start: Instant,
        mut left: (u64, u64),
        report: &mut CompactionReport,
    ) {
        let m = &self.compactor().numa;
        let queued = m.take_large();
        if queued.is_empty() {
            return;
        }
        let inner = self.inner();
        let numa = &inner.source.numa;
        let threshold = m.threshold();
        let mut later = Vec::new();
        for (k, &h) in queued.iter().enumerate() {
            if left.0 == 0 || budget.time.is_some_and(|t| start.elapsed() >= t) {
                later.extend_from_slice(&queued[k..]);
                break;
            }
            // A pin keeps the block (and its address) without excluding readers or
            // writers: the kernel moves pages under concurrent access.
            let pin = match self.handles().try_pin(h) {
                Ok(p) => p,
                Err(HandleError::Busy) => {
                    later.push(h);
                    continue;
                }
                // Freed since: nothing to do.
                Err(_) => continue,
            };
            let (block, _) = untag(pin.ptr());
            if inner.span_of(block).is_some() {
                continue;
            }
            // SAFETY: the pin keeps this large movable block live (it lies in no span).
            let (len, _) = unsafe { large_header_of(block) };
            // `move_pages` copies every page: within the bytes left, and within the
            // time left at a conservative 1 GiB/s.
            let too_slow = budget.time.is_some_and(|t| {
                start.elapsed() + Duration::from_secs_f64(len as f64 / f64::from(1u32 << 30)) > t
            });
            if len as u64 > left.1 || too_slow {
                later.push(h);
                continue;
            }
            // SAFETY: as above; the sample is reset whatever happens next.
            let v = take_vote(unsafe { large_vote(block) });
            if v.count < threshold || v.tag != owner_tag(h.index(), h.generation().get()) {
                continue;
            }
            let Some(node) = numa.topology().node_id(v.node) else {
                continue;
            };
            if node_of_address(block.as_ptr()) == Ok(node) {
                // Already there (its mapping may prefer that node).
                continue;
            }
            match migrate_to_node(block.as_ptr(), len, node) {
                Ok(mig) => {
                    numa.migrated(&mig);
                    numa.compactor_moved(len);
                    report.numa_blocks_moved += 1;
                    report.numa_bytes_moved += len as u64;
                    left = (left.0 - 1, left.1 - len as u64);
                }
                Err(_) => numa.compactor_failed(),
            }
        }
        m.queue_large(later);
    }

    /// Moves one misplaced block into an arena of its reader's node. `Ok(None)`: the
    /// block is gone (freed, or its span changed) or no target could be had; `Err`: it
    /// is busy or pinned right now.
    fn migrate_one(&self, m: &Misplaced) -> Result<Option<super::MoveEvent>, MoveSkip> {
        let inner = self.inner();
        let source = m.span.span();
        if source.incarnation() != m.span.incarnation {
            // Emptied or re-initialised since it was collected.
            return Ok(None);
        }
        let numa = &inner.source.numa;
        let arena = &inner.arenas[numa.arena_in_node(m.node, self.arena_count())];
        let (target, new) = {
            let mut st = arena.lock();
            let Ok(span) = arena.span_with_room(&mut st, &inner.source, m.class, SpanKind::Movable)
            else {
                return Ok(None);
            };
            // SAFETY: lock held; `span` is a movable span of this arena on its partial
            // list (`span_with_room`), of the incarnation just read.
            match unsafe { arena.take_from(&mut st, span, span.incarnation()) } {
                Some(b) => (span, b),
                None => return Ok(None),
            }
        };
        let done = self.move_one(
            self.handles(),
            source,
            m.span.incarnation,
            m.block,
            m.owner,
            target,
            new,
        );
        let (home, block) = match &done {
            Ok(_) => (source, source.block(m.block)),
            Err(_) => (target, new),
        };
        if done.is_ok() {
            // The old copy is still out, so the source keeps the life the move checked.
            let counted = source.live.add(m.span.incarnation, u32::MAX);
            debug_assert!(counted, "a span with a block out keeps its life");
        }
        {
            let arena = &inner.arenas[home.arena as usize];
            let mut st = arena.lock();
            // SAFETY: lock held; `block` is an out block of `home` nobody references:
            // the old copy after a move (its slot points at the new one), or the unused
            // reservation.
            unsafe { arena.put_block(&mut st, home, block) };
        }
        match done {
            Ok(ev) => {
                if let Some(map) = self.compactor().numa.readers.get() {
                    // Reset the sample: the block starts afresh on its new node.
                    map.clear(inner.source.span_index(source), m.block);
                    if let Some(ni) = target.block_index(new.as_ptr().addr()) {
                        map.clear(inner.source.span_index(target), ni);
                    }
                }
                Ok(Some(ev))
            }
            Err(MoveSkip::Gone) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a defragmenting move of block `i` of `source` to `new` in `target`: the
    /// block's reader vote moves with it (nothing to do before any read was sampled).
    pub(super) fn carry_vote(&self, source: &Span, i: usize, target: &Span, new: NonNull<u8>) {
        let Some(map) = self.compactor().numa.readers.get() else {
            return;
        };
        let src = &self.inner().source;
        let (from, to) = (src.span_index(source), src.span_index(target));
        let Some(ni) = target.block_index(new.as_ptr().addr()) else {
            return;
        };
        let v: Vote = map.vote(from, i);
        map.clear(from, i);
        map.set(to, ni, v);
        if v.count >= self.compactor().numa.threshold()
            && v.node != src.numa.arena_node(target.arena)
        {
            map.set_flag(to);
        }
    }
}
