//! Loom model of the move protocol: a reader, the compactor and a freer race on one
//! block. Run with
//! `RUSTFLAGS="--cfg tidyheap_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib -- loom_`.
//!
//! The block is two words in a loom `UnsafeCell`, copied word by word the way the
//! compactor's `copy_nonoverlapping` would, so a reader that could observe a copy in
//! progress would see a mix (`[1, 0]`) and fail; any access not ordered by the slot
//! protocol fails as a data race. The old copy is poisoned after a move and a freed
//! block is poisoned by its freer, so reading either fails too.

use core::ptr::NonNull;

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use crate::HandleError;
use crate::handle::{HandleTable, MoveSkip};
use crate::sync::UnsafeCell;

type Block = UnsafeCell<[u64; 2]>;

const MOVED_AWAY: u64 = 0xDEAD;
const FREED: u64 = 0xF4EE;

fn block(v: [u64; 2]) -> NonNull<u8> {
    NonNull::from(Box::leak(Box::new(Block::new(v)))).cast()
}

/// # Safety
///
/// `p` came from `block` and was not dropped.
unsafe fn word(p: NonNull<u8>, i: usize) -> u64 {
    // SAFETY: a live `Block` (caller's precondition); loom checks the ordering.
    unsafe { p.cast::<Block>().as_ref().with(|v| (*v)[i]) }
}

/// # Safety
///
/// `p` came from `block` and was not dropped.
unsafe fn set_word(p: NonNull<u8>, i: usize, x: u64) {
    // SAFETY: a live `Block` (caller's precondition); loom checks the ordering.
    unsafe { p.cast::<Block>().as_ref().with_mut(|v| (*v)[i] = x) }
}

#[test]
fn loom_reader_compactor_freer_on_one_block() {
    loom::model(|| {
        let table = Arc::new(HandleTable::new());
        let old = block([1, 1]);
        let new = block([0, 0]);
        let h = table.insert(old).unwrap();
        // Which block the freer got back: 1 = old, 2 = new.
        let freed = Arc::new(AtomicUsize::new(0));

        let reader = {
            let table = table.clone();
            thread::spawn(move || match table.read(h) {
                Ok(g) => {
                    // SAFETY: the read guard keeps the block in place and unfreed.
                    let v = unsafe { [word(g.ptr(), 0), word(g.ptr(), 1)] };
                    assert_eq!(v, [1, 1], "a torn, moved-away or freed block was read");
                }
                Err(e) => assert_eq!(e, HandleError::Stale),
            })
        };
        let compactor = {
            let table = table.clone();
            thread::spawn(move || match table.try_lock_move(h.index(), old) {
                Ok(mut mv) => {
                    // SAFETY: the move lock excludes every other access to both blocks
                    // (`new` is not published until `set_ptr`).
                    unsafe {
                        for i in 0..2 {
                            set_word(new, i, word(old, i));
                        }
                        mv.set_ptr(new);
                    }
                    drop(mv);
                    // SAFETY: after the move nobody can reach the old copy.
                    unsafe {
                        set_word(old, 0, MOVED_AWAY);
                        set_word(old, 1, MOVED_AWAY);
                    }
                    true
                }
                Err(skip) => {
                    assert!(matches!(skip, MoveSkip::Busy | MoveSkip::Gone));
                    false
                }
            })
        };
        let freer = {
            let (table, freed) = (table.clone(), freed.clone());
            thread::spawn(move || {
                let p = table.remove(h).unwrap();
                freed.store(if p == old { 1 } else { 2 }, Ordering::Relaxed);
                // SAFETY: the slot is vacant: the block is ours alone now.
                unsafe {
                    set_word(p, 0, FREED);
                    set_word(p, 1, FREED);
                }
            })
        };
        reader.join().unwrap();
        let moved = compactor.join().unwrap();
        freer.join().unwrap();

        // The freer received the block the slot pointed at last: the new copy iff a
        // move happened (a free never loses a concurrent move's result).
        assert_eq!(freed.load(Ordering::Relaxed), if moved { 2 } else { 1 });
        // A freed block is never moved or resurrected.
        assert!(!table.contains(h));
        assert!(table.read(h).is_err());
        assert!(table.try_lock_move(h.index(), old).is_err());
        assert!(table.try_lock_move(h.index(), new).is_err());
        // SAFETY: no thread uses either block any more.
        unsafe {
            drop(Box::from_raw(old.cast::<Block>().as_ptr()));
            drop(Box::from_raw(new.cast::<Block>().as_ptr()));
        }
    });
}
