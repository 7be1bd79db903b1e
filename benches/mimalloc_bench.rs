//! Ports of mimalloc-bench patterns (larson, xmalloc, cache-scratch, mstress) on
//! tidyheap, the system allocator and mimalloc, each with 1 and 2 threads.
//!
//! `<pattern>/<peer>/<threads>t`, throughput in the pattern's operations (see
//! `benches/common/mbench.rs` for what each pattern does and counts). After each
//! pattern's group a summary line per peer gives the scaling ratio, 2-thread throughput
//! ÷ 1-thread throughput, from the median of a few untimed-by-criterion runs of each,
//! alternating the thread counts (ideal: 2.0 on two idle cores).
//!
//! `cargo bench --bench mimalloc_bench` runs full sizes; `cargo test --bench
//! mimalloc_bench` runs everything once on tiny sizes.

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::mbench::{self, Scale};
use common::{Mode, median, peers};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

const THREADS: [usize; 2] = [1, 2];

fn pattern(c: &mut Criterion, name: &str, scale: &Scale, summary_runs: usize) {
    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    for threads in THREADS {
        group.throughput(Throughput::Elements(mbench::ops(name, threads, scale)));
        for peer in peers::NAMES {
            group.bench_function(BenchmarkId::new(peer, format!("{threads}t")), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| mbench::run(name, peer, threads, scale).elapsed)
                        .sum()
                })
            });
        }
    }
    group.finish();

    println!(
        "\n{name}: scaling ratio (2-thread ÷ 1-thread throughput, median of {summary_runs} runs each)"
    );
    for peer in peers::NAMES {
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..summary_runs {
            one.push(mbench::run(name, peer, 1, scale).ops_per_sec());
            two.push(mbench::run(name, peer, 2, scale).ops_per_sec());
        }
        let (one, two) = (median(&mut one), median(&mut two));
        println!(
            "  {peer:<9} 1 thread {one:>11.4e} ops/s   2 threads {two:>11.4e} ops/s   scaling {:.2}",
            two / one
        );
    }
}

fn main() {
    let mode = Mode::from_args();
    let scale = Scale::new(mode);
    let summary_runs = if mode == Mode::Bench { 5 } else { 1 };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let list = std::env::args().any(|a| a == "--list");
    for name in mbench::NAMES {
        if list {
            let mut group = c.benchmark_group(name);
            for threads in THREADS {
                for peer in peers::NAMES {
                    group.bench_function(BenchmarkId::new(peer, format!("{threads}t")), |b| {
                        b.iter(|| ())
                    });
                }
            }
            group.finish();
        } else {
            pattern(&mut c, name, &scale, summary_runs);
        }
    }
    c.final_summary();
}
