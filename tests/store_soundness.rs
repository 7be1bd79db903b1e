//! Regression tests for issue 9 (stores, handles, large movable blocks): store identity
//! across heaps, iteration that never touches other stores, same-thread re-entrance,
//! panicking `Drop`s, stale `relocate_large`, and large-block accounting.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

use tidyheap::{Handle, HandleError, Heap, Store};

/// How long a step that must not block may take before the test calls it a deadlock
/// (`TIDYHEAP_HANG_SECS`, default 120). Not a timing assertion: a correct run finishes
/// in microseconds, a regression never.
fn hang() -> Duration {
    let secs = std::env::var("TIDYHEAP_HANG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Runs `f` on its own thread and fails the test if it does not finish within [`hang`]
/// (a regression deadlocks that thread, which is then abandoned). A panic of `f` is
/// passed on as it is.
fn must_finish<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    let hang = hang();
    match rx.recv_timeout(hang) {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: deadlocked (no answer in {hang:?})"),
    }
}

// ----- defect 3: handles resolve only in the store that made them -----

#[test]
fn handles_of_stores_on_other_heaps_are_stale() {
    let a: Store<u64> = Store::new();
    let b: Store<u64> = Store::new();
    let ha = a.insert(1);
    let hb = b.insert(2);
    // Same index and generation on two fresh heaps: only the store identity differs.
    // Same slot index on two fresh heaps; only the process-wide generation leases tell
    // the handles apart.
    assert_eq!(ha.index(), hb.index());
    assert_ne!(ha, hb);
    assert!(b.get(ha).is_none());
    assert!(b.get_mut(ha).is_none());
    assert!(!b.contains(ha));
    assert_eq!(b.remove(ha), None);
    assert_eq!(b.try_remove(ha), Err(HandleError::Stale));
    assert_eq!(b.iter().count(), 1);
    assert_eq!(*b.get(hb).unwrap(), 2, "b's own value is untouched");
    assert_eq!(a.remove(ha), Some(1));
}

#[test]
fn handles_of_other_stores_on_the_same_heap_are_stale() {
    let heap = Arc::new(Heap::new());
    let a: Store<u64> = Store::new_in(heap.clone());
    let b: Store<u64> = Store::new_in(heap.clone());
    let ha = a.insert(1);
    b.insert(2);
    assert_eq!(b.remove(ha), None);
    assert_eq!(a.remove(ha), Some(1));
}

#[test]
fn a_handle_never_reads_a_value_of_another_type() {
    // Before process-unique handles, the array's handle named the `String` store's own
    // value (same index and generation on both heaps).
    let strings: Store<String> = Store::new();
    let arrays: Store<[u8; 64]> = Store::new();
    let own = strings.insert("own".into());
    let h = arrays.insert([0xAB; 64]);
    assert_eq!(own.index(), h.index());
    let forged: Handle<String> = Handle::from_raw(h.raw());
    assert!(strings.get(forged).is_none());
    assert!(strings.get_mut(forged).is_none());
    assert_eq!(strings.remove(forged), None);
    assert_eq!(*strings.get(own).unwrap(), "own");
    assert_eq!(arrays.get(h).unwrap()[63], 0xAB);
}

#[test]
fn many_stores_all_distinct() {
    let heap = Arc::new(Heap::new());
    let stores: Vec<Store<u32>> = (0..200).map(|_| Store::new_in(heap.clone())).collect();
    let hs: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| s.insert(i as u32))
        .collect();
    for (i, s) in stores.iter().enumerate() {
        for (j, h) in hs.iter().enumerate() {
            assert_eq!(s.contains(*h), i == j);
        }
    }
}

// ----- defect 2: iteration never touches other stores' values -----

#[test]
fn iterating_a_store_while_this_thread_writes_another() {
    let heap = Arc::new(Heap::new());
    let a: Store<u32> = Store::new_in(heap.clone());
    let b: Store<u32> = Store::new_in(heap.clone());
    for i in 0..10 {
        a.insert(i);
    }
    let hb = b.insert(99);
    let sum = must_finish("iterating A while holding a RefMut of B", move || {
        let mut w = b.get_mut(hb).unwrap();
        *w += 1;
        let sum: u32 = a.iter().map(|(_, v)| *v).sum();
        drop(w);
        sum
    });
    assert_eq!(sum, 45);
}

#[test]
fn iterating_a_store_while_another_thread_writes_another() {
    let heap = Arc::new(Heap::new());
    let a: Store<u32> = Store::new_in(heap.clone());
    let b: Store<u32> = Store::new_in(heap.clone());
    let hb = b.insert(1);
    for i in 0..10 {
        a.insert(i);
    }
    let held = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let writer = {
        let (b, held, release) = (b.clone(), held.clone(), release.clone());
        std::thread::spawn(move || {
            let w = b.get_mut(hb).unwrap();
            held.wait();
            release.wait();
            drop(w);
        })
    };
    held.wait();
    let a2 = a.clone();
    let n = must_finish("iterating A while another thread writes B", move || {
        a2.iter().count()
    });
    assert_eq!(n, 10);
    release.wait();
    writer.join().unwrap();
    // The raw-handle API and `get` refuse B's handle without waiting for its writer too.
    let w = b.get_mut(hb).unwrap();
    let (heap2, a2) = (heap.clone(), a.clone());
    must_finish(
        "foreign get / read while the owner's value is written",
        move || {
            assert!(a2.get(Handle::from_raw(hb.raw())).is_none());
            assert!(a2.get_mut(Handle::from_raw(hb.raw())).is_none());
            assert!(heap2.read(hb.raw()).is_err());
            assert!(heap2.write(hb.raw()).is_err());
        },
    );
    drop(w);
}

// ----- defect 5: same-thread re-entrance -----

#[test]
fn try_forms_answer_busy_for_this_threads_own_guards() {
    let s = Store::new();
    let h = s.insert(1u32);
    let w = s.get_mut(h).unwrap();
    assert_eq!(s.try_get(h).unwrap_err(), HandleError::Busy);
    assert_eq!(s.try_get_mut(h).unwrap_err(), HandleError::Busy);
    assert_eq!(s.try_remove(h).unwrap_err(), HandleError::Busy);
    drop(w);
    let r = s.get(h).unwrap();
    assert_eq!(s.try_get_mut(h).unwrap_err(), HandleError::Busy);
    assert_eq!(s.try_remove(h).unwrap_err(), HandleError::Busy);
    drop(r);
    let heap = Heap::new();
    let raw = heap.alloc_handle(8, 8).unwrap();
    let pin = heap.pin(raw).unwrap();
    assert_eq!(heap.try_free_handle(raw), Err(HandleError::Busy));
    let r = heap.read(raw).unwrap();
    assert_eq!(heap.try_write(raw).unwrap_err(), HandleError::Busy);
    drop((pin, r));
    heap.free_handle(raw).unwrap();
}

#[cfg(debug_assertions)]
mod reentrance {
    use super::*;

    /// The panic message of `f`.
    fn panic_message(f: impl FnOnce()) -> String {
        let e = catch_unwind(AssertUnwindSafe(f)).expect_err("should have panicked");
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap()
    }

    #[test]
    #[should_panic(expected = "holds a write guard (RefMut")]
    fn get_while_holding_a_ref_mut_panics() {
        must_finish("get_while_holding_a_ref_mut_panics", || {
            let s = Store::new();
            let h = s.insert(1u8);
            let _w = s.get_mut(h).unwrap();
            let _ = s.get(h);
        });
    }

    #[test]
    #[should_panic(expected = "holds a read guard (Ref")]
    fn get_mut_while_holding_a_ref_panics() {
        must_finish("get_mut_while_holding_a_ref_panics", || {
            let s = Store::new();
            let h = s.insert(1u8);
            let _r = s.get(h).unwrap();
            let _ = s.get_mut(h);
        });
    }

    #[test]
    #[should_panic(expected = "holds a write guard (RefMut")]
    fn get_mut_while_holding_a_ref_mut_panics() {
        must_finish("get_mut_while_holding_a_ref_mut_panics", || {
            let s = Store::new();
            let h = s.insert(1u8);
            let _w = s.get_mut(h).unwrap();
            let _ = s.get_mut(h);
        });
    }

    #[test]
    #[should_panic(expected = "asked to remove it")]
    fn remove_while_holding_a_ref_panics() {
        must_finish("remove_while_holding_a_ref_panics", || {
            let s = Store::new();
            let h = s.insert(1u8);
            let _r = s.get(h).unwrap();
            let _ = s.remove(h);
        });
    }

    #[test]
    #[should_panic(expected = "asked to remove it")]
    fn dropping_an_owned_while_holding_a_ref_panics() {
        must_finish("dropping_an_owned_while_holding_a_ref_panics", || {
            let s = Store::new();
            let o = s.insert_owned(1u8);
            let _r = s.get(o.handle()).unwrap();
            drop(o);
        });
    }

    #[test]
    #[should_panic(expected = "holds a write guard (RefMut")]
    fn iterating_over_ones_own_write_guard_panics() {
        must_finish("iterating_over_ones_own_write_guard_panics", || {
            let s = Store::new();
            let h = s.insert(1u8);
            let _w = s.get_mut(h).unwrap();
            let _ = s.iter().count();
        });
    }

    #[test]
    #[should_panic(expected = "holds a pin (PinGuard")]
    fn freeing_a_raw_handle_while_pinned_panics() {
        must_finish("freeing_a_raw_handle_while_pinned_panics", || {
            let heap = Heap::new();
            let h = heap.alloc_handle(8, 8).unwrap();
            let _p = heap.pin(h).unwrap();
            let _ = heap.free_handle(h);
        });
    }

    #[test]
    #[should_panic(expected = "holds a read guard (Ref")]
    fn writing_a_raw_handle_while_reading_it_panics() {
        must_finish("writing_a_raw_handle_while_reading_it_panics", || {
            let heap = Heap::new();
            let h = heap.alloc_handle(8, 8).unwrap();
            let _r = heap.read(h).unwrap();
            let _ = heap.write(h);
        });
    }

    #[test]
    fn the_message_names_the_handle() {
        let s = Store::new();
        let _other = s.insert(0u8);
        let h = s.insert(1u8);
        let s2 = s.clone();
        let msg = must_finish("the_message_names_the_handle", move || {
            let w = s2.get_mut(h).unwrap();
            let msg = panic_message(|| drop(s2.get(h)));
            drop(w);
            msg
        });
        assert!(
            msg.contains(&format!("handle {:?}", h.raw())),
            "message: {msg}"
        );
        assert!(msg.contains("try_"), "message: {msg}");
    }

    #[test]
    fn guards_on_other_handles_or_other_threads_do_not_panic() {
        let s = Store::new();
        let a = s.insert(1u32);
        let b = s.insert(2u32);
        // Holding a guard on `a` says nothing about `b`.
        let wa = s.get_mut(a).unwrap();
        *s.get_mut(b).unwrap() += 1;
        assert_eq!(s.remove(b), Some(3));
        drop(wa);
        // A guard dropped on another thread leaves no stale record behind.
        let r = s.get(a).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(move || drop(r));
        });
        *s.get_mut(a).unwrap() += 1;
        // Waiting for another thread's guard is a real wait, not a deadlock.
        let held = Barrier::new(2);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let w = s.get_mut(a).unwrap();
                held.wait();
                std::thread::sleep(Duration::from_millis(20));
                drop(w);
            });
            held.wait();
            assert_eq!(*s.get(a).unwrap(), 2);
        });
        assert_eq!(s.remove(a), Some(2));
    }
}

// ----- defect 7 (stores): a panicking Drop leaks nothing -----

struct Bomb {
    calm_drops: Arc<AtomicUsize>,
    explode: bool,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.explode {
            panic!("boom");
        }
        self.calm_drops.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_panicking_drop_while_the_store_drops_leaks_nothing() {
    let heap = Arc::new(Heap::new());
    let calm = Arc::new(AtomicUsize::new(0));
    let s: Store<Bomb> = Store::new_in(heap.clone());
    // A raw handle of the same heap must survive the store.
    let raw = heap.insert_bytes(b"kept").unwrap();
    for i in 0..100 {
        s.insert(Bomb {
            calm_drops: calm.clone(),
            explode: i == 9,
        });
    }
    let r = catch_unwind(AssertUnwindSafe(move || drop(s)));
    assert!(r.is_err(), "the 10th value's panic propagates");
    assert_eq!(
        calm.load(Ordering::Relaxed),
        99,
        "every other value dropped"
    );
    assert_eq!(&*heap.read(raw).unwrap(), b"kept");
    heap.free_handle(raw).unwrap();
    heap.trim();
    let (stats, walk) = (heap.stats(), heap.walk());
    assert_eq!(stats.live_bytes(), 0);
    assert_eq!(stats.movable.live_blocks(), 0);
    assert_eq!((walk.movable_live_blocks, walk.movable_live_bytes), (0, 0));
    assert_eq!(
        (walk.large_movable_blocks, walk.large_movable_live_bytes),
        (0, 0)
    );
    assert_eq!(walk.out_blocks, [0, 0]);
    assert_eq!((stats.committed_bytes, walk.committed_bytes), (0, 0));
}

#[test]
fn a_panicking_drop_after_remove_or_owned_drop_frees_the_block() {
    let heap = Arc::new(Heap::new());
    let calm = Arc::new(AtomicUsize::new(0));
    let s: Store<Bomb> = Store::new_in(heap.clone());
    let bomb = || Bomb {
        calm_drops: calm.clone(),
        explode: true,
    };
    let h = s.insert(bomb());
    assert!(catch_unwind(AssertUnwindSafe(|| drop(s.remove(h)))).is_err());
    let o = s.insert_owned(bomb());
    assert!(catch_unwind(AssertUnwindSafe(move || drop(o))).is_err());
    assert!(s.is_empty());
    heap.trim();
    assert_eq!(heap.stats().live_bytes(), 0);
    assert_eq!(heap.walk().out_blocks, [0, 0]);
}

// ----- defect 8: relocate_large checks the generation first -----

#[test]
fn relocate_large_of_a_stale_handle_is_stale() {
    let heap = Heap::new();
    let big = heap.alloc_handle(3 << 20, 16).unwrap();
    heap.free_handle(big).unwrap();
    // The freed slot is reused (LIFO) by a pool block: the stale handle's slot now
    // points at someone else's block.
    let small = heap.alloc_handle(64, 16).unwrap();
    assert_eq!(small.index(), big.index());
    assert_eq!(heap.relocate_large(big), Err(HandleError::Stale));
    assert_eq!(heap.relocate_large(small), Ok(false));
    heap.free_handle(small).unwrap();
    assert_eq!(heap.relocate_large(small), Err(HandleError::Stale));
    // Reused by another large block: the stale handle still does not move it.
    let big2 = heap.alloc_handle(3 << 20, 16).unwrap();
    assert_eq!(big2.index(), big.index());
    let before = heap.pin(big2).unwrap().as_ptr();
    assert_eq!(heap.relocate_large(big), Err(HandleError::Stale));
    assert_eq!(heap.pin(big2).unwrap().as_ptr(), before);
    assert_eq!(heap.relocate_large(big2), Ok(true));
    heap.free_handle(big2).unwrap();
}

// ----- defect 9: large movable blocks count their requested bytes -----

#[test]
fn large_movable_blocks_count_requested_bytes_only() {
    // A 300 000 B value passes through the stack a few times: give it room.
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(large_accounting)
        .unwrap()
        .join()
        .unwrap();
}

fn large_accounting() {
    let heap = Arc::new(Heap::new());
    let s: Store<[u8; 300_000]> = Store::new_in(heap.clone());
    let v = s.insert([7; 300_000]);
    let h = heap.alloc_handle(400_000, 16).unwrap();
    let check = |live: usize, blocks: usize| {
        heap.trim();
        let (stats, walk) = (heap.stats(), heap.walk());
        assert_eq!(stats.large.live_bytes, live);
        assert_eq!(stats.large.live_blocks, blocks);
        assert_eq!(stats.live_bytes(), live as u64);
        // No pool block is involved: the walk and the pool counters agree on zero.
        assert_eq!(stats.movable.live_bytes(), 0);
        assert_eq!(walk.movable_live_bytes, 0);
        // The walk finds the large blocks through their handles.
        assert_eq!(walk.large_movable_live_bytes, live);
        assert_eq!(walk.large_movable_blocks, blocks);
    };
    check(700_000, 2);
    assert_eq!(heap.relocate_large(h), Ok(true));
    assert_eq!(heap.relocate_large(v.raw()), Ok(true));
    check(700_000, 2);
    assert_eq!(s.get(v).unwrap()[299_999], 7);
    assert!(s.remove(v).is_some());
    check(400_000, 1);
    heap.free_handle(h).unwrap();
    check(0, 0);
    assert_eq!(heap.stats().large.mapped_bytes, 0);
}
