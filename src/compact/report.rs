//! Budgets, reports, events and fragmentation figures of the compactor.

use std::time::Duration;

use crate::handle::RawHandle;

/// How much one compaction pass may do. Every limit that is set is checked before each
/// block move, so a pass never moves more blocks or bytes than allowed, and overruns a
/// time budget by at most one block copy (plus the pass's fixed cost).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tidyheap::Budget;
/// let b = Budget::time(Duration::from_micros(500)).with_bytes(1 << 20);
/// assert_eq!(b.bytes, Some(1 << 20));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Most bytes to move.
    pub bytes: Option<usize>,
    /// Most blocks to move.
    pub blocks: Option<usize>,
    /// Most wall time to spend.
    pub time: Option<Duration>,
}

impl Budget {
    /// No limit: the pass runs its plan to the end.
    pub const UNLIMITED: Budget = Budget {
        bytes: None,
        blocks: None,
        time: None,
    };

    /// At most `n` bytes moved.
    pub const fn bytes(n: usize) -> Self {
        Self::UNLIMITED.with_bytes(n)
    }

    /// At most `n` blocks moved.
    pub const fn blocks(n: usize) -> Self {
        Self::UNLIMITED.with_blocks(n)
    }

    /// At most `d` of wall time.
    pub const fn time(d: Duration) -> Self {
        Self::UNLIMITED.with_time(d)
    }

    /// This budget, also limited to `n` bytes.
    pub const fn with_bytes(mut self, n: usize) -> Self {
        self.bytes = Some(n);
        self
    }

    /// This budget, also limited to `n` blocks.
    pub const fn with_blocks(mut self, n: usize) -> Self {
        self.blocks = Some(n);
        self
    }

    /// This budget, also limited to `d`.
    pub const fn with_time(mut self, d: Duration) -> Self {
        self.time = Some(d);
        self
    }
}

/// When budgeted passes ([`Heap::compact`](crate::Heap::compact)) plan new work and
/// when they give memory back (set with
/// [`Heap::set_compaction_policy`](crate::Heap::set_compaction_policy)).
///
/// Freeing never calls the OS: a span that empties stays committed for reuse. Each pass
/// purges (`MADV_FREE`) the spans that have stayed empty for `purge_delay_passes`
/// passes, beyond what each arena retains, which follows the program's history: the
/// bytes its serving spans reached lately (a high-water mark that decays by 1/16 of its
/// excess every pass, so a gradual fall is followed closely) less what serves now; the
/// bytes a sudden drop released (serving bytes falling by more than an eighth of that
/// mark between two passes, as when a level is unloaded), kept on a slow decay (1/1024
/// a pass) for the rise that usually follows; and at least 1 MiB.
/// [`Heap::trim`](crate::Heap::trim) and
/// [`Heap::compact_full`](crate::Heap::compact_full) give every empty span back at
/// once (`MADV_DONTNEED`).
///
/// # Examples
///
/// ```
/// use tidyheap::CompactionPolicy;
/// let eager = CompactionPolicy { min_fragmentation: 0.0, purge_delay_passes: 0 };
/// assert!(eager.min_fragmentation < CompactionPolicy::DEFAULT.min_fragmentation);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionPolicy {
    /// A budgeted pass builds a new plan only when the movable heap's fragmentation
    /// (`1 − live / committed` of serving movable spans) is at least this, and keeps it
    /// only if it would give back at least half of this share of the committed
    /// movable bytes (a packed heap keeps holes no plan removes: class rounding, span
    /// tails). Otherwise the pass only purges, and planning waits a few passes before
    /// it tries again. `0.0` plans every time; a value above 1 (or NaN) never.
    pub min_fragmentation: f64,
    /// Passes a span must have been empty before a pass purges it.
    pub purge_delay_passes: u64,
}

impl CompactionPolicy {
    /// Plan from 10 % fragmentation; purge spans empty for 16 passes (a quarter of a
    /// second at 60 frames a second).
    pub const DEFAULT: CompactionPolicy = CompactionPolicy {
        min_fragmentation: 0.1,
        purge_delay_passes: 16,
    };
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a compaction pass (or a full compaction, summed) did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompactionReport {
    /// False if another pass was running on the heap, so this one did nothing.
    pub ran: bool,
    /// Blocks relocated.
    pub blocks_moved: u64,
    /// Requested bytes of the relocated blocks (what was copied).
    pub bytes_moved: u64,
    /// Spans left empty by the pass.
    pub spans_emptied: u64,
    /// Bytes handed back to the OS at the end of the pass: empty spans purged, and
    /// large mappings the large-block cache held past their age.
    pub bytes_released: u64,
    /// Of `blocks_moved`, blocks moved to the node of their most frequent reader
    /// ([`NumaMigration`](crate::numa::NumaMigration)).
    pub numa_blocks_moved: u64,
    /// Of `bytes_moved`, the bytes of those blocks.
    pub numa_bytes_moved: u64,
    /// Blocks skipped because a guard was held on them (retried later).
    pub skipped_busy: u64,
    /// Blocks skipped because they were pinned.
    pub skipped_pinned: u64,
    /// Movable-heap fragmentation (`1 − live / committed`) before the pass.
    pub fragmentation_before: f64,
    /// Movable-heap fragmentation after the pass.
    pub fragmentation_after: f64,
    /// Committed bytes of movable spans before the pass.
    pub committed_before: usize,
    /// Committed bytes of movable spans after the pass.
    pub committed_after: usize,
    /// Whether the current plan was finished (nothing left to gain in it).
    pub complete: bool,
    /// Plans this pass kept (summed over a full compaction's passes): 0 when it went on
    /// with a plan made earlier, or when no plan was worth making (see
    /// [`CompactionPolicy::min_fragmentation`]).
    pub plans: u64,
    /// Wall time of the pass.
    pub elapsed: Duration,
}

impl CompactionReport {
    /// Adds `r` (a later pass) to this summary.
    pub(crate) fn accumulate(&mut self, r: &CompactionReport, first: bool) {
        if first {
            *self = *r;
            return;
        }
        self.ran |= r.ran;
        self.blocks_moved += r.blocks_moved;
        self.bytes_moved += r.bytes_moved;
        self.numa_blocks_moved += r.numa_blocks_moved;
        self.numa_bytes_moved += r.numa_bytes_moved;
        self.spans_emptied += r.spans_emptied;
        self.bytes_released += r.bytes_released;
        self.skipped_busy += r.skipped_busy;
        self.skipped_pinned += r.skipped_pinned;
        self.plans += r.plans;
        self.fragmentation_after = r.fragmentation_after;
        self.committed_after = r.committed_after;
        self.complete = r.complete;
        self.elapsed += r.elapsed;
    }
}

/// One block relocation, as seen by observers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoveEvent {
    /// The handle whose block moved.
    pub handle: RawHandle,
    /// Old address.
    pub from: usize,
    /// New address.
    pub to: usize,
    /// Requested bytes copied.
    pub size: usize,
    /// The block's size class.
    pub class_size: usize,
}

/// Receives compaction events (for profilers, editors, engine integrations). Called on
/// the compacting thread, outside any slot lock but inside the pass: keep it short.
pub trait CompactionObserver: Send + Sync {
    /// A block moved.
    fn on_move(&self, event: &MoveEvent) {
        let _ = event;
    }

    /// A pass ended.
    fn on_pass(&self, report: &CompactionReport) {
        let _ = report;
    }
}

/// Fragmentation of the movable heap (definitions in `docs/design.md`).
///
/// `committed_bytes == live_bytes + internal_bytes + external_bytes + metadata_bytes + tail_bytes`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragmentation {
    /// `1 − live / committed` (0 when nothing is committed).
    pub ratio: f64,
    /// Requested bytes of live movable blocks.
    pub live_bytes: usize,
    /// Committed bytes of movable spans serving a class: the pages of their regions up
    /// to the furthest block carved, and the pages of their side tables written.
    pub committed_bytes: usize,
    /// Class rounding inside live blocks.
    pub internal_bytes: usize,
    /// Free carved blocks inside held spans.
    pub external_bytes: usize,
    /// Committed pages of side tables (owner + length per block).
    pub metadata_bytes: usize,
    /// The rest of the committed region pages: past the last block carved up to the
    /// end of its page, or past blocks carved in an earlier life of the span.
    pub tail_bytes: usize,
    /// Per size class in use.
    pub classes: Vec<ClassFragmentation>,
}

/// Fragmentation figures of one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassFragmentation {
    /// Class index.
    pub class: usize,
    /// Block size.
    pub block_size: usize,
    /// Movable spans of the class.
    pub spans: usize,
    /// Live blocks.
    pub live_blocks: usize,
    /// Maximal runs of free blocks inside spans.
    pub holes: usize,
    /// The longest run of free blocks, in bytes.
    pub largest_free_run: usize,
}
