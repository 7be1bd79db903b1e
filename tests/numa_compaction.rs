//! Compactor-driven NUMA migration of handle blocks (issue 16 item 3), under an injected
//! two-node topology (node 0 = CPU 0, node 1 = CPU 1) with threads pinned to "nodes":
//! blocks read from node 1 (through guards or read scopes) move into node-1 arenas, keep
//! their contents, and never move under an open read scope or a guard; stale handles stay
//! stale; one-node heaps never sample. Tests that cannot pin to CPUs 0 and 1 print why
//! they skip.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

mod numa_common;
use numa_common::{migrate_all, on_cpu, pin, settle, two_cpus, two_node_heap, two_nodes, value};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::numa::{NumaError, NumaMigration, Topology};
use tidyheap::{Budget, HandleError, Heap, HeapConfig, RawHandle, Store};

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Values and raw blocks made on node 0 and read from node 1 end up in node-1 arenas
/// with their contents; values read only from node 0 stay; freed handles stay stale.
#[test]
fn blocks_read_from_node_1_move_to_node_1() {
    if !two_cpus() {
        return;
    }
    let heap = two_node_heap();
    let store: Store<[u64; 8]> = Store::new_in(heap.clone());
    let (values, local, raws, stale) = on_cpu(0, || {
        let values: Vec<_> = (0..300u64).map(|i| (store.insert(value(i)), i)).collect();
        let local: Vec<_> = (300..400u64).map(|i| (store.insert(value(i)), i)).collect();
        let mut raws = Vec::new();
        let mut stale = Vec::new();
        for i in 0..300u64 {
            let len = 40 + (i as usize * 7) % 400;
            let h = heap.insert_bytes(&pattern(i, len)).unwrap();
            if i % 3 == 0 {
                stale.push(h);
            } else {
                raws.push((h, i, len));
            }
        }
        for &h in &stale {
            heap.free_handle(h).unwrap();
        }
        // Node 0 reads its own values: they are home already.
        for _ in 0..20 {
            for &(h, _) in &local {
                assert!(store.get(h).is_some());
            }
        }
        (values, local, raws, stale)
    });
    for &(h, _) in values.iter().chain(&local) {
        assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(0)));
    }
    for &(h, ..) in &raws {
        assert_eq!(heap.node_of_handle(h), Ok(Some(0)));
    }
    // Node 1 reads: values half through guards, half through scopes; raw blocks
    // through guards.
    on_cpu(1, || {
        for _ in 0..12 {
            for (k, &(h, i)) in values.iter().enumerate() {
                if k % 2 == 0 {
                    assert_eq!(*store.get(h).unwrap(), value(i));
                } else {
                    assert_eq!(store.read().get(h), Some(&value(i)));
                }
            }
            for &(h, i, len) in &raws {
                assert_eq!(&*heap.read(h).unwrap(), &pattern(i, len)[..]);
            }
        }
    });
    let before = heap.stats().numa;
    assert!(before.read_samples >= 12 * 350, "{before:?}");
    assert_eq!(before.compactor_migrated_blocks, 0);
    let moved = migrate_all(&heap, Budget::blocks(32));
    assert_eq!(moved, (values.len() + raws.len()) as u64);
    let after = heap.stats().numa;
    assert_eq!(after.compactor_migrated_blocks, moved);
    let bytes: usize = raws.iter().map(|r| r.2).sum::<usize>() + values.len() * 64;
    assert_eq!(after.compactor_migrated_bytes, bytes as u64);
    for (k, &(h, i)) in values.iter().enumerate() {
        assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(1)), "value {k}");
        assert_eq!(*store.get(h).unwrap(), value(i));
    }
    for &(h, i) in &local {
        assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(0)));
        assert_eq!(*store.get(h).unwrap(), value(i));
    }
    for &(h, i, len) in &raws {
        assert_eq!(heap.node_of_handle(h), Ok(Some(1)));
        assert_eq!(&*heap.read(h).unwrap(), &pattern(i, len)[..]);
    }
    for &h in &stale {
        assert_eq!(heap.read(h).unwrap_err(), HandleError::Stale);
        assert_eq!(heap.node_of_handle(h), Err(HandleError::Stale));
    }
    // The samples were reset by the moves: nothing more to do.
    assert_eq!(heap.compact(Budget::UNLIMITED).numa_blocks_moved, 0);
    assert_eq!(heap.walk().movable_live_blocks, store.len() + raws.len());
}

/// A value under an open read scope never moves (the scope sees it unchanged, at the same
/// address); raw blocks of the same heap still do; once the scope closes, the value
/// follows. A block under a read guard held by another thread is skipped as busy.
#[test]
fn scopes_and_guards_hold_blocks_in_place() {
    if !two_cpus() {
        return;
    }
    let heap = two_node_heap();
    let store: Store<[u64; 8]> = Store::new_in(heap.clone());
    let (values, raw) = on_cpu(0, || {
        let values: Vec<_> = (0..64u64).map(|i| (store.insert(value(i)), i)).collect();
        (values, heap.insert_bytes(&pattern(9, 300)).unwrap())
    });
    on_cpu(1, || {
        for _ in 0..10 {
            for &(h, _) in &values {
                assert!(store.get(h).is_some());
            }
            assert!(heap.read(raw).is_ok());
        }
    });
    // A guard held on another thread on one value. Everything reads from node 1, so the
    // votes only grow.
    let release = AtomicBool::new(false);
    on_cpu(1, || {
        let (held_tx, held_rx) = mpsc::channel();
        std::thread::scope(|s| {
            // Lets the guard holder go also when an assertion below fails.
            let _release = Release(&release);
            let (store, release, guarded) = (&store, &release, values[0].0);
            s.spawn(move || {
                assert!(pin(1));
                let g = store.get(guarded).unwrap();
                held_tx.send(()).unwrap();
                while !release.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                drop(g);
            });
            held_rx.recv().unwrap();
            let scope = store.read();
            let seen: Vec<*const [u64; 8]> = values
                .iter()
                .map(|&(h, _)| scope.get(h).unwrap() as *const _)
                .collect();
            let r = heap.compact(Budget::UNLIMITED);
            assert_eq!(r.numa_blocks_moved, 1, "only the raw block: {r:?}");
            assert!(r.skipped_busy >= values.len() as u64, "{r:?}");
            assert_eq!(heap.node_of_handle(raw), Ok(Some(1)));
            for (k, &(h, i)) in values.iter().enumerate() {
                let v = scope.get(h).unwrap();
                assert_eq!(v as *const _, seen[k], "a value moved under an open scope");
                assert_eq!(*v, value(i));
                assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(0)));
            }
            drop(scope);
            // The scope is closed; the guarded value is still busy.
            let r = heap.compact(Budget::UNLIMITED);
            assert_eq!(r.numa_blocks_moved, values.len() as u64 - 1, "{r:?}");
            assert_eq!(r.skipped_busy, 1, "{r:?}");
        })
    });
    let r = heap.compact(Budget::UNLIMITED);
    assert_eq!(r.numa_blocks_moved, 1, "{r:?}");
    for &(h, i) in &values {
        assert_eq!(heap.node_of_handle(h.raw()), Ok(Some(1)));
        assert_eq!(*store.get(h).unwrap(), value(i));
    }
}

/// Sets its flag when dropped (also on unwind).
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A block freed after it was sampled, and a new block that takes its slot (and likely
/// its place) at once: the freed one is never touched, the new one does not inherit the
/// vote. With migration off, nothing is sampled or moved.
#[test]
fn freed_reused_and_disabled() {
    if !two_cpus() {
        return;
    }
    let heap = two_node_heap();
    let hs = on_cpu(0, || {
        (0..50u64)
            .map(|i| heap.insert_bytes(&pattern(i, 100)).unwrap())
            .collect::<Vec<_>>()
    });
    on_cpu(1, || {
        for _ in 0..10 {
            for &h in &hs {
                assert!(heap.read(h).is_ok());
            }
        }
    });
    let fresh = on_cpu(0, || {
        (0..25)
            .map(|i| {
                heap.free_handle(hs[i]).unwrap();
                heap.insert_bytes(&pattern(1000 + i as u64, 100)).unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(migrate_all(&heap, Budget::UNLIMITED), 25);
    for (i, &h) in fresh.iter().enumerate() {
        assert_eq!(
            heap.node_of_handle(h),
            Ok(Some(0)),
            "a new block inherited a vote"
        );
        assert_eq!(&*heap.read(h).unwrap(), &pattern(1000 + i as u64, 100)[..]);
    }
    for &h in &hs[..25] {
        assert_eq!(heap.read(h).unwrap_err(), HandleError::Stale);
    }
    for &h in &hs[25..] {
        assert_eq!(heap.node_of_handle(h), Ok(Some(1)));
    }
    heap.set_numa_migration(NumaMigration::OFF).unwrap();
    let samples = heap.stats().numa.read_samples;
    on_cpu(1, || {
        for _ in 0..10 {
            for &h in &fresh {
                assert!(heap.read(h).is_ok());
            }
        }
    });
    assert_eq!(heap.stats().numa.read_samples, samples);
    assert_eq!(heap.compact(Budget::UNLIMITED).numa_blocks_moved, 0);
}

/// One-node heaps never sample, whatever the setting, and never migrate.
#[test]
fn one_node_heaps_never_sample() {
    static ONE: Topology = Topology::single_node();
    let heaps = [
        Heap::new(),
        Heap::with_config(HeapConfig {
            topology: Some(&ONE),
            ..HeapConfig::DEFAULT
        }),
    ];
    for heap in heaps {
        if heap.topology().node_count() != 1 {
            println!("skipped: this machine has more than one node");
            continue;
        }
        assert_eq!(heap.numa_migration(), NumaMigration::OFF);
        heap.set_numa_migration(NumaMigration {
            sample_period: 1,
            ..NumaMigration::DEFAULT
        })
        .unwrap();
        let heap = Arc::new(heap);
        let store = Store::new_in(heap.clone());
        let hs: Vec<_> = (0..100u32).map(|i| store.insert(i)).collect();
        let raw = heap.insert_bytes(b"abc").unwrap();
        for _ in 0..100 {
            let scope = store.read();
            for &h in &hs {
                assert!(scope.get(h).is_some());
                assert!(store.get(h).is_some());
            }
            assert!(heap.read(raw).is_ok());
        }
        let r = heap.compact_full();
        assert_eq!(r.numa_blocks_moved, 0);
        let s = heap.stats().numa;
        assert_eq!(
            (s.read_samples, s.compactor_migrated_blocks),
            (0, 0),
            "{s:?}"
        );
    }
}

/// Bad settings are errors that change nothing.
#[test]
fn bad_settings_are_errors() {
    let heap = Heap::new();
    let before = heap.numa_migration();
    for bad in [
        NumaMigration {
            sample_period: 0,
            ..NumaMigration::DEFAULT
        },
        NumaMigration {
            sample_period: tidyheap::numa::MAX_SAMPLE_PERIOD + 1,
            ..NumaMigration::DEFAULT
        },
        NumaMigration {
            threshold: 16,
            ..NumaMigration::DEFAULT
        },
        NumaMigration {
            budget_share: f32::NAN,
            ..NumaMigration::DEFAULT
        },
        NumaMigration {
            budget_share: -0.1,
            ..NumaMigration::DEFAULT
        },
    ] {
        assert!(matches!(
            heap.set_numa_migration(bad),
            Err(NumaError::InvalidMigration { .. })
        ));
        assert_eq!(heap.numa_migration(), before);
    }
}

/// Random inserts, frees, writes and reads from both nodes, with budgeted passes
/// between them, against a model of the contents; every live handle checked at the end,
/// every freed one stale, accounting exact. Several seeds.
#[test]
fn differential_against_a_model() {
    if !two_cpus() {
        return;
    }
    for seed in 0..4u64 {
        let heap = two_node_heap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut live: Vec<(RawHandle, u64, usize)> = Vec::new();
        let mut dead: Vec<RawHandle> = Vec::new();
        let mut version = 0u64;
        let mut migrated = 0;
        for _round in 0..30 {
            let cpu = rng.gen_range(0..2);
            let ops: Vec<(u8, usize, usize)> = (0..200)
                .map(|_| {
                    (
                        rng.gen_range(0..10),
                        rng.gen_range(0..usize::MAX),
                        rng.gen_range(1..600),
                    )
                })
                .collect();
            let (l, d, v) = on_cpu(cpu, || {
                let (mut live, mut dead, mut version) = (
                    std::mem::take(&mut live),
                    std::mem::take(&mut dead),
                    version,
                );
                for (op, pick, len) in ops {
                    match op {
                        0..=2 => {
                            version += 1;
                            let h = heap.insert_bytes(&pattern(version, len)).unwrap();
                            live.push((h, version, len));
                        }
                        3 if !live.is_empty() => {
                            let (h, ..) = live.swap_remove(pick % live.len());
                            heap.free_handle(h).unwrap();
                            dead.push(h);
                        }
                        4 if !live.is_empty() => {
                            let k = pick % live.len();
                            version += 1;
                            let (h, _, len) = live[k];
                            heap.write(h)
                                .unwrap()
                                .copy_from_slice(&pattern(version, len));
                            live[k].1 = version;
                        }
                        _ if !live.is_empty() => {
                            let (h, v, len) = live[pick % live.len()];
                            for _ in 0..8 {
                                assert_eq!(&*heap.read(h).unwrap(), &pattern(v, len)[..]);
                            }
                        }
                        _ => {}
                    }
                }
                (live, dead, version)
            });
            (live, dead, version) = (l, d, v);
            let r = heap.compact(Budget::blocks(40));
            migrated += r.numa_blocks_moved;
        }
        migrated += settle(&heap, Budget::blocks(64));
        for &(h, v, len) in &live {
            assert_eq!(&*heap.read(h).unwrap(), &pattern(v, len)[..], "seed {seed}");
        }
        for &h in &dead {
            assert_eq!(heap.read(h).unwrap_err(), HandleError::Stale);
        }
        heap.trim();
        let walk = heap.walk();
        assert_eq!(walk.movable_live_blocks, live.len(), "seed {seed}");
        assert_eq!(
            heap.stats().numa.compactor_migrated_blocks,
            migrated,
            "seed {seed}"
        );
        println!("seed {seed}: {migrated} blocks migrated");
    }
}

fn consistent(v: &[u64; 8]) -> bool {
    v.iter()
        .enumerate()
        .all(|(k, &w)| w == v[0].wrapping_add(k as u64))
}

/// A reader on node 1 (guards and scopes), a writer on node 0 (writes, inserts,
/// removes) and budgeted passes on a third thread, all at once: every value read is
/// whole, every value is intact at the end, and accounting is exact.
#[test]
fn stress_readers_writers_and_passes() {
    if !two_cpus() {
        return;
    }
    let heap = two_node_heap();
    let store: Store<[u64; 8]> = Store::new_in(heap.clone());
    let shared: Vec<_> = (0..500u64).map(|i| store.insert(value(i))).collect();
    let done = AtomicBool::new(false);
    let (migrated, passes) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            assert!(pin(1));
            let mut rng = SmallRng::seed_from_u64(1);
            for round in 0..300 {
                if round % 2 == 0 {
                    let scope = store.read();
                    for _ in 0..200 {
                        let v = scope.get(shared[rng.gen_range(0..shared.len())]).unwrap();
                        assert!(consistent(v), "torn value under a scope: {v:?}");
                    }
                } else {
                    for _ in 0..200 {
                        let v = store.get(shared[rng.gen_range(0..shared.len())]).unwrap();
                        assert!(consistent(&v), "torn value under a guard: {v:?}");
                    }
                }
            }
        });
        let writer = s.spawn(|| {
            assert!(pin(0));
            let mut rng = SmallRng::seed_from_u64(2);
            let mut own = Vec::new();
            for i in 0..20_000u64 {
                match rng.gen_range(0..4) {
                    0 => own.push(store.insert(value(i))),
                    1 if !own.is_empty() => {
                        let h = own.swap_remove(rng.gen_range(0..own.len()));
                        assert!(consistent(&store.remove(h).unwrap()));
                    }
                    _ => {
                        let h = shared[rng.gen_range(0..shared.len())];
                        *store.get_mut(h).unwrap() = value(i);
                    }
                }
            }
            own
        });
        let compactor = s.spawn(|| {
            let (mut migrated, mut passes) = (0, 0);
            while !done.load(Ordering::Acquire) {
                let r = heap.compact(Budget::blocks(16));
                migrated += r.numa_blocks_moved;
                passes += 1;
            }
            (migrated, passes)
        });
        reader.join().unwrap();
        let own = writer.join().unwrap();
        done.store(true, Ordering::Release);
        let out = compactor.join().unwrap();
        for h in own {
            assert!(consistent(&store.remove(h).unwrap()));
        }
        out
    });
    let settle = migrate_all(&heap, Budget::UNLIMITED);
    for &h in &shared {
        assert!(consistent(&store.get(h).unwrap()));
    }
    heap.trim();
    assert_eq!(heap.walk().movable_live_blocks, shared.len());
    assert_eq!(heap.stats().movable.live_blocks(), shared.len() as u64);
    assert_eq!(
        heap.stats().numa.compactor_migrated_blocks,
        migrated + settle
    );
    println!("{passes} passes, {} blocks migrated", migrated + settle);
}

/// Large handle blocks keep their address: read from node 1, their pages are moved there
/// with `move_pages` (here, where the machine lacks node 1, the kernel's refusal is
/// counted, never a panic); read from the node their pages are on, nothing happens. A
/// queued block freed before the pass is skipped. Contents stay intact throughout.
#[test]
fn large_blocks_move_their_pages() {
    if !two_cpus() {
        return;
    }
    const LEN: usize = 1 << 20;
    // Node id 0 = CPU 1 and node id 1 = CPU 0: the reader on CPU 1 reads from node 0,
    // where this machine keeps every page.
    let swapped = Box::leak(Box::new(
        Topology::from_nodes(&[(1, &[0]), (0, &[1])]).unwrap(),
    ));
    for topo in [two_nodes(), &*swapped] {
        let heap = Heap::with_config(HeapConfig {
            arenas: 2,
            topology: Some(topo),
            ..HeapConfig::DEFAULT
        });
        heap.set_numa_migration(NumaMigration {
            sample_period: 1,
            ..NumaMigration::DEFAULT
        })
        .unwrap();
        let (big, gone) = on_cpu(0, || {
            (
                heap.insert_bytes(&pattern(5, LEN)).unwrap(),
                heap.insert_bytes(&pattern(6, LEN)).unwrap(),
            )
        });
        assert_eq!(heap.node_of_handle(big), Ok(None));
        let addr = heap.read(big).unwrap().as_ptr();
        on_cpu(1, || {
            for _ in 0..10 {
                assert_eq!(heap.read(big).unwrap()[LEN - 1], pattern(5, LEN)[LEN - 1]);
                assert!(heap.read(gone).is_ok());
            }
        });
        heap.free_handle(gone).unwrap();
        // A pass with too little time leaves the large block queued.
        let r = heap.compact(Budget::time(std::time::Duration::from_micros(1)));
        assert_eq!(r.numa_blocks_moved, 0, "{r:?}");
        assert_eq!(heap.stats().numa.compactor_migration_failures, 0);
        let r = heap.compact(Budget::UNLIMITED);
        let s = heap.stats().numa;
        let reader_node = topo.node_of_cpu(1);
        let machine_has_it = Topology::system().index_of(reader_node).is_some();
        if reader_node == 0 || !machine_has_it {
            // Already there (swapped), or refused (node 1 missing): nothing moved.
            assert_eq!(r.numa_blocks_moved, 0, "{r:?}");
            assert_eq!(s.compactor_migrated_blocks, 0);
            let refused = u64::from(!machine_has_it);
            assert_eq!(s.compactor_migration_failures, refused, "{s:?}");
        } else {
            assert_eq!(r.numa_blocks_moved, 1, "{r:?}");
            assert_eq!(r.numa_bytes_moved, LEN as u64);
            let g = heap.read(big).unwrap();
            assert_eq!(tidyheap::numa::node_of_address(g.as_ptr()), Ok(reader_node));
        }
        let g = heap.read(big).unwrap();
        assert_eq!(g.as_ptr(), addr, "a large block never changes address");
        assert_eq!(&*g, &pattern(5, LEN)[..]);
        drop(g);
        // The vote was reset: the next pass has nothing to do.
        let failures = heap.stats().numa.compactor_migration_failures;
        assert_eq!(heap.compact(Budget::UNLIMITED).numa_blocks_moved, 0);
        assert_eq!(heap.stats().numa.compactor_migration_failures, failures);
        assert_eq!(heap.read(gone).unwrap_err(), HandleError::Stale);
    }
}
