//! Instructions per hot alloc+free pair, for `valgrind --tool=callgrind`.
//!
//! ```sh
//! cargo build --release --example pair_instructions
//! for peer in tidyheap tidyheap_global system mimalloc; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$peer \
//!     --toggle-collect='pair_instructions::pairs*' \
//!     target/release/examples/pair_instructions $peer 64 1000000
//! done
//! ```
//!
//! Callgrind prints the instructions executed inside `pairs` (`Collected`); divide by
//! the pair count. The first pair (which claims the thread's cache and maps a span) is
//! made before `pairs` runs, so only hot pairs are counted. Without valgrind the example
//! just runs the pairs and prints the time per pair (not a benchmark: see
//! `benches/alloc.rs` for timings).
//!
//! Arguments: `peer size count` (defaults `tidyheap 64 1000000`); peers are
//! `tidyheap` (a `Heap` value), `tidyheap_global` (a static `tidyheap::Global` through
//! `GlobalAlloc`), `system` (glibc) and `mimalloc`; with the `profiling` feature also
//! `tidyheap_sampled` (a `Heap` recording one allocation in 1000).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use mimalloc::MiMalloc;
use tidyheap::{Global, Heap};

static TIDY_GLOBAL: Global = Global::new();

/// `n` alloc+free pairs of `layout` through `alloc`/`free`, never inlined so callgrind
/// can count exactly its instructions.
#[inline(never)]
fn pairs(n: u64, layout: Layout, alloc: impl Fn(Layout) -> *mut u8, free: impl Fn(*mut u8)) {
    for _ in 0..n {
        let p = alloc(black_box(layout));
        assert!(!p.is_null());
        free(black_box(p));
    }
}

fn run(peer: &str, layout: Layout, n: u64) {
    match peer {
        "tidyheap" => {
            let heap = Heap::new();
            let alloc = |l| heap.alloc(l).map_or(core::ptr::null_mut(), NonNull::as_ptr);
            // SAFETY: `p` is a live block of `heap` allocated with `layout`.
            let free = |p: *mut u8| unsafe { heap.dealloc(NonNull::new(p).unwrap(), layout) };
            pairs(1, layout, alloc, free);
            pairs(n, layout, alloc, free);
        }
        // With the `profiling` feature: a heap recording one allocation in 1000.
        #[cfg(feature = "profiling")]
        "tidyheap_sampled" => {
            use tidyheap::profile::{ProfilingConfig, Sampling};
            let heap = Heap::with_profiling(
                tidyheap::HeapConfig::DEFAULT,
                ProfilingConfig::new().with_sampling(Sampling::EveryNth(1000)),
            );
            let alloc = |l| heap.alloc(l).map_or(core::ptr::null_mut(), NonNull::as_ptr);
            // SAFETY: `p` is a live block of `heap` allocated with `layout`.
            let free = |p: *mut u8| unsafe { heap.dealloc(NonNull::new(p).unwrap(), layout) };
            pairs(1, layout, alloc, free);
            pairs(n, layout, alloc, free);
        }
        "tidyheap_global" => ga(&TIDY_GLOBAL, layout, n),
        "system" => ga(&System, layout, n),
        "mimalloc" => ga(&MiMalloc, layout, n),
        other => panic!("unknown peer {other:?}"),
    }
}

fn ga(a: &impl GlobalAlloc, layout: Layout, n: u64) {
    // SAFETY: `layout` has a nonzero size.
    let alloc = |l| unsafe { a.alloc(l) };
    // SAFETY: `p` is a live block of `a` allocated with `layout`.
    let free = |p| unsafe { a.dealloc(p, layout) };
    pairs(1, layout, alloc, free);
    pairs(n, layout, alloc, free);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let peer = args.first().map_or("tidyheap", String::as_str);
    let size: usize = args.get(1).map_or(64, |s| s.parse().expect("size"));
    let n: u64 = args.get(2).map_or(1_000_000, |s| s.parse().expect("count"));
    let layout = Layout::from_size_align(size.max(1), 8).expect("layout");
    let t = std::time::Instant::now();
    run(peer, layout, n);
    let per = t.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64;
    println!("{peer} {size} B: {n} pairs, {per:.2} ns per pair (wall, untuned)");
}
