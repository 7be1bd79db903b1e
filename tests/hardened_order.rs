//! Allocation order within a span (issue 15): with the `hardened` feature a thread's
//! refills go on its list shuffled, so consecutive allocations are rarely neighbours;
//! without it they are neighbours almost always (the list hands a fresh batch out in
//! address order). The test asserts whichever the build promises.
//!
//! The bound cannot flake: a shuffled batch of 32 neighbours has about 2 adjacent
//! consecutive pairs on average (at most 31), so 4096 allocations (128 batches) have
//! about 250; the bound, 1024, is more than 40 standard deviations away, whatever the
//! seed (the shuffle itself is tested with a fixed seed in `pool::hardened`).

use std::alloc::Layout;

use tidyheap::Heap;

#[test]
fn consecutive_allocations_are_neighbours_only_without_hardened() {
    let heap = Heap::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    let blocks: Vec<_> = (0..4096).map(|_| heap.alloc(l).unwrap()).collect();
    let adjacent = blocks
        .windows(2)
        .filter(|w| (w[0].as_ptr() as usize).abs_diff(w[1].as_ptr() as usize) == 64)
        .count();
    let pairs = blocks.len() - 1;
    eprintln!("{adjacent} of {pairs} consecutive allocations are neighbours");
    if cfg!(feature = "hardened") {
        assert!(
            adjacent * 4 < pairs,
            "{adjacent} of {pairs} consecutive allocations are neighbours"
        );
    } else {
        assert!(
            adjacent * 10 > pairs * 9,
            "only {adjacent} of {pairs} consecutive allocations are neighbours"
        );
    }
    for p in blocks {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { heap.dealloc(p, l) };
    }
}
