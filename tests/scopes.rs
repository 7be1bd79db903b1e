//! Read scopes (`Store::read`, issue 10): semantics, self-deadlock panics, and a stress
//! run of scoped readers on several threads against writers, removers and a background
//! compactor, with checksummed values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{
    BackgroundCompactor, Budget, CompactionObserver, Handle, HandleError, Heap, MoveEvent, Store,
};

/// A value that checks itself: the last word is a hash of the others.
type Blob = [u64; 16];

fn seal(seed: u64) -> Blob {
    let mut b = [0u64; 16];
    let mut x = seed;
    for w in &mut b[..15] {
        x = x
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0xD1B5_4A32_D192_ED03);
        *w = x ^ (x >> 29);
    }
    b[15] = hash(&b);
    b
}

fn hash(b: &Blob) -> u64 {
    b[..15].iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &w| {
        (h ^ w).wrapping_mul(0x100_0000_01B3).rotate_left(27)
    })
}

fn intact(b: &Blob) -> bool {
    b[15] == hash(b)
}

#[test]
fn scoped_gets_see_values_and_refuse_stale_and_foreign_handles() {
    let heap = Arc::new(Heap::new());
    let a: Store<u64> = Store::new_in(heap.clone());
    let b: Store<u64> = Store::new_in(heap);
    let ha = a.insert(1);
    let hb = b.insert(2);
    let gone = a.insert(3);
    a.remove(gone);
    {
        let view = a.read();
        assert_eq!(view.get(ha), Some(&1));
        assert_eq!(
            view.get(Handle::from_raw(hb.raw())),
            None,
            "another store's handle"
        );
        assert_eq!(view.get(gone), None, "stale");
        assert_eq!(view.try_get(gone), Err(HandleError::Stale));
        // A scope of `a` does not hold up `b`'s writers.
        *b.try_get_mut(hb).unwrap() += 1;
        // ...but `a`'s writers and removers answer Busy while it is open.
        assert_eq!(a.try_get_mut(ha).unwrap_err(), HandleError::Busy);
        assert_eq!(a.try_remove(ha).unwrap_err(), HandleError::Busy);
        // Guarded reads and inserts go on.
        assert_eq!(*a.get(ha).unwrap(), 1);
        let hn = a.insert(9);
        assert_eq!(view.get(hn), Some(&9));
        let mut all: Vec<u64> = view.iter().map(|(_, v)| *v).collect();
        all.sort_unstable();
        assert_eq!(all, [1, 9]);
        assert_eq!(view.len(), 2);
        // Scopes nest.
        let inner = a.read();
        assert_eq!(inner.get(ha), Some(&1));
    }
    *a.get_mut(ha).unwrap() = 5;
    assert_eq!(a.remove(ha), Some(5));
    assert_eq!(*b.get(hb).unwrap(), 3);
}

#[test]
fn a_scope_waits_out_a_writer_that_came_first_and_try_get_says_busy() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let w = s.get_mut(h).unwrap();
    let view = s.read();
    assert_eq!(view.try_get(h), Err(HandleError::Busy));
    std::thread::scope(|t| {
        let r = t.spawn(|| *s.read().get(h).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        let mut w = w;
        *w = 2;
        drop(w);
        assert_eq!(r.join().unwrap(), 2);
    });
    assert_eq!(view.get(h), Some(&2));
}

#[test]
fn a_pending_writer_waits_for_scopes_and_nested_scopes_do_not_deadlock() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let outer = s.read();
    std::thread::scope(|t| {
        let writer = t.spawn(|| {
            *s.get_mut(h).unwrap() = 2;
        });
        // Give the writer time to become pending (correctness does not depend on it).
        std::thread::sleep(Duration::from_millis(20));
        // A nested scope on a thread that holds one never steps back for the writer.
        let inner = s.read();
        assert_eq!(inner.get(h), Some(&1), "no write while scopes are open");
        drop(inner);
        assert_eq!(outer.get(h), Some(&1));
        drop(outer);
        writer.join().unwrap();
    });
    assert_eq!(s.read().get(h), Some(&2));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "while this thread holds a read scope")]
fn get_mut_under_own_scope_panics_in_debug() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let _view = s.read();
    let _ = s.get_mut(h);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "while this thread holds a read scope")]
fn remove_under_own_scope_panics_in_debug() {
    let s: Store<u64> = Store::new();
    let other = s.insert(2);
    let _view = s.read();
    // Any value of the store: the scope can see them all.
    let _ = s.remove(other);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "this thread holds a write guard")]
fn scoped_get_of_own_refmut_panics_in_debug() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let _w = s.get_mut(h).unwrap();
    let view = s.read();
    let _ = view.get(h);
}

#[derive(Default)]
struct Moves(AtomicU64);

impl CompactionObserver for Moves {
    fn on_move(&self, _: &MoveEvent) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Scoped readers on three threads, a writer, a remover (remove + reinsert) and a
/// background compactor. Inside each scope every value read is intact and reads of one
/// handle agree; removed values come back intact; the compactor moved blocks while the
/// threads ran. Rounds repeat (up to a bound) until moves were seen during a round.
#[test]
fn scoped_readers_writers_removers_and_compactor() {
    let heap = Arc::new(Heap::new());
    let moves = Arc::new(Moves::default());
    heap.subscribe(moves.clone());
    let store: Store<Blob> = Store::new_in(heap.clone());
    const N: usize = 512;
    let ops = if cfg!(debug_assertions) { 300 } else { 3000 };
    // Fragment: every other value of a larger fill is removed at once.
    let mut all: Vec<Handle<Blob>> = (0..2 * N as u64).map(|i| store.insert(seal(i))).collect();
    let mut slots = Vec::with_capacity(N);
    for (i, h) in all.drain(..).enumerate() {
        if i % 2 == 0 {
            slots.push(AtomicU64::new(h.raw().to_bits()));
        } else {
            assert!(intact(&store.remove(h).unwrap()));
        }
    }
    let slots = Arc::new(slots);
    let corrupt = Arc::new(AtomicU64::new(0));
    let bg =
        BackgroundCompactor::start(heap.clone(), Duration::from_micros(200), Budget::blocks(64));
    let handle_at = |slots: &[AtomicU64], i: usize| {
        Handle::<Blob>::from_raw(
            tidyheap::RawHandle::from_bits(slots[i].load(Ordering::Acquire)).unwrap(),
        )
    };
    let mut rounds = 0;
    loop {
        rounds += 1;
        let before = moves.0.load(Ordering::Relaxed);
        let stop = AtomicBool::new(false);
        std::thread::scope(|t| {
            for r in 0..3u64 {
                let (store, slots, corrupt, stop) = (&store, &slots, &corrupt, &stop);
                t.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(r + 17 * rounds);
                    while !stop.load(Ordering::Relaxed) {
                        let view = store.read();
                        for _ in 0..32 {
                            let h = handle_at(slots, rng.gen_range(0..N));
                            if let Some(v) = view.get(h) {
                                let first = *v;
                                if !intact(&first) || view.get(h) != Some(&first) {
                                    corrupt.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        drop(view);
                        std::thread::yield_now();
                    }
                });
            }
            let (store_w, slots_w, corrupt_w) = (&store, &slots, &corrupt);
            let writer = t.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(99 + rounds);
                for k in 0..ops {
                    let h = handle_at(slots_w, rng.gen_range(0..N));
                    if let Some(mut v) = store_w.get_mut(h) {
                        if !intact(&v) {
                            corrupt_w.fetch_add(1, Ordering::Relaxed);
                        }
                        *v = seal(k as u64 ^ rng.r#gen::<u64>());
                    }
                }
            });
            let (store_r, slots_r, corrupt_r) = (&store, &slots, &corrupt);
            let remover = t.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(7 + rounds);
                for k in 0..ops {
                    let i = rng.gen_range(0..N);
                    let h = handle_at(slots_r, i);
                    match store_r.remove(h) {
                        Some(v) if !intact(&v) => {
                            corrupt_r.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    let fresh = store_r.insert(seal(k as u64 + 1_000_000));
                    slots_r[i].store(fresh.raw().to_bits(), Ordering::Release);
                    // Keep some fragmentation for the compactor.
                    if k % 2 == 0 {
                        let extra = store_r.insert(seal(k as u64));
                        store_r.remove(extra);
                    }
                }
            });
            writer.join().unwrap();
            remover.join().unwrap();
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(corrupt.load(Ordering::Relaxed), 0, "corrupted values seen");
        if moves.0.load(Ordering::Relaxed) > before || rounds == 50 {
            break;
        }
    }
    bg.stop();
    assert!(
        moves.0.load(Ordering::Relaxed) > 0,
        "the compactor moved nothing in {rounds} rounds"
    );
    // Every value is intact and accounted for.
    assert_eq!(store.len(), N);
    let view = store.read();
    assert_eq!(view.iter().filter(|(_, v)| intact(v)).count(), N);
    for i in 0..N {
        assert!(view.get(handle_at(&slots, i)).is_some_and(intact));
    }
}

#[test]
fn compaction_skips_a_store_with_an_open_scope_and_moves_it_after() {
    let heap = Arc::new(Heap::new());
    let moves = Arc::new(Moves::default());
    heap.subscribe(moves.clone());
    let s: Store<Blob> = Store::new_in(heap.clone());
    let raw = heap.alloc_handle(128, 16).unwrap();
    let hs: Vec<Handle<Blob>> = (0..4000u64).map(|i| s.insert(seal(i))).collect();
    let keep: Vec<Handle<Blob>> = hs
        .iter()
        .enumerate()
        .filter_map(|(i, &h)| {
            if i % 8 == 0 {
                Some(h)
            } else {
                s.remove(h).map(|_| ()).and(None)
            }
        })
        .collect();
    let view = s.read();
    let at: Vec<*const Blob> = keep
        .iter()
        .map(|&h| view.get(h).unwrap() as *const _)
        .collect();
    heap.compact_full();
    assert_eq!(
        moves.0.load(Ordering::Relaxed),
        0,
        "moved under an open scope"
    );
    for (&h, &p) in keep.iter().zip(&at) {
        let v = view.get(h).unwrap();
        assert!(core::ptr::eq(v, p) && intact(v));
    }
    drop(view);
    heap.compact_full();
    assert!(
        moves.0.load(Ordering::Relaxed) > 0,
        "nothing moved after the scope closed"
    );
    let view = s.read();
    assert!(keep.iter().all(|&h| view.get(h).is_some_and(intact)));
    drop(view);
    heap.free_handle(raw).unwrap();
}

#[test]
fn a_panic_inside_a_scope_closes_it() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let view = s.read();
        assert_eq!(view.get(h), Some(&1));
        panic!("user code panics with a scope open");
    }));
    assert!(r.is_err());
    // The scope closed while unwinding: writers and the compactor go on.
    *s.try_get_mut(h).unwrap() = 2;
    assert_eq!(s.try_remove(h), Ok(2));
}

#[test]
fn one_scope_shared_by_several_threads() {
    let s: Store<u64> = Store::new();
    let hs: Vec<Handle<u64>> = (0..100).map(|i| s.insert(i)).collect();
    let view = s.read();
    let sums: Vec<u64> = std::thread::scope(|t| {
        let workers: Vec<_> = hs
            .chunks(25)
            .map(|c| {
                let view = &view;
                t.spawn(move || c.iter().map(|&h| *view.get(h).unwrap()).sum::<u64>())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(sums.iter().sum::<u64>(), (0..100).sum());
    drop(view);
    assert!(s.try_remove(hs[0]).is_ok());
}

/// A thread holding a guarded `Ref` opens a scope while a writer is pending on a scope
/// that waits for that thread: the step-back for pending writers is bounded, so this
/// finishes instead of deadlocking (reader → pending writer → open scope → reader).
#[test]
fn a_guard_holder_opening_a_scope_does_not_deadlock_with_a_pending_writer() {
    let s: Store<u64> = Store::new();
    let h = s.insert(1);
    let outer = s.read();
    std::thread::scope(|t| {
        let writer = t.spawn(|| {
            *s.get_mut(h).unwrap() = 2;
        });
        // Let the writer become pending (correctness does not depend on it).
        std::thread::sleep(Duration::from_millis(20));
        let reader = t.spawn(|| {
            let r = s.get(h).unwrap();
            let view = s.read();
            assert_eq!(view.get(h), Some(&*r));
            *r
        });
        assert_eq!(reader.join().unwrap(), 1);
        assert_eq!(outer.get(h), Some(&1));
        drop(outer);
        writer.join().unwrap();
    });
    assert_eq!(*s.get(h).unwrap(), 2);
}
