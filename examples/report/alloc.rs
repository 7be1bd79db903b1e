//! The report's classic allocator, handle and frame rows: the key cases of
//! `benches/alloc.rs`, `handles.rs` and `frame.rs`.

use super::*;

/// `alloc_free_pair`: ns per hot alloc + free of `size` bytes.
fn pair_ns<P: Peer>(peer: &P, size: usize) -> f64 {
    const N: usize = 200_000;
    let l = peers::layout(size);
    let start = Instant::now();
    for _ in 0..N {
        // SAFETY: a nonzero size; the block is freed once with its layout.
        unsafe {
            let p = peer.alloc(black_box(l));
            assert!(!p.is_null(), "out of memory");
            peer.dealloc(black_box(p), l);
        }
    }
    ns_per(start.elapsed(), N)
}

/// `random_free_10k`: µs per round of 10 000 allocations of 64 B freed in a fixed
/// random order.
fn random_free_us<P: Peer>(peer: &P, order: &[usize], ptrs: &mut [*mut u8]) -> f64 {
    const ROUNDS: usize = 10;
    let l = peers::layout(64);
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for slot in ptrs.iter_mut() {
            // SAFETY: a nonzero size.
            *slot = unsafe { peers::alloc_or_die(peer, black_box(l)) };
        }
        for &i in order {
            // SAFETY: each block is live and freed once (`order` is a permutation).
            unsafe { peer.dealloc(black_box(ptrs[i]), l) };
        }
    }
    start.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64
}

pub(super) fn alloc_rows(t: &mut Table) {
    let heap = Heap::new();
    for size in [16usize, 64, 256, 4096] {
        let [tidy, sys, mi] = interleaved(
            7,
            &mut [
                &mut || pair_ns(&heap, size),
                &mut || pair_ns(&Sys, size),
                &mut || pair_ns(&Mi, size),
            ],
        )[..] else {
            unreachable!("three closures")
        };
        let w = format!("alloc_free_pair {size} B");
        t.add(
            "system",
            &w,
            "time per pair",
            Better::Lower,
            Unit::Ns,
            tidy,
            sys,
        );
        t.add(
            "mimalloc",
            &w,
            "time per pair",
            Better::Lower,
            Unit::Ns,
            tidy,
            mi,
        );
    }
    let mut order: Vec<usize> = (0..10_000).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(0x10_000));
    let mut ptrs = vec![std::ptr::null_mut(); order.len()];
    let mut ptrs2 = ptrs.clone();
    let mut ptrs3 = ptrs.clone();
    let [tidy, sys, mi] = interleaved(
        9,
        &mut [
            &mut || random_free_us(&heap, &order, &mut ptrs),
            &mut || random_free_us(&Sys, &order, &mut ptrs2),
            &mut || random_free_us(&Mi, &order, &mut ptrs3),
        ],
    )[..] else {
        unreachable!("three closures")
    };
    let w = "random_free_10k 64 B";
    t.add(
        "system",
        w,
        "time per 10k",
        Better::Lower,
        Unit::Us,
        tidy,
        sys,
    );
    t.add(
        "mimalloc",
        w,
        "time per 10k",
        Better::Lower,
        Unit::Us,
        tidy,
        mi,
    );
}

pub(super) fn handle_rows(t: &mut Table) {
    const LIVE: usize = 100_000;
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let order: Vec<usize> = (0..1 << 16).map(|_| rng.gen_range(0..LIVE)).collect();

    let store: Store<u64> = Store::new();
    let hs: Vec<Handle<u64>> = (0..LIVE as u64).map(|i| store.insert(i)).collect();
    let mut sm: SlotMap<DefaultKey, u64> = SlotMap::with_capacity(LIVE);
    let keys: Vec<DefaultKey> = (0..LIVE as u64).map(|i| sm.insert(i)).collect();
    let mut smb: SlotMap<DefaultKey, Box<u64>> = SlotMap::with_capacity(LIVE);
    let box_keys: Vec<DefaultKey> = (0..LIVE as u64).map(|i| smb.insert(Box::new(i))).collect();
    let [tidy, scoped, slot, slot_box] = interleaved(
        7,
        &mut [
            &mut || {
                let start = Instant::now();
                let mut sum = 0u64;
                for &i in &order {
                    sum = sum.wrapping_add(*store.get(black_box(hs[i])).expect("live"));
                }
                black_box(sum);
                ns_per(start.elapsed(), order.len())
            },
            &mut || {
                let start = Instant::now();
                let mut sum = 0u64;
                // One scope per 1024 gets, as a system would take one per run.
                for chunk in order.chunks(1024) {
                    let view = store.read();
                    for &i in chunk {
                        sum = sum.wrapping_add(*view.get(black_box(hs[i])).expect("live"));
                    }
                }
                black_box(sum);
                ns_per(start.elapsed(), order.len())
            },
            &mut || {
                let start = Instant::now();
                let mut sum = 0u64;
                for &i in &order {
                    sum = sum.wrapping_add(*sm.get(black_box(keys[i])).expect("live"));
                }
                black_box(sum);
                ns_per(start.elapsed(), order.len())
            },
            &mut || {
                let start = Instant::now();
                let mut sum = 0u64;
                for &i in &order {
                    sum = sum.wrapping_add(**smb.get(black_box(box_keys[i])).expect("live"));
                }
                black_box(sum);
                ns_per(start.elapsed(), order.len())
            },
        ],
    )[..] else {
        unreachable!("four closures")
    };
    t.add(
        "slotmap",
        "handle_get scoped (Store::read), 100k live, random",
        "time per get",
        Better::Lower,
        Unit::Ns,
        scoped,
        slot,
    );
    t.add(
        "slotmap_box",
        "handle_get scoped vs SlotMap<K, Box<u64>>, 100k live",
        "time per get",
        Better::Lower,
        Unit::Ns,
        scoped,
        slot_box,
    );
    t.add(
        "slotmap",
        "handle_get, 100k live, random",
        "time per get",
        Better::Lower,
        Unit::Ns,
        tidy,
        slot,
    );
    drop((hs, keys, box_keys, store, sm, smb));

    const BATCH: usize = 1024;
    const REPS: usize = 20;
    let store: Store<u64> = Store::new();
    let _keep: Vec<Handle<u64>> = (0..10_000u64).map(|i| store.insert(i)).collect();
    let mut sm: SlotMap<DefaultKey, u64> = SlotMap::new();
    let _keep_sm: Vec<DefaultKey> = (0..10_000u64).map(|i| sm.insert(i)).collect();
    let mut hs = Vec::with_capacity(BATCH);
    let mut ks = Vec::with_capacity(BATCH);
    let [tidy, slot] = interleaved(
        7,
        &mut [
            &mut || {
                let start = Instant::now();
                for _ in 0..REPS {
                    hs.extend((0..BATCH as u64).map(|i| store.insert(black_box(i))));
                    for h in hs.drain(..) {
                        black_box(store.remove(h).expect("live"));
                    }
                }
                ns_per(start.elapsed(), REPS * BATCH)
            },
            &mut || {
                let start = Instant::now();
                for _ in 0..REPS {
                    ks.extend((0..BATCH as u64).map(|i| sm.insert(black_box(i))));
                    for k in ks.drain(..) {
                        black_box(sm.remove(k).expect("live"));
                    }
                }
                ns_per(start.elapsed(), REPS * BATCH)
            },
        ],
    )[..] else {
        unreachable!("two closures")
    };
    t.add(
        "slotmap",
        "handle_insert_remove, 10k live",
        "time per pair",
        Better::Lower,
        Unit::Ns,
        tidy,
        slot,
    );
}

pub(super) fn frame_rows(t: &mut Table) {
    const ALLOCS: usize = 10_000;
    const FRAMES: usize = 50;
    let l = Layout::from_size_align(64, 8).expect("layout");
    let mut arena =
        FrameArena::with_config(FrameConfig::new().with_frames_in_flight(1)).expect("valid config");
    let mut bump = Bump::new();
    let [tidy, b] = interleaved(
        9,
        &mut [
            &mut || {
                let start = Instant::now();
                for _ in 0..FRAMES {
                    let frame = arena.begin_frame();
                    for _ in 0..ALLOCS {
                        black_box(frame.alloc_layout(l).expect("frame alloc"));
                    }
                    frame.end();
                }
                ns_per(start.elapsed(), FRAMES * ALLOCS)
            },
            &mut || {
                let start = Instant::now();
                for _ in 0..FRAMES {
                    bump.reset();
                    for _ in 0..ALLOCS {
                        black_box(bump.alloc_layout(l));
                    }
                }
                ns_per(start.elapsed(), FRAMES * ALLOCS)
            },
        ],
    )[..] else {
        unreachable!("two closures")
    };
    t.add(
        "bumpalo",
        "frame_alloc 64 B, 10k per frame incl. reset",
        "time per alloc",
        Better::Lower,
        Unit::Ns,
        tidy,
        b,
    );
}
