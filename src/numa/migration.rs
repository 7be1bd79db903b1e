//! Compactor-driven migration of handle-addressed blocks to the node that reads them.
//!
//! # Sampling (the read hooks)
//!
//! Guarded reads ([`Heap::read`](crate::Heap::read), [`Store::get`](crate::Store::get)
//! and their `try_` forms) first test the global count of heaps that sample (a heap
//! with more than one node and migration on): one relaxed load and a branch, so on a
//! one-node machine nothing else is paid and nothing is ever recorded. While it is not 0
//! they take an out-of-line path that calls a hook after they resolved a block.
//!
//! Scoped gets ([`ReadScope::get`](crate::ReadScope::get), `try_get`, `iter`) are
//! sampled too, with no hook in the get: the decision is taken when the scope opens,
//! one scope in about `sample_period` is a *sampling scope*, and its gets take a cold
//! path through a store-tag compare they make anyway (module `scoped`). So a block read
//! only through scopes (the Bevy plugin's `Res` reads) also moves toward its reader.
//!
//! While some heap samples, every guarded read calls `tick` (out of line): the thread's
//! countdown drops by one, and at 1 (or 0: the thread's first such read) the read is
//! *sampled*:
//! if the block's heap samples, the reader's node is recorded in the block's vote (module
//! `readers`) and the countdown restarts at the heap's
//! [`sample_period`](NumaMigration::sample_period). A large handle block (outside the
//! pools) keeps its vote in its header, and is queued for the next pass when its vote
//! reaches the threshold.
//!
//! # Migrating (the compactor)
//!
//! Each pass first spends [`budget_share`](NumaMigration::budget_share) of its budget on
//! blocks whose vote names another node than their span's arena's (see `compact::numa`):
//! a block moves, under its slot's move lock as every compaction move (DESIGN invariant
//! 2), into a span with room of the same class in an arena of the reader's node, and its
//! vote is reset. A queued large block whose pages are not on its reader's node has
//! them moved there with `move_pages` (its address, and every byte, unchanged: DESIGN
//! invariant 1 would allow no less), under a pin. The rest of the budget defragments as
//! before, except that a misplaced block the defragmenting plan moves out of one of its
//! sources goes straight into a span of its reader's node: one copy does both.

use core::cell::Cell;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::NumaError;
use super::readers::{ReaderMap, owner_tag, record_in};
use crate::Heap;
use crate::handle::RawHandle;

/// Longest sample period.
pub const MAX_SAMPLE_PERIOD: u32 = 1 << 20;

/// How the compactor moves handle-addressed blocks to the node of the thread that reads
/// them most (set with [`Heap::set_numa_migration`]). See [`crate::numa`].
///
/// A heap whose topology has more than one node starts with [`NumaMigration::DEFAULT`];
/// a one-node heap with it turned off (and with one node, turning it on changes nothing:
/// every block is on the only node, and reads are never sampled).
///
/// Migration follows the reads: guarded ones ([`Heap::read`],
/// [`Store::get`](crate::Store::get) and their `try_` forms) are sampled one in
/// `sample_period` per thread; read scopes ([`Store::read`](crate::Store::read)) one
/// scope in about `sample_period`, each sampling its first 1024 gets on the opening
/// thread (then one in `sample_period`), so scoped gets of other scopes cost nothing.
///
/// # Examples
///
/// ```
/// use tidyheap::numa::NumaMigration;
/// let m = NumaMigration { sample_period: 16, ..NumaMigration::DEFAULT };
/// assert!(m.validate().is_ok());
/// assert!(NumaMigration { threshold: 0, ..m }.validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NumaMigration {
    /// Whether reads are sampled and passes migrate.
    pub enabled: bool,
    /// One guarded read in this many (per thread), and one read scope in about this
    /// many, is sampled: `1..=`[`MAX_SAMPLE_PERIOD`].
    pub sample_period: u32,
    /// A block is misplaced once its reader vote leads by this many samples: `1..=15`.
    pub threshold: u8,
    /// Share of a budgeted pass's block, byte and time budget spent on migration before
    /// defragmenting: `0.0..=1.0`, rounded down (a pass allowed 3 blocks with a share of
    /// 0.25 migrates none). A pass without a limit migrates every misplaced block.
    /// Defragmenting moves that send a misplaced block straight to its reader's node
    /// (one copy does both: see [`crate::numa`]) come out of the rest. With a
    /// time budget, a large block is moved only if its pages fit the time left at a
    /// conservative 1 GiB/s (else it waits for a pass with more time, or a full
    /// compaction).
    pub budget_share: f32,
}

impl NumaMigration {
    /// On; sample one read in 64; a lead of 8; a quarter of each pass's budget.
    pub const DEFAULT: NumaMigration = NumaMigration {
        enabled: true,
        sample_period: 64,
        threshold: 8,
        budget_share: 0.25,
    };

    /// Off, with the default parameters.
    pub const OFF: NumaMigration = NumaMigration {
        enabled: false,
        ..Self::DEFAULT
    };

    /// Checks the parameters.
    ///
    /// # Errors
    ///
    /// [`NumaError::InvalidMigration`] naming the first parameter out of range.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::numa::NumaMigration;
    /// let bad = NumaMigration { budget_share: 1.5, ..NumaMigration::DEFAULT };
    /// assert!(bad.validate().unwrap_err().to_string().contains("budget_share"));
    /// ```
    pub fn validate(&self) -> Result<(), NumaError> {
        let bad = |reason| Err(NumaError::InvalidMigration { reason });
        if !(1..=MAX_SAMPLE_PERIOD).contains(&self.sample_period) {
            return bad("sample_period must be in 1..=2^20");
        }
        if !(1..=super::readers::MAX_COUNT).contains(&self.threshold) {
            return bad("threshold must be in 1..=15");
        }
        if !(0.0..=1.0).contains(&self.budget_share) {
            return bad("budget_share must be in 0.0..=1.0");
        }
        Ok(())
    }
}

impl Default for NumaMigration {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Heaps in the process that sample reads (more than one node, migration on).
static SAMPLING_HEAPS: AtomicUsize = AtomicUsize::new(0);

/// The countdown of a thread whose heap does not sample while another heap does.
const IDLE_PERIOD: u32 = 64;

thread_local! {
    /// Reads until the next sample; 0: not armed (no sampling heap seen).
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

/// A heap's migration settings and samples (owned by its compactor).
#[derive(Debug)]
pub(crate) struct MigrationState {
    settings: Mutex<NumaMigration>,
    /// More than one node: sampling can be on.
    multi_node: bool,
    /// Reads of this heap are sampled (multi-node, enabled, map not refused); counted in
    /// `SAMPLING_HEAPS` while true.
    sampling: AtomicBool,
    pub(super) period: AtomicU32,
    threshold: AtomicU8,
    pub(crate) readers: ReaderMap,
    /// Large handle blocks whose vote reached the threshold, for the next pass (at most
    /// `MAX_LARGE_PENDING`; more wait until their vote reaches it again).
    large: Mutex<Vec<RawHandle>>,
}

/// Most large blocks waiting for a pass.
const MAX_LARGE_PENDING: usize = 256;

impl MigrationState {
    pub(crate) fn new(multi_node: bool) -> Self {
        let s = if multi_node {
            NumaMigration::DEFAULT
        } else {
            NumaMigration::OFF
        };
        let state = Self {
            settings: Mutex::new(s),
            multi_node,
            sampling: AtomicBool::new(false),
            period: AtomicU32::new(s.sample_period),
            threshold: AtomicU8::new(s.threshold),
            readers: ReaderMap::new(),
            large: Mutex::new(Vec::new()),
        };
        state.set_sampling(multi_node);
        state
    }

    /// Turns sampling on or off, keeping `SAMPLING_HEAPS` right.
    fn set_sampling(&self, on: bool) {
        if self.sampling.swap(on, Ordering::Relaxed) != on {
            if on {
                SAMPLING_HEAPS.fetch_add(1, Ordering::Relaxed);
            } else {
                SAMPLING_HEAPS.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn settings(&self) -> NumaMigration {
        *self.settings.lock()
    }

    pub(crate) fn set(&self, m: NumaMigration) -> Result<(), NumaError> {
        m.validate()?;
        let mut s = self.settings.lock();
        *s = m;
        self.period.store(m.sample_period, Ordering::Relaxed);
        self.threshold.store(m.threshold, Ordering::Relaxed);
        self.set_sampling(self.multi_node && m.enabled);
        Ok(())
    }

    /// Whether passes migrate: more than one node and enabled.
    pub(crate) fn migrating(&self) -> Option<NumaMigration> {
        let s = self.settings();
        (self.multi_node && s.enabled).then_some(s)
    }

    /// Whether reads of this heap are sampled now.
    pub(super) fn samples(&self) -> bool {
        self.sampling.load(Ordering::Relaxed)
    }

    pub(crate) fn threshold(&self) -> u8 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// The large blocks waiting for a pass, taken.
    pub(crate) fn take_large(&self) -> Vec<RawHandle> {
        core::mem::take(&mut *self.large.lock())
    }

    /// Queues large blocks for the next pass (those a pass could not look at yet).
    pub(crate) fn queue_large(&self, hs: impl IntoIterator<Item = RawHandle>) {
        let mut q = self.large.lock();
        for h in hs {
            if q.len() < MAX_LARGE_PENDING && !q.contains(&h) {
                q.push(h);
            }
        }
    }
}

impl Drop for MigrationState {
    fn drop(&mut self) {
        self.set_sampling(false);
    }
}

/// Whether guarded reads call [`on_guarded_read`]: some heap in the process samples.
/// One relaxed load.
#[inline(always)]
pub(crate) fn any_sampling() -> bool {
    SAMPLING_HEAPS.load(Ordering::Relaxed) != 0
}

/// Hook of guarded reads, called only while [`any_sampling`] (the read tests it first
/// and takes an out-of-line path): after a read guard resolved `block`, the block of `h`
/// in `heap`.
#[inline(always)]
pub(crate) fn on_guarded_read(heap: &Heap, h: RawHandle, block: NonNull<u8>) {
    tick(heap, h, block);
}

/// A guarded read while some heap samples: counts down, and samples at 1 (or 0). Out of
/// line and cold: most reads only count down.
#[cold]
#[inline(never)]
pub(super) fn tick(heap: &Heap, h: RawHandle, block: NonNull<u8>) {
    let c = COUNTDOWN.get();
    if c > 1 {
        COUNTDOWN.set(c - 1);
    } else {
        sample(heap, h, block);
    }
}

/// The sampled read (see the module docs).
#[cold]
#[inline(never)]
fn sample(heap: &Heap, h: RawHandle, block: NonNull<u8>) {
    let m = &heap.compactor().numa;
    if !m.sampling.load(Ordering::Relaxed) {
        let any = SAMPLING_HEAPS.load(Ordering::Relaxed) != 0;
        COUNTDOWN.set(if any { IDLE_PERIOD } else { 0 });
        return;
    }
    COUNTDOWN.set(m.period.load(Ordering::Relaxed));
    // SAFETY: the caller's guard (or read scope) keeps the block of `h` live during the
    // call.
    unsafe { record(heap, h, block) };
}

/// Records the calling thread's node in the vote of `block`, the block of `h` in `heap`,
/// if `heap` samples.
///
/// # Safety
///
/// `block` is the (untagged) address of the block of `h`, kept live during the call (by a
/// guard, or an open read scope of its store).
pub(super) unsafe fn record(heap: &Heap, h: RawHandle, block: NonNull<u8>) {
    let m = &heap.compactor().numa;
    if !m.sampling.load(Ordering::Relaxed) {
        return;
    }
    let Some(map) = m.readers.get_or_make() else {
        // The kernel refused the sample map: this heap stops sampling.
        m.set_sampling(false);
        return;
    };
    let inner = heap.inner();
    let numa = &inner.source.numa;
    let reader = numa.topology().current_index();
    let tag = owner_tag(h.index(), h.generation().get());
    // The block is live (the caller's precondition), so its span keeps its class.
    let Some(span) = inner.span_of(block) else {
        // SAFETY: the block is live (forwarded from the caller); a movable block in no
        // span is a large movable block (zero-sized values get pool blocks).
        let vote = unsafe { crate::movable::large_vote(block) };
        numa.sampled();
        if record_in(vote, tag, reader, m.threshold()) {
            m.queue_large([h]);
        }
        return;
    };
    let Some(i) = span.block_index(block.as_ptr().addr()) else {
        return;
    };
    numa.sampled();
    map.record(
        inner.source.span_index(span),
        i,
        tag,
        reader,
        numa.arena_node(span.arena),
        m.threshold(),
    );
}
