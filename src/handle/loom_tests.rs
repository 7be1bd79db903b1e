//! Loom models of the handle table's concurrency protocols. Run with
//! `RUSTFLAGS="--cfg tidyheap_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib -- loom_`.
//!
//! Blocks are `Box<UnsafeCell<u64>>` built from loom's `UnsafeCell`, so every access to a
//! block's bytes is tracked: an access not ordered by the slot's guard protocol (a reader
//! touching a block while the compactor or a freer writes it) fails the model as a data
//! race, in addition to the value assertions.

use core::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;

use super::{HandleTable, MoveSkip};
use crate::HandleError;
use crate::sync::UnsafeCell;

type Cell = UnsafeCell<u64>;

/// Written over a block that was freed or moved away; no reader may ever see it.
const POISON: u64 = 0xDEAD;

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
    //   access itself is ordered against writes.
    unsafe { p.cast::<Cell>().as_ref().with(|v| *v) }
}

/// Writes a block.
///
/// # Safety
///
/// * `p` came from `block` and is still live.
unsafe fn set(p: NonNull<u8>, value: u64) {
    // SAFETY:
    // - `p` is a live `Cell` made by `block` (caller's precondition); loom checks the
    //   access itself is ordered against other accesses.
    unsafe { p.cast::<Cell>().as_ref().with_mut(|v| *v = value) }
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

/// (a) The guard state machine: a blocking reader, a blocking writer and the compactor's
/// `try_lock_move` on one block. Readers and writers exclude each other and the mover
/// (loom's race detector checks the block accesses); the reader sees 1 or 2, never the
/// poison left in a moved-away copy; the mover never waits; and nobody parks forever
/// (a lost wake-up would make a waiter's park loop spin until loom gives up).
#[test]
fn loom_guards_exclude_each_other_and_the_mover() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let old = block(1);
        let h = t.insert(old).unwrap();

        let reader = {
            let t = t.clone();
            thread::spawn(move || {
                let r = t.read(h).unwrap();
                // SAFETY: the read guard keeps the block live and excludes writers.
                let v = unsafe { get(r.ptr()) };
                assert!(v == 1 || v == 2, "reader saw {v}");
            })
        };
        let writer = {
            let t = t.clone();
            thread::spawn(move || {
                let w = t.write(h).unwrap();
                // SAFETY: the write guard gives exclusive access to the live block.
                unsafe {
                    assert_eq!(get(w.ptr()), 1);
                    set(w.ptr(), 2);
                }
            })
        };

        // The compactor: never waits, moves only an unguarded block.
        let new = match t.try_lock_move(h.index(), old) {
            Ok(mut mv) => {
                // SAFETY: the move lock excludes every other access to the old block.
                let new = block(unsafe { get(old) });
                // SAFETY: `new` is a complete copy; the old copy is dead after repointing.
                unsafe {
                    mv.set_ptr(new);
                    set(old, POISON);
                }
                Some(new)
            }
            Err(MoveSkip::Busy) => None,
            Err(e) => panic!("unexpected {e:?}"),
        };
        reader.join().unwrap();
        writer.join().unwrap();

        let current = t.remove(h).unwrap();
        assert_eq!(current, new.unwrap_or(old));
        // SAFETY: the slot is vacant and all threads are joined.
        unsafe {
            assert_eq!(get(current), 2);
            free(old);
            if let Some(new) = new {
                free(new);
            }
        }
    });
}

/// (b) Slot reuse: a free racing a read. The reader holds an old handle; the main thread
/// releases its write guard, removes the handle, poisons and frees the block, and
/// reuses the slot for a new value. The reader — possibly parked behind the write guard
/// when the slot is freed — gets the old value or `Stale`, never the new occupant.
#[test]
fn loom_remove_racing_read_never_shows_the_new_occupant() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let old = block(1);
        let h = t.insert(old).unwrap();
        let w = t.write(h).unwrap();

        let reader = {
            let t = t.clone();
            thread::spawn(move || match t.read(h) {
                // SAFETY: the read guard keeps the block live and excludes writers.
                Ok(r) => assert_eq!(unsafe { get(r.ptr()) }, 1),
                Err(e) => assert_eq!(e, HandleError::Stale),
            })
        };

        drop(w);
        let freed = t.remove(h).unwrap();
        assert_eq!(freed, old);
        // SAFETY: the slot is vacant: no guard can reach the block any more.
        unsafe { set(freed, POISON) };
        let new = block(2);
        let h2 = t.insert(new).unwrap();
        assert_eq!(h2.index(), h.index(), "LIFO reuse of the same slot");
        assert_ne!(h2.generation(), h.generation());

        reader.join().unwrap();
        assert_eq!(t.read(h).unwrap_err(), HandleError::Stale);
        assert_eq!(t.remove(h2).unwrap(), new);
        // SAFETY: all threads joined, both slots vacant.
        unsafe {
            free(old);
            free(new);
        }
    });
}

/// (c) The free list from two threads, including the ABA interleaving: thread 1 pops,
/// pops and pushes back the first slot, while thread 2 pops once (and may have read the
/// head and its link before thread 1 started). No slot is handed out twice, and at the
/// end every issued slot is either occupied or on the free list, exactly once.
#[test]
fn loom_free_list_never_hands_a_slot_out_twice() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let seed: Vec<_> = (0..3)
            .map(|_| t.insert(NonNull::dangling()).unwrap())
            .collect();
        for &h in seed.iter().rev() {
            t.remove(h).unwrap();
        }
        assert_eq!(t.free_list(), [0, 1, 2]);

        let t1 = {
            let t = t.clone();
            thread::spawn(move || {
                let a = t.insert(NonNull::dangling()).unwrap();
                let b = t.insert(NonNull::dangling()).unwrap();
                t.remove(a).unwrap();
                b
            })
        };
        let c = t.insert(NonNull::dangling()).unwrap();
        let b = t1.join().unwrap();

        assert_ne!(b.index(), c.index(), "one slot handed out twice");
        assert!(t.contains(b) && t.contains(c));
        let mut all = t.free_list();
        assert_eq!(all.len(), 1);
        all.extend([b.index(), c.index()]);
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2]);
        assert_eq!((t.len(), t.issued()), (2, 3));
    });
}

/// (d) Two removes racing the last reader out. The reader's unlock leaves a window
/// between its `fetch_sub` (no holder left) and clearing `PARKED`; a remove that vacates
/// the slot inside that window clears `PARKED` itself, so it must wake the other,
/// parked, remove. Exactly one remove gets the block; the other gets `Stale`; nobody
/// sleeps forever.
#[test]
fn loom_racing_removes_and_last_reader_wake_everyone() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let h = t.insert(NonNull::dangling()).unwrap();
        // A read guard taken here and released by another thread (the slot's lock is not
        // tied to a thread).
        t.get(h).unwrap().read(h.generation().get()).unwrap();

        let remover = {
            let t = t.clone();
            thread::spawn(move || t.remove(h).is_ok())
        };
        let reader = {
            let t = t.clone();
            // SAFETY: releases the one read guard taken above, once.
            thread::spawn(move || unsafe { t.get(h).unwrap().unlock_read() })
        };
        let won_here = t.remove(h).is_ok();
        let won_there = remover.join().unwrap();
        reader.join().unwrap();

        assert!(won_here ^ won_there, "exactly one remove frees the block");
        assert_eq!((t.len(), t.free_list()), (0, vec![h.index()]));
    });
}
