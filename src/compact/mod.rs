//! The concurrent, incremental compactor.
//!
//! # Policy
//!
//! Per size class (and, with more than one NUMA node, per node: blocks never change node
//! by defragmenting; see `numa` for moves that do), let `L` be the live blocks in
//! movable spans and `C` a span's block capacity. `⌈L / C⌉` spans suffice, so the densest `⌈L / C⌉` spans become *targets*
//! and every other span of the class becomes a *source*, evacuated sparsest first
//! (fewest blocks to move per span freed). Targets have room for every source block by
//! construction. Sources leave the arena's refill lists while they are evacuated
//! (`start_evacuation`), so new allocations never land in them, and no block is moved
//! into a source. A span that served as a target is never made a source again within
//! the same *full* compaction, so no block moves twice in one.
//!
//! A *plan* (sources + targets) is built once and executed across as many passes as
//! its budgets need; a full compaction runs passes, and plans, until a plan finds
//! nothing to gain.
//!
//! # A plan never outlives its spans (DESIGN invariant 7)
//!
//! Between two passes of one plan the program keeps running: it frees blocks, so a
//! planned span can empty, be retired, be trimmed, and be re-initialised by the arena
//! for another class or for fixed blocks. So a plan names each span together with its
//! *incarnation* (`Span::incarnation`, bumped by every re-initialisation), and every use
//! of a planned span is re-validated under the span's arena lock:
//!
//! * a source becomes evacuating only if its incarnation is still the planned one
//!   (`Arena::start_evacuation`);
//! * a pass starts reading a source's side table only if it is still the evacuating span
//!   of the planned incarnation (`Arena::start_scanning`); while it reads without the
//!   lock, the span is marked *scanning* and is not retired even if it empties, so it
//!   cannot be re-initialised under the pass; the pass retires it when it stops
//!   scanning (`Arena::stop_scanning`, also on unwind);
//! * destinations are reserved in a target only if it is still the movable span of the
//!   planned incarnation, on its partial list (`Arena::reserve_for_moves`); the pass
//!   then holds them as out blocks of the target, which keep its incarnation until
//!   they are used or put back at the plan's end.
//!
//! So *a planned move never touches a span whose incarnation changed since it was
//! planned*; a span that changed simply drops out of the plan.
//!
//! # Observers
//!
//! Observers are called on the compacting thread after the moved block's old copy went
//! home, so a panicking observer loses no block (the panic then unwinds out of the
//! pass, which leaves the heap consistent). The observer list is copied on write and
//! each pass works on the list it started with: an observer may [`Heap::subscribe`]
//! (the new observer hears from the next pass on), read or free handles, and call
//! [`Heap::compact`] or [`Heap::compact_full`] (which return at once with
//! `ran == false`: a pass is already running on this heap).
//!
//! # Moving one block (DESIGN invariant 2)
//!
//! ```text
//! owner ← side table[block]            (a slot index, or 0: not live → skip)
//! try_lock_move(slot, block)           never waits: Busy / Pinned / Gone → skip, retried later
//! re-check side table owner == slot    (an allocation publishes its owner last)
//! new ← a block of a target span       (under the target's arena lock)
//! copy len bytes; side table[new] = (slot, len); target live += 1 (checked life)
//! slot.ptr ← new (same tag)            readers that queued meanwhile now see the copy
//! side table[block] = 0; source live −= 1 (checked life); unlock
//! block → home in its source span      (an emptied span goes to the empty list)
//! ```
//!
//! Readers and writers wait at most one block copy: the move lock is held only for the
//! copy and a few stores.
//!
//! # When to plan
//!
//! A budgeted pass plans only when the heap's fragmentation (from counters, no span
//! walk) is at least `CompactionPolicy::min_fragmentation`, and keeps a plan only if it
//! would release at least `min_fragmentation / GAIN_DIVISOR` (half that share) of the
//! committed movable bytes: a packed heap keeps holes no plan can remove (class
//! rounding, span tails, one partly used span per class). A dropped plan makes the next ones wait 1, 2, 4, … up to
//! `MAX_BACKOFF` passes, unless fragmentation rises by `REPLAN_RISE` meanwhile. A full
//! compaction always plans.
//!
//! # Giving memory back
//!
//! Emptied spans leave the class lists for the arena's empty list and stay committed;
//! each pass purges (`MADV_FREE`), within what is left of its time budget, the spans
//! empty for longer than `CompactionPolicy::purge_delay_passes` beyond the arena's
//! retention, which follows the program's rise and fall and keeps what a sudden drop
//! released for the rise that follows (`Arena::purge_for_pass`, `pool::arena::purge`);
//! `trim` and a full compaction give back everything
//! (`MADV_DONTNEED`).
//!
//! Once a plan is kept, the compactor asks every thread to flush its cached free blocks
//! of the planned classes that need it home (an epoch bump honoured on each thread's
//! next movable operation), flushes its own, and drains those classes' central lists
//! (and no other class's), so cached free blocks do not keep sources alive. A class
//! needs it only if one of its sources has free blocks out (cached somewhere), or its
//! targets' room less their cached blocks falls short of the blocks to move
//! (`plan::needs_flush`): a flush makes every thread refill the class, which a plan
//! that moves a few blocks should not cost.

mod background;
#[cfg(all(test, tidyheap_loom))]
mod loom_move;
mod moves;
mod numa;
mod plan;
mod report;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

pub use background::BackgroundCompactor;
pub use report::{
    Budget, ClassFragmentation, CompactionObserver, CompactionPolicy, CompactionReport,
    Fragmentation, MoveEvent,
};

#[cfg(feature = "events")]
use crate::events::PassPhase;
use crate::heap::Heap;
use crate::numa::migration::MigrationState;
use crate::pool::arena::Arena;
use crate::pool::heap::HeapInner;
use crate::pool::span::{Area, Span, SpanKind};
use crate::size_class::NUM_CLASSES;
use plan::{GAIN_DIVISOR, Plan, Planned, plan_worth_repeating};

type Observers = Arc<[Arc<dyn CompactionObserver>]>;

/// The compactor's per-heap state.
pub(crate) struct Compactor {
    plan: Mutex<Plan>,
    policy: Mutex<CompactionPolicy>,
    /// Copied on write, so a pass calls observers without holding this lock.
    observers: RwLock<Observers>,
    has_observers: AtomicBool,
    /// NUMA migration of handle blocks: settings and reader samples.
    pub(crate) numa: MigrationState,
}

impl Compactor {
    /// A compactor for a heap whose topology has more than one node if `multi_node`.
    pub(crate) fn new(multi_node: bool) -> Self {
        Self {
            plan: Mutex::new(Plan::default()),
            policy: Mutex::new(CompactionPolicy::DEFAULT),
            observers: RwLock::new(Arc::new([])),
            has_observers: AtomicBool::new(false),
            numa: MigrationState::new(multi_node),
        }
    }

    /// The current observers, or `None` (one load) when there are none.
    fn observers(&self) -> Option<Observers> {
        self.has_observers
            .load(Ordering::Acquire)
            .then(|| self.observers.read().clone())
    }
}

/// A source span a pass is scanning (see `Arena::start_scanning`). Dropping it ends the
/// scan without ending the evacuation, also when an observer's panic unwinds the pass.
struct Scan<'a> {
    arena: &'a Arena,
    span: &'a Span,
}

impl<'a> Scan<'a> {
    /// Starts scanning `p` if it is still the planned evacuating span; returns the scan
    /// and how many blocks the span carved.
    fn start(inner: &'a HeapInner, p: &'a Planned) -> Option<(Self, usize)> {
        let span = p.span();
        let arena = &inner.arenas[span.arena as usize];
        let mut st = arena.lock();
        // SAFETY: the arena lock is held; `span` belongs to this arena (fixed for the
        // record's life).
        let carved = unsafe { arena.start_scanning(&mut st, span, p.incarnation) }?;
        Some((Self { arena, span }, carved))
    }

    /// Ends the scan; if `finished`, the evacuation too. Returns whether the span was
    /// retired (it had no block out).
    fn stop(self, finished: bool) -> bool {
        let this = core::mem::ManuallyDrop::new(self);
        let mut st = this.arena.lock();
        // SAFETY: lock held; the span belongs to this arena and we scan it.
        unsafe { this.arena.stop_scanning(&mut st, this.span, finished) }
    }
}

impl Drop for Scan<'_> {
    fn drop(&mut self) {
        let mut st = self.arena.lock();
        // SAFETY: lock held; the span belongs to this arena and we scan it.
        unsafe { self.arena.stop_scanning(&mut st, self.span, false) };
    }
}

thread_local! {
    /// The compactor whose pass this thread is running, if any (observers run inside
    /// passes and may call back into the heap).
    static IN_PASS: core::cell::Cell<*const Compactor> =
        const { core::cell::Cell::new(core::ptr::null()) };
}

/// Marks this thread as running a pass of `c` until dropped (also on unwind).
struct PassMark(*const Compactor);

impl PassMark {
    fn enter(c: &Compactor) -> Self {
        Self(IN_PASS.replace(c))
    }

    fn inside(c: &Compactor) -> bool {
        core::ptr::eq(IN_PASS.get(), c)
    }
}

impl Drop for PassMark {
    fn drop(&mut self) {
        IN_PASS.set(self.0);
    }
}

impl core::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Compactor").finish_non_exhaustive()
    }
}

impl HeapInner {
    /// Runs `f` over every movable span serving a class (partial, full or evacuating),
    /// with its arena locked.
    fn for_each_movable_span(&self, mut f: impl FnMut(&Span)) {
        let k = SpanKind::Movable as usize;
        for arena in &self.arenas[..self.arena_count()] {
            let st = arena.lock();
            for c in 0..NUM_CLASSES {
                // SAFETY: the arena lock is held while iterating its lists.
                unsafe {
                    for s in st.partial[k][c]
                        .iter()
                        .chain(st.full[k][c].iter())
                        .chain(st.evacuating[c].iter())
                    {
                        f(s);
                    }
                }
            }
        }
    }

    /// The plan group of a movable span: its class, and with more than one node its
    /// arena's node (`class + NUM_CLASSES · node`). A plan moves blocks only within a
    /// group, so defragmenting never takes a block off the node it was placed or
    /// migrated on.
    fn plan_group(&self, span: &Span) -> usize {
        span.class() + NUM_CLASSES * self.source.numa.arena_node(span.arena)
    }

    /// Committed bytes of movable spans serving a class, and the live bytes of movable
    /// pool blocks, from the counters (exact at quiescence; no span walk).
    fn movable_usage(&self) -> (usize, usize) {
        let committed = self.arenas[..self.arena_count()]
            .iter()
            .map(|a| a.counters.movable.load(Ordering::Relaxed))
            .sum();
        (
            committed,
            self.counters(SpanKind::Movable).live_bytes() as usize,
        )
    }
}

fn ratio(committed: usize, live: usize) -> f64 {
    if committed == 0 {
        0.0
    } else {
        1.0 - live as f64 / committed as f64
    }
}

impl Heap {
    /// Runs one compaction pass within `budget` and reports what it did.
    ///
    /// Safe to call from any thread while others allocate, free, read and write: blocks
    /// that are guarded or pinned are skipped and retried by a later pass. If another
    /// pass is already running on this heap, returns at once with `ran == false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{Budget, Heap};
    /// let heap = Heap::new();
    /// let mut keep = Vec::new();
    /// for i in 0..2000u32 {
    ///     let h = heap.insert_bytes(&i.to_le_bytes())?;
    ///     if i % 2 == 0 { keep.push((h, i)) } else { heap.free_handle(h)? }
    /// }
    /// let report = heap.compact(Budget::blocks(10));
    /// assert!(report.blocks_moved <= 10);
    /// heap.compact_full();
    /// for (h, i) in keep {
    ///     assert_eq!(&*heap.read(h)?, &i.to_le_bytes());
    /// }
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn compact(&self, budget: Budget) -> CompactionReport {
        let compactor = self.compactor();
        let Some(mut plan) = compactor.plan.try_lock() else {
            return CompactionReport::default();
        };
        let _mark = PassMark::enter(compactor);
        self.pass(&mut plan, budget, false)
    }

    /// Runs passes until nothing more can be gained (one *full* compaction) and returns
    /// the summed report. Waits for a pass running on another thread to end first;
    /// called from an observer of this heap (inside a pass), returns at once with
    /// `ran == false`.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let hs: Vec<_> = (0..4096).map(|_| heap.alloc_handle(64, 16).unwrap()).collect();
    /// for h in hs.iter().skip(1).step_by(2) { heap.free_handle(*h).unwrap(); }
    /// let before = heap.fragmentation().ratio;
    /// let r = heap.compact_full();
    /// assert!(r.blocks_moved > 0);
    /// assert!(heap.fragmentation().ratio < before);
    /// ```
    pub fn compact_full(&self) -> CompactionReport {
        let compactor = self.compactor();
        if PassMark::inside(compactor) {
            return CompactionReport::default();
        }
        let mut plan = compactor.plan.lock();
        let _mark = PassMark::enter(compactor);
        plan.were_targets.clear();
        let mut total = CompactionReport::default();
        let mut first = true;
        loop {
            let r = self.pass(&mut plan, Budget::UNLIMITED, true);
            let progress = r.blocks_moved > 0 || r.spans_emptied > 0;
            total.accumulate(&r, first);
            first = false;
            if !progress || !plan_worth_repeating(&r) {
                break;
            }
        }
        plan.were_targets.clear();
        let released =
            (self.inner().trim() + self.inner().large.purge(core::time::Duration::ZERO)) as u64;
        total.bytes_released += released;
        if released > 0 {
            total.committed_after = self.inner().movable_usage().0;
        }
        total
    }

    /// Subscribes `observer` to move and pass events. Observers cost nothing while none
    /// is subscribed. May be called from an observer: the new one hears from the next
    /// pass on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// use tidyheap::{CompactionObserver, Heap, MoveEvent};
    ///
    /// #[derive(Default)]
    /// struct Count(AtomicUsize);
    /// impl CompactionObserver for Count {
    ///     fn on_move(&self, _: &MoveEvent) { self.0.fetch_add(1, Ordering::Relaxed); }
    /// }
    /// let heap = Heap::new();
    /// let count = Arc::new(Count::default());
    /// heap.subscribe(count.clone());
    /// let hs: Vec<_> = (0..2048).map(|_| heap.alloc_handle(64, 16).unwrap()).collect();
    /// for h in hs.iter().step_by(2) { heap.free_handle(*h).unwrap(); }
    /// let r = heap.compact_full();
    /// assert_eq!(count.0.load(Ordering::Relaxed) as u64, r.blocks_moved);
    /// ```
    pub fn subscribe(&self, observer: Arc<dyn CompactionObserver>) {
        let c = self.compactor();
        let mut list = c.observers.write();
        *list = list.iter().cloned().chain([observer]).collect();
        c.has_observers.store(true, Ordering::Release);
    }

    /// Removes every subscription of `observer` (compared by address); returns whether
    /// there was one. May be called from an observer: a pass in progress keeps calling
    /// the observers it started with.
    ///
    /// An observer that holds an `Arc` of the heap it observes keeps that heap alive
    /// until it is unsubscribed (hold a `Weak` to avoid the cycle).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tidyheap::{CompactionObserver, Heap};
    ///
    /// struct Quiet;
    /// impl CompactionObserver for Quiet {}
    /// let heap = Heap::new();
    /// let o: Arc<dyn CompactionObserver> = Arc::new(Quiet);
    /// heap.subscribe(o.clone());
    /// assert!(heap.unsubscribe(&o));
    /// assert!(!heap.unsubscribe(&o));
    /// ```
    pub fn unsubscribe(&self, observer: &Arc<dyn CompactionObserver>) -> bool {
        let c = self.compactor();
        let mut list = c.observers.write();
        let kept: Observers = list
            .iter()
            .filter(|o| !Arc::ptr_eq(o, observer))
            .cloned()
            .collect();
        let removed = kept.len() != list.len();
        c.has_observers.store(!kept.is_empty(), Ordering::Release);
        *list = kept;
        removed
    }

    /// Sets when budgeted passes plan new work and when they give memory back; see
    /// [`CompactionPolicy`]. Takes effect from the next pass.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{CompactionPolicy, Heap};
    /// let heap = Heap::new();
    /// heap.set_compaction_policy(CompactionPolicy {
    ///     min_fragmentation: 0.2,
    ///     ..CompactionPolicy::DEFAULT
    /// });
    /// assert_eq!(heap.compaction_policy().min_fragmentation, 0.2);
    /// ```
    pub fn set_compaction_policy(&self, policy: CompactionPolicy) {
        *self.compactor().policy.lock() = policy;
    }

    /// The policy budgeted passes follow.
    pub fn compaction_policy(&self) -> CompactionPolicy {
        *self.compactor().policy.lock()
    }

    /// Fragmentation of the movable heap, with its parts and per-class holes. Walks
    /// every movable span (takes each arena lock briefly).
    pub fn fragmentation(&self) -> Fragmentation {
        let mut f = Fragmentation::default();
        let mut classes: Vec<ClassFragmentation> = Vec::new();
        self.inner().for_each_movable_span(|s| {
            let class = s.class();
            let size = s.block_size();
            // SAFETY: `for_each_movable_span` holds the span's arena lock.
            let carved = unsafe { s.state().carved } as usize;
            // Counted pages (see `pool::span::Pages`): the region up to the furthest
            // block carved, and the side-table pages written.
            let block_pages = s.pages.get(Area::Blocks) * crate::os::PAGE_SIZE;
            f.committed_bytes += s.committed_bytes();
            f.metadata_bytes += s.table_committed_bytes();
            f.tail_bytes += block_pages - carved * size;
            let entry = match classes.iter_mut().find(|c| c.class == class) {
                Some(e) => e,
                None => {
                    classes.push(ClassFragmentation {
                        class,
                        block_size: size,
                        ..Default::default()
                    });
                    classes.last_mut().expect("just pushed")
                }
            };
            entry.spans += 1;
            // Live blocks are counted from the side table walked here (the span's
            // live count has deltas pending in the lanes: `movable::live`).
            let mut live = 0usize;
            let mut run = 0usize;
            for i in 0..carved {
                // SAFETY: movable span, `i < carved <= capacity`.
                let meta = unsafe { s.meta(i) };
                let free = meta.owner(Ordering::Relaxed) == 0;
                if !free {
                    live += 1;
                    let len = meta.len();
                    f.live_bytes += len;
                    f.internal_bytes += size - len;
                }
                if free {
                    if run == 0 {
                        entry.holes += 1;
                    }
                    run += 1;
                    entry.largest_free_run = entry.largest_free_run.max(run * size);
                } else {
                    run = 0;
                }
            }
            f.external_bytes += (carved - live) * size;
            entry.live_blocks += live;
        });
        classes.sort_by_key(|c| c.class);
        f.ratio = ratio(f.committed_bytes, f.live_bytes);
        f.classes = classes;
        f
    }

    fn pass(&self, plan: &mut Plan, budget: Budget, full: bool) -> CompactionReport {
        let start = Instant::now();
        let inner = self.inner();
        let (c0, l0) = inner.movable_usage();
        let mut report = CompactionReport {
            ran: true,
            fragmentation_before: ratio(c0, l0),
            committed_before: c0,
            ..Default::default()
        };
        // Event hook: pass phases (zones in a profiler).
        emit!(self, on_pass_phase(PassPhase::Begin));
        let policy = *self.compactor().policy.lock();
        // A budgeted pass plans only when enough of the heap is holes; a full compaction
        // always does.
        let frag = report.fragmentation_before;
        if !plan.active && (full || (frag >= policy.min_fragmentation && plan.may_plan(frag))) {
            emit!(self, on_pass_phase(PassPhase::Plan));
            let min_gain = if full {
                0
            } else {
                (c0 as f64 * policy.min_fragmentation / GAIN_DIVISOR) as usize
            };
            if self.build_plan(plan, full, min_gain) {
                report.plans = 1;
            } else {
                plan.back_off(frag);
            }
        }
        emit!(self, on_pass_phase(PassPhase::Moves));
        let observers = self.compactor().observers();
        let table = self.handles();
        // NUMA: a share of the budget moves blocks to the node that reads them (a no-op
        // with one node or with migration off).
        if let Some(m) = self.compactor().numa.migrating() {
            self.migrate_misplaced(numa::share(budget, m.budget_share), start, &mut report);
        }
        // NUMA: one copy does both: misplaced blocks of the sources go straight to their
        // readers' nodes (`compact::numa`; `None` with one node or migration off).
        let votes = self.reader_votes();
        'sources: while plan.cursor.0 < plan.sources.len() {
            let planned = plan.sources[plan.cursor.0];
            let Some((scan, carved)) = Scan::start(inner, &planned) else {
                // Emptied (and maybe reused) since it was planned: not ours any more.
                plan.cursor = (plan.cursor.0 + 1, 0);
                continue;
            };
            let span = planned.span();
            let group = inner.plan_group(span);
            while plan.cursor.1 < carved {
                // Gather the next batch of live blocks within the budget (time is checked
                // once per batch: a batch copies at most `MAX_BATCH_BYTES`).
                let mut batch = moves::Batch::new();
                let mut out_of_budget = budget.time.is_some_and(|t| start.elapsed() >= t);
                while !out_of_budget && plan.cursor.1 < carved && !batch.is_full() {
                    let i = plan.cursor.1;
                    // SAFETY: a movable span of the planned geometry (we scan it, so it is
                    // not re-initialised), and `i < carved <= capacity`.
                    let meta = unsafe { span.meta(i) };
                    let owner = meta.owner(Ordering::Acquire);
                    if owner != 0 {
                        let len = meta.len();
                        let (blocks, bytes) = batch.would_move(len);
                        if budget
                            .blocks
                            .is_some_and(|b| report.blocks_moved + blocks > b as u64)
                            || budget
                                .bytes
                                .is_some_and(|b| report.bytes_moved + bytes > b as u64)
                        {
                            out_of_budget = true;
                            break;
                        }
                        let migrated = votes.as_ref().is_some_and(|v| {
                            self.move_to_reader(v, planned, i, owner - 1, &mut report)
                        });
                        if migrated {
                            // That was a copy already: check the time as after a batch.
                            out_of_budget = budget.time.is_some_and(|t| start.elapsed() >= t);
                        } else {
                            batch.push(i, owner - 1, len);
                        }
                    }
                    plan.cursor.1 += 1;
                }
                let done = self.move_batch(table, span, &batch, &mut plan.targets[group]);
                report.blocks_moved += done.moved() as u64;
                report.bytes_moved += done.events().map(|e| e.size as u64).sum::<u64>();
                report.skipped_busy += done.busy;
                report.skipped_pinned += done.pinned;
                if let Some(obs) = &observers {
                    for ev in done.events() {
                        obs.iter().for_each(|o| o.on_move(ev));
                    }
                }
                if done.no_room {
                    plan.cursor.1 = carved;
                }
                if out_of_budget {
                    if scan.stop(false) {
                        report.spans_emptied += 1;
                    }
                    break 'sources;
                }
            }
            if scan.stop(true) {
                report.spans_emptied += 1;
            }
            plan.cursor = (plan.cursor.0 + 1, 0);
        }
        if plan.cursor.0 >= plan.sources.len() {
            self.finish_plan(plan, full);
            report.complete = true;
        }
        // Purge what has been empty for the policy's delay beyond what recent demand
        // says to retain, within what is left of the time budget (a full compaction
        // trims everything at its end).
        emit!(self, on_pass_phase(PassPhase::Purge));
        let deadline = budget.time.map(|t| start + t);
        report.bytes_released = (inner.purge_for_pass(policy.purge_delay_passes, deadline)
            + inner.large.purge_expired()) as u64;
        let (c1, l1) = inner.movable_usage();
        report.fragmentation_after = ratio(c1, l1);
        report.committed_after = c1;
        report.elapsed = start.elapsed();
        emit!(self, on_pass_phase(PassPhase::End));
        if let Some(obs) = &observers {
            obs.iter().for_each(|o| o.on_pass(&report));
        }
        report
    }

    /// Puts the destinations the current plan has reserved (`plan::Targets::run`) back
    /// home, as `trim` does with the threads' cached blocks: they count as out blocks
    /// until then. The plan reserves again when it next moves. Does nothing while a
    /// pass runs (also when called from one of its observers).
    pub(crate) fn return_reserved(&self) {
        if let Some(mut plan) = self.compactor().plan.try_lock() {
            for t in &mut plan.targets {
                self.return_run(t);
            }
        }
    }

    /// Tells every observer about a move made outside a pass (one load when nobody
    /// listens).
    pub(crate) fn notify_move(&self, ev: MoveEvent) {
        if let Some(obs) = self.compactor().observers() {
            obs.iter().for_each(|o| o.on_move(&ev));
        }
    }
}
