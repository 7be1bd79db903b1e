//! Bursts of inserts and removes larger than a thread's lane stash (2044 vacant slots),
//! so slots go back and forth between the lanes and the shared free list, on two
//! threads at once, each with a store on one shared heap, while a third thread compacts
//! the heap and a fourth reads through scopes: differential against a `HashMap` model
//! per thread, several seeds. Checks that every live handle resolves to its own value
//! (guarded and scoped), that no removed handle ever resolves again (in either store),
//! that no two live handles are equal, and that `len` and scoped iteration match the
//! models at the end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::{Handle, Heap, Store};

/// One worker: `rounds` × (a burst of inserts, then a burst of removes in random
/// order), checked against its model; returns the model.
fn worker(
    store: &Store<u64>,
    other: &Store<u64>,
    seed: u64,
    rounds: usize,
) -> HashMap<Handle<u64>, u64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model: HashMap<Handle<u64>, u64> = HashMap::new();
    let mut dead: Vec<Handle<u64>> = Vec::new();
    let mut next = seed << 40;
    for round in 0..rounds {
        let n = rng.gen_range(1..5000);
        for _ in 0..n {
            next += 1;
            let h = store.insert(next);
            assert!(
                model.insert(h, next).is_none(),
                "seed {seed} round {round}: a live handle was issued twice"
            );
        }
        let mut live: Vec<Handle<u64>> = model.keys().copied().collect();
        live.shuffle(&mut rng);
        let k = rng.gen_range(0..=live.len());
        for &h in &live[..k] {
            let want = model.remove(&h);
            assert_eq!(store.remove(h), want, "seed {seed} round {round}: remove");
            dead.push(h);
        }
        for &h in live[k..].iter().step_by(7) {
            assert_eq!(store.get(h).map(|v| *v), model.get(&h).copied());
        }
        {
            let view = store.read();
            for (&h, &v) in &model {
                assert_eq!(view.get(h), Some(&v), "seed {seed} round {round}: scoped");
            }
        }
        for &h in dead.iter().rev().take(3000) {
            assert!(
                store.get(h).is_none(),
                "seed {seed}: a removed handle resolved"
            );
            assert!(
                other.get(h).is_none(),
                "seed {seed}: resolved in another store"
            );
            assert_eq!(store.remove(h), None, "seed {seed}: a second remove");
        }
    }
    model
}

#[test]
fn bursts_past_the_lane_stash_match_the_model_under_compaction() {
    for seed in 0..4u64 {
        let heap = Arc::new(Heap::new());
        let a: Store<u64> = Store::new_in(heap.clone());
        let b: Store<u64> = Store::new_in(heap.clone());
        let stop = AtomicBool::new(false);
        let (ma, mb) = thread::scope(|s| {
            let compactor = s.spawn(|| {
                let mut passes = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    heap.compact_full();
                    passes += 1;
                    thread::yield_now();
                }
                passes
            });
            let reader = s.spawn(|| {
                let mut seen = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for st in [&a, &b] {
                        let view = st.read();
                        seen += view.iter().count();
                    }
                    thread::yield_now();
                }
                seen
            });
            let ta = s.spawn(|| worker(&a, &b, seed * 2 + 1, 10));
            let tb = s.spawn(|| worker(&b, &a, seed * 2 + 2, 10));
            let ma = ta.join().expect("worker a");
            let mb = tb.join().expect("worker b");
            stop.store(true, Ordering::Relaxed);
            assert!(compactor.join().expect("compactor") > 0);
            reader.join().expect("reader");
            (ma, mb)
        });
        heap.compact_full();
        for (store, model, name) in [(&a, &ma, "a"), (&b, &mb, "b")] {
            assert_eq!(store.len(), model.len(), "seed {seed} store {name}: len");
            let view = store.read();
            let mut seen = HashSet::new();
            for (h, v) in view.iter() {
                assert!(seen.insert(h), "seed {seed} store {name}: {h:?} twice");
                assert_eq!(model.get(&h), Some(v), "seed {seed} store {name}: iter");
            }
            assert_eq!(
                seen.len(),
                model.len(),
                "seed {seed} store {name}: iter len"
            );
        }
    }
}
