//! Large blocks: alloc + touch every page + free, 1–64 MiB, tidyheap beside glibc malloc
//! and mimalloc in the same group (the same block size over and over: the pattern of
//! streaming textures or scratch buffers).
//!
//! Peers: `tidyheap` (a `Heap`: its large path with the default `LargeConfig`, huge
//! pages tried, then `MADV_HUGEPAGE`, freed mappings cached), `tidyheap_4k` (a
//! `LargeAllocator` with `HugePages::Never`, through `alloc_uninit` as `Heap` calls it),
//! `tidyheap_uncached` (`LargeConfig::UNCACHED`: every free unmaps, every alloc faults
//! afresh; the behaviour before the cache), `system` (`std::alloc::System`, glibc) and
//! `mimalloc` (`mimalloc::MiMalloc`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use mimalloc::MiMalloc;
use tidyheap::Heap;
use tidyheap::large::{HugePages, LargeAllocator, LargeConfig};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// Writes one byte in every page of `[p, p + len)`.
///
/// # Safety
///
/// `[p, p + len)` is writable.
unsafe fn touch(p: *mut u8, len: usize) {
    for off in (0..len).step_by(PAGE) {
        // SAFETY: `off < len`, inside the writable block.
        unsafe { p.add(off).write_volatile(1) };
    }
}

static TIDY_4K: LargeAllocator = LargeAllocator::new(LargeConfig {
    huge_pages: HugePages::Never,
    ..LargeConfig::DEFAULT
});
static TIDY_UNCACHED: LargeAllocator = LargeAllocator::new(LargeConfig::UNCACHED);

/// One alloc + touch + free through a `GlobalAlloc`.
fn cycle_global(a: &impl GlobalAlloc, l: Layout) {
    // SAFETY: `l` has a non-zero size; the block is checked, touched inside its bounds
    // and freed with the same layout.
    unsafe {
        let p = a.alloc(l);
        assert!(!p.is_null());
        touch(black_box(p), l.size());
        a.dealloc(p, l);
    }
}

fn alloc_touch_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("large_alloc_touch_free");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let heap = Heap::new();
    for mib in [1, 4, 16, 64] {
        let size = mib * MIB;
        let layout = Layout::from_size_align(size, 16).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(
            BenchmarkId::new("tidyheap", format!("{mib}MiB")),
            &layout,
            |b, &l| {
                b.iter(|| {
                    let p = heap.alloc(l).unwrap();
                    // SAFETY: a block of `l.size()` writable bytes, freed with `l`.
                    unsafe {
                        touch(black_box(p.as_ptr()), l.size());
                        heap.dealloc(p, l);
                    }
                })
            },
        );
        for (peer, large) in [
            ("tidyheap_4k", &TIDY_4K),
            ("tidyheap_uncached", &TIDY_UNCACHED),
        ] {
            group.bench_with_input(
                BenchmarkId::new(peer, format!("{mib}MiB")),
                &layout,
                |b, &l| {
                    b.iter(|| {
                        let p = large.alloc_uninit(l).unwrap();
                        // SAFETY: a block of `l.size()` writable bytes, freed with `l`.
                        unsafe {
                            touch(black_box(p.as_ptr()), l.size());
                            large.dealloc(p, l);
                        }
                    })
                },
            );
        }
        group.bench_with_input(
            BenchmarkId::new("system", format!("{mib}MiB")),
            &layout,
            |b, &l| b.iter(|| cycle_global(&System, l)),
        );
        group.bench_with_input(
            BenchmarkId::new("mimalloc", format!("{mib}MiB")),
            &layout,
            |b, &l| b.iter(|| cycle_global(&MiMalloc, l)),
        );
    }
    group.finish();
}

/// Holds the `criterion_group!` runner (a private module keeps its generated function out
/// of `missing_docs`).
mod runner {
    criterion::criterion_group!(benches, super::alloc_touch_free);
}
criterion_main!(runner::benches);
