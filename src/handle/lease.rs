//! Process-wide generation leases: what makes a heap's handles unique in the process.
//!
//! A handle is `(index, generation)` and carries no table identity (8 bytes leave no
//! room for one). Two tables that each issue generation 1 at index 0 would therefore
//! issue the *same* handle, and a handle of one heap's store would resolve to a value of
//! a store on another heap (DESIGN invariant 8 forbids it). Tables made with
//! [`HandleTable::with_process_unique_handles`](super::HandleTable::with_process_unique_handles)
//! (every [`Heap`](crate::Heap)'s table) instead take their generations from windows
//! leased here:
//!
//! ```text
//! generations of index i:  [0, 256) [256, 512) [512, 768) ...   (window w = [w·256, (w+1)·256))
//! LEASES[i] = next window of index i not yet leased by any table of the process
//! fresh slot i:            w = LEASES[i]++ ; generation = w·256 + 1
//! reuse after vacant v:    v % 256 ≠ 0 → v + 1 (same window)
//!                          v % 256 = 0 → w = LEASES[i]++ ; generation = w·256 + 1
//! ```
//!
//! Each window is leased to one slot of one table, once, for the life of the process
//! (the counter only grows), so no `(index, generation)` pair is ever issued twice in the
//! process: a handle of another heap — live, stale, or of a heap long dropped — answers
//! `Stale`. A slot uses its window for 128 occupancies, so a lease (one compare-exchange
//! on a counter of this index) costs less than 1 % of the inserts.
//!
//! Index `i` has 2^24 windows in all; when they are gone, a slot that needs a new window
//! is retired instead (left vacant for good, as when a generation would wrap), and a
//! table issuing `i` fresh skips it. So exhaustion is permanent and never a wrap: a
//! process can create sixteen million heaps that each use index `i`, or reuse index `i`
//! 2^31 times over all its heaps, before `i` retires.
//!
//! The counters live in a segmented array shaped like the handle table's (zero pages
//! are counters at 0, so untouched indexes cost nothing), reserved on first use and
//! never released: they must outlive every table.

use core::ptr::{self, NonNull};
use std::sync::atomic::{
    AtomicPtr, AtomicU32,
    Ordering::{AcqRel, Acquire, Relaxed},
};

use super::table::{SEGMENTS, locate, segment_len};
use crate::{AllocError, HandleError};

/// `log2` of the generations in one window.
const WINDOW_SHIFT: u32 = 8;
/// Generations in one window (half of them odd: occupancies).
pub(crate) const WINDOW: u32 = 1 << WINDOW_SHIFT;
/// Windows per index: the 32-bit generation space cut in windows.
const WINDOWS: u32 = 1 << (32 - WINDOW_SHIFT);

/// The counters, in segments shaped like the table's; null until first used.
static LEASES: [AtomicPtr<AtomicU32>; SEGMENTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; SEGMENTS];

/// The lease counter of `index`, reserving its segment if needed.
fn counter(index: u32) -> Result<&'static AtomicU32, HandleError> {
    let (seg, offset) = locate(index);
    let mut base = LEASES[seg].load(Acquire);
    if base.is_null() {
        let bytes = segment_len(seg) * size_of::<AtomicU32>();
        let fresh = crate::os::reserve(bytes, crate::os::PAGE_SIZE)
            .map_err(AllocError::from)?
            .as_ptr()
            .cast::<AtomicU32>();
        base = match LEASES[seg].compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY:
                // - `fresh` is the mapping of `bytes` bytes reserved just above and never
                //   published, so nothing refers to it.
                unsafe { crate::os::release(NonNull::new_unchecked(fresh).cast(), bytes) };
                winner
            }
        };
    }
    // SAFETY:
    // - `base` is an installed segment of `segment_len(seg)` counters (zero pages are
    //   valid `AtomicU32`s at 0), published by the CAS we Acquired or made;
    // - `offset < segment_len(seg)` for every index a table issues (`locate`);
    // - segments are never released, so the reference lives for the whole process.
    Ok(unsafe { &*base.add(offset) })
}

/// Leases the next window of `index`'s generations and returns its first occupied
/// generation, or `None` if the index has no window left (the caller retires the slot).
///
/// # Errors
///
/// [`HandleError::Alloc`] if the counters' segment cannot be reserved (only possible the
/// first time `index` is leased in the process).
pub(crate) fn lease(index: u32) -> Result<Option<u32>, HandleError> {
    let window = counter(index)?
        .fetch_update(Relaxed, Relaxed, |w| (w < WINDOWS).then(|| w + 1))
        .ok();
    Ok(window.map(|w| (w << WINDOW_SHIFT) | 1))
}

/// Whether a slot that is vacant at generation `vacant` has used up its window.
#[inline(always)]
pub(crate) const fn window_done(vacant: u32) -> bool {
    vacant.is_multiple_of(WINDOW)
}

/// Test hook: marks `used` windows of `index` as leased already.
#[cfg(all(test, not(tidyheap_loom)))]
pub(crate) fn set_windows_used(index: u32, used: u32) {
    counter(index).unwrap().store(used, Relaxed);
}

/// Windows per index, for tests.
#[cfg(all(test, not(tidyheap_loom)))]
pub(crate) const TEST_WINDOWS: u32 = WINDOWS;

#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    #[test]
    fn leases_are_disjoint_and_stop_for_good() {
        // An index far beyond anything other tests issue.
        let index = 1_000_003;
        let a = lease(index).unwrap().unwrap();
        let b = lease(index).unwrap().unwrap();
        assert_eq!((a % WINDOW, b % WINDOW), (1, 1));
        assert!(b >= a + WINDOW, "windows never overlap");
        counter(index).unwrap().store(WINDOWS - 1, Relaxed);
        assert_eq!(lease(index).unwrap(), Some(u32::MAX - WINDOW + 2));
        for _ in 0..3 {
            assert_eq!(lease(index).unwrap(), None, "exhausted for good");
        }
        assert_eq!(
            counter(index).unwrap().load(Relaxed),
            WINDOWS,
            "never wraps"
        );
        assert!(window_done(0) && window_done(WINDOW) && !window_done(WINDOW - 2));
    }
}
