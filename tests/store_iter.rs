//! Per-store iteration: a store's `iter` (guarded and scoped) visits exactly its own
//! values, once each, with other stores on the same heap; differential against a
//! `HashMap` model over random inserts, removes and compactions, several seeds, one
//! thread and several.

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Handle, Heap, Store};

/// Checks that both iterations of `store` list exactly `model`, each value once.
fn check(store: &Store<u64>, model: &HashMap<Handle<u64>, u64>, what: &str) {
    let guarded: Vec<(Handle<u64>, u64)> = store.iter().map(|(h, v)| (h, *v)).collect();
    let view = store.read();
    let scoped: Vec<(Handle<u64>, u64)> = view.iter().map(|(h, v)| (h, *v)).collect();
    for (name, seen) in [("guarded", guarded), ("scoped", scoped)] {
        let mut got: HashMap<Handle<u64>, u64> = HashMap::new();
        for (h, v) in seen {
            assert!(
                got.insert(h, v).is_none(),
                "{what}: {name} iter saw {h:?} twice"
            );
        }
        assert_eq!(&got, model, "{what}: {name} iter differs from the model");
    }
    assert_eq!(view.len(), model.len(), "{what}: scope len");
    assert_eq!(store.len(), model.len(), "{what}: len");
}

#[test]
fn iteration_matches_the_model_with_three_stores_on_one_heap() {
    for seed in 0..8u64 {
        let heap = Arc::new(Heap::new());
        let stores: Vec<Store<u64>> = (0..3).map(|_| Store::new_in(heap.clone())).collect();
        let mut models: Vec<HashMap<Handle<u64>, u64>> = vec![HashMap::new(); 3];
        let mut rng = SmallRng::seed_from_u64(seed);
        for step in 0..3000u64 {
            let s = rng.gen_range(0..3);
            let live: Vec<Handle<u64>> = models[s].keys().copied().collect();
            if live.is_empty() || rng.gen_bool(0.55) {
                let v = seed << 32 | step;
                let h = stores[s].insert(v);
                assert!(models[s].insert(h, v).is_none());
            } else {
                let h = live[rng.gen_range(0..live.len())];
                let want = models[s].remove(&h);
                assert_eq!(stores[s].remove(h), want);
                // A stale handle stays stale, in every store.
                assert!(stores.iter().all(|st| st.get(h).is_none()));
            }
            if step % 400 == 399 {
                heap.compact_full();
            }
            if step % 150 == 0 {
                for (i, st) in stores.iter().enumerate() {
                    check(
                        st,
                        &models[i],
                        &format!("seed {seed} step {step} store {i}"),
                    );
                }
            }
        }
        for (i, st) in stores.iter().enumerate() {
            check(st, &models[i], &format!("seed {seed} end store {i}"));
        }
        // Drop one store: the others keep exactly their values.
        let gone = stores.into_iter().next().unwrap();
        drop(gone);
    }
}

#[test]
fn iteration_is_exact_after_threads_insert_and_remove_concurrently() {
    // Threads insert and remove through their own lanes (handle slots move between
    // threads through the shared free list) on two stores of one heap; at quiescence
    // each store iterates exactly the values the threads left.
    for seed in 0..4u64 {
        let heap = Arc::new(Heap::new());
        let a: Store<u64> = Store::new_in(heap.clone());
        let b: Store<u64> = Store::new_in(heap.clone());
        let kept: Vec<Vec<(usize, Handle<u64>, u64)>> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..3u64)
                .map(|t| {
                    let stores = [a.clone(), b.clone()];
                    sc.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(seed * 10 + t);
                        let mut mine: Vec<(usize, Handle<u64>, u64)> = Vec::new();
                        for i in 0..4000u64 {
                            if mine.is_empty() || rng.gen_bool(0.6) {
                                let s = rng.gen_range(0..2);
                                let v = t << 40 | i;
                                mine.push((s, stores[s].insert(v), v));
                            } else {
                                let (s, h, v) = mine.swap_remove(rng.gen_range(0..mine.len()));
                                assert_eq!(stores[s].remove(h), Some(v));
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut models = [HashMap::new(), HashMap::new()];
        for (s, h, v) in kept.into_iter().flatten() {
            assert!(models[s].insert(h, v).is_none(), "one handle issued twice");
        }
        check(&a, &models[0], &format!("seed {seed} store a"));
        check(&b, &models[1], &format!("seed {seed} store b"));
        heap.compact_full();
        check(&a, &models[0], &format!("seed {seed} store a, compacted"));
    }
}

/// Scoped iteration keeps the handle table's segment of the last index it resolved:
/// two stores interleaved over many segments, then removals (which reorder each list by
/// swap-remove, so consecutive items jump between segments), must still iterate to
/// exactly the model, each item once, from this thread and from others (whose lanes
/// fill their own change rings).
#[test]
fn scoped_iteration_across_segments_matches_the_model() {
    let heap = Arc::new(Heap::new());
    let a: Store<u64> = Store::new_in(heap.clone());
    let b: Store<u64> = Store::new_in(heap);
    let mut model = HashMap::new();
    let mut rng = SmallRng::seed_from_u64(7);
    for i in 0..20_000u64 {
        model.insert(a.insert(i), i);
        b.insert(i);
    }
    check(&a, &model, "after the inserts");
    let doomed: Vec<Handle<u64>> = model
        .keys()
        .copied()
        .filter(|_| rng.gen_bool(0.4))
        .collect();
    let (mine, theirs) = doomed.split_at(doomed.len() / 2);
    std::thread::scope(|s| {
        s.spawn(|| {
            for &h in theirs {
                assert!(a.remove(h).is_some());
            }
        });
    });
    for &h in mine {
        assert!(a.remove(h).is_some());
    }
    for h in &doomed {
        model.remove(h);
    }
    check(&a, &model, "after the removals");
    assert_eq!(b.len(), 20_000);
}
