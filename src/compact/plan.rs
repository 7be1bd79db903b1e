//! Plans: which spans a pass evacuates and into which, when a plan is worth making
//! (the gate and its backoff), and how a plan ends. The rules are in the parent
//! module's docs ("Policy", "When to plan", "A plan never outlives its spans").

use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::CompactionReport;
use crate::heap::Heap;
use crate::movable::live;
use crate::pool::span::{Span, SpanKind};
use crate::size_class::{self, NUM_CLASSES};

/// A span as a plan saw it: valid for the plan only while the span's incarnation is
/// still `incarnation` (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Planned {
    pub(super) span: NonNull<Span>,
    pub(super) incarnation: u32,
}

impl Planned {
    pub(super) fn of(span: &Span) -> Self {
        Self {
            span: NonNull::from(span),
            incarnation: span.incarnation(),
        }
    }

    /// A placeholder that names no span; never followed.
    pub(super) fn dangling() -> Self {
        Self {
            span: NonNull::dangling(),
            incarnation: 0,
        }
    }

    pub(super) fn span(&self) -> &Span {
        // SAFETY: span records live in the heap's span table, at stable addresses, for
        // the heap's life, and a plan lives inside its heap. What the record describes
        // may have changed: callers re-validate `incarnation` under the arena lock.
        unsafe { self.span.as_ref() }
    }
}

/// A compaction plan in progress.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) active: bool,
    /// Sources, in evacuation order.
    pub(super) sources: Vec<Planned>,
    /// Targets per plan group (`HeapInner::plan_group`: class, and node with more than
    /// one), with the destinations reserved in the one being filled.
    pub(super) targets: Vec<Targets>,
    /// Next source and next block index in it.
    pub(super) cursor: (usize, usize),
    /// Planning's buffers, kept between plans.
    pub(super) seen: Vec<SeenGroup>,
    /// Spans that served as targets during the current full compaction.
    pub(super) were_targets: Vec<Planned>,
    /// Planning's buffer of pending live-count deltas: (span address, delta), summed
    /// per span (`movable::live`).
    pub(super) pending: Vec<(usize, u32)>,
    /// After a budgeted plan was dropped as not worth it: budgeted passes left before
    /// planning is tried again, the length of the current wait, and the fragmentation
    /// the dropped plan saw (see [`Plan::may_plan`]).
    pub(super) idle: u32,
    pub(super) backoff: u32,
    pub(super) idle_fragmentation: f64,
}

/// A span as planning saw it under its arena lock: (span, live blocks, blocks out).
pub(super) type Seen = (Planned, u32, u32);

/// One plan group's spans as planning saw them (a buffer kept by the plan).
#[derive(Default)]
pub(super) struct SeenGroup {
    spans: Vec<Seen>,
    /// Blocks per span of the group.
    cap: u64,
    /// Spans the group's live blocks need: the densest become targets.
    needed: usize,
}

/// The targets of one plan group.
#[derive(Default)]
pub(super) struct Targets {
    /// Planned targets; the last one is filled first.
    pub(super) spans: Vec<Planned>,
    /// Destinations reserved in `spans.last()` (`Arena::reserve_for_moves`): indices of
    /// out blocks of that target, lowest address last. The plan owns them until it
    /// moves a block into one or puts them back (`Heap::finish_plan`); while it holds
    /// any, the target keeps its life. Empty whenever a target is dropped.
    pub(super) run: Vec<u32>,
}

/// A budgeted plan goes ahead only if evacuating its sources would release at least
/// `min_fragmentation / GAIN_DIVISOR` of the committed movable bytes
/// ([`CompactionPolicy::min_fragmentation`]).
///
/// Every class keeps some holes however well it is packed (blocks rounded up to their
/// class, the tail of each span, one partly used span per class), so a heap that is
/// packed as tight as it goes still reads above `min_fragmentation` when its classes
/// are many or its blocks big. Without this gate each pass would plan again, walk every
/// span and flush the threads' caches of the planned classes, only to move the few
/// blocks freed since the last pass.
///
/// Half rather than a quarter: in the game workload (`benches/common/game.rs`) a
/// quarter kept about 97 plans per 2000 frames, half keeps about 28 that move 30 %
/// fewer bytes for the same end fragmentation, so fewer span walks and cache flushes
/// (benches/README.md, issue 11); a whole share (1.0) left the heap measurably more
/// fragmented at the end.
pub(super) const GAIN_DIVISOR: f64 = 2.0;
/// The longest wait, in budgeted passes, between two plans that were not worth it.
pub(super) const MAX_BACKOFF: u32 = 32;
/// A rise in fragmentation since the last dropped plan that makes the next pass plan
/// again without waiting.
pub(super) const REPLAN_RISE: f64 = 0.02;

impl Plan {
    /// Whether a budgeted pass that sees `fragmentation` may build a plan now, counting
    /// down the wait after a dropped one.
    pub(super) fn may_plan(&mut self, fragmentation: f64) -> bool {
        if self.idle == 0 || fragmentation >= self.idle_fragmentation + REPLAN_RISE {
            self.idle = 0;
            return true;
        }
        self.idle -= 1;
        false
    }

    /// A plan was not worth it: wait twice as long as last time before the next one.
    pub(super) fn back_off(&mut self, fragmentation: f64) {
        self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
        self.idle = self.backoff;
        self.idle_fragmentation = fragmentation;
    }
}

// SAFETY: the span pointers refer to records of the heap that owns this plan and
// outlives it; they are only followed by the thread holding the plan's mutex.
unsafe impl Send for Plan {}

impl Heap {
    /// Fills `buf` with the pending live-count deltas of the spans' current lives,
    /// one summed entry per span, sorted by span address.
    fn pending_live_by_span<'a>(&self, buf: &'a mut Vec<(usize, u32)>) -> &'a [(usize, u32)] {
        buf.clear();
        self.pending_live.for_each(|s, life, delta| {
            if s.incarnation() == life {
                buf.push((core::ptr::from_ref(s).addr(), delta));
            }
        });
        buf.sort_unstable_by_key(|&(k, _)| k);
        buf.dedup_by(|b, a| {
            let same = a.0 == b.0;
            if same {
                a.1 = a.1.wrapping_add(b.1);
            }
            same
        });
        buf
    }

    /// Plans the evacuation of every class with more spans than its live blocks need,
    /// unless it would release less than `min_gain` bytes: then it returns false before
    /// touching any span.
    pub(super) fn build_plan(&self, plan: &mut Plan, full: bool, min_gain: usize) -> bool {
        let inner = self.inner();
        plan.sources.clear();
        plan.cursor = (0, 0);
        let groups = NUM_CLASSES * inner.source.numa.topology().node_count();
        debug_assert!(plan.targets.iter().all(|t| t.run.is_empty()));
        plan.targets.resize_with(groups, Targets::default);
        plan.targets.iter_mut().for_each(|t| t.spans.clear());
        // Every span by group, and each group's block capacity, read under the arena
        // locks. The buffers are the plan's, kept from one plan to the next: no
        // allocation once they have grown.
        let mut seen = core::mem::take(&mut plan.seen);
        seen.resize_with(groups, Default::default);
        seen.iter_mut().for_each(|g| g.spans.clear());
        let pending = self.pending_live_by_span(&mut plan.pending);
        inner.for_each_movable_span(|s| {
            let g = &mut seen[inner.plan_group(s)];
            g.cap = s.capacity() as u64;
            // SAFETY: `for_each_movable_span` holds the span's arena lock.
            let out = unsafe { s.out() } as u32;
            // Under the lock the word counts the current life; the deltas still pending
            // in the lanes are added, and the sum (an estimate while threads run) is
            // kept within what is out.
            let (_, count) = s.live.get();
            let key = core::ptr::from_ref(s).addr();
            let d = pending
                .binary_search_by_key(&key, |&(k, _)| k)
                .map_or(0, |at| pending[at].1);
            g.spans
                .push((Planned::of(s), live::settle(count, d, out), out));
        });
        // Per (node, class) group: the spans to keep (densest first) and how many to
        // evacuate; the gate counts the gain over every group.
        let mut gain = 0;
        for (group, g) in seen.iter_mut().enumerate() {
            let live: u64 = g.spans.iter().map(|&(_, l, _)| u64::from(l)).sum();
            g.needed = live.div_ceil(g.cap.max(1)) as usize;
            if g.spans.len() <= g.needed {
                g.spans.clear();
                continue;
            }
            g.spans.sort_by_key(|&(_, l, _)| core::cmp::Reverse(l));
            gain += (g.spans.len() - g.needed) * size_class::span_bytes(group % NUM_CLASSES);
        }
        if gain < min_gain {
            plan.seen = seen;
            return false;
        }
        plan.backoff = 0;
        const { assert!(NUM_CLASSES <= 128, "class masks are u128") };
        // Classes whose thread caches hold blocks the plan needs back (`needs_flush`).
        let mut flush: u128 = 0;
        for (group, g) in seen.iter().enumerate() {
            if g.spans.is_empty() {
                continue;
            }
            let (targets, rest) = g.spans.split_at(g.needed);
            // The spans were seen under their arena locks, released since: each source
            // is re-validated as it starts evacuating.
            let first = plan.sources.len();
            let (mut moving, mut cached) = (0u64, false);
            for &(p, live, out) in rest.iter().rev() {
                if full && plan.were_targets.contains(&p) {
                    continue;
                }
                let arena = &inner.arenas[p.span().arena as usize];
                let mut st = arena.lock();
                // SAFETY: lock held; the span belongs to this arena.
                if unsafe { arena.start_evacuation(&mut st, p.span(), p.incarnation) } {
                    plan.sources.push(p);
                    moving += u64::from(live);
                    cached |= out > live;
                }
            }
            if plan.sources.len() == first {
                continue;
            }
            if needs_flush(cached, moving, targets, g.cap) {
                flush |= 1 << (group % NUM_CLASSES);
            }
            let t = &mut plan.targets[group].spans;
            t.extend(targets.iter().rev().map(|&(p, _, _)| p));
            if full {
                plan.were_targets.extend(targets.iter().map(|&(p, _, _)| p));
            }
        }
        plan.seen = seen;
        plan.active = true;
        if flush != 0 {
            // Free blocks cached by threads keep sources from emptying: ask every
            // thread to flush those classes (honoured on its next movable operation),
            // flush ours, and send those classes' central batches home.
            let [lo, hi] = &inner.movable_flush_classes;
            lo.store(flush as u64, Ordering::Relaxed);
            hi.store((flush >> 64) as u64, Ordering::Relaxed);
            inner.movable_epoch.fetch_add(1, Ordering::Relaxed);
            if let Some(tc) = inner.thread_cache() {
                // SAFETY: the calling thread owns its record.
                unsafe { inner.flush_classes(tc, Some(SpanKind::Movable), flush) };
            }
            // Only the flushed classes' central lists: the others' batches keep no
            // source alive, and draining them would only make threads refill them.
            let central = &inner.central[SpanKind::Movable as usize];
            for (class, list) in central.iter().enumerate() {
                if flush & (1 << class) == 0 {
                    continue;
                }
                for batch in list.take_all() {
                    // SAFETY: batches in a central list are free blocks of this heap
                    // that nobody else holds.
                    unsafe { inner.return_home(batch) };
                }
            }
        }
        true
    }

    /// Ends `plan`: reserved destinations go home, targets give back their free tails
    /// (lazily unless `full`), unfinished sources end their evacuation.
    pub(super) fn finish_plan(&self, plan: &mut Plan, full: bool) {
        let inner = self.inner();
        for t in &mut plan.targets {
            self.return_run(t);
            for p in &t.spans {
                let span = p.span();
                let arena = &inner.arenas[span.arena as usize];
                let mut st = arena.lock();
                // SAFETY: lock held; the span belongs to this arena.
                unsafe { arena.trim_target(&mut st, span, p.incarnation, !full) };
            }
        }
        for p in plan.sources.drain(plan.cursor.0.min(plan.sources.len())..) {
            let span = p.span();
            let arena = &inner.arenas[span.arena as usize];
            let mut st = arena.lock();
            if span.incarnation() == p.incarnation {
                // SAFETY: lock held; the span belongs to this arena and nobody scans it
                // (scans end before their pass does).
                unsafe { arena.end_evacuation(&mut st, span) };
            }
        }
        plan.sources.clear();
        plan.targets.clear();
        plan.cursor = (0, 0);
        plan.active = false;
    }
}

/// Whether a plan group's classes must be flushed from the thread caches (and the
/// central lists) for its plan to pay off: some source has blocks out that are not live
/// (cached somewhere: the source cannot empty while they are), or the targets' room,
/// less the blocks cached out of them, falls short of the sources' live blocks. Both
/// from the counts seen under the arena locks; a flush costs every thread a refill of
/// the class, so a plan that needs neither leaves the caches alone.
///
/// `cached`: some source has more blocks out than live; `moving`: the sources' live
/// blocks; `targets`: (span, live, out) of the group's targets, of `cap` blocks each.
fn needs_flush(cached: bool, moving: u64, targets: &[Seen], cap: u64) -> bool {
    let room: u64 = targets
        .iter()
        .map(|&(_, _, out)| cap.saturating_sub(u64::from(out)))
        .sum();
    cached || room < moving
}

/// A full compaction plans again only if the last plan finished and did something:
/// blocks skipped because they were busy get their retry from the next plan.
pub(super) fn plan_worth_repeating(r: &CompactionReport) -> bool {
    r.complete && (r.blocks_moved > 0 || r.skipped_busy > 0)
}

#[cfg(test)]
impl Heap {
    /// Asserts, at quiescence, that every movable span's live count (its word plus the
    /// deltas pending in the lanes, as planning reads it) equals the live blocks of
    /// its side table: no delta lost, none applied twice, none applied to a later life.
    pub(crate) fn assert_live_counts_exact(&self) {
        let mut buf = Vec::new();
        let pending = self.pending_live_by_span(&mut buf);
        let inner = self.inner();
        inner.for_each_movable_span(|s| {
            let (life, count) = s.live.get();
            assert_eq!(life, s.incarnation(), "the word counts the current life");
            let key = core::ptr::from_ref(s).addr();
            let d = pending
                .binary_search_by_key(&key, |&(k, _)| k)
                .map_or(0, |at| pending[at].1);
            // SAFETY: `for_each_movable_span` holds the span's arena lock.
            let carved = unsafe { s.state().carved } as usize;
            let walked = (0..carved)
                // SAFETY: movable span, `i < carved <= capacity`.
                .filter(|&i| unsafe { s.meta(i) }.owner(Ordering::Relaxed) != 0)
                .count();
            assert_eq!(
                count.wrapping_add(d) as usize,
                walked,
                "span at {key:#x} (class {}, life {life})",
                s.class()
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(live: u32, out: u32) -> Seen {
        (Planned::dangling(), live, out)
    }

    #[test]
    fn flush_only_when_cached_blocks_stand_in_the_way() {
        // Two targets of 100 blocks with 60 and 70 out: room for 70.
        let targets = [seen(60, 60), seen(50, 70)];
        assert!(
            !needs_flush(false, 70, &targets, 100),
            "room enough, nothing cached"
        );
        assert!(
            needs_flush(true, 10, &targets, 100),
            "a source's blocks are cached"
        );
        assert!(
            needs_flush(false, 71, &targets, 100),
            "the targets' cached blocks take the room the sources need"
        );
        assert!(!needs_flush(false, 0, &[], 100));
    }
}
