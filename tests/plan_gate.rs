//! When a budgeted pass plans (issue 11): a plan is kept only if it gives back at least
//! half of `min_fragmentation`'s share of the committed movable bytes; a dropped
//! plan makes planning back off, but never past a worthwhile plan for long.

use tidyheap::{Budget, CompactionPolicy, Heap, RawHandle};

/// Four blocks in each class from 16 KiB to 64 KiB, three of them freed (one span each,
/// whose carved holes no plan can remove), `dense` KiB blocks filling 8 spans of their
/// class, and two spans of 64 B blocks of which every other block is freed (one span's
/// worth to gain: 64 KiB).
struct Packed {
    heap: Heap,
    dense: Vec<(RawHandle, u8)>,
    small: Vec<(RawHandle, u8)>,
    _big: Vec<RawHandle>,
}

const DENSE: usize = 1024;

fn packed() -> Packed {
    let heap = Heap::new();
    // The class sizes from 16 KiB to 64 KiB: 2 KiB steps, then 4 KiB steps.
    let sizes = (0..8)
        .map(|i| (16 + 2 * i) << 10)
        .chain((0..9).map(|i| (32 + 4 * i) << 10));
    let big: Vec<RawHandle> = sizes
        .map(|size| {
            let four: Vec<RawHandle> = (0..4)
                .map(|_| heap.alloc_handle(size, 16).unwrap())
                .collect();
            for h in &four[..3] {
                heap.free_handle(*h).unwrap();
            }
            four[3]
        })
        .collect();
    let fill = |n: usize, size: usize| -> Vec<(RawHandle, u8)> {
        (0..n)
            .map(|i| {
                let h = heap.alloc_handle(size, 16).unwrap();
                heap.write(h).unwrap().fill(i as u8);
                (h, i as u8)
            })
            .collect()
    };
    let dense = fill(8 * 60, DENSE);
    let mut small = fill(2 * 900, 64);
    let mut keep = Vec::new();
    for (i, (h, v)) in small.drain(..).enumerate() {
        if i % 2 == 0 {
            keep.push((h, v));
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    Packed {
        heap,
        dense,
        small: keep,
        _big: big,
    }
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
fn a_plan_worth_less_than_the_gate_is_dropped_and_planning_backs_off() {
    let p = packed();
    let f = p.heap.fragmentation();
    let policy = p.heap.compaction_policy();
    assert!(f.ratio > policy.min_fragmentation, "{f:?}");
    // What a plan could gain here is the 64 B class's second span: far below the gate.
    assert!(((64 << 10) as f64) < f.committed_bytes as f64 * policy.min_fragmentation / 2.0);
    let mut plans = 0;
    let mut moved = 0;
    for _ in 0..200 {
        let r = p.heap.compact(Budget::blocks(1000));
        assert!(r.ran);
        plans += r.plans;
        moved += r.blocks_moved;
    }
    assert_eq!((plans, moved), (0, 0), "a plan below the gate was kept");
    // A full compaction ignores the gate and packs the 64 B class.
    let r = p.heap.compact_full();
    assert!(r.plans >= 1 && r.blocks_moved > 0, "{r:?}");
    check(&p.heap, &p.small);
    check(&p.heap, &p.dense);
}

#[test]
fn freeing_enough_to_be_worth_a_plan_plans_at_once() {
    let mut p = packed();
    // Back off as far as it goes.
    for _ in 0..200 {
        assert_eq!(p.heap.compact(Budget::blocks(1000)).plans, 0);
    }
    // Free three blocks in four of the dense class, spread over its spans: six of its
    // eight spans to gain, and fragmentation rises well past `REPLAN_RISE`.
    let mut kept = Vec::new();
    for (i, (h, v)) in p.dense.drain(..).enumerate() {
        if i % 4 == 0 {
            kept.push((h, v));
        } else {
            p.heap.free_handle(h).unwrap();
        }
    }
    let r = p.heap.compact(Budget::UNLIMITED);
    assert_eq!(r.plans, 1, "{r:?}");
    assert!(r.blocks_moved > 0 && r.spans_emptied >= 6, "{r:?}");
    check(&p.heap, &kept);
    check(&p.heap, &p.small);
}

#[test]
fn a_worthwhile_plan_waits_at_most_the_longest_backoff() {
    let p = packed();
    for _ in 0..200 {
        assert_eq!(p.heap.compact(Budget::blocks(1000)).plans, 0);
    }
    // More live data in a new class lowers fragmentation, then freeing most of it
    // leaves a plan worth making, with fragmentation back about where it was: no rise
    // to plan at once, so the backoff decides when.
    let extra: Vec<RawHandle> = (0..12 * 60)
        .map(|_| p.heap.alloc_handle(2048, 16).unwrap())
        .collect();
    let mut kept = Vec::new();
    for (i, h) in extra.into_iter().enumerate() {
        if i % 3 == 0 {
            p.heap.write(h).unwrap().fill(7);
            kept.push((h, 7));
        } else {
            p.heap.free_handle(h).unwrap();
        }
    }
    let passes_to_plan = (1..=40)
        .find(|_| p.heap.compact(Budget::blocks(1000)).plans == 1)
        .expect("planned within 40 passes");
    assert!(passes_to_plan <= 33, "waited {passes_to_plan} passes");
    p.heap.compact_full();
    check(&p.heap, &kept);
    check(&p.heap, &p.dense);
}

#[test]
fn an_eager_policy_plans_every_pass() {
    let p = packed();
    p.heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: 0.0,
        purge_delay_passes: 0,
    });
    let r = p.heap.compact(Budget::UNLIMITED);
    assert_eq!(r.plans, 1);
    assert!(r.blocks_moved > 0, "{r:?}");
    for _ in 0..10 {
        assert_eq!(p.heap.compact(Budget::UNLIMITED).plans, 1);
    }
    check(&p.heap, &p.small);
}
