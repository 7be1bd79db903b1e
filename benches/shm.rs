//! The shared-memory arena against `atomic-matrix` (a lock-free TLSF-style IPC allocator from
//! crates.io) and against our own pools, in the same groups.
//!
//! * `shm_pair/<peer>/<size>`: one allocation immediately freed, hot, 64 B – 4 KiB.
//! * `shm_random_1k/<peer>/64`: 1 000 allocations of 64 B, then frees in a pre-shuffled order.
//! * `medium_pair/<peer>/<size>` and `medium_churn/<peer>`: issue 17's evaluation of TLSF for
//!   32–256 KiB blocks in the main heap, where the pools' size classes round up to 12.5 %:
//!   a hot pair, and a churn of 64 live blocks of random sizes (replace one per iteration).
//!   The space side (bytes held per live byte after the churn) is printed before the timings.
//!
//! Peers: `tidyheap_shm` (`ShmArena::alloc`/`free` on a memfd segment: lock, TLSF, handle
//! validation), `atomic_matrix` (`MatrixHandler::allocate::<[u8; N]>` / `free`, its safe typed
//! API), `atomic_matrix_raw` (`allocate_raw` / `AtomicMatrix::ack`, no type tag or checks),
//! `tidyheap_heap` (`tidyheap::Heap::alloc`/`dealloc`: the process-local pools, for scale).
//! See `benches/README.md` for measured ratios.

use std::alloc::Layout;
use std::hint::black_box;
use std::time::Duration;

use atomic_matrix::prelude::{
    AtomicMatrix, BlockHeader, HEADER_SPACE, HandlerFunctions, MatrixHandler, RelativePtr,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;
use tidyheap::shm::{ShmArena, ShmHandle};

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn short(group: &mut Group<'_>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
}

/// An atomic-matrix segment in /dev/shm, removed on drop.
struct Matrix(MatrixHandler);

impl Matrix {
    fn new(size: usize) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("tidyheap-bench-{}-{n}", std::process::id());
        Matrix(AtomicMatrix::bootstrap(Some(id), size).expect("atomic-matrix bootstrap"))
    }

    fn alloc_raw(&self, size: u32) -> RelativePtr<u8> {
        self.0
            .allocate_raw(size)
            .expect("atomic-matrix allocate_raw")
    }

    fn free_raw(&self, p: &RelativePtr<u8>) {
        let header = RelativePtr::<BlockHeader>::new(p.offset() - HEADER_SPACE);
        self.0.matrix().ack(&header, self.0.base_ptr());
    }
}

impl Drop for Matrix {
    fn drop(&mut self) {
        // SAFETY: no other process uses this benchmark-private segment.
        let _ = unsafe { self.0.die() };
    }
}

/// The typed pair gets a fresh segment per size: on a segment that already served another
/// size, atomic-matrix 0.4.1's `free` rejects some blocks (`InvalidOffset`) and leaks them.
fn typed_pair<const N: usize>(group: &mut Group<'_>) {
    let m = &Matrix::new(64 << 20);
    group.bench_function(BenchmarkId::new("atomic_matrix", N), |b| {
        b.iter(|| {
            let block = m.0.allocate::<[u8; N]>().expect("atomic-matrix allocate");
            m.0.free(black_box(block)).expect("atomic-matrix free");
        })
    });
}

fn shm_pair(c: &mut Criterion) {
    let arena = ShmArena::create_anonymous(64 << 20).unwrap();
    let matrix = Matrix::new(64 << 20);
    let heap = Heap::new();
    let mut group = c.benchmark_group("shm_pair");
    short(&mut group);
    group.throughput(Throughput::Elements(1));
    for size in [64usize, 256, 1024, 4096] {
        group.bench_function(BenchmarkId::new("tidyheap_shm", size), |b| {
            b.iter(|| {
                let h = arena.alloc(black_box(size), 16).unwrap();
                arena.free(black_box(h)).unwrap();
            })
        });
        match size {
            64 => typed_pair::<64>(&mut group),
            256 => typed_pair::<256>(&mut group),
            1024 => typed_pair::<1024>(&mut group),
            _ => typed_pair::<4096>(&mut group),
        }
        group.bench_function(BenchmarkId::new("atomic_matrix_raw", size), |b| {
            b.iter(|| {
                let p = matrix.alloc_raw(black_box(size as u32));
                matrix.free_raw(black_box(&p));
            })
        });
        let layout = Layout::from_size_align(size, 16).unwrap();
        group.bench_function(BenchmarkId::new("tidyheap_heap", size), |b| {
            b.iter(|| {
                let p = heap.alloc(black_box(layout)).unwrap();
                // SAFETY: `p` came from `heap` with `layout` and is freed once.
                unsafe { heap.dealloc(black_box(p), layout) };
            })
        });
    }
    group.finish();
}

const RANDOM_N: usize = 1000;

fn shm_random(c: &mut Criterion) {
    let arena = ShmArena::create_anonymous(64 << 20).unwrap();
    let matrix = Matrix::new(64 << 20);
    let heap = Heap::new();
    let mut order: Vec<usize> = (0..RANDOM_N).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(17));
    let mut group = c.benchmark_group("shm_random_1k");
    short(&mut group);
    group.throughput(Throughput::Elements(RANDOM_N as u64));
    let mut hs = vec![ShmHandle::from_bits(0); RANDOM_N];
    group.bench_function(BenchmarkId::new("tidyheap_shm", 64), |b| {
        b.iter(|| {
            for h in hs.iter_mut() {
                *h = arena.alloc(black_box(64), 16).unwrap();
            }
            for &i in &order {
                arena.free(black_box(hs[i])).unwrap();
            }
        })
    });
    let mut ps: Vec<RelativePtr<u8>> = Vec::with_capacity(RANDOM_N);
    group.bench_function(BenchmarkId::new("atomic_matrix_raw", 64), |b| {
        b.iter(|| {
            ps.clear();
            for _ in 0..RANDOM_N {
                ps.push(matrix.alloc_raw(black_box(64)));
            }
            for &i in &order {
                matrix.free_raw(black_box(&ps[i]));
            }
        })
    });
    let layout = Layout::from_size_align(64, 16).unwrap();
    let mut raw = Vec::with_capacity(RANDOM_N);
    group.bench_function(BenchmarkId::new("tidyheap_heap", 64), |b| {
        b.iter(|| {
            raw.clear();
            for _ in 0..RANDOM_N {
                raw.push(heap.alloc(black_box(layout)).unwrap());
            }
            for &i in &order {
                // SAFETY: each block came from `heap` with `layout`; `order` is a permutation.
                unsafe { heap.dealloc(black_box(raw[i]), layout) };
            }
        })
    });
    group.finish();
}

const MEDIUM: [usize; 4] = [40 << 10, 72 << 10, 136 << 10, 200 << 10];
const CHURN_LIVE: usize = 64;

fn medium_sizes(n: usize) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(32);
    (0..n)
        .map(|_| rng.gen_range(32 << 10..=256 << 10))
        .collect()
}

/// Space after a churn of `CHURN_LIVE` live medium blocks (`steps` replacements): bytes each
/// allocator holds per live byte. Printed once; both run the same size sequence.
fn medium_space(steps: usize) {
    let sizes = medium_sizes(CHURN_LIVE + steps);
    let arena = ShmArena::create_anonymous(256 << 20).unwrap();
    let heap = Heap::new();
    let mut rng = SmallRng::seed_from_u64(33);
    let mut shm: Vec<(ShmHandle, usize)> = Vec::new();
    let mut pools: Vec<(std::ptr::NonNull<u8>, Layout)> = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        if i >= CHURN_LIVE {
            let victim = rng.gen_range(0..CHURN_LIVE);
            arena.free(shm.swap_remove(victim).0).unwrap();
            let (p, l) = pools.swap_remove(victim);
            // SAFETY: `p` came from `heap` with `l` and is freed once.
            unsafe { heap.dealloc(p, l) };
        }
        shm.push((arena.alloc(size, 16).unwrap(), size));
        let l = Layout::from_size_align(size, 16).unwrap();
        pools.push((heap.alloc(l).unwrap(), l));
    }
    let live: usize = shm.iter().map(|&(_, s)| s).sum();
    let s = arena.stats().unwrap();
    // TLSF footprint: up to the end of the highest live block (the pages a process touched).
    let first = shm.iter().map(|&(h, _)| h.offset()).min().unwrap_or(0) as usize;
    let top = shm
        .iter()
        .map(|&(h, _)| h.offset() as usize + arena.usable_size(h).unwrap())
        .max()
        .unwrap_or(0);
    let hs = heap.stats();
    let pools_usable: usize = pools.iter().map(|&(_, l)| heap.usable_size(l)).sum();
    eprintln!(
        "medium_space ({} live blocks of 32-256 KiB after {steps} replacements, {} KiB live):",
        CHURN_LIVE,
        live >> 10
    );
    eprintln!(
        "  tidyheap_shm (TLSF): held by live blocks {:.3} x live, footprint to the highest live block >= {:.3} x live, fragmentation {:.3}",
        s.used_bytes as f64 / live as f64,
        (top - first) as f64 / live as f64,
        s.fragmentation()
    );
    eprintln!(
        "  tidyheap_heap (size classes): usable {:.3} x live, committed {:.3} x live",
        pools_usable as f64 / live as f64,
        hs.committed_bytes as f64 / live as f64
    );
    for (p, l) in pools {
        // SAFETY: `p` came from `heap` with `l` and is freed once.
        unsafe { heap.dealloc(p, l) };
    }
}

fn medium(c: &mut Criterion) {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    medium_space(if bench_mode { 20_000 } else { 200 });
    let arena = ShmArena::create_anonymous(256 << 20).unwrap();
    let heap = Heap::new();
    let mut group = c.benchmark_group("medium_pair");
    short(&mut group);
    group.throughput(Throughput::Elements(1));
    for size in MEDIUM {
        group.bench_function(BenchmarkId::new("tidyheap_shm", size), |b| {
            b.iter(|| {
                let h = arena.alloc(black_box(size), 16).unwrap();
                arena.free(black_box(h)).unwrap();
            })
        });
        let layout = Layout::from_size_align(size, 16).unwrap();
        group.bench_function(BenchmarkId::new("tidyheap_heap", size), |b| {
            b.iter(|| {
                let p = heap.alloc(black_box(layout)).unwrap();
                // SAFETY: `p` came from `heap` with `layout` and is freed once.
                unsafe { heap.dealloc(black_box(p), layout) };
            })
        });
    }
    group.finish();

    let sizes = medium_sizes(4096);
    let mut group = c.benchmark_group("medium_churn");
    short(&mut group);
    group.throughput(Throughput::Elements(1));
    let mut rng = SmallRng::seed_from_u64(34);
    let victims: Vec<usize> = (0..4096).map(|_| rng.gen_range(0..CHURN_LIVE)).collect();
    let mut live: Vec<ShmHandle> = sizes[..CHURN_LIVE]
        .iter()
        .map(|&s| arena.alloc(s, 16).unwrap())
        .collect();
    let mut i = 0;
    group.bench_function("tidyheap_shm", |b| {
        b.iter(|| {
            i = (i + 1) % sizes.len();
            let v = victims[i];
            arena.free(live[v]).unwrap();
            live[v] = arena.alloc(black_box(sizes[i]), 16).unwrap();
        })
    });
    for h in live {
        arena.free(h).unwrap();
    }
    let mut live: Vec<(std::ptr::NonNull<u8>, Layout)> = sizes[..CHURN_LIVE]
        .iter()
        .map(|&s| {
            let l = Layout::from_size_align(s, 16).unwrap();
            (heap.alloc(l).unwrap(), l)
        })
        .collect();
    let mut i = 0;
    group.bench_function("tidyheap_heap", |b| {
        b.iter(|| {
            i = (i + 1) % sizes.len();
            let v = victims[i];
            let (p, l) = live[v];
            // SAFETY: `p` came from `heap` with `l` and is replaced right after, so freed once.
            unsafe { heap.dealloc(p, l) };
            let l = Layout::from_size_align(sizes[i], 16).unwrap();
            live[v] = (heap.alloc(black_box(l)).unwrap(), l);
        })
    });
    for (p, l) in live {
        // SAFETY: as above; each live block is freed once.
        unsafe { heap.dealloc(p, l) };
    }
    group.finish();
}

mod group {
    use super::{medium, shm_pair, shm_random};
    criterion::criterion_group!(benches, shm_pair, shm_random, medium);
}
criterion_main!(group::benches);
