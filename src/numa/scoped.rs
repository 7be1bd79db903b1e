//! Sampling of scoped reads ([`ReadScope::get`](crate::ReadScope::get), `try_get`,
//! `iter`) with nothing added to a scoped get's fast path.
//!
//! # Why not a hook in the get
//!
//! A scoped get is a slot lookup, a generation check, one load of the address and a
//! store-tag check, inlined into the caller's loop. Any extra test in it (even of a field
//! of the scope) made one-node scoped gets about twice as slow: the loop keeps more
//! values live and spills. So the decision is taken once, when the scope *opens*, and
//! carried in a value the get compares anyway: the store tag.
//!
//! # The sampling scope
//!
//! A scope compares each resolved address's store tag with a tag of its own, set at
//! open ([`scope_tag`]):
//!
//! * normally the store's tag: the get is exactly what it was (no NUMA code runs);
//! * in a *sampling scope*, [`SAMPLING_SCOPE`], which no store has: every get misses the
//!   inlined compare and takes the cold path ([`resolve_sampled`]), which checks the
//!   real tag and records the reader's node in the block's vote (module `readers`), as a
//!   sampled guarded read does.
//!
//! Opening a scope already costs an atomic add and a fence; it now also tests the global
//! count of sampling heaps (one relaxed load, as a guarded read does). Only while some
//! heap samples does the open go out of line: if the scope's heap samples, a per-thread
//! countdown of scopes picks one scope in about
//! [`sample_period`](super::NumaMigration::sample_period) (the restart is drawn at
//! random between 1 and `2 · period − 1`, so a thread that alternates between stores
//! does not always sample the same one). A sampling scope records its first
//! [`DENSE_SAMPLES`] gets (on the opening thread) one by one, so over many scopes about 1
//! read in `sample_period` is sampled, as for guarded reads; later gets of the scope (and
//! gets of other threads through a shared `&ReadScope`) count down the thread's guarded
//! countdown instead, one in `sample_period`. So a sampling scope costs at most
//! [`DENSE_SAMPLES`] samples plus an out-of-line call per get, and every other scope
//! nothing. With one node no heap samples, and no scope ever samples.

use core::cell::Cell;
use core::ptr::NonNull;

use super::migration::{any_sampling, record, tick};
use crate::Heap;
use crate::handle::RawHandle;
use crate::movable::{Tag, untag};

/// The tag a sampling scope compares with: above every store tag (which are 20 bits).
pub(crate) const SAMPLING_SCOPE: Tag = Tag::MAX;
const _: () = assert!(crate::movable::MAX_TAG < SAMPLING_SCOPE);

/// Gets a sampling scope records one by one (on its opening thread).
pub(crate) const DENSE_SAMPLES: u32 = 1024;

thread_local! {
    /// Scopes of sampling heaps until this thread's next sampling scope; 0: none yet
    /// (the first one samples).
    static SCOPE_COUNTDOWN: Cell<u32> = const { Cell::new(0) };
    /// Gets of this thread's latest sampling scope still to record one by one.
    static DENSE_LEFT: Cell<u32> = const { Cell::new(0) };
    /// Xorshift state for the countdown restarts; 0: not seeded yet.
    static RNG: Cell<u32> = const { Cell::new(0) };
}

/// The tag a scope of a store with tag `tag` on `heap` compares with: `tag`, or
/// [`SAMPLING_SCOPE`] when this scope samples (see the module docs). One relaxed load
/// while no heap samples.
#[inline(always)]
pub(crate) fn scope_tag(heap: &Heap, tag: Tag) -> Tag {
    if any_sampling() {
        return open_while_sampling(heap, tag);
    }
    tag
}

/// [`scope_tag`] while some heap samples.
#[cold]
#[inline(never)]
fn open_while_sampling(heap: &Heap, tag: Tag) -> Tag {
    let m = &heap.compactor().numa;
    if !m.samples() {
        return tag;
    }
    let c = SCOPE_COUNTDOWN.get();
    if c > 1 {
        SCOPE_COUNTDOWN.set(c - 1);
        return tag;
    }
    let period = m.period.load(core::sync::atomic::Ordering::Relaxed).max(1);
    SCOPE_COUNTDOWN.set(restart(period));
    DENSE_LEFT.set(DENSE_SAMPLES);
    SAMPLING_SCOPE
}

/// A countdown restart for `period`: uniform in `1..=2 · period − 1` (mean `period`).
fn restart(period: u32) -> u32 {
    let mut x = RNG.get();
    if x == 0 {
        // Seed from the thread-local's address: differs between threads.
        x = (RNG.with(|r| core::ptr::from_ref(r).addr()) as u32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    RNG.set(x);
    let span = period.saturating_mul(2).saturating_sub(1).max(1);
    1 + x % span
}

/// The cold path of a scoped get whose scope tag did not match the address's tag:
/// `Some(block)` (untagged) if `p` holds a block of the store with tag `store_tag`,
/// having sampled the read; `None` if not (as the inlined compare would have answered
/// for a scope that does not sample).
///
/// # Safety
///
/// `p` is the slot pointer of `h`, loaded inside a read scope of the store with tag
/// `store_tag` on `heap` that is still open (so the block, if the store's, stays live).
#[cold]
#[inline(never)]
pub(crate) unsafe fn resolve_sampled(
    heap: &Heap,
    store_tag: Tag,
    h: RawHandle,
    p: NonNull<u8>,
) -> Option<NonNull<u8>> {
    let (block, tag) = untag(p);
    if tag != store_tag {
        return None;
    }
    let dense = DENSE_LEFT.get();
    if dense > 0 {
        DENSE_LEFT.set(dense - 1);
        // SAFETY: the block is the store's, and the open scope keeps it live (the
        // caller's precondition).
        unsafe { record(heap, h, block) };
    } else {
        tick(heap, h, block);
    }
    Some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Restarts stay in `1..=2p-1` and average about `p`.
    #[test]
    fn restarts_are_in_range() {
        for p in [1u32, 2, 3, 64, 1 << 20] {
            let n = 4000u64;
            let mut sum = 0u64;
            for _ in 0..n {
                let r = restart(p);
                assert!((1..=(2 * p - 1).max(1)).contains(&r), "{p}: {r}");
                sum += u64::from(r);
            }
            let mean = sum as f64 / n as f64;
            assert!(
                (mean - f64::from(p)).abs() <= 0.1 * f64::from(p) + 0.5,
                "{p}: {mean}"
            );
        }
        assert_eq!(restart(1), 1);
    }
}
