//! NUMA migration of handle blocks by what reads them, under the injected two-node
//! topology of `numa_common` (node 0 = CPU 0, node 1 = CPU 1): values read only
//! through read scopes move to their reader's node (issue 16: scoped reads are sampled
//! too), and a defragmenting plan sends misplaced blocks of its sources straight to their
//! reader's node ("one copy does both"). Tests that cannot pin to CPUs 0 and 1 print why
//! they skip.

mod numa_common;
use numa_common::{migrate_all, on_cpu, pin, settle, two_cpus, two_node_heap, value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::numa::NumaMigration;
use tidyheap::{Budget, Handle, HandleError, Store};

/// Values read only through read scopes (`get`, `try_get`, `contains`, `iter`) from
/// node 1 end up in node-1 arenas with their contents, whatever the sample period;
/// values of the same store read through scopes from node 0 stay; a handle of another
/// store resolves to nothing through a scope, sampling or not.
#[test]
fn values_read_through_scopes_move_to_their_reader() {
    if !two_cpus() {
        return;
    }
    for period in [1, 64] {
        let heap = two_node_heap();
        heap.set_numa_migration(NumaMigration {
            sample_period: period,
            ..heap.numa_migration()
        })
        .unwrap();
        let store: Store<[u64; 8]> = Store::new_in(heap.clone());
        let listed: Store<[u64; 8]> = Store::new_in(heap.clone());
        let (far, near, foreign) = on_cpu(0, || {
            let far: Vec<_> = (0..200u64).map(|i| (store.insert(value(i)), i)).collect();
            let near: Vec<_> = (200..300u64).map(|i| (store.insert(value(i)), i)).collect();
            for i in 0..50u64 {
                listed.insert(value(i));
            }
            (far, near, listed.insert(value(7)))
        });
        let samples = heap.stats().numa.read_samples;
        // Many small scopes (as systems open them each frame): sampling scopes are
        // picked per scope.
        let rounds = 40 * period as usize;
        on_cpu(1, || {
            for r in 0..rounds {
                let scope = store.read();
                assert_eq!(scope.get(foreign), None);
                assert_eq!(scope.try_get(foreign), Err(HandleError::Stale));
                for (k, &(h, i)) in far.iter().enumerate() {
                    match (r + k) % 3 {
                        0 => assert_eq!(scope.get(h), Some(&value(i))),
                        1 => assert_eq!(scope.try_get(h), Ok(&value(i))),
                        _ => assert!(scope.contains(h)),
                    }
                }
                drop(scope);
                let scope = listed.read();
                assert_eq!(scope.iter().count(), 51);
            }
        });
        on_cpu(0, || {
            for _ in 0..rounds {
                let scope = store.read();
                for &(h, i) in &near {
                    assert_eq!(scope.get(h), Some(&value(i)));
                }
            }
        });
        let after = heap.stats().numa.read_samples;
        assert!(after - samples >= 8 * 350, "{after} {samples}");
        let moved = migrate_all(&heap, Budget::UNLIMITED);
        assert_eq!(moved, far.len() as u64 + 51, "period {period}");
        for &(h, i) in &far {
            assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(1)));
            assert_eq!(store.read().get(h), Some(&value(i)));
        }
        for &(h, i) in &near {
            assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(0)));
            assert_eq!(*store.get(h).unwrap(), value(i));
        }
        let scope = listed.read();
        for (h, v) in scope.iter() {
            assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(1)));
            assert_eq!(v[1], v[0] + 1);
        }
    }
}

/// One copy does both: with migration's share of each pass at 0, a defragmenting plan
/// moves the survivors of its sources that node 1 reads straight into node-1 spans (as
/// NUMA moves) and the others into node-0 targets. Every value stays intact, values
/// node 1 does not read never leave node 0, and no value is copied twice, also once a
/// pass with a migration share moves the misplaced values the plan did not meet. Before,
/// the plan copied every source survivor to node 0, and migration copied the misplaced
/// ones again.
#[test]
fn defragmenting_moves_prefer_the_readers_node() {
    if !two_cpus() {
        return;
    }
    let heap = two_node_heap();
    let shared = heap.numa_migration();
    heap.set_numa_migration(NumaMigration {
        budget_share: 0.0,
        ..shared
    })
    .unwrap();
    let store: Store<[u64; 8]> = Store::new_in(heap.clone());
    let survivors = on_cpu(0, || {
        let all: Vec<_> = (0..4000u64).map(|i| (store.insert(value(i)), i)).collect();
        let mut keep = Vec::new();
        for (k, (h, i)) in all.into_iter().enumerate() {
            if k % 4 == 0 {
                keep.push((h, i));
            } else {
                assert_eq!(store.remove(h), Some(value(i)));
            }
        }
        keep
    });
    // Node 1 reads every other survivor.
    let read = |k: usize| k.is_multiple_of(2);
    on_cpu(1, || {
        for _ in 0..12 {
            for (k, &(h, i)) in survivors.iter().enumerate() {
                if read(k) {
                    assert_eq!(*store.get(h).unwrap(), value(i));
                }
            }
        }
    });
    let (mut moved, mut numa, mut emptied) = (0, 0, 0);
    for _ in 0..1000 {
        let r = heap.compact(Budget::blocks(64));
        assert!(r.blocks_moved <= 64, "{r:?}");
        moved += r.blocks_moved;
        numa += r.numa_blocks_moved;
        emptied += r.spans_emptied;
        if r.blocks_moved == 0 && r.skipped_busy == 0 && r.plans == 0 {
            break;
        }
    }
    assert!(emptied > 0, "the plan emptied no span");
    let on_node = |n: u32| {
        survivors
            .iter()
            .filter(|(h, _)| heap.node_of_handle(h.raw()) == Ok(Some(n)))
            .count() as u64
    };
    assert!(numa > 0, "no defragmenting move went to the reader's node");
    assert_eq!(on_node(1), numa);
    for (k, &(h, i)) in survivors.iter().enumerate() {
        if !read(k) {
            assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(0)), "value {k}");
        }
        assert_eq!(*store.get(h).unwrap(), value(i));
    }
    // With a share again, migration moves the misplaced values the plan left in its
    // targets; no value was copied twice.
    heap.set_numa_migration(shared).unwrap();
    for _ in 0..100 {
        let r = heap.compact(Budget::UNLIMITED);
        moved += r.blocks_moved;
        if r.blocks_moved == 0 && r.skipped_busy == 0 {
            break;
        }
    }
    assert_eq!(on_node(1), survivors.len() as u64 / 2);
    assert!(moved <= survivors.len() as u64, "{moved} copies");
    for (k, &(h, i)) in survivors.iter().enumerate() {
        let node = if read(k) { 1 } else { 0 };
        assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(node)), "value {k}");
        assert_eq!(*store.get(h).unwrap(), value(i));
    }
}

/// A differential model over a store: random inserts, removes, writes, guarded reads and
/// scoped reads (`get`, `try_get`, `iter`) from one thread that re-pins itself to a
/// random node each round (so its arena follows it), with a budgeted pass after each
/// round (migration share, plans and their one-copy moves). Values always match the
/// model, removed handles stay stale, the heap's live blocks are the model's, and the
/// NUMA counters add up. Four seeds.
#[test]
fn store_model_with_scopes_moving_threads_and_plans() {
    if !two_cpus() {
        return;
    }
    for seed in 0..4u64 {
        let heap = two_node_heap();
        heap.set_numa_migration(NumaMigration {
            sample_period: 4,
            threshold: 2,
            ..heap.numa_migration()
        })
        .unwrap();
        let store: Store<[u64; 8]> = Store::new_in(heap.clone());
        let (numa, moves) = std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = SmallRng::seed_from_u64(seed);
                let mut live: Vec<(Handle<[u64; 8]>, u64)> = Vec::new();
                let mut dead = Vec::new();
                let (mut next, mut numa, mut moves) = (0u64, 0u64, 0u64);
                for _round in 0..40 {
                    assert!(pin(rng.gen_range(0..2)));
                    for _ in 0..300 {
                        let pick = rng.gen_range(0..usize::MAX);
                        match rng.gen_range(0..10) {
                            0..=2 => {
                                next += 1;
                                live.push((store.insert(value(next)), next));
                            }
                            3 | 4 if !live.is_empty() => {
                                let (h, i) = live.swap_remove(pick % live.len());
                                assert_eq!(store.remove(h), Some(value(i)));
                                dead.push(h);
                            }
                            5 if !live.is_empty() => {
                                let k = pick % live.len();
                                next += 1;
                                *store.get_mut(live[k].0).unwrap() = value(next);
                                live[k].1 = next;
                            }
                            6 if !live.is_empty() => {
                                let (h, i) = live[pick % live.len()];
                                assert_eq!(*store.get(h).unwrap(), value(i));
                            }
                            7 | 8 if !live.is_empty() => {
                                let scope = store.read();
                                for k in 0..16 {
                                    let (h, i) = live[(pick + k * 7919) % live.len()];
                                    if k % 2 == 0 {
                                        assert_eq!(scope.get(h), Some(&value(i)));
                                    } else {
                                        assert_eq!(scope.try_get(h), Ok(&value(i)));
                                    }
                                }
                                if let Some(&h) = dead.last() {
                                    assert_eq!(scope.get(h), None);
                                }
                            }
                            9 => {
                                let scope = store.read();
                                let mut n = 0;
                                for (_, v) in scope.iter() {
                                    assert_eq!(*v, value(v[0] / 37));
                                    n += 1;
                                }
                                assert_eq!(n, live.len());
                            }
                            _ => {}
                        }
                    }
                    let r = heap.compact(Budget::blocks(48));
                    assert!(r.blocks_moved <= 48 && r.numa_blocks_moved <= r.blocks_moved);
                    numa += r.numa_blocks_moved;
                    moves += r.blocks_moved;
                }
                numa += settle(&heap, Budget::blocks(64));
                for &(h, i) in &live {
                    assert_eq!(*store.get(h).unwrap(), value(i), "seed {seed}");
                }
                for &h in &dead {
                    assert!(store.get(h).is_none());
                }
                heap.trim();
                assert_eq!(heap.walk().movable_live_blocks, live.len(), "seed {seed}");
                assert_eq!(store.len(), live.len());
                (numa, moves)
            })
            .join()
            .unwrap()
        });
        let st = heap.stats().numa;
        assert_eq!(st.compactor_migrated_blocks, numa, "seed {seed}");
        println!(
            "seed {seed}: {moves} moves in budgeted passes, {numa} migrations, {} thread \
             moves, {} samples",
            st.thread_moves, st.read_samples
        );
    }
}
