//! Fixed allocation against the system allocator and mimalloc, in the same groups.
//!
//! * `alloc_free_pair/<peer>/<size>`: one allocation immediately freed, hot (the block
//!   comes straight back from the thread cache / free list every time).
//! * `random_free_10k/<peer>/64`: 10 000 allocations of 64 B, then frees in a
//!   pre-shuffled random order (the order is fixed per run, outside the timing).
//! * `realloc_churn/<peer>/<max>`: 600 live blocks, each operation reallocates a random
//!   one to a random size up to 200 or 300 KB and writes a byte in every page it grew
//!   by (`common::churn::Churn`); throughput in reallocations.
//! * `burst_4k/<peer>`: 16 384 blocks of 4 KiB allocated, one byte written in each, then
//!   all freed (`common::churn::burst_4k`); one iteration is one round, so every round
//!   measured is a warm one (the warm-up runs the first).
//!
//! Peers: `tidyheap` (a `Heap` value, through `Heap::alloc`/`dealloc`/`realloc`),
//! `tidyheap_global` (a static `tidyheap::Global` through its `GlobalAlloc` impl: the
//! adapter path a `#[global_allocator]` user gets), `system` (`std::alloc::System`,
//! glibc malloc) and `mimalloc` (`mimalloc::MiMalloc` through its `GlobalAlloc` impl).
//! The benchmark binary itself runs on the system allocator; only the measured calls
//! go to each peer. See `benches/README.md` for measured ratios.

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::{self, NonNull};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use mimalloc::MiMalloc;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use tidyheap::{Global, Heap};

/// A static `Global` that is *not* the process allocator: the adapter's own cost.
static TIDY_GLOBAL: Global = Global::new();

/// The two calls every peer is measured through.
trait Peer {
    /// # Safety
    ///
    /// `layout` has a nonzero size.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8;
    /// # Safety
    ///
    /// `p` came from `alloc` of this peer with `layout` and is not used afterwards.
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout);
}

impl Peer for Heap {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Heap::alloc(self, layout) {
            Ok(p) => p.as_ptr(),
            Err(_) => ptr::null_mut(),
        }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller; `p` is a live block, so non-null.
        unsafe { Heap::dealloc(self, NonNull::new_unchecked(p), layout) }
    }
}

/// Any `GlobalAlloc` as a peer.
struct Ga<A: 'static>(&'static A);

impl<A: GlobalAlloc> Peer for Ga<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.alloc(layout) }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.dealloc(p, layout) }
    }
}

static SYSTEM: System = System;
static MIMALLOC: MiMalloc = MiMalloc;

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

const SIZES: [usize; 4] = [16, 64, 256, 4096];
const RANDOM_N: usize = 10_000;

/// Short runs: the whole file finishes in well under two minutes.
fn short(group: &mut Group<'_>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
}

fn pair<P: Peer>(group: &mut Group<'_>, name: &str, peer: &P, size: usize) {
    let layout = Layout::from_size_align(size, 8).unwrap();
    group.bench_with_input(BenchmarkId::new(name, size), &layout, |b, &layout| {
        b.iter(|| {
            // SAFETY: nonzero size; the block is freed once, with its layout.
            unsafe {
                let p = peer.alloc(black_box(layout));
                assert!(!p.is_null());
                peer.dealloc(black_box(p), layout);
            }
        })
    });
}

fn alloc_free_pair(c: &mut Criterion) {
    let heap = Heap::new();
    let mut group = c.benchmark_group("alloc_free_pair");
    short(&mut group);
    group.throughput(Throughput::Elements(1));
    for size in SIZES {
        pair(&mut group, "tidyheap", &heap, size);
        pair(&mut group, "tidyheap_global", &Ga(&TIDY_GLOBAL), size);
        pair(&mut group, "system", &Ga(&SYSTEM), size);
        pair(&mut group, "mimalloc", &Ga(&MIMALLOC), size);
    }
    group.finish();
}

fn random(group: &mut Group<'_>, name: &str, peer: &impl Peer, order: &[usize]) {
    let layout = Layout::from_size_align(64, 8).unwrap();
    let mut ptrs = vec![ptr::null_mut::<u8>(); order.len()];
    group.bench_function(BenchmarkId::new(name, 64), |b| {
        b.iter(|| {
            for slot in ptrs.iter_mut() {
                // SAFETY: nonzero size.
                *slot = unsafe { peer.alloc(black_box(layout)) };
                assert!(!slot.is_null());
            }
            for &i in order {
                // SAFETY: each block is live with `layout` and freed exactly once
                // (`order` is a permutation).
                unsafe { peer.dealloc(black_box(ptrs[i]), layout) };
            }
        })
    });
}

fn random_free_10k(c: &mut Criterion) {
    let heap = Heap::new();
    let mut order: Vec<usize> = (0..RANDOM_N).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(0x10_000));
    let mut group = c.benchmark_group("random_free_10k");
    short(&mut group);
    group.throughput(Throughput::Elements(RANDOM_N as u64));
    random(&mut group, "tidyheap", &heap, &order);
    random(&mut group, "tidyheap_global", &Ga(&TIDY_GLOBAL), &order);
    random(&mut group, "system", &Ga(&SYSTEM), &order);
    random(&mut group, "mimalloc", &Ga(&MIMALLOC), &order);
    group.finish();
}

fn churn_one<P: common::peers::Peer>(group: &mut Group<'_>, name: &str, peer: &P, max: usize) {
    const OPS: usize = 1000;
    let mut churn = common::churn::Churn::new(peer, max, 0xC4A2);
    group.throughput(Throughput::Elements(OPS as u64));
    group.bench_function(BenchmarkId::new(name, max), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| churn.run(peer, OPS)).sum())
    });
    churn.free(peer);
}

fn realloc_churn(c: &mut Criterion) {
    let heap = Heap::new();
    let mut group = c.benchmark_group("realloc_churn");
    short(&mut group);
    for max in [200_000, 300_000] {
        churn_one(&mut group, "tidyheap", &heap, max);
        churn_one(&mut group, "system", &common::peers::Sys, max);
        churn_one(&mut group, "mimalloc", &common::peers::Mi, max);
    }
    group.finish();
}

fn burst_one<P: common::peers::Peer>(group: &mut Group<'_>, name: &str, peer: &P) {
    let mut ptrs = vec![ptr::null_mut(); common::churn::BURST_BLOCKS];
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| common::churn::burst_4k(peer, &mut ptrs))
                .sum()
        })
    });
}

fn burst_4k(c: &mut Criterion) {
    let heap = Heap::new();
    let mut group = c.benchmark_group("burst_4k");
    short(&mut group);
    group.throughput(Throughput::Elements(common::churn::BURST_BLOCKS as u64));
    burst_one(&mut group, "tidyheap", &heap);
    burst_one(&mut group, "system", &common::peers::Sys);
    burst_one(&mut group, "mimalloc", &common::peers::Mi);
    group.finish();
}

mod group {
    use super::{alloc_free_pair, burst_4k, random_free_10k, realloc_churn};
    criterion::criterion_group!(
        benches,
        alloc_free_pair,
        random_free_10k,
        realloc_churn,
        burst_4k
    );
}
criterion_main!(group::benches);
