//! A movable span's live count, in one word with the life it counts.
//!
//! ```text
//! word = incarnation << 32 | count        (count: a wrapping u32)
//! ```
//!
//! The count is not the whole story: store inserts and removes do not touch it on their
//! hot path, they record a *delta* tagged with the span's incarnation in a table their
//! thread owns (`crate::movable::live`), and a delta reaches the word only when its
//! entry is evicted. So, for the current life `I` of a span,
//!
//! ```text
//! live blocks = count(word, I) + Σ pending deltas tagged (span, I)      (mod 2^32)
//! ```
//!
//! exactly at quiescence, and as an estimate while threads run (the compactor's plan
//! reads it that way: a heuristic, re-validated at every use of a planned span).
//!
//! The hazard is a delta that outlives its life: a thread records `+1` for life `I`, the
//! block is freed by another thread (`−1`, pending elsewhere), the span empties, is
//! retired and re-initialised as life `I + 1` — and the first thread's `+1` then lands
//! on the new life. [`LiveCount::add`] is a compare-exchange that applies a delta only
//! while the word still holds the delta's life; [`LiveCount::reset`] (in `Span::init`,
//! under the arena lock, with no block out) starts the new life at 0. Every delta of
//! life `I` is then either applied before the reset (and discarded with the old count)
//! or refused after it. Both are right: a span is re-initialised only when no block of
//! it is out, so the deltas of its old life sum to zero against its old count.

use crate::sync::{AtomicU64, Ordering};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LiveCount(AtomicU64);

impl LiveCount {
    /// Life 0, count 0.
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Starts life `incarnation` at count 0.
    ///
    /// Called by `Span::init` (arena lock held, no block out) after it bumped the
    /// incarnation.
    pub(crate) fn reset(&self, incarnation: u32) {
        // A swap rather than a store: every write of the word is then a read-modify-write,
        // so an `add` is either before the reset in the word's modification order (and
        // overwritten) or reads the new life (and is refused). The loom model
        // (`movable::live::loom_live`) fails with a plain store here: loom let a
        // compare-exchange ordered after the store read the value before it. Once per
        // span life, under the arena lock.
        self.0.swap(u64::from(incarnation) << 32, Ordering::AcqRel);
    }

    /// Adds `delta` (wrapping) to the count if the word still counts life
    /// `incarnation`; returns false, changing nothing, for a delta of another life.
    pub(crate) fn add(&self, incarnation: u32, delta: u32) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                ((w >> 32) as u32 == incarnation)
                    .then(|| w & !u64::from(u32::MAX) | u64::from((w as u32).wrapping_add(delta)))
            })
            .is_ok()
    }

    /// The life the word counts and its count (wrapping: a count that received a
    /// removal's delta before the insertion's reads as a huge value, which the reader
    /// adds to the pending deltas modulo 2^32).
    pub(crate) fn get(&self) -> (u32, u32) {
        let w = self.0.load(Ordering::Acquire);
        ((w >> 32) as u32, w as u32)
    }
}
