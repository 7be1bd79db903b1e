//! Model tests.
//!
//! * `store_matches_hashmap`: random insert / get / get_mut / remove / compact sequences
//!   on one `Store` against a `HashMap`, including stale-handle answers (proptest).
//! * `heap_matches_model_*`: the differential model of a whole heap (issue 9): raw
//!   handles, pins, fixed blocks and four stores on one heap, against a plain model, with
//!   budgeted compaction passes interleaved with frees, trims and reuse of whole spans.
//! * `planned_target_reused_*`: issue 9's reproduction of defect 1, literally.

use std::alloc::Layout;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::size_class::{self, MAX_SMALL, SPAN_UNIT};
use tidyheap::{
    Budget, CompactionObserver, Handle, HandleError, Heap, HeapConfig, MoveEvent, PinGuard,
    RawHandle, Store,
};

#[path = "model/heap.rs"]
mod heap;
#[path = "model/stores.rs"]
mod stores;

use heap::run_model;

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>),
    Get(usize),
    Mutate(usize, u8),
    Remove(usize),
    Compact(usize),
    CompactFull,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Insert),
        3 => any::<usize>().prop_map(Op::Get),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::Mutate(i, b)),
        3 => any::<usize>().prop_map(Op::Remove),
        1 => (0usize..64).prop_map(Op::Compact),
        1 => Just(Op::CompactFull),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_hashmap(ops in proptest::collection::vec(op(), 1..200)) {
        let store: Store<Vec<u8>> = Store::new();
        let mut model: HashMap<Handle<Vec<u8>>, Vec<u8>> = HashMap::new();
        // Every handle ever issued, live or stale, in issue order.
        let mut issued: Vec<Handle<Vec<u8>>> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(v) => {
                    let h = store.insert(v.clone());
                    prop_assert!(!model.contains_key(&h), "a live handle was reissued");
                    model.insert(h, v);
                    issued.push(h);
                }
                Op::Get(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    let got = store.get(h).map(|r| r.clone());
                    prop_assert_eq!(got.as_ref(), model.get(&h));
                }
                Op::Mutate(i, b) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    match (store.get_mut(h), model.get_mut(&h)) {
                        (Some(mut v), Some(m)) => { v.push(b); m.push(b); }
                        (None, None) => {}
                        (got, want) => prop_assert!(false, "get_mut {:?} vs model {:?}", got.is_some(), want.is_some()),
                    }
                }
                Op::Remove(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    prop_assert_eq!(store.remove(h), model.remove(&h));
                }
                Op::Compact(n) => { store.heap().compact(Budget::blocks(n)); }
                Op::CompactFull => { store.heap().compact_full(); }
                _ => {}
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (h, v) in &model {
            prop_assert_eq!(&*store.get(*h).unwrap(), v);
        }
        let live: u64 = model.len() as u64 * core::mem::size_of::<Vec<u8>>() as u64;
        prop_assert_eq!(store.heap().stats().movable.live_bytes(), live);
    }
}

// ---------------------------------------------------------------------------------------
// The differential model of the whole heap (issue 9).
//
// One heap, long seeded random sequences of every operation a game does to it, checked
// against a plain model after every step that could disturb memory. The model is:
//
// * raw handles: handle → expected bytes (+ the pin, if pinned: its address must hold);
// * fixed blocks: pointer → layout and expected bytes (a fresh random pattern each);
// * one model per `Store<T>` on the same heap: handle → expected value;
// * graveyards of freed handles, which must never resolve again.
//
// Compaction passes are interleaved with frees of whole spans, `trim`s and bursts of
// allocations of other classes and kinds, so spans named by a live compaction plan get
// emptied, released and re-initialised between two passes of the plan (the bug class of
// issue 9, defect 1). After every pass every byte of the model is compared; after other
// steps a random sample. At quiescence (periodically and at the end) `stats`, `walk` and
// `fragmentation` must agree exactly with the model's live blocks and bytes.
//
// Step counts: `TIDYHEAP_MODEL_STEPS` (per seed and arena count; default short, so
// `cargo test` stays quick); `.ci/run` runs a long version in release.
// ---------------------------------------------------------------------------------------

/// Steps per run, from `TIDYHEAP_MODEL_STEPS`.
fn model_steps() -> usize {
    std::env::var("TIDYHEAP_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 400 } else { 3000 })
}

/// Seeds per arena count, from `TIDYHEAP_MODEL_SEEDS` (default 2 in debug builds, 3 in
/// release).
fn model_seeds() -> u64 {
    std::env::var("TIDYHEAP_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2 } else { 3 })
}

/// Compared against fresh handles' bytes (a `memcmp`, cheap in debug builds too).
static ZEROS: [u8; 4096] = [0; 4096];

/// Sizes that many requests share, so emptied spans get reused by other classes and kinds.
const HOT_SIZES: [usize; 8] = [16, 32, 48, 64, 96, 128, 256, 1024];

/// A request size: 0 B – 3 MiB, weighted toward small.
fn random_size(rng: &mut SmallRng, big_ok: bool) -> usize {
    match rng.gen_range(0..100) {
        0..40 => rng.gen_range(0..=128),
        40..65 => HOT_SIZES[rng.gen_range(0..HOT_SIZES.len())],
        65..85 => rng.gen_range(129..=4096),
        85..95 => rng.gen_range(4097..=MAX_SMALL),
        95..99 if big_ok => rng.gen_range(MAX_SMALL + 1..=1 << 20),
        99 if big_ok => rng.gen_range((1 << 20) + 1..=3 << 20),
        _ => rng.gen_range(0..=64),
    }
}

/// An alignment: 1 – 64 KiB, mostly small.
fn random_align(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..100) {
        0..75 => 1 << rng.gen_range(0..=4),
        75..95 => 1 << rng.gen_range(5..=12),
        _ => 1 << rng.gen_range(13..=16),
    }
}

fn random_bytes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// A budget of a random kind: blocks 1..=6, bytes, time, a mix, or unlimited.
fn random_budget(rng: &mut SmallRng) -> Budget {
    match rng.gen_range(0..12) {
        0..5 => Budget::blocks(rng.gen_range(1..=6)),
        5 | 6 => Budget::bytes(rng.gen_range(0..=1 << 16)),
        7 | 8 => Budget::time(Duration::from_micros(rng.gen_range(0..300))),
        9 => Budget::blocks(rng.gen_range(1..=6))
            .with_bytes(rng.gen_range(0..=1 << 14))
            .with_time(Duration::from_micros(rng.gen_range(0..300))),
        _ => Budget::UNLIMITED,
    }
}

fn run_seeds(arenas: usize, base: u64) {
    let steps = model_steps();
    let mut moved = 0;
    let mut relocated = 0;
    for s in 0..model_seeds() {
        let (m, r) = run_model(base + s, arenas, steps);
        moved += m;
        relocated += r;
    }
    // The model must exercise what it checks.
    assert!(moved > 0, "no block moved in {} steps", steps);
    assert!(
        relocated > 0 || steps < 2000,
        "no large block relocated in {steps} steps"
    );
}

#[test]
fn heap_matches_model_one_arena() {
    run_seeds(1, 0x5EED_0001);
}

#[test]
fn heap_matches_model_two_arenas() {
    run_seeds(2, 0x5EED_1001);
}

#[test]
fn heap_matches_model_many_arenas() {
    run_seeds(7, 0x5EED_2001);
}

// ---------------------------------------------------------------------------------------
// Issue 9, defect 1, literally: a span planned as a compaction target is emptied,
// trimmed and re-initialised between two budgeted passes of the plan.
// ---------------------------------------------------------------------------------------

/// 6000 64 B handles on one arena; keeps one whole span plus every 100th block, runs
/// `compact(Budget::blocks(1))` (a plan is built; one block moves into target T), frees
/// every handle in T and trims. Returns the heap, the kept handles with their bytes, and
/// T's span unit.
fn plan_then_empty_target() -> (Heap, Vec<(RawHandle, Vec<u8>)>, usize) {
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    let unit = |a: usize| a & !(SPAN_UNIT - 1);
    let addr = |h: RawHandle| heap.read(h).expect("live").as_ptr() as usize;
    let hs: Vec<(RawHandle, Vec<u8>)> = (0..6000u32)
        .map(|i| {
            let h = heap.alloc_handle(64, 16).expect("alloc");
            let bytes: Vec<u8> = (0..64u32).map(|j| (i * 7 + j) as u8).collect();
            heap.write(h).expect("live").copy_from_slice(&bytes);
            (h, bytes)
        })
        .collect();
    let whole = unit(addr(hs[0].0));
    let mut kept = Vec::new();
    for (i, (h, b)) in hs.into_iter().enumerate() {
        if unit(addr(h)) == whole || i % 100 == 0 {
            kept.push((h, b));
        } else {
            heap.free_handle(h).expect("live");
        }
    }
    let before: Vec<usize> = kept.iter().map(|(h, _)| addr(*h)).collect();
    let r = heap.compact(Budget::blocks(1));
    assert_eq!(r.blocks_moved, 1, "{r:?}");
    assert!(
        !r.complete,
        "the plan must stay active for the next pass: {r:?}"
    );
    let moved: Vec<usize> = kept
        .iter()
        .zip(&before)
        .filter(|((h, _), a)| addr(*h) != **a)
        .map(|((h, _), _)| addr(*h))
        .collect();
    assert_eq!(moved.len(), 1, "exactly one block moved");
    let target = unit(moved[0]);
    let mut in_target = 0;
    kept.retain(|(h, _)| {
        if unit(addr(*h)) == target {
            heap.free_handle(*h).expect("live");
            in_target += 1;
            false
        } else {
            true
        }
    });
    assert!(in_target >= 1);
    heap.trim();
    (heap, kept, target)
}

fn check_kept(heap: &Heap, kept: &[(RawHandle, Vec<u8>)], what: &str) {
    for (h, b) in kept {
        let g = heap.read(*h).expect("live");
        assert_eq!(g.len(), b.len(), "{what}: length of {h:?}");
        assert_eq!(&*g, &b[..], "{what}: bytes of {h:?}");
    }
}

#[test]
fn planned_target_reused_by_fixed_blocks_between_passes() {
    let (heap, kept, target) = plan_then_empty_target();
    let layout = Layout::from_size_align(64, 16).expect("layout");
    let fixed: Vec<(NonNull<u8>, u8)> = (0..200u8)
        .map(|i| {
            let p = heap.alloc(layout).expect("alloc");
            // SAFETY: 64 writable bytes.
            unsafe { p.as_ptr().write_bytes(i ^ 0xA5, 64) };
            (p, i ^ 0xA5)
        })
        .collect();
    let reused = fixed
        .iter()
        .filter(|(p, _)| p.as_ptr() as usize & !(SPAN_UNIT - 1) == target)
        .count();
    eprintln!("{reused} of 200 fixed blocks landed in the planned target span");
    heap.compact(Budget::blocks(8));
    for (i, &(p, v)) in fixed.iter().enumerate() {
        // SAFETY: the block is live and 64 bytes long.
        let got = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
        assert!(
            got.iter().all(|&b| b == v),
            "fixed block {i} at {p:p} overwritten by the compactor: {got:?}"
        );
    }
    check_kept(&heap, &kept, "after the second pass");
    heap.compact_full();
    check_kept(&heap, &kept, "after compact_full");
    for (p, _) in fixed {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { heap.dealloc(p, layout) };
    }
    for (h, _) in &kept {
        heap.free_handle(*h).expect("live");
    }
    heap.trim();
    let (stats, walk) = (heap.stats(), heap.walk());
    assert_eq!(
        (stats.fixed.live_bytes(), stats.movable.live_bytes()),
        (0, 0)
    );
    assert_eq!(walk.out_blocks, [0, 0], "{walk:?}");
    assert_eq!(stats.committed_bytes, 0, "{stats:?}");
}

#[test]
fn planned_target_reused_by_another_class_between_passes() {
    let (heap, kept, target) = plan_then_empty_target();
    let small: Vec<(RawHandle, Vec<u8>)> = (0..400u32)
        .map(|i| {
            let h = heap.alloc_handle(32, 16).expect("alloc");
            let bytes: Vec<u8> = (0..32u32).map(|j| (i * 13 + j + 1) as u8).collect();
            heap.write(h).expect("live").copy_from_slice(&bytes);
            (h, bytes)
        })
        .collect();
    let reused = small
        .iter()
        .filter(|(h, _)| {
            heap.read(*h).expect("live").as_ptr() as usize & !(SPAN_UNIT - 1) == target
        })
        .count();
    eprintln!("{reused} of 400 32 B handles landed in the planned target span");
    heap.compact(Budget::blocks(8));
    check_kept(&heap, &small, "32 B handles after the second pass");
    check_kept(&heap, &kept, "64 B handles after the second pass");
    heap.compact_full();
    check_kept(&heap, &small, "32 B handles after compact_full");
    check_kept(&heap, &kept, "64 B handles after compact_full");
    heap.trim();
    let walk = heap.walk();
    assert_eq!(
        walk.movable_live_blocks,
        kept.len() + small.len(),
        "{walk:?}"
    );
    assert_eq!(
        walk.movable_live_bytes,
        kept.len() * 64 + small.len() * 32,
        "{walk:?}"
    );
    for (h, _) in kept.iter().chain(&small) {
        heap.free_handle(*h).expect("live");
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
}
