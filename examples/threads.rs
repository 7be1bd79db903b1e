//! The thread-cache demo: 8 threads × 10 000 allocations of 64 B–1 KiB from one
//! [`Heap`], freeing every 100.
//!
//! Run it with `cargo run --release --example threads`.
//!
//! **"Freeing every 100"**: each thread allocates in rounds of 100 blocks (sizes drawn
//! uniformly from 64..=1024 B by a per-thread seeded RNG, so runs are repeatable); at
//! the end of a round it frees that round's 100 blocks, oldest first. At most 100 of a
//! thread's blocks are live at once, and every round after the first is served from
//! the blocks the previous round left in the thread's cache: the hit rate shows how
//! rarely a thread has to go to the central lists or its arena.
//!
//! It prints, per thread, the cache hit rate, misses and central batch transfers; per
//! arena, how many threads it serves and how often its lock was taken; then the heap
//! totals and the overall throughput (allocations + frees per second). The process
//! exits with an error if any thread's hit rate is 90 % or less.
//!
//! `tests/fixed_alloc.rs` runs the same workload (it includes this file) and asserts
//! the same bound.

use std::alloc::Layout;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Heap, HeapStats, PoolCounters};

/// The shape of a run.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Worker threads.
    pub threads: usize,
    /// Allocations per thread.
    pub allocs_per_thread: usize,
    /// Blocks per round: a round's blocks are freed together when it is full.
    pub free_every: usize,
    /// Smallest request, bytes.
    pub min_size: usize,
    /// Largest request, bytes.
    pub max_size: usize,
    /// Seed of the per-thread RNGs (thread `t` uses `seed + t`).
    pub seed: u64,
}

impl Workload {
    /// The demo as specified: 8 threads × 10 000 allocations of 64 B–1 KiB, freeing
    /// every 100.
    pub const DEMO: Workload = Workload {
        threads: 8,
        allocs_per_thread: 10_000,
        free_every: 100,
        min_size: 64,
        max_size: 1024,
        seed: 0x7d1e_4ea9,
    };
}

/// What one worker thread saw.
#[derive(Clone, Debug)]
pub struct ThreadReport {
    /// Worker index.
    pub thread: usize,
    /// Its cache counters, read just before it finished.
    pub cache: PoolCounters,
    /// Its time from the start signal to its last free.
    pub elapsed: Duration,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload that ran.
    pub workload: Workload,
    /// One entry per worker, in thread order.
    pub threads: Vec<ThreadReport>,
    /// Heap statistics taken after every worker finished but before any exited, so
    /// each arena still counts the threads it serves.
    pub heap: HeapStats,
    /// Wall time from the start signal until every worker finished.
    pub wall: Duration,
}

impl Report {
    /// The lowest per-thread hit rate.
    pub fn min_hit_rate(&self) -> f64 {
        self.threads
            .iter()
            .map(|t| t.cache.hit_rate())
            .fold(1.0, f64::min)
    }

    /// Allocations plus frees per second of wall time.
    pub fn ops_per_sec(&self) -> f64 {
        let ops = self.heap.fixed.allocations + self.heap.fixed.frees;
        ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs `w` on `heap` and reports.
///
/// # Panics
///
/// If an allocation fails (the demo needs well under 1 MiB per thread).
pub fn run(heap: &Heap, w: &Workload) -> Report {
    // Start together, finish together, exit together: the statistics are read while
    // every worker still holds its cache.
    let barrier = Barrier::new(w.threads + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..w.threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || worker(heap, w, t, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        let wall = start.elapsed();
        let stats = heap.stats();
        barrier.wait();
        Report {
            workload: *w,
            threads: workers
                .into_iter()
                .map(|h| h.join().expect("worker panicked"))
                .collect(),
            heap: stats,
            wall,
        }
    })
}

fn worker(heap: &Heap, w: &Workload, thread: usize, barrier: &Barrier) -> ThreadReport {
    let mut rng = SmallRng::seed_from_u64(w.seed.wrapping_add(thread as u64));
    let mut round = Vec::with_capacity(w.free_every);
    barrier.wait();
    let start = Instant::now();
    for i in 0..w.allocs_per_thread {
        let size = rng.gen_range(w.min_size..=w.max_size);
        let layout = Layout::from_size_align(size, 8).expect("demo sizes are valid");
        let p = heap.alloc(layout).expect("the demo's memory is small");
        // SAFETY: the block holds at least `size` ≥ 1 bytes; touching it makes the
        // allocation real work.
        unsafe { p.as_ptr().write(i as u8) };
        round.push((p, layout));
        if round.len() == w.free_every {
            for (p, layout) in round.drain(..) {
                // SAFETY: allocated above from `heap` with `layout`, freed once.
                unsafe { heap.dealloc(p, layout) };
            }
        }
    }
    for (p, layout) in round.drain(..) {
        // SAFETY: as above.
        unsafe { heap.dealloc(p, layout) };
    }
    let elapsed = start.elapsed();
    let cache = heap
        .thread_cache_stats()
        .expect("a worker that allocated holds a cache");
    barrier.wait();
    barrier.wait();
    ThreadReport {
        thread,
        cache,
        elapsed,
    }
}

/// Prints the report as small aligned tables.
pub fn print_report(r: &Report) {
    let w = &r.workload;
    println!(
        "tidyheap threads demo: {} threads × {} allocations of {}–{} B, freeing each round of {}",
        w.threads, w.allocs_per_thread, w.min_size, w.max_size, w.free_every
    );
    println!();
    println!(
        "{:>6}  {:>8}  {:>8}  {:>6}  {:>10}  {:>11}  {:>8}",
        "thread", "allocs", "hit rate", "misses", "batches in", "batches out", "time ms"
    );
    for t in &r.threads {
        let c = &t.cache;
        println!(
            "{:>6}  {:>8}  {:>7.2}%  {:>6}  {:>10}  {:>11}  {:>8.2}",
            t.thread,
            c.allocations,
            100.0 * c.hit_rate(),
            c.misses,
            c.batches_in,
            c.batches_out,
            t.elapsed.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "{:>6}  {:>7}  {:>10}  {:>7}  {:>7}  {:>5}  {:>13}",
        "arena", "threads", "lock takes", "refills", "returns", "spans", "committed KiB"
    );
    for (i, a) in r.heap.arenas.iter().enumerate() {
        println!(
            "{:>6}  {:>7}  {:>10}  {:>7}  {:>7}  {:>5}  {:>13}",
            i,
            a.threads,
            a.lock_acquisitions,
            a.refills,
            a.returns,
            a.spans,
            a.committed_bytes / 1024
        );
    }
    println!();
    let f = &r.heap.fixed;
    println!(
        "heap: {} allocs, {} frees, live {} B, hit rate {:.2}%, committed {} KiB in {} spans; \
         {:.1} M ops/s ({} ops in {:.2} ms wall)",
        f.allocations,
        f.frees,
        r.heap.live_bytes(),
        100.0 * f.hit_rate(),
        r.heap.committed_bytes / 1024,
        r.heap.spans,
        r.ops_per_sec() / 1e6,
        f.allocations + f.frees,
        r.wall.as_secs_f64() * 1e3
    );
}

// `tests/fixed_alloc.rs` includes this file for `run` and `print_report`; there `main`
// is not the entry point.
#[cfg_attr(test, allow(dead_code))]
fn main() {
    let heap = Heap::new();
    let report = run(&heap, &Workload::DEMO);
    print_report(&report);
    let min = report.min_hit_rate();
    if min <= 0.9 {
        eprintln!(
            "FAILED: lowest thread cache hit rate {:.2}% ≤ 90%",
            100.0 * min
        );
        std::process::exit(1);
    }
}
