//! The `hardened` feature's span layout (issue 15): allocation order and guard pages.
//!
//! Allocation order within a span: with the `hardened` feature a thread's
//! refills go on its list shuffled, so consecutive allocations are rarely neighbours;
//! without it they are neighbours almost always (the list hands a fresh batch out in
//! address order). The test asserts whichever the build promises.
//!
//! The bound cannot flake: a shuffled batch of 32 neighbours has about 2 adjacent
//! consecutive pairs on average (at most 31), so 4096 allocations (128 batches) have
//! about 250; the bound, 1024, is more than 40 standard deviations away, whatever the
//! seed (the shuffle itself is tested with a fixed seed in `pool::hardened`).

use std::alloc::Layout;

use tidyheap::{Heap, HeapConfig};

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

/// A fixed span's region whose guard page (`hardened`) made its last page `PROT_NONE`,
/// emptied, trimmed and reused for movable blocks, is writable to its end: the movable
/// span's last block covers that page (a fault would kill the test).
#[test]
fn a_fixed_span_region_reused_for_movable_blocks_is_writable_to_its_end() {
    const SPAN: usize = 64 * 1024;
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    let l = Layout::from_size_align(4096, 8).unwrap();
    let fixed: Vec<_> = (0..8).map(|_| heap.alloc(l).unwrap()).collect();
    let region = fixed[0].as_ptr() as usize & !(SPAN - 1);
    for p in fixed {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { heap.dealloc(p, l) };
    }
    heap.trim();
    let handles: Vec<_> = (0..64)
        .map(|_| heap.alloc_handle(4096, 8).unwrap())
        .collect();
    let mut last_page_written = false;
    for &h in &handles {
        let mut g = heap.write(h).unwrap();
        g.fill(0xA5);
        let end = g.as_ptr() as usize + g.len();
        last_page_written |= end == region + SPAN;
    }
    assert!(
        last_page_written,
        "a movable block ending at the old fixed span's end"
    );
    for h in handles {
        heap.free_handle(h).unwrap();
    }
}
