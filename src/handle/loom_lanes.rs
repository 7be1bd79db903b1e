//! Loom model of the per-thread lanes (`table::lanes`): a stash that overflows into the
//! shared free list while another lane takes a batch off it, a stale reader, and a lane
//! handed to another thread when its owner exits. Under loom a stash holds 2 slots and
//! moves 1 at a time, so every path (stash pop, batch pop, fresh index, batch push) is
//! reached with 3 threads. Stashes are loom cells: an access by a thread that does not
//! own the lane fails the model as a data race.

use core::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;

use super::{HandleTable, RawHandle};
use crate::HandleError;
use crate::sync::UnsafeCell;

type Cell = UnsafeCell<u64>;

fn block(value: u64) -> NonNull<u8> {
    NonNull::from(Box::leak(Box::new(Cell::new(value)))).cast()
}

/// Reads a block.
///
/// # Safety
///
/// * `p` came from `block` and is still live.
unsafe fn get(p: NonNull<u8>) -> u64 {
    // SAFETY:
    // - `p` is a live `Cell` made by `block` (caller's precondition); loom checks the
    //   access is ordered against the free.
    unsafe { p.cast::<Cell>().as_ref().with(|v| *v) }
}

/// Frees a block.
///
/// # Safety
///
/// * `p` came from `block`, and no thread uses it any more.
unsafe fn free(p: NonNull<u8>) {
    // SAFETY:
    // - a leaked `Box<Cell>` nobody refers to any more (caller's precondition).
    drop(unsafe { Box::from_raw(p.cast::<Cell>().as_ptr()) });
}

/// Inserts through `lane`.
fn insert(t: &HandleTable, lane: usize, value: u64) -> RawHandle {
    // SAFETY: every caller is the one thread using `lane` at that time; lanes change
    // hands only across spawn and join.
    unsafe { t.insert_in(lane, block(value)) }.unwrap()
}

/// Removes `h` as a store does (write guard, vacate, recycle through `lane`) and
/// frees its block.
fn remove(t: &HandleTable, lane: usize, h: RawHandle) {
    let g = t.write(h).unwrap();
    let (p, retired) = t.vacate_written(h, g).ok().unwrap();
    // SAFETY: we just vacated the slot; this thread owns `lane` (see `insert`).
    unsafe { t.recycle(Some(lane), h.index(), retired) };
    // SAFETY: the slot is vacant, so no guard can reach the block any more.
    unsafe { free(p) };
}

#[test]
fn loom_lane_overflow_batch_reuse_stale_reader_and_handover() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let h0 = insert(&t, 0, 10);
        let h1 = insert(&t, 0, 11);
        let h2 = insert(&t, 0, 12);
        remove(&t, 0, h0);
        remove(&t, 0, h1); // lane 0's stash is full now
        let owner0 = {
            let t = t.clone();
            thread::spawn(move || {
                remove(&t, 0, h2); // overflow: a batch goes to the shared list
                insert(&t, 0, 20)
            })
        };
        let owner1 = {
            let t = t.clone();
            // Empty stash: a batch off the shared list, or a fresh index.
            thread::spawn(move || insert(&t, 1, 30))
        };
        let stale = {
            let t = t.clone();
            thread::spawn(move || {
                assert_eq!(t.try_read(h0).err(), Some(HandleError::Stale));
                match t.try_read(h2) {
                    // SAFETY: the read guard keeps the block alive and unwritten.
                    Ok(g) => assert_eq!(unsafe { get(g.ptr()) }, 12),
                    Err(e) => assert!(matches!(e, HandleError::Stale | HandleError::Busy)),
                }
            })
        };
        let a = owner0.join().unwrap();
        let b = owner1.join().unwrap();
        stale.join().unwrap();
        assert_ne!(a.index(), b.index(), "one slot handed out twice");
        // SAFETY (both): the guards keep the blocks alive.
        assert_eq!(unsafe { get(t.read(a).unwrap().ptr()) }, 20);
        assert_eq!(unsafe { get(t.read(b).unwrap().ptr()) }, 30);
        for h in [h0, h1, h2] {
            assert!(!t.contains(h));
        }
        // Lane 0's owner has exited: this thread takes the lane over (the join
        // synchronises) and reuses its stash.
        let c = insert(&t, 0, 40);
        assert!(![a, b].iter().any(|o| o.index() == c.index()));
        let mut all: Vec<u32> = t.iter().map(|h| h.index()).collect();
        all.extend(t.free_list());
        all.extend(t.stashed());
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!((all.len(), n), (t.issued() as usize, t.issued() as usize));
        assert_eq!(t.len(), 3);
        for (h, lane) in [(a, 0), (b, 1), (c, 0)] {
            remove(&t, lane, h);
        }
        assert_eq!(t.len(), 0);
    });
}
