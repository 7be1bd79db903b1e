//! Handle resolution and handle churn against `slotmap` and plain pointers.
//!
//! * `handle_get/<peer>/<live>`: with `live` entries, resolve a handle picked at random
//!   and read its `u64`, `BATCH` times per iteration. The random index sequence is
//!   generated up front (1 Mi indices, walked as a ring, so 1M live entries are not all
//!   cache-resident) and is the same for every peer; each handle goes through
//!   `black_box` so nothing is hoisted.
//!   - `tidyheap_store`: `Store<u64>::get` → `Ref` deref (resolve + shared guard + tag check);
//!   - `tidyheap_raw`: `Heap::read` on 8-byte raw handles (resolve + guard + block length
//!     lookup in the span's side table);
//!   - `tidyheap_scoped`: `Store<u64>::read()` once per `BATCH` gets, then
//!     `ReadScope::get` (resolve + generation check + tag check, no atomic RMW);
//!   - `slotmap`: `SlotMap<DefaultKey, u64>::get`;
//!   - `slotmap_box`: `SlotMap<DefaultKey, Box<u64>>::get` (our memory topology: the
//!     value behind a pointer in the slot);
//!   - `thunderdome`, `generational_arena`, `slab`: the other containers users pick
//!     (`slab` has no generation check);
//!   - `raw_ptr`: dereference of a `Vec<Box<u64>>` entry (the floor: no resolution).
//! * `handle_insert_remove/<peer>/<live>`: `BATCH` inserts then `BATCH` removes, on top
//!   of `live` (10 000) entries; one element = one insert + remove pair. `box` (system
//!   allocator `Box::new` + drop) is a reference point.
//!
//! * `handle_reinsert/<peer>/<live>`: on `live` (10 000) entries, remove the entry at a
//!   random position and insert a new value (which reuses the freed slot), `BATCH` times
//!   per iteration; one element = one remove + insert pair, same positions for every peer.
//!
//! * `handle_iterate/<peer>/<live>`: sum every value of a container of `live` (10 000)
//!   entries; `tidyheap_scoped_shared_heap` iterates a store whose heap also holds
//!   another store of the same size.
//!
//! Throughput is in elements (gets, pairs or items). Run with `cargo bench --bench handles`;
//! `cargo test --bench handles` runs each benchmark once on small sizes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};

#[path = "common/insert_remove.rs"]
mod insert_remove;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::{Handle, Heap, RawHandle, Store};

/// Operations per timed iteration.
const BATCH: usize = 1024;

/// Whether criterion runs real measurements (`cargo bench` passes `--bench`); otherwise
/// it is `cargo test --benches`, which runs every benchmark once, so sizes stay tiny.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `len` random indices below `n`, a multiple of `BATCH` long.
fn random_order(n: usize, len: usize, seed: u64) -> Vec<u32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(0..n as u32)).collect()
}

/// Runs `f` on the next `BATCH` indices of `order` (a ring) each iteration.
fn bench_ring(b: &mut criterion::Bencher<'_>, order: &[u32], mut f: impl FnMut(&[u32]) -> u64) {
    let mut pos = 0;
    b.iter(|| {
        let r = f(&order[pos..pos + BATCH]);
        pos = (pos + BATCH) % order.len();
        r
    });
}

fn handle_get(c: &mut Criterion, sizes: &[usize], order_len: usize) {
    let mut group = c.benchmark_group("handle_get");
    group.throughput(Throughput::Elements(BATCH as u64));
    for &n in sizes {
        let order = random_order(n, order_len, 0x5eed ^ n as u64);

        let store: Store<u64> = Store::new();
        let store_handles: Vec<Handle<u64>> = (0..n as u64).map(|i| store.insert(i)).collect();
        group.bench_function(BenchmarkId::new("tidyheap_store", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let h = black_box(store_handles[i as usize]);
                    sum = sum.wrapping_add(*store.get(h).expect("live handle"));
                }
                sum
            })
        });
        group.bench_function(BenchmarkId::new("tidyheap_scoped", n), |b| {
            bench_ring(b, &order, |idx| {
                let view = store.read();
                let mut sum = 0u64;
                for &i in idx {
                    let h = black_box(store_handles[i as usize]);
                    sum = sum.wrapping_add(*view.get(h).expect("live handle"));
                }
                sum
            })
        });
        drop(store_handles);
        drop(store);

        let heap = Heap::new();
        let raw: Vec<RawHandle> = (0..n as u64)
            .map(|i| heap.insert_bytes(&i.to_ne_bytes()).expect("alloc"))
            .collect();
        group.bench_function(BenchmarkId::new("tidyheap_raw", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let h = black_box(raw[i as usize]);
                    let g = heap.read(h).expect("live handle");
                    let bytes: [u8; 8] = g[..8].try_into().expect("8-byte block");
                    sum = sum.wrapping_add(u64::from_ne_bytes(bytes));
                }
                sum
            })
        });
        drop(raw);
        drop(heap);

        let mut sm: SlotMap<DefaultKey, u64> = SlotMap::with_capacity(n);
        let keys: Vec<DefaultKey> = (0..n as u64).map(|i| sm.insert(i)).collect();
        group.bench_function(BenchmarkId::new("slotmap", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let k = black_box(keys[i as usize]);
                    sum = sum.wrapping_add(*sm.get(k).expect("live key"));
                }
                sum
            })
        });
        drop(keys);
        drop(sm);

        let mut smb: SlotMap<DefaultKey, Box<u64>> = SlotMap::with_capacity(n);
        let keys: Vec<DefaultKey> = (0..n as u64).map(|i| smb.insert(Box::new(i))).collect();
        group.bench_function(BenchmarkId::new("slotmap_box", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let k = black_box(keys[i as usize]);
                    sum = sum.wrapping_add(**smb.get(k).expect("live key"));
                }
                sum
            })
        });
        drop(keys);
        drop(smb);

        let mut td = thunderdome::Arena::with_capacity(n);
        let keys: Vec<thunderdome::Index> = (0..n as u64).map(|i| td.insert(i)).collect();
        group.bench_function(BenchmarkId::new("thunderdome", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let k = black_box(keys[i as usize]);
                    sum = sum.wrapping_add(*td.get(k).expect("live key"));
                }
                sum
            })
        });
        drop(keys);
        drop(td);

        let mut ga = generational_arena::Arena::with_capacity(n);
        let keys: Vec<generational_arena::Index> = (0..n as u64).map(|i| ga.insert(i)).collect();
        group.bench_function(BenchmarkId::new("generational_arena", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let k = black_box(keys[i as usize]);
                    sum = sum.wrapping_add(*ga.get(k).expect("live key"));
                }
                sum
            })
        });
        drop(keys);
        drop(ga);

        let mut sl = slab::Slab::with_capacity(n);
        let keys: Vec<usize> = (0..n as u64).map(|i| sl.insert(i)).collect();
        group.bench_function(BenchmarkId::new("slab", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let k = black_box(keys[i as usize]);
                    sum = sum.wrapping_add(*sl.get(k).expect("live key"));
                }
                sum
            })
        });
        drop(keys);
        drop(sl);

        let boxes: Vec<Box<u64>> = (0..n as u64).map(Box::new).collect();
        group.bench_function(BenchmarkId::new("raw_ptr", n), |b| {
            bench_ring(b, &order, |idx| {
                let mut sum = 0u64;
                for &i in idx {
                    let p: &u64 = black_box(&boxes[i as usize]);
                    sum = sum.wrapping_add(*p);
                }
                sum
            })
        });
    }
    group.finish();
}

fn handle_insert_remove(c: &mut Criterion, background: usize) {
    use insert_remove::pairs;
    let mut group = c.benchmark_group("handle_insert_remove");
    group.throughput(Throughput::Elements(BATCH as u64));
    let g = &mut group;
    pairs(
        g,
        "tidyheap_store",
        background,
        BATCH,
        Store::<u64>::new(),
        |s, i| s.insert(i),
        |s, h| s.remove(h).expect("live handle"),
    );
    pairs(
        g,
        "tidyheap_raw",
        background,
        BATCH,
        Heap::new(),
        |heap, i| heap.insert_bytes(&i.to_ne_bytes()).expect("alloc"),
        |heap, h| {
            heap.free_handle(h).expect("live handle");
            0
        },
    );
    pairs(
        g,
        "slotmap",
        background,
        BATCH,
        SlotMap::<DefaultKey, u64>::new(),
        |m, i| m.insert(i),
        |m, k| m.remove(k).expect("live key"),
    );
    pairs(
        g,
        "slotmap_box",
        background,
        BATCH,
        SlotMap::<DefaultKey, Box<u64>>::new(),
        |m, i| m.insert(Box::new(i)),
        |m, k| *m.remove(k).expect("live key"),
    );
    pairs(
        g,
        "thunderdome",
        background,
        BATCH,
        thunderdome::Arena::new(),
        |a, i| a.insert(i),
        |a, k| a.remove(k).expect("live key"),
    );
    pairs(
        g,
        "generational_arena",
        background,
        BATCH,
        generational_arena::Arena::new(),
        |a, i| a.insert(i),
        |a, k| a.remove(k).expect("live key"),
    );
    pairs(
        g,
        "slab",
        background,
        BATCH,
        slab::Slab::new(),
        |s, i| s.insert(i),
        |s, k| s.remove(k),
    );

    let mut boxes: Vec<Box<u64>> = Vec::with_capacity(BATCH);
    group.bench_function(BenchmarkId::new("box", background), |b| {
        b.iter(|| {
            for i in 0..BATCH as u64 {
                boxes.push(Box::new(black_box(i)));
            }
            let mut sum = 0u64;
            for bx in boxes.drain(..) {
                sum = sum.wrapping_add(*bx);
            }
            sum
        })
    });
    group.finish();
}

/// Replaces `keys[i]` for each `i` in the next `BATCH` positions of `order` (a ring) by
/// `remove_insert(keys[i], value)`.
fn bench_reinsert<K: Copy>(
    b: &mut criterion::Bencher<'_>,
    keys: &mut [K],
    order: &[u32],
    mut remove_insert: impl FnMut(K, u64) -> K,
) {
    let mut pos = 0;
    b.iter(|| {
        for &i in &order[pos..pos + BATCH] {
            let k = &mut keys[i as usize];
            *k = remove_insert(*k, black_box(u64::from(i)));
        }
        pos = (pos + BATCH) % order.len();
    });
}

fn handle_reinsert(c: &mut Criterion, n: usize, order_len: usize) {
    let mut group = c.benchmark_group("handle_reinsert");
    group.throughput(Throughput::Elements(BATCH as u64));
    let order = random_order(n, order_len, 11);

    let store: Store<u64> = Store::new();
    let mut hs: Vec<Handle<u64>> = (0..n as u64).map(|i| store.insert(i)).collect();
    group.bench_function(BenchmarkId::new("tidyheap_store", n), |b| {
        bench_reinsert(b, &mut hs, &order, |h, v| {
            black_box(store.remove(h).expect("live handle"));
            store.insert(v)
        })
    });
    drop(hs);
    drop(store);

    let mut sm: SlotMap<DefaultKey, u64> = SlotMap::new();
    let mut keys: Vec<DefaultKey> = (0..n as u64).map(|i| sm.insert(i)).collect();
    group.bench_function(BenchmarkId::new("slotmap", n), |b| {
        bench_reinsert(b, &mut keys, &order, |k, v| {
            black_box(sm.remove(k).expect("live key"));
            sm.insert(v)
        })
    });

    let mut smb: SlotMap<DefaultKey, Box<u64>> = SlotMap::new();
    let mut keys: Vec<DefaultKey> = (0..n as u64).map(|i| smb.insert(Box::new(i))).collect();
    group.bench_function(BenchmarkId::new("slotmap_box", n), |b| {
        bench_reinsert(b, &mut keys, &order, |k, v| {
            black_box(smb.remove(k).expect("live key"));
            smb.insert(Box::new(v))
        })
    });

    let mut td = thunderdome::Arena::new();
    let mut keys: Vec<thunderdome::Index> = (0..n as u64).map(|i| td.insert(i)).collect();
    group.bench_function(BenchmarkId::new("thunderdome", n), |b| {
        bench_reinsert(b, &mut keys, &order, |k, v| {
            black_box(td.remove(k).expect("live key"));
            td.insert(v)
        })
    });

    let mut ga = generational_arena::Arena::new();
    let mut keys: Vec<generational_arena::Index> = (0..n as u64).map(|i| ga.insert(i)).collect();
    group.bench_function(BenchmarkId::new("generational_arena", n), |b| {
        bench_reinsert(b, &mut keys, &order, |k, v| {
            black_box(ga.remove(k).expect("live key"));
            ga.insert(v)
        })
    });

    let mut sl = slab::Slab::new();
    let mut keys: Vec<usize> = (0..n as u64).map(|i| sl.insert(i)).collect();
    group.bench_function(BenchmarkId::new("slab", n), |b| {
        bench_reinsert(b, &mut keys, &order, |k, v| {
            black_box(sl.remove(k));
            sl.insert(v)
        })
    });
    group.finish();
}

fn handle_iterate(c: &mut Criterion, n: usize) {
    let mut group = c.benchmark_group("handle_iterate");
    group.throughput(Throughput::Elements(n as u64));

    let store: Store<u64> = Store::new();
    for i in 0..n as u64 {
        store.insert(i);
    }
    group.bench_function(BenchmarkId::new("tidyheap_store", n), |b| {
        b.iter(|| store.iter().fold(0u64, |s, (_, v)| s.wrapping_add(*v)))
    });
    group.bench_function(BenchmarkId::new("tidyheap_scoped", n), |b| {
        b.iter(|| {
            let view = store.read();
            view.iter().fold(0u64, |s, (_, v)| s.wrapping_add(*v))
        })
    });
    let other: Store<u64> = Store::new_in(store.heap().clone());
    for i in 0..n as u64 {
        other.insert(i);
    }
    group.bench_function(BenchmarkId::new("tidyheap_scoped_shared_heap", n), |b| {
        b.iter(|| {
            let view = store.read();
            view.iter().fold(0u64, |s, (_, v)| s.wrapping_add(*v))
        })
    });
    drop(other);
    drop(store);

    let mut sm: SlotMap<DefaultKey, u64> = SlotMap::new();
    let mut smb: SlotMap<DefaultKey, Box<u64>> = SlotMap::new();
    let mut td = thunderdome::Arena::new();
    let mut ga = generational_arena::Arena::new();
    let mut sl = slab::Slab::new();
    for i in 0..n as u64 {
        sm.insert(i);
        smb.insert(Box::new(i));
        td.insert(i);
        ga.insert(i);
        sl.insert(i);
    }
    group.bench_function(BenchmarkId::new("slotmap", n), |b| {
        b.iter(|| sm.values().fold(0u64, |s, v| s.wrapping_add(*black_box(v))))
    });
    group.bench_function(BenchmarkId::new("slotmap_box", n), |b| {
        b.iter(|| {
            smb.values()
                .fold(0u64, |s, v| s.wrapping_add(**black_box(v)))
        })
    });
    group.bench_function(BenchmarkId::new("thunderdome", n), |b| {
        b.iter(|| {
            td.iter()
                .fold(0u64, |s, (_, v)| s.wrapping_add(*black_box(v)))
        })
    });
    group.bench_function(BenchmarkId::new("generational_arena", n), |b| {
        b.iter(|| {
            ga.iter()
                .fold(0u64, |s, (_, v)| s.wrapping_add(*black_box(v)))
        })
    });
    group.bench_function(BenchmarkId::new("slab", n), |b| {
        b.iter(|| {
            sl.iter()
                .fold(0u64, |s, (_, v)| s.wrapping_add(*black_box(v)))
        })
    });
    group.finish();
}

fn main() {
    let bench = bench_mode();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    if bench {
        handle_get(&mut c, &[10_000, 100_000, 1_000_000], 1 << 20);
        handle_insert_remove(&mut c, 10_000);
        handle_reinsert(&mut c, 10_000, 1 << 16);
        handle_iterate(&mut c, 10_000);
    } else {
        handle_get(&mut c, &[1_000], 4 * BATCH);
        handle_insert_remove(&mut c, 100);
        handle_reinsert(&mut c, 100, 4 * BATCH);
        handle_iterate(&mut c, 100);
    }
    c.final_summary();
}
