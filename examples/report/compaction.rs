//! The report's compaction and large-block rows: the key cases of
//! `benches/compaction.rs` and `large.rs`.

use super::*;

/// A fresh heap of `total` bytes of `block`-sized handle blocks, every other one freed.
fn fragmented(block: usize, total: usize) -> (Heap, Vec<RawHandle>) {
    let heap = Heap::new();
    let all: Vec<RawHandle> = (0..total / block)
        .map(|_| heap.alloc_handle(block, 16).expect("alloc_handle"))
        .collect();
    let mut kept = Vec::with_capacity(all.len() / 2 + 1);
    for (i, h) in all.into_iter().enumerate() {
        if i % 2 == 0 {
            kept.push(h);
        } else {
            heap.free_handle(h).expect("live");
        }
    }
    (heap, kept)
}

/// GiB/s of copying `moved` bytes in `block`-sized chunks, every other block of `src`
/// into every other block of `dst` (the compactor's layout).
fn memcpy_rate(moved: u64, block: usize, src: &[u8], dst: &mut [u8]) -> f64 {
    let chunks = (moved as usize / block).max(1);
    let start = Instant::now();
    for i in 0..chunks {
        let off = 2 * i * block % (src.len() - 2 * block);
        dst[off + block..off + 2 * block].copy_from_slice(&src[off..off + block]);
    }
    black_box(&mut *dst);
    (chunks * block) as f64 / start.elapsed().as_secs_f64() / f64::from(1u32 << 30)
}

pub(super) fn compaction_rows(t: &mut Table) {
    // Copy rate, 1 KiB blocks.
    const BLOCK: usize = 1024;
    const TOTAL: usize = 16 * MIB;
    let moved = std::cell::Cell::new(0u64);
    let (src, mut dst) = (vec![1u8; TOTAL], vec![2u8; TOTAL]);
    let [tidy, copy] = interleaved(
        5,
        &mut [
            &mut || {
                let (heap, kept) = fragmented(BLOCK, TOTAL);
                let start = Instant::now();
                let r = heap.compact_full();
                let t = start.elapsed();
                moved.set(r.bytes_moved);
                drop(kept);
                r.bytes_moved as f64 / t.as_secs_f64() / f64::from(1u32 << 30)
            },
            &mut || memcpy_rate(moved.get(), BLOCK, &src, &mut dst),
        ],
    )[..] else {
        unreachable!("two closures")
    };
    // The moves alone: one unlimited pass that plans and moves, with no page release
    // (the emptied spans wait out the purge delay).
    let [moves, copy2] = interleaved(
        5,
        &mut [
            &mut || {
                let (heap, kept) = fragmented(BLOCK, TOTAL);
                let start = Instant::now();
                let r = heap.compact(tidyheap::Budget::UNLIMITED);
                let t = start.elapsed();
                drop(kept);
                r.bytes_moved as f64 / t.as_secs_f64() / f64::from(1u32 << 30)
            },
            &mut || memcpy_rate(moved.get(), BLOCK, &src, &mut dst),
        ],
    )[..] else {
        unreachable!("two closures")
    };
    let w = "compaction_copy 1 KiB blocks";
    t.add(
        "memcpy",
        w,
        "bytes moved per second",
        Better::Higher,
        Unit::GibPerSec,
        tidy,
        copy,
    );
    t.add(
        "memcpy",
        "compaction_copy 1 KiB blocks, moves only (no page release)",
        "bytes moved per second",
        Better::Higher,
        Unit::GibPerSec,
        moves,
        copy2,
    );
    t.add(
        "DESIGN target",
        w,
        "share of memcpy's rate",
        Better::Higher,
        Unit::Ratio,
        tidy / copy,
        0.50,
    );

    // Mesh's pattern at a quarter of its size.
    let (small, large) = (32 * MIB / 512, 16 * MIB / 1024);
    let live = (small / 2) * 512 + (large / 2) * 1024;
    peers::settle();
    let [_, (committed, tidy_rss)] = measure::mesh_tidyheap(small, large);
    let committed = committed as f64 / live as f64;
    let tidy_rss = tidy_rss as f64 / live as f64;
    peers::settle();
    let [sys_rss, _] = measure::mesh_system(small, large);
    let sys_rss = sys_rss as f64 / live as f64;
    let w = "Mesh pattern (1/4 size), after one full compaction";
    t.add(
        "system",
        w,
        "RSS / live",
        Better::Lower,
        Unit::Ratio,
        tidy_rss,
        sys_rss,
    );
    t.add(
        "DESIGN target",
        w,
        "committed / live",
        Better::Lower,
        Unit::Ratio,
        committed,
        1.10,
    );

    // Incremental pass durations against a 500 µs budget.
    const BUDGET: Duration = Duration::from_micros(500);
    let mut rng = SmallRng::seed_from_u64(42);
    let mut passes = Vec::new();
    while passes.len() < 60 {
        let heap = Heap::new();
        let mut all = Vec::new();
        let mut allocated = 0;
        while allocated < 16 * MIB {
            let size = 64usize << rng.gen_range(0..=8);
            all.push(heap.alloc_handle(size, 16).expect("alloc_handle"));
            allocated += size;
        }
        for h in all.iter().skip(1).step_by(2) {
            heap.free_handle(*h).expect("live");
        }
        loop {
            let r = heap.compact(Budget::time(BUDGET));
            if r.complete && r.blocks_moved == 0 {
                break;
            }
            passes.push(r.elapsed);
        }
    }
    passes.sort();
    let p99 = passes[((passes.len() - 1) as f64 * 0.99).round() as usize];
    t.add(
        "DESIGN target",
        &format!("compaction pass, 500 µs budget ({} passes)", passes.len()),
        "p99 / budget",
        Better::Lower,
        Unit::Ratio,
        p99.as_secs_f64() / BUDGET.as_secs_f64(),
        1.10,
    );
}

/// Alloc + touch every page + free of `size` bytes on `peer`, µs.
fn large_cycle<P: Peer>(peer: &P, size: usize) -> f64 {
    let l = Layout::from_size_align(size, 16).expect("layout");
    let start = Instant::now();
    // SAFETY: a nonzero size; the block is touched inside its bounds and freed once with
    // its layout.
    unsafe {
        let p = peers::alloc_or_die(peer, l);
        for off in (0..size).step_by(4096) {
            black_box(p).add(off).write_volatile(1);
        }
        peer.dealloc(p, l);
    }
    start.elapsed().as_secs_f64() * 1e6
}

pub(super) fn large_rows(t: &mut Table) {
    let heap = Heap::new();
    for (mib, runs) in [(1usize, 31), (4, 15), (16, 9), (64, 5)] {
        let size = mib * MIB;
        let [tidy, sys, mi] = interleaved(
            runs,
            &mut [
                &mut || large_cycle(&heap, size),
                &mut || large_cycle(&Sys, size),
                &mut || large_cycle(&Mi, size),
            ],
        )[..] else {
            unreachable!("three closures")
        };
        let w = format!("large alloc+touch+free {mib} MiB");
        t.add("system", &w, "time", Better::Lower, Unit::Us, tidy, sys);
        t.add("mimalloc", &w, "time", Better::Lower, Unit::Us, tidy, mi);
    }
    // The realloc churn: µs per 1000 reallocations, after one untimed warm-up batch.
    for max in [200_000usize, 300_000] {
        const OPS: usize = 1000;
        let mut churns = [
            Churn::new(&heap, max, 0xC4A2),
            Churn::new(&Sys, max, 0xC4A2),
            Churn::new(&Mi, max, 0xC4A2),
        ];
        let [c_tidy, c_sys, c_mi] = &mut churns;
        c_tidy.run(&heap, OPS);
        c_sys.run(&Sys, OPS);
        c_mi.run(&Mi, OPS);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let [tidy, sys, mi] = interleaved(
            9,
            &mut [
                &mut || us(c_tidy.run(&heap, OPS)),
                &mut || us(c_sys.run(&Sys, OPS)),
                &mut || us(c_mi.run(&Mi, OPS)),
            ],
        )[..] else {
            unreachable!("three closures")
        };
        let [c_tidy, c_sys, c_mi] = churns;
        c_tidy.free(&heap);
        c_sys.free(&Sys);
        c_mi.free(&Mi);
        let w = format!("realloc churn 600 blocks ≤ {} KB", max / 1000);
        t.add(
            "system",
            &w,
            "time per 1000",
            Better::Lower,
            Unit::Us,
            tidy,
            sys,
        );
        t.add(
            "mimalloc",
            &w,
            "time per 1000",
            Better::Lower,
            Unit::Us,
            tidy,
            mi,
        );
    }
    // The 4 KiB burst: five rounds on a fresh heap; round 1 apart, then the median of
    // rounds 2–5 (the other peers' process heaps are warm from earlier rows).
    let fresh = Heap::new();
    let mut ptrs = vec![std::ptr::null_mut(); BURST_BLOCKS];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut rounds: [Vec<f64>; 3] = Default::default();
    for _ in 0..5 {
        rounds[0].push(ms(burst_4k(&fresh, &mut ptrs)));
        rounds[1].push(ms(burst_4k(&Sys, &mut ptrs)));
        rounds[2].push(ms(burst_4k(&Mi, &mut ptrs)));
    }
    let [tidy, sys, mi] = [0, 1, 2].map(|i| rounds[i][0]);
    let w = "4 KiB burst 16 384 blocks, round 1";
    t.add("system", w, "time", Better::Lower, Unit::Ms, tidy, sys);
    t.add("mimalloc", w, "time", Better::Lower, Unit::Ms, tidy, mi);
    let [tidy, sys, mi] = rounds.map(|mut r| median(&mut r[1..]));
    let w = "4 KiB burst 16 384 blocks, rounds 2–5";
    t.add("system", w, "time", Better::Lower, Unit::Ms, tidy, sys);
    t.add("mimalloc", w, "time", Better::Lower, Unit::Ms, tidy, mi);
}
