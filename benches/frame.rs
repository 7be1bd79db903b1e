//! Frame arenas against bumpalo.
//!
//! * `frame_alloc/{peer}/{size}`: one frame of 10 000 allocations of `size` bytes,
//!   including the per-frame reset (`begin_frame`/`end` against `Bump::reset`).
//!   `tidyheap` allocates through the frame token with one frame in flight (bumpalo's
//!   `reset` semantics); `tidyheap_n2` keeps two, the default; `tidyheap_shared` goes
//!   through the multi-thread view (`Frame::shared`, thread-local lane lookup).
//! * `scratch_vec/{peer}/{len}`: one frame that pushes `len` `u64`s into a scratch
//!   vector (`allocator_api2::vec::Vec` in the frame against
//!   `bumpalo::collections::Vec`), including the reset.

use std::alloc::Layout;
use std::hint::black_box;

use bumpalo::Bump;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use tidyheap::frame::{FrameArena, FrameConfig};

const ALLOCS: usize = 10_000;

fn arena(frames_in_flight: usize) -> FrameArena {
    FrameArena::with_config(FrameConfig::new().with_frames_in_flight(frames_in_flight))
        .expect("valid config")
}

fn frame_alloc(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_alloc");
    group.throughput(Throughput::Elements(ALLOCS as u64));
    for size in [16usize, 64, 256] {
        let layout = Layout::from_size_align(size, 8).expect("valid layout");
        for (peer, n) in [("tidyheap", 1), ("tidyheap_n2", 2)] {
            let mut arena = arena(n);
            group.bench_function(BenchmarkId::new(peer, size), |b| {
                b.iter(|| {
                    let frame = arena.begin_frame();
                    for _ in 0..ALLOCS {
                        black_box(frame.alloc_layout(layout).expect("frame alloc"));
                    }
                    frame.end();
                });
            });
        }
        let mut arena = arena(1);
        group.bench_function(BenchmarkId::new("tidyheap_shared", size), |b| {
            b.iter(|| {
                let frame = arena.begin_frame();
                let shared = frame.shared();
                for _ in 0..ALLOCS {
                    black_box(shared.alloc_layout(layout).expect("frame alloc"));
                }
                frame.end();
            });
        });
        let mut bump = Bump::new();
        group.bench_function(BenchmarkId::new("bumpalo", size), |b| {
            b.iter(|| {
                bump.reset();
                for _ in 0..ALLOCS {
                    black_box(bump.alloc_layout(layout));
                }
            });
        });
    }
    group.finish();
}

fn scratch_vec(c: &mut Criterion) {
    let mut group = c.benchmark_group("scratch_vec");
    for len in [100u64, 10_000] {
        group.throughput(Throughput::Elements(len));
        let mut arena = arena(1);
        group.bench_function(BenchmarkId::new("tidyheap", len), |b| {
            b.iter(|| {
                let frame = arena.begin_frame();
                let mut v = allocator_api2::vec::Vec::new_in(&frame);
                for i in 0..len {
                    v.push(black_box(i));
                }
                black_box(&v);
                drop(v);
                frame.end();
            });
        });
        let mut bump = Bump::new();
        group.bench_function(BenchmarkId::new("bumpalo", len), |b| {
            b.iter(|| {
                bump.reset();
                let mut v = bumpalo::collections::Vec::new_in(&bump);
                for i in 0..len {
                    v.push(black_box(i));
                }
                black_box(&v);
            });
        });
    }
    group.finish();
}

/// Criterion's group function lives in a private module so `missing_docs` does not ask
/// for docs on the `pub fn` the macro generates.
mod groups {
    use criterion::criterion_group;

    criterion_group!(benches, super::frame_alloc, super::scratch_vec);
}

criterion_main!(groups::benches);
