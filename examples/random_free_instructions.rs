//! The `random_free_10k` round of `benches/alloc.rs` (10 000 allocations of 64 B, then
//! frees in a fixed shuffled order) for one peer, as a plain loop callgrind can count
//! exactly, with its cache simulation as a proxy for the misses a loaded machine's
//! timings cannot show (see `benches/README.md`):
//!
//! ```sh
//! cargo build --release --example random_free_instructions
//! valgrind --tool=callgrind --cache-sim=yes \
//!   --toggle-collect='random_free_instructions::rounds*' \
//!   target/release/examples/random_free_instructions <peer> <rounds>
//! ```
//!
//! Peers: `tidyheap` (a `Heap`), `tidyheap_global`, `mimalloc`, `system`. `Collected`
//! ÷ (rounds × 20 000) is the count per operation (an allocation or a free). One warm-up
//! round runs before the counted ones.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;

use mimalloc::MiMalloc;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use tidyheap::{Global, Heap};

static TIDY_GLOBAL: Global = Global::new();

const N: usize = 10_000;

#[inline(never)]
fn rounds(
    n: u64,
    order: &[usize],
    ptrs: &mut [*mut u8],
    alloc: impl Fn() -> *mut u8,
    free: impl Fn(*mut u8),
) {
    for _ in 0..n {
        for slot in ptrs.iter_mut() {
            *slot = alloc();
            assert!(!slot.is_null());
        }
        for &i in order {
            free(black_box(ptrs[i]));
        }
    }
}

fn run(peer: &str, n: u64) {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let mut order: Vec<usize> = (0..N).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(0x10_000));
    let mut ptrs = vec![core::ptr::null_mut::<u8>(); N];
    let heap = Heap::new();
    let ga = |a: &dyn GlobalAlloc, ptrs: &mut [*mut u8]| {
        // SAFETY: nonzero size.
        let alloc = || unsafe { a.alloc(black_box(layout)) };
        // SAFETY: each block is live with `layout` and freed exactly once (`order` is a
        // permutation).
        let free = |p| unsafe { a.dealloc(p, layout) };
        rounds(1, &order, ptrs, alloc, free);
        rounds(n, &order, ptrs, alloc, free);
    };
    match peer {
        "tidyheap" => {
            let alloc = || {
                heap.alloc(black_box(layout))
                    .map_or(core::ptr::null_mut(), NonNull::as_ptr)
            };
            // SAFETY: as above, from `heap`.
            let free = |p: *mut u8| unsafe { heap.dealloc(NonNull::new(p).expect("live"), layout) };
            rounds(1, &order, &mut ptrs, alloc, free);
            rounds(n, &order, &mut ptrs, alloc, free);
        }
        "tidyheap_global" => ga(&TIDY_GLOBAL, &mut ptrs),
        "mimalloc" => ga(&MiMalloc, &mut ptrs),
        "system" => ga(&System, &mut ptrs),
        other => panic!("unknown peer {other:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let peer = args.first().map_or("tidyheap", String::as_str);
    let n: u64 = args.get(1).map_or(20, |s| s.parse().expect("rounds"));
    let t = std::time::Instant::now();
    run(peer, n);
    let per = t.elapsed().as_secs_f64() * 1e9 / (n + 1) as f64 / (2 * N) as f64;
    println!("{peer}: {n} rounds, {per:.2} ns per operation (wall, untuned)");
}
