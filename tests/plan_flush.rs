//! What a plan sends home from the central lists (issue 11): the planned classes'
//! batches, whose free blocks would keep sources from emptying, and no other class's
//! (draining those only makes threads refill them).

use tidyheap::{Budget, Heap, RawHandle};

/// Allocates `n` movable blocks of `size` bytes, each filled with its index.
fn fill(heap: &Heap, n: usize, size: usize) -> Vec<(RawHandle, u8)> {
    (0..n)
        .map(|i| {
            let h = heap.alloc_handle(size, 16).unwrap();
            heap.write(h).unwrap().fill(i as u8);
            (h, i as u8)
        })
        .collect()
}

/// Frees every other block of `blocks` (enough to overflow the thread cache into the
/// central lists) and returns the kept ones.
fn free_every_other(heap: &Heap, blocks: Vec<(RawHandle, u8)>) -> Vec<(RawHandle, u8)> {
    let mut kept = Vec::new();
    for (i, (h, v)) in blocks.into_iter().enumerate() {
        if i % 2 == 0 {
            kept.push((h, v));
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    kept
}

fn check(heap: &Heap, blocks: &[(RawHandle, u8)]) {
    for &(h, v) in blocks {
        assert!(
            heap.read(h).unwrap().iter().all(|&b| b == v),
            "{h:?} changed"
        );
    }
}

#[test]
fn a_plan_drains_its_classes_central_batches_so_sources_empty() {
    for seed in 0..3usize {
        let heap = Heap::new();
        let blocks = fill(&heap, 8192 + seed * 1000, 64);
        let kept = free_every_other(&heap, blocks);
        assert!(
            heap.stats().central.batches_held > 0,
            "the frees reached the central lists"
        );
        let before = heap.fragmentation();
        let r = heap.compact_full();
        let after = heap.fragmentation();
        // Half the blocks are free: packing gives back about half the spans, which
        // cannot happen while their free blocks sit in the central lists.
        assert!(r.spans_emptied > 0, "{r:?}");
        assert!(
            after.committed_bytes * 10 < before.committed_bytes * 7,
            "{before:?} → {after:?}"
        );
        check(&heap, &kept);
    }
}

#[test]
fn a_plan_leaves_other_classes_central_batches_alone() {
    let heap = Heap::new();
    // A class that is one partly used span: nothing to plan there, but its frees
    // overflow into the central lists.
    let small = fill(&heap, 2000, 16);
    let small = free_every_other(&heap, small);
    let held = heap.stats().central.batches_held;
    assert!(held > 0, "the 16 B frees reached the central lists");
    // A class worth a plan.
    let blocks = fill(&heap, 8192, 64);
    let kept = free_every_other(&heap, blocks);
    assert!(heap.stats().central.batches_held > held);
    let r = heap.compact(Budget::UNLIMITED);
    assert_eq!(r.plans, 1, "{r:?}");
    assert!(r.spans_emptied > 0, "{r:?}");
    assert_eq!(
        heap.stats().central.batches_held,
        held,
        "the plan sent the 64 B batches home and kept the 16 B ones"
    );
    check(&heap, &kept);
    check(&heap, &small);
}
