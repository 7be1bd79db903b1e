//! Thread churn: many short-lived threads, each allocating a little and exiting (test
//! harnesses, task pools that start and stop). What it measures is what an allocator
//! does at a thread's first allocations and at its exit.
//!
//! `thread_churn/<peer>/<threads per wave>`: 32 waves, each spawning that many threads
//! at once and joining them; each thread allocates 200 blocks of 16 B–2 KiB (a seeded
//! mix), writes them, frees every other one, allocates 100 more, then frees everything.
//! Throughput in threads. Peers: `tidyheap` (a static `tidyheap::Global` through
//! `GlobalAlloc`: the path a `#[global_allocator]` user gets), `system` (glibc) and
//! `mimalloc`. The benchmark binary itself (thread spawning included) runs on the
//! system allocator for every peer; only the threads' blocks go to each peer.
//!
//! After the groups, a summary line per peer gives time per thread and minor page faults
//! per thread (`getrusage`) over 2 000 threads, and the ratio to `system`.
//!
//! `cargo bench --bench thread_churn` runs full sizes; `cargo test --bench
//! thread_churn` runs everything once on tiny sizes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mimalloc::MiMalloc;
use tidyheap::Global;

static TIDY: Global = Global::new();
static SYSTEM: System = System;
static MIMALLOC: MiMalloc = MiMalloc;

const PEERS: [&str; 3] = ["tidyheap", "system", "mimalloc"];

fn peer(name: &str) -> &'static (dyn GlobalAlloc + Sync) {
    match name {
        "tidyheap" => &TIDY,
        "system" => &SYSTEM,
        "mimalloc" => &MIMALLOC,
        other => panic!("unknown peer {other:?}"),
    }
}

/// One short-lived thread's work on `a`.
fn work(a: &dyn GlobalAlloc, seed: u64) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut live: Vec<(*mut u8, Layout)> = Vec::with_capacity(300);
    let alloc = |live: &mut Vec<(*mut u8, Layout)>, r: u64| {
        let size = 16 + (r % 2033) as usize;
        let l = Layout::from_size_align(size, 16).expect("layout");
        // SAFETY: `l` has a nonzero size.
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: `p` holds `size` writable bytes.
        unsafe { p.write_bytes(r as u8, size) };
        live.push((p, l));
    };
    for _ in 0..200 {
        alloc(&mut live, next());
    }
    let mut i = 0;
    live.retain(|&(p, l)| {
        i += 1;
        if i % 2 == 0 {
            // SAFETY: `p` is a live block of `a` with layout `l`, freed once.
            unsafe { a.dealloc(p, l) };
            false
        } else {
            true
        }
    });
    for _ in 0..100 {
        alloc(&mut live, next());
    }
    for (p, l) in live {
        // SAFETY: as above.
        unsafe { a.dealloc(black_box(p), l) };
    }
}

/// `waves` waves of `per_wave` threads on `name`; returns the elapsed time.
fn churn(name: &str, waves: usize, per_wave: usize) -> Duration {
    let a = peer(name);
    let start = Instant::now();
    for w in 0..waves {
        let ts: Vec<_> = (0..per_wave)
            .map(|t| std::thread::spawn(move || work(a, (w * per_wave + t) as u64 + 1)))
            .collect();
        for t in ts {
            t.join().expect("worker");
        }
    }
    start.elapsed()
}

/// Minor page faults of the process so far.
fn minor_faults() -> i64 {
    // SAFETY: `getrusage` writes a `rusage` into the zeroed value we pass.
    unsafe {
        let mut u: libc::rusage = core::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut u), 0);
        u.ru_minflt
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (waves, summary_threads) = if bench { (32, 2_000) } else { (1, 4) };
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut group = c.benchmark_group("thread_churn");
    for per_wave in [1, 2] {
        group.throughput(Throughput::Elements((waves * per_wave) as u64));
        for name in PEERS {
            group.bench_function(BenchmarkId::new(name, per_wave), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| churn(name, waves, per_wave)).sum())
            });
        }
    }
    group.finish();

    println!("\nthread_churn summary: {summary_threads} threads, 2 per wave");
    let mut base = None;
    for name in ["system", "tidyheap", "mimalloc"] {
        churn(name, 4, 2);
        let f0 = minor_faults();
        let t = churn(name, summary_threads / 2, 2);
        let faults = (minor_faults() - f0) as f64 / summary_threads as f64;
        let per = t.as_secs_f64() * 1e6 / summary_threads as f64;
        let (bt, bf) = *base.get_or_insert((per, faults));
        let fault_ratio = if bf > 0.0 {
            format!("{:.2}× system", faults / bf)
        } else {
            "system: 0".to_string()
        };
        println!(
            "  {name:<9} {per:>7.2} µs/thread ({:.2}× system)   {faults:>6.2} minor faults/thread ({fault_ratio})",
            per / bt,
        );
    }
}
