use core::ptr::{self, NonNull};

use super::lanes::STASH;
use super::segments::{FIRST_SHIFT, SEGMENTS, locate, segment_len, segment_start};
use super::*;
use crate::HandleError;
use crate::handle::guard::{SlotMove, SlotPin, SlotRead, SlotWrite};
use crate::handle::lease;
use crate::sync::Ordering::Relaxed;

fn dangling(n: usize) -> NonNull<u8> {
    NonNull::new(ptr::without_provenance_mut(8 * (n + 1))).unwrap()
}

/// A leased table whose fresh indexes start at `first` (test-only: the indexes below
/// count as issued but are in no list).
fn leased_table_from(first: u32) -> HandleTable {
    let t = HandleTable::new().with_process_unique_handles();
    t.counters.issued.store(first, Relaxed);
    t
}

#[test]
fn leased_generations_move_to_a_new_window_every_128_occupancies() {
    let first = 1_000_200;
    let t = leased_table_from(first);
    let mut h = t.insert(dangling(0)).unwrap();
    assert_eq!(h.index(), first);
    let start = h.generation().get();
    assert_eq!(start % lease::WINDOW, 1);
    for _ in 0..lease::WINDOW / 2 - 1 {
        t.remove(h).unwrap();
        h = t.insert(dangling(0)).unwrap();
    }
    assert_eq!(
        h.generation().get(),
        start + lease::WINDOW - 2,
        "one window"
    );
    t.remove(h).unwrap();
    let next = t.insert(dangling(0)).unwrap();
    assert_eq!(next.index(), first, "same slot, new window");
    assert_eq!(next.generation().get() % lease::WINDOW, 1);
    assert!(next.generation().get() > h.generation().get());
    assert!(t.read(h).is_err());
    t.remove(next).unwrap();
}

#[test]
fn a_leased_index_out_of_windows_is_retired_never_reused() {
    let first = 1_000_300;
    let t = leased_table_from(first);
    let h = t.insert(dangling(0)).unwrap();
    assert_eq!(h.index(), first);
    // Every other window of this index is gone: when this slot's window ends, it
    // retires instead of wrapping or reusing a window.
    lease::set_windows_used(first, lease::TEST_WINDOWS);
    let mut h = h;
    for _ in 0..lease::WINDOW / 2 - 1 {
        t.remove(h).unwrap();
        h = t.insert(dangling(0)).unwrap();
        assert_eq!(h.index(), first);
    }
    t.remove(h).unwrap();
    // The next fresh index is out of windows too: skipped.
    lease::set_windows_used(first + 1, lease::TEST_WINDOWS);
    let moved = t.insert(dangling(1)).unwrap();
    assert_eq!(moved.index(), first + 2);
    assert_eq!(t.retired(), 2);
    assert_eq!(t.len(), 1);
    assert!(
        t.read(h).is_err(),
        "the retired slot's last handle stays stale"
    );
    assert_eq!(
        t.slot(first).unwrap().generation() % 2,
        0,
        "vacant for good"
    );
    assert!(t.free_list().is_empty());
    t.remove(moved).unwrap();
}

#[test]
fn table_and_guards_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<HandleTable>();
    check::<Slot>();
    check::<SlotRead<'static>>();
    check::<SlotWrite<'static>>();
    check::<SlotPin<'static>>();
    check::<SlotMove<'static>>();
}

#[test]
fn locate_math() {
    assert_eq!(SEGMENTS, 25);
    assert_eq!(locate(0), (0, 0));
    assert_eq!(locate(255), (0, 255));
    assert_eq!(locate(256), (1, 0));
    assert_eq!(locate(767), (1, 511));
    assert_eq!(locate(768), (2, 0));
    assert_eq!(
        locate(u32::MAX - 1),
        (SEGMENTS - 1, segment_len(SEGMENTS - 1) - 1)
    );
    // Segments tile [0, MAX_SLOTS) exactly.
    let mut start = 0u64;
    for seg in 0..SEGMENTS {
        assert_eq!(segment_start(seg), start);
        let len = segment_len(seg) as u64;
        for i in [start, start + len / 2, start + len - 1] {
            assert_eq!(locate(i as u32), (seg, (i - start) as usize));
        }
        start += len;
    }
    assert_eq!(start, u64::from(MAX_SLOTS));
    // Every bit position, and both neighbours of each power of two.
    for bit in FIRST_SHIFT..33 {
        let p = 1u64 << bit;
        for v in [p - 1, p, p + 1] {
            // Below the first segment, or past the last index: not an index.
            let Some(index) = v
                .checked_sub(1 << FIRST_SHIFT)
                .and_then(|i| u32::try_from(i).ok())
            else {
                continue;
            };
            let want = 63 - v.leading_zeros();
            assert_eq!(
                locate(index),
                ((want - FIRST_SHIFT) as usize, (v - (1 << want)) as usize)
            );
        }
    }
}

#[test]
fn memory_per_slot_is_16_bytes() {
    assert_eq!(size_of::<Slot>(), 16);
    let t = HandleTable::new();
    for i in 0..1000 {
        t.insert(dangling(i)).unwrap();
    }
    // Segments double: at most 2x the slots in use, 16 B each.
    assert_eq!(t.capacity(), 256 + 512 + 1024);
}

#[test]
fn lifo_reuse_and_accounting() {
    let t = HandleTable::new();
    let hs: Vec<_> = (0..5).map(|i| t.insert(dangling(i)).unwrap()).collect();
    for &h in &hs[1..4] {
        t.remove(h).unwrap();
    }
    assert_eq!(t.free_list(), [3, 2, 1]);
    assert_eq!((t.len(), t.issued()), (2, 5));
    let again = t.insert(dangling(9)).unwrap();
    assert_eq!((again.index(), again.generation().get()), (3, 3));
    assert_eq!(t.free_list(), [2, 1]);
    // Double free: Stale, and the free list is unchanged.
    assert_eq!(t.remove(hs[1]), Err(HandleError::Stale));
    assert_eq!(t.free_list(), [2, 1]);
}

#[test]
fn iter_lists_exactly_the_occupied() {
    let t = HandleTable::new();
    let hs: Vec<_> = (0..600).map(|i| t.insert(dangling(i)).unwrap()).collect();
    for h in hs.iter().step_by(3) {
        t.remove(*h).unwrap();
    }
    let live: Vec<_> = hs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, h)| *h)
        .collect();
    assert_eq!(t.iter().collect::<Vec<_>>(), live);
    assert_eq!(t.len(), live.len());
}

#[test]
fn max_slots_is_an_error_not_a_panic() {
    let t = HandleTable::new().with_max_slots(3);
    let hs: Vec<_> = (0..3).map(|i| t.insert(dangling(i)).unwrap()).collect();
    assert_eq!(t.insert(dangling(3)), Err(TABLE_FULL));
    assert_eq!(t.len(), 3);
    t.remove(hs[0]).unwrap();
    assert_eq!(t.insert(dangling(4)).unwrap().index(), 0);
}

/// Inserts through `lane`.
fn ins(t: &HandleTable, lane: usize, n: usize) -> RawHandle {
    // SAFETY: the test thread is the only thread, so it owns every lane.
    unsafe { t.insert_in(lane, dangling(n)) }.unwrap()
}

/// Removes `h` the way a store does: write guard, vacate, recycle through `lane`.
fn remove_in(
    t: &HandleTable,
    lane: Option<usize>,
    h: RawHandle,
) -> Result<NonNull<u8>, HandleError> {
    let g = t.write(h)?;
    let (block, retired) = t.vacate_written(h, g).map_err(|_| HandleError::Busy)?;
    // SAFETY: we just vacated the slot; the test thread owns every lane.
    unsafe { t.recycle(lane, h.index(), retired) };
    Ok(block)
}

/// issued = |occupied| + |free list| + Σ|stash| + retired, each index in exactly one.
fn assert_accounted(t: &HandleTable) {
    let occupied: Vec<u32> = t.iter().map(|h| h.index()).collect();
    let mut all: Vec<u32> = occupied.clone();
    all.extend(t.free_list());
    all.extend(t.stashed());
    let before = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), before, "an index is in two places");
    assert_eq!(all.len() + t.retired(), t.issued() as usize);
    assert_eq!(t.len(), occupied.len());
}

#[test]
fn lanes_reuse_their_own_slots_and_never_issue_one_twice() {
    // Differential: random inserts / removes over three lanes and the shared path
    // against a model of the live handles; stale handles must never resolve.
    for seed in 1..=6u64 {
        let t = HandleTable::new();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut live: Vec<(RawHandle, usize)> = Vec::new();
        let mut dead: Vec<RawHandle> = Vec::new();
        for step in 0..4000 {
            let lane = match next() % 4 {
                3 => None,
                l => Some(l as usize),
            };
            if live.is_empty() || next() % 5 < 3 {
                let h = match lane {
                    // SAFETY: this thread owns every lane.
                    Some(l) => ins(&t, l, step),
                    None => t.insert(dangling(step)).unwrap(),
                };
                assert!(
                    live.iter().all(|(o, _)| o.index() != h.index()),
                    "seed {seed}: index {} handed out twice",
                    h.index()
                );
                live.push((h, step));
            } else {
                let (h, step) = live.swap_remove((next() % live.len() as u64) as usize);
                assert_eq!(remove_in(&t, lane, h), Ok(dangling(step)));
                dead.push(h);
            }
            if step % 97 == 0 {
                for &h in &dead {
                    assert!(
                        t.read(h).is_err() && !t.contains(h),
                        "seed {seed}: stale {h:?} resolved"
                    );
                }
                dead.clear();
                assert_accounted(&t);
            }
        }
        for (h, step) in live.drain(..) {
            assert_eq!(t.read(h).unwrap().ptr(), dangling(step));
        }
        assert_accounted(&t);
    }
}

#[test]
fn a_full_stash_returns_a_batch_that_other_lanes_reuse() {
    let t = HandleTable::new();
    let hs: Vec<_> = (0..STASH + 12).map(|i| ins(&t, 0, i)).collect();
    for &h in &hs {
        remove_in(&t, Some(0), h).unwrap();
    }
    assert!(
        !t.free_list().is_empty(),
        "the stash overflowed into the shared list"
    );
    assert!(t.stashed().len() <= STASH);
    assert_accounted(&t);
    // Lane 1 has no stash: it takes a batch off the shared list instead of fresh indexes.
    let issued = t.issued();
    let again: Vec<_> = (0..10).map(|i| ins(&t, 1, i)).collect();
    assert_eq!(t.issued(), issued);
    for h in &again {
        assert!(hs.iter().any(|o| o.index() == h.index()));
        assert!(hs.iter().all(|o| *o != *h), "a new generation each time");
    }
    for &h in &hs {
        assert!(t.read(h).is_err());
    }
    assert_accounted(&t);
}

#[test]
fn lanes_keep_leased_windows_and_retire_exhausted_indexes() {
    let first = 1_000_400;
    let t = leased_table_from(first);
    let mut h = ins(&t, 2, 0);
    assert_eq!(h.index(), first);
    lease::set_windows_used(first, lease::TEST_WINDOWS);
    for _ in 0..lease::WINDOW / 2 - 1 {
        remove_in(&t, Some(2), h).unwrap();
        h = ins(&t, 2, 0);
        assert_eq!(h.index(), first);
    }
    remove_in(&t, Some(2), h).unwrap();
    lease::set_windows_used(first + 1, lease::TEST_WINDOWS);
    let moved = ins(&t, 2, 1);
    assert_eq!(moved.index(), first + 2);
    assert_eq!(t.retired(), 2);
    assert_eq!(t.len(), 1);
    assert!(t.read(h).is_err());
    remove_in(&t, Some(2), moved).unwrap();
    assert_eq!(t.len(), 0);
}
