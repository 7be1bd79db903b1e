//! The compactor: copy rate, fragmentation recovery and pass durations.
//!
//! 1. `compaction_copy/<peer>/<block>` (criterion, throughput = bytes moved): a fresh
//!    heap gets 32 MiB of `block`-sized handle blocks, every other one is freed,
//!    and one `Heap::compact_full` is timed (planning, moves, and the final page release
//!    included; building and dropping the heap are not: `iter_custom`). Its peer
//!    `memcpy` copies the same number of bytes with `ptr::copy_nonoverlapping` in
//!    `block`-sized chunks, every other block of one buffer into every other block of
//!    another (the layout the compactor sees). A summary line per block size then gives
//!    the ratio (median of a few alternating runs of each, in thread CPU time, which a
//!    loaded machine disturbs far less than wall time: both peers are single-threaded and
//!    never wait) and, for 64 B, blocks per second; and the
//!    same ratio for the moves alone (one unlimited `Heap::compact` pass that plans and
//!    moves everything on a fresh heap; its emptied spans stay committed, so no page
//!    goes back to the OS: handing 16 MiB back with `MADV_DONTNEED` costs about as much
//!    as copying 8 MiB).
//! 2. Mesh's adversarial pattern, measured once and printed: 128 MiB of 512 B blocks,
//!    every other freed, then 64 MiB of 1 KiB blocks, every other freed; tidyheap's
//!    committed/live and RSS/live before and after one full compaction, beside the
//!    system allocator's RSS/live for the same pattern (`std::alloc::System`; RSS from
//!    `/proc/self/statm`, as a delta around the pattern).
//! 3. Pass durations: fresh fragmented heaps compacted by passes with a 500 µs time
//!    budget; p50/p99/max of `CompactionReport::elapsed` against the budget.
//!
//! With `--features tracy` the copy rate gets a third peer, `tidyheap_tracy`: the same
//! compaction on a heap that reports to Tracy (`tidyheap::tracy::heap`, no profiler
//! connected), alternated with the plain heap in the summary, for the integration's
//! overhead (`benches/README.md`).
//!
//! Run with `cargo bench --bench compaction`. Without `--bench` (that is, under
//! `cargo test --benches`) everything runs once on tiny sizes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Budget, Heap, RawHandle};

#[path = "common/measure.rs"]
mod measure;
use measure::{mesh_system, mesh_tidyheap, thread_cpu_time};

const MIB: usize = 1 << 20;

/// Sizes for one run: full in `cargo bench`, tiny under `cargo test --benches`.
struct Scale {
    /// Bytes allocated per copy-rate heap (half are freed, about a quarter move).
    copy_total: usize,
    /// Runs per peer for the summary ratio.
    summary_runs: usize,
    /// Divisor applied to Mesh's 128 MiB + 64 MiB.
    mesh_divisor: usize,
    /// Bytes allocated per pass-duration heap.
    pass_total: usize,
    /// Passes to collect.
    passes: usize,
}

const BENCH: Scale = Scale {
    copy_total: 32 * MIB,
    summary_runs: 7,
    mesh_divisor: 1,
    pass_total: 64 * MIB,
    passes: 200,
};

const TEST: Scale = Scale {
    copy_total: MIB / 2,
    summary_runs: 1,
    mesh_divisor: 256,
    pass_total: 2 * MIB,
    passes: 10,
};

/// A peer name and how to make its heap.
type HeapVariant = (&'static str, fn() -> Heap);

/// The heaps the copy rate compares: plain, and with `--features tracy` one that
/// reports to Tracy.
fn heap_variants() -> Vec<HeapVariant> {
    #[allow(
        unused_mut,
        reason = "the tracy variant is pushed only with the feature"
    )]
    let mut v: Vec<HeapVariant> = vec![("tidyheap", Heap::new)];
    #[cfg(feature = "tracy")]
    v.push(("tidyheap_tracy", || tidyheap::tracy::heap("bench")));
    v
}

/// Allocates `count` blocks of `size` bytes, stamps each with its index, then frees
/// every other one (all allocations come first, so freed blocks are not reused).
/// Returns the kept handles with their stamps.
fn fragment(heap: &Heap, size: usize, count: usize) -> Vec<(RawHandle, u64)> {
    let all: Vec<RawHandle> = (0..count)
        .map(|_| heap.alloc_handle(size, 16).expect("alloc_handle"))
        .collect();
    let mut kept = Vec::with_capacity(count / 2 + 1);
    for (i, h) in (0u64..).zip(all) {
        if i % 2 == 0 {
            heap.write(h).expect("live")[..8].copy_from_slice(&i.to_ne_bytes());
            kept.push((h, i));
        } else {
            heap.free_handle(h).expect("live");
        }
    }
    kept
}

/// A fresh fragmented heap of `total` bytes of `block`-sized blocks.
fn fragmented_heap(
    block: usize,
    total: usize,
    new_heap: fn() -> Heap,
) -> (Heap, Vec<(RawHandle, u64)>) {
    let heap = new_heap();
    let kept = fragment(&heap, block, total / block);
    (heap, kept)
}

/// Wall and thread CPU time since a start point.
struct Clocks(Instant, Duration);

impl Clocks {
    fn start() -> Self {
        Self(Instant::now(), thread_cpu_time())
    }

    /// Wall time, and the CPU time of this thread, since `start`.
    fn elapsed(&self) -> (Duration, Duration) {
        (self.0.elapsed(), thread_cpu_time() - self.1)
    }
}

/// Times one full compaction of a fresh fragmented heap; returns (wall time, thread CPU
/// time, bytes moved).
fn timed_compaction(
    block: usize,
    total: usize,
    verify: bool,
    new_heap: fn() -> Heap,
) -> (Duration, Duration, u64) {
    let (heap, kept) = fragmented_heap(block, total, new_heap);
    let clocks = Clocks::start();
    let r = heap.compact_full();
    let (t, cpu) = clocks.elapsed();
    if verify {
        assert!(r.blocks_moved > 0, "nothing moved: {r:?}");
        for (h, i) in &kept {
            assert_eq!(heap.read(*h).expect("live")[..8], i.to_ne_bytes());
        }
    }
    drop(kept);
    drop(heap);
    (t, cpu, r.bytes_moved)
}

/// Times the moves alone: one unlimited budgeted pass (the plan and every move) on a
/// fresh fragmented heap; the emptied spans stay committed (the purge delay), so no
/// page goes back to the OS. Returns (thread CPU time, bytes moved).
fn timed_moves(block: usize, total: usize, new_heap: fn() -> Heap) -> (Duration, u64) {
    let (heap, kept) = fragmented_heap(block, total, new_heap);
    let clocks = Clocks::start();
    let r = heap.compact(Budget::UNLIMITED);
    let (_, cpu) = clocks.elapsed();
    drop(kept);
    drop(heap);
    (cpu, r.bytes_moved)
}

/// Two buffers for the memcpy peer: `moved` bytes travel in `block` chunks, every other
/// block of `src` into every other block of `dst`.
struct CopyBufs {
    src: Vec<u8>,
    dst: Vec<u8>,
    block: usize,
    chunks: usize,
}

impl CopyBufs {
    fn new(block: usize, moved: usize) -> Self {
        let chunks = moved / block;
        Self {
            src: vec![1; 2 * chunks * block],
            dst: vec![2; 2 * chunks * block],
            block,
            chunks,
        }
    }

    fn copy(&mut self) {
        let src = black_box(self.src.as_ptr());
        let dst = black_box(self.dst.as_mut_ptr());
        for i in 0..self.chunks {
            let off = 2 * i * self.block;
            // SAFETY:
            // - `off + 2 * block <= 2 * chunks * block`, the length of both buffers, so
            //   both ranges are in bounds;
            // - `src` and `dst` are distinct allocations, so the ranges do not overlap.
            unsafe {
                core::ptr::copy_nonoverlapping(src.add(off), dst.add(off + self.block), self.block)
            };
        }
        black_box(&mut self.dst);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / (1u64 << 30) as f64
}

fn copy_rate(c: &mut Criterion, scale: &Scale) {
    const BLOCKS: [usize; 3] = [64, 1024, 16 * 1024];
    let variants = heap_variants();
    let mut group = c.benchmark_group("compaction_copy");
    // Every compaction sample needs fresh heaps; flat sampling keeps their number low.
    group.sampling_mode(SamplingMode::Flat);
    let mut summary = Vec::new();
    for block in BLOCKS {
        // One verified calibration run: bytes moved are the same for every fresh heap.
        let (_, _, moved) = timed_compaction(block, scale.copy_total, true, Heap::new);
        group.throughput(Throughput::Bytes(moved));
        for &(name, new_heap) in &variants {
            group.bench_function(BenchmarkId::new(name, block), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| timed_compaction(block, scale.copy_total, false, new_heap).0)
                        .sum()
                })
            });
        }
        let mut bufs = CopyBufs::new(block, moved as usize);
        group.bench_function(BenchmarkId::new("memcpy", block), |b| {
            b.iter(|| bufs.copy())
        });

        // Alternate the peers so all see the same machine load.
        let mut times = vec![Vec::new(); variants.len()];
        let mut tms = Vec::new();
        let mut moves = Vec::new();
        for _ in 0..scale.summary_runs {
            for (t, &(_, new_heap)) in times.iter_mut().zip(&variants) {
                t.push(timed_compaction(block, scale.copy_total, false, new_heap).1);
            }
            let (t, m) = timed_moves(block, scale.copy_total, Heap::new);
            moves.push(t.mul_f64(moved as f64 / m.max(1) as f64));
            let clocks = Clocks::start();
            bufs.copy();
            tms.push(clocks.elapsed().1);
        }
        let th: Vec<Duration> = times.into_iter().map(median).collect();
        summary.push((block, moved, th, median(tms), median(moves)));
    }
    group.finish();

    println!(
        "\ncompaction copy rate (thread CPU time, median of {} runs each):",
        scale.summary_runs
    );
    println!(
        "(ratio: with the final page release; moves ratio: the pass that plans and moves, \
         emptied spans kept committed)"
    );
    println!(
        "{:>7} {:>10} {:>14} {:>14} {:>8} {:>12} {:>12} {:>14} {:>16}",
        "block",
        "moved",
        "tidyheap GiB/s",
        "memcpy GiB/s",
        "ratio",
        "moves GiB/s",
        "moves ratio",
        "blocks/s",
        "tracy÷plain time"
    );
    for (block, moved, th, tm, tmoves) in summary {
        let tracy = th.get(1).map_or("-".to_string(), |t| {
            format!("{:.3}", t.as_secs_f64() / th[0].as_secs_f64())
        });
        println!(
            "{:>7} {:>8.1}Mi {:>14.2} {:>14.2} {:>7.0}% {:>12.2} {:>11.0}% {:>14.3e} {:>16}",
            block,
            moved as f64 / MIB as f64,
            gib_per_s(moved, th[0]),
            gib_per_s(moved, tm),
            100.0 * tm.as_secs_f64() / th[0].as_secs_f64(),
            gib_per_s(moved, tmoves),
            100.0 * tm.as_secs_f64() / tmoves.as_secs_f64(),
            (moved / block as u64) as f64 / th[0].as_secs_f64(),
            tracy,
        );
    }
}

fn mesh_recovery(scale: &Scale) {
    let small = (128 * MIB / 512) / scale.mesh_divisor;
    let large = (64 * MIB / 1024) / scale.mesh_divisor;
    let live = (small / 2) * 512 + (large / 2) * 1024;
    let [(c0, r0), (c1, r1)] = mesh_tidyheap(small, large);
    let [s0, s1] = mesh_system(small, large);
    let per = |b: usize| b as f64 / live as f64;
    println!(
        "\nMesh pattern: {} x 512 B + {} x 1 KiB, every other freed (scale 1/{}); live {:.1} MiB",
        small,
        large,
        scale.mesh_divisor,
        live as f64 / MIB as f64
    );
    println!("{:<36} {:>15} {:>10}", "", "committed/live", "RSS/live");
    println!(
        "{:<36} {:>15.3} {:>10.3}",
        "tidyheap, before compaction",
        per(c0),
        per(r0)
    );
    println!(
        "{:<36} {:>15.3} {:>10.3}",
        "tidyheap, after one compact_full",
        per(c1),
        per(r1)
    );
    println!("{:<36} {:>15} {:>10.3}", "System allocator", "-", per(s0));
    println!(
        "{:<36} {:>15} {:>10.3}",
        "System allocator, after malloc_trim",
        "-",
        per(s1)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn pass_durations(scale: &Scale) {
    const BUDGET: Duration = Duration::from_micros(500);
    let mut rng = SmallRng::seed_from_u64(42);
    // Passes that had work (including plan building), and the one no-op pass per heap
    // that finds nothing left to gain.
    let mut working = Vec::new();
    let mut working_cpu = Vec::new();
    let mut idle = Vec::new();
    let mut rounds = 0;
    while working.len() < scale.passes {
        rounds += 1;
        // Mixed sizes, 64 B to 16 KiB, every other block freed.
        let heap = Heap::new();
        let mut allocated = 0;
        let mut all = Vec::new();
        while allocated < scale.pass_total {
            let size = 64usize << rng.gen_range(0..=8);
            all.push(heap.alloc_handle(size, 16).expect("alloc_handle"));
            allocated += size;
        }
        for h in all.iter().skip(1).step_by(2) {
            heap.free_handle(*h).expect("live");
        }
        loop {
            let cpu = thread_cpu_time();
            let r = heap.compact(Budget::time(BUDGET));
            let cpu = thread_cpu_time() - cpu;
            if r.complete && r.blocks_moved == 0 {
                idle.push(r.elapsed);
                break;
            }
            working.push(r.elapsed);
            working_cpu.push(cpu);
        }
        drop(all);
    }
    working.sort();
    working_cpu.sort();
    idle.sort();
    println!(
        "\npass durations, Budget::time(500 µs), mixed 64 B-16 KiB blocks, {} fragmented heaps:",
        rounds
    );
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>10} {:>12}",
        "", "passes", "p50", "p99", "max", "p99/budget"
    );
    for (name, v) in [
        ("passes with work", &working),
        ("  same, thread CPU time", &working_cpu),
        ("final no-op passes", &idle),
    ] {
        if v.is_empty() {
            continue;
        }
        let p99 = percentile(v, 0.99);
        println!(
            "{:<28} {:>6} {:>10.1?} {:>10.1?} {:>10.1?} {:>12.3}",
            name,
            v.len(),
            percentile(v, 0.5),
            p99,
            v[v.len() - 1],
            p99.as_secs_f64() / BUDGET.as_secs_f64()
        );
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let scale = if bench { &BENCH } else { &TEST };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    copy_rate(&mut c, scale);
    c.final_summary();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    mesh_recovery(scale);
    pass_durations(scale);
}
