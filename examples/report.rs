//! One command for the README's benchmark table:
//!
//! ```sh
//! cargo run --release --example report
//! ```
//!
//! Runs a short version of every benchmark — the key cases of `benches/alloc.rs`,
//! `handles.rs`, `frame.rs`, `compaction.rs` and `large.rs`, the workloads of
//! `benches/workloads.rs` and the mimalloc-bench ports of `benches/mimalloc_bench.rs`
//! (the last two share their code with this file, from `benches/common/`) — with its own
//! simple timing loops: each figure is the median of a few runs, the peers of a case
//! alternating run by run so they see the same machine load, results kept alive with
//! `black_box`. All inputs come from seeded RNGs, so every run prints the same rows.
//!
//! It prints one markdown table: `peer`, `workload`, `metric`, `tidyheap`, `peer value`,
//! `ratio` (tidyheap ÷ peer). Each metric says which way is better (↑ or ↓); the ratio
//! cell says **behind** where tidyheap is more than 5 % worse than the peer, `tie`
//! within 5 %, and `ahead` otherwise (fragmentation compares differences of more than
//! 0.02 instead). Nothing is asserted: the numbers are measured, not checked. The whole
//! run takes about a minute on a 2-core machine (well under 3).

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::Layout;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bumpalo::Bump;
use common::churn::{BURST_BLOCKS, Churn, burst_4k};
use common::peers::{self, Mi, Peer, Sys};
use common::{Mode, Outcome, Workload, mbench, measure, median};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::frame::{FrameArena, FrameConfig};
use tidyheap::{Budget, Handle, Heap, RawHandle, Store};

const MIB: usize = 1 << 20;

/// Which way a metric improves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// How a value prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Operations per second.
    PerSec,
    /// Nanoseconds.
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Mebibytes.
    Mib,
    /// GiB per second.
    GibPerSec,
    /// A plain ratio.
    Ratio,
    /// A fragmentation share, compared by difference.
    Frag,
}

/// One table row.
struct Row {
    peer: String,
    workload: String,
    metric: String,
    tidy: f64,
    other: f64,
    better: Better,
    unit: Unit,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec => {
            if v >= 1e9 {
                format!("{:.2} G/s", v / 1e9)
            } else if v >= 1e6 {
                format!("{:.2} M/s", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.2} k/s", v / 1e3)
            } else {
                format!("{v:.1} /s")
            }
        }
        Unit::Ns => format!("{v:.2} ns"),
        Unit::Us => format!("{v:.1} µs"),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::Mib => format!("{v:.1} MiB"),
        Unit::GibPerSec => format!("{v:.2} GiB/s"),
        Unit::Ratio => format!("{v:.3}"),
        Unit::Frag => format!("{v:.3}"),
    }
}

fn verdict(r: &Row) -> String {
    let worse_by = |d: f64| match r.better {
        Better::Higher => -d,
        Better::Lower => d,
    };
    let tag = |worse: f64, band: f64| {
        if worse > band {
            "**behind**"
        } else if worse < -band {
            "ahead"
        } else {
            "tie"
        }
    };
    if r.unit == Unit::Frag {
        let tag = tag(worse_by(r.tidy - r.other), 0.02);
        return if r.other.abs() > 0.02 {
            format!("{:.2} {tag}", r.tidy / r.other)
        } else {
            format!("— {tag}")
        };
    }
    let ratio = r.tidy / r.other;
    let worse = match r.better {
        Better::Higher => 1.0 / ratio - 1.0,
        Better::Lower => ratio - 1.0,
    };
    format!("{ratio:.2} {}", tag(worse, 0.05))
}

/// The table being built.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    /// Lines printed after the table (figures without a peer to divide by).
    notes: Vec<String>,
}

impl Table {
    #[allow(clippy::too_many_arguments)] // one call per row reads best flat
    fn add(
        &mut self,
        peer: &str,
        workload: &str,
        metric: &str,
        better: Better,
        unit: Unit,
        tidy: f64,
        other: f64,
    ) {
        let arrow = match better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        self.rows.push(Row {
            peer: peer.to_string(),
            workload: workload.to_string(),
            metric: format!("{metric} {arrow}"),
            tidy,
            other,
            better,
            unit,
        });
    }

    fn print(&self) {
        println!("| peer | workload | metric | tidyheap | peer value | ratio |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.peer,
                r.workload,
                r.metric,
                fmt_value(r.tidy, r.unit),
                fmt_value(r.other, r.unit),
                verdict(r)
            );
        }
        for n in &self.notes {
            println!("{n}");
        }
    }
}

/// Runs every closure `runs` times, alternating, and returns each one's median.
fn interleaved(runs: usize, fs: &mut [&mut dyn FnMut() -> f64]) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(runs); fs.len()];
    for _ in 0..runs {
        for (f, s) in fs.iter_mut().zip(&mut samples) {
            s.push(f());
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

fn ns_per(t: Duration, n: usize) -> f64 {
    t.as_nanos() as f64 / n as f64
}

// ---------------------------------------------------------------- classic benches --

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

fn alloc_rows(t: &mut Table) {
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

fn handle_rows(t: &mut Table) {
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

fn frame_rows(t: &mut Table) {
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

fn compaction_rows(t: &mut Table) {
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

fn large_rows(t: &mut Table) {
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

// ------------------------------------------------------------------- workloads --

/// Median timed outcome per peer (runs alternate between peers), plus one probed run
/// per peer for the memory figures.
fn measure(w: &dyn Workload, runs: usize) -> Vec<(&'static str, Outcome)> {
    let mut out: Vec<(&'static str, Outcome)> =
        w.peers().iter().map(|&p| (p, w.run(p, true))).collect();
    let mut timed = vec![Vec::with_capacity(runs); out.len()];
    for _ in 0..runs {
        for (i, &p) in w.peers().iter().enumerate() {
            timed[i].push(w.run(p, false));
        }
    }
    // The median run by time gives the time and the compaction figures.
    for ((_, o), t) in out.iter_mut().zip(&mut timed) {
        t.sort_by_key(|r| r.elapsed);
        let mid = t[t.len() / 2];
        o.elapsed = mid.elapsed;
        o.compaction = mid.compaction;
    }
    out
}

/// Issue 11's honest game metric, printed under the table: frames/s beside what
/// compaction cost per frame and per MiB it reclaimed, for the peers that report it.
fn compaction_notes(t: &mut Table, label: &str, res: &[(&'static str, Outcome)]) {
    // Gross: bytes the passes released, counting memory released, reused and released
    // again each time. Net: what the run ends up holding less than the same heap without
    // compaction (end RSS rise of the probed runs, less lazily freed pages), the memory
    // compaction actually saves.
    let end_rss = |name: &str| {
        res.iter()
            .find(|(p, _)| *p == name)
            .map(|(_, o)| o.held_rss())
    };
    let baseline = end_rss("tidyheap_nocompact");
    t.notes.push(String::new());
    t.notes.push(format!(
        "Compaction cost, {label} (median timed run; released = gross bytes the passes \
         handed back, saved = end RSS rise, less lazily freed pages, below the no-compaction run's; \
         mimalloc_bumpalo reclaims nothing):"
    ));
    t.notes.push(String::new());
    t.notes.push(
        "| peer | frames/s | compaction µs/frame | compaction CPU µs/frame | released | \
         CPU per MiB released | saved at the end | CPU per MiB saved |"
            .to_string(),
    );
    t.notes
        .push("|---|---|---|---|---|---|---|---|".to_string());
    let dash = || "—".to_string();
    for (peer, o) in res {
        let Some(c) = o.compaction else { continue };
        if !["tidyheap", "tidyheap_nocompact", "mimalloc_bumpalo"].contains(peer) {
            continue;
        }
        let saved = baseline
            .filter(|_| !c.cpu.is_zero())
            .map(|b| b.saturating_sub(o.held_rss()));
        t.notes.push(format!(
            "| {peer} | {} | {:.1} µs | {:.1} µs | {:.1} MiB | {} | {} | {} |",
            fmt_value(o.ops_per_sec(), Unit::PerSec),
            c.us_per_op(o.ops),
            c.cpu.as_secs_f64() * 1e6 / o.ops.max(1) as f64,
            c.reclaimed as f64 / MIB as f64,
            c.cpu_ms_per_mib()
                .map_or_else(dash, |ms| format!("{ms:.2} ms")),
            saved.map_or_else(dash, |b| format!("{:.1} MiB", b as f64 / MIB as f64)),
            saved.filter(|&b| b > 0).map_or_else(dash, |b| format!(
                "{:.2} ms",
                c.cpu.as_secs_f64() * 1e3 / (b as f64 / MIB as f64)
            )),
        ));
    }
}

fn workload_rows(t: &mut Table) {
    let mib = |b: usize| b as f64 / MIB as f64;
    for w in common::workloads(Mode::Report) {
        let runs = match w.name() {
            "ml_tensors" | "game_engine" => 5,
            _ => 9,
        };
        let res = measure(w.as_ref(), runs);
        let get = |name: &str| {
            res.iter()
                .find(|(p, _)| *p == name)
                .map(|(_, o)| *o)
                .expect("peer measured")
        };
        // (tidyheap variant, label suffix, peers it is compared with)
        let pairs: &[(&str, &str, &[&str])] = match w.name() {
            "web_server" => &[
                (
                    "tidyheap_frame",
                    " (frame arena)",
                    &["bumpalo", "mimalloc", "system"],
                ),
                ("tidyheap", " (malloc-style)", &["mimalloc", "system"]),
            ],
            "game_engine" => &[
                (
                    "tidyheap",
                    "",
                    &[
                        "tidyheap_nocompact",
                        "mimalloc_bumpalo",
                        "mimalloc",
                        "system",
                    ],
                ),
                (
                    "tidyheap_nocompact",
                    " (no compaction)",
                    &["mimalloc_bumpalo"],
                ),
            ],
            _ => &[("tidyheap", "", &["mimalloc", "system"])],
        };
        let unit = if w.name() == "game_engine" {
            compaction_notes(t, &format!("{} {}", w.name(), w.size()), &res);
            "frames/s"
        } else {
            "ops/s"
        };
        for &(tidy_name, suffix, others) in pairs {
            let tidy = get(tidy_name);
            let label = format!("{} {}{suffix}", w.name(), w.size());
            for &other in others {
                let o = get(other);
                t.add(
                    other,
                    &label,
                    unit,
                    Better::Higher,
                    Unit::PerSec,
                    tidy.ops_per_sec(),
                    o.ops_per_sec(),
                );
                t.add(
                    other,
                    &label,
                    "peak RSS rise",
                    Better::Lower,
                    Unit::Mib,
                    mib(tidy.peak_rss),
                    mib(o.peak_rss),
                );
                if let (Some(a), Some(b)) = (tidy.rss_frag(), o.rss_frag()) {
                    t.add(
                        other,
                        &label,
                        "end frag (1 − live/RSS rise)",
                        Better::Lower,
                        Unit::Frag,
                        a,
                        b,
                    );
                }
                if let (Some(a), Some(b)) = (tidy.held_frag(), o.held_frag()) {
                    t.add(
                        other,
                        &label,
                        "end frag (1 − live/(RSS rise − LazyFree))",
                        Better::Lower,
                        Unit::Frag,
                        a,
                        b,
                    );
                }
            }
        }
    }
}

fn mbench_rows(t: &mut Table) {
    let scale = mbench::Scale::new(Mode::Report);
    for pattern in mbench::NAMES {
        // ops/s per peer and thread count: medians of alternating runs.
        let mut fs: Vec<Box<dyn FnMut() -> f64>> = Vec::new();
        for peer in peers::NAMES {
            for threads in [1, 2] {
                fs.push(Box::new(move || {
                    mbench::run(pattern, peer, threads, &scale).ops_per_sec()
                }));
            }
        }
        let mut refs: Vec<&mut dyn FnMut() -> f64> = fs
            .iter_mut()
            .map(|f| &mut **f as &mut dyn FnMut() -> f64)
            .collect();
        let med = interleaved(5, &mut refs);
        let [t1, t2] = [med[0], med[1]];
        for (i, peer) in peers::NAMES.iter().enumerate().skip(1) {
            let (p1, p2) = (med[2 * i], med[2 * i + 1]);
            t.add(
                peer,
                pattern,
                "ops/s, 1 thread",
                Better::Higher,
                Unit::PerSec,
                t1,
                p1,
            );
            t.add(
                peer,
                pattern,
                "ops/s, 2 threads",
                Better::Higher,
                Unit::PerSec,
                t2,
                p2,
            );
            t.add(
                peer,
                pattern,
                "scaling 2T ÷ 1T",
                Better::Higher,
                Unit::Ratio,
                t2 / t1,
                p2 / p1,
            );
        }
    }
}

/// A named part of the report.
type Section = (&'static str, fn(&mut Table));

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    let start = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let argv: Vec<String> = std::env::args().collect();
    println!("**tidyheap benchmark report**");
    println!();
    println!("- date: {} (UTC)", today());
    println!("- cores: {cores}");
    println!(
        "- command: `cargo run --release --example report` (argv: `{}`)",
        argv.join(" ")
    );
    println!(
        "- ratio = tidyheap ÷ peer; ↑ higher is better, ↓ lower is better; **behind** = \
         tidyheap more than 5 % worse (fragmentation: more than 0.02 higher)"
    );
    println!();

    let mut t = Table::default();
    let sections: [Section; 7] = [
        ("alloc", alloc_rows),
        ("handles", handle_rows),
        ("frame", frame_rows),
        ("compaction", compaction_rows),
        ("large", large_rows),
        ("workloads", workload_rows),
        ("mimalloc-bench ports", mbench_rows),
    ];
    for (name, f) in sections {
        let s = Instant::now();
        f(&mut t);
        eprintln!("report: {name} took {:.1?}", s.elapsed());
    }
    t.print();
    println!();
    println!("Total run time: {:.0?}.", start.elapsed());
}
