//! The event hook seen the way Tracy sees it, and the real Tracy client under the demo.
//!
//! A recording sink replays every event under one lock (as Tracy does with its serial
//! lock) and enforces Tracy's rules per pool: no alloc of an address already allocated,
//! no free of an address it does not know; a heap drop discards the heap's blocks. It
//! runs while several threads allocate, free, read, write, pin, resize and exit under a
//! background compactor; at quiescence its live bytes must equal `stats()`.
//!
//! Run: `cargo test --features tracy --test tracy` (the recording tests need only
//! `--features events`).
#![cfg(feature = "events")]

use std::alloc::Layout;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::events::{HeapEvents, PassPhase, Pool};
use tidyheap::{BackgroundCompactor, Budget, Heap, HeapConfig, RawHandle};

/// Tracy's view of one heap, with its rules enforced.
#[derive(Default)]
struct Recorder {
    state: Mutex<State>,
    /// Until set, events are dropped, as Tracy's on-demand mode does before a connection.
    connected: AtomicBool,
    /// Whether the recorder starts connected (`false`: a profiler connects mid-run).
    on_demand: bool,
    moves: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Live blocks per pool: address → size.
    live: [HashMap<usize, usize>; 3],
    violations: Vec<String>,
    /// Frees of unknown addresses after a mid-run connection (Tracy ignores them in
    /// on-demand mode; without on-demand any is a violation).
    tolerated_unknown_frees: u64,
    /// Last pass phase per thread.
    phase: HashMap<ThreadId, PassPhase>,
    passes: u64,
    dropped: bool,
}

impl Recorder {
    fn new() -> Arc<Self> {
        let r = Self::default();
        r.connected.store(true, Ordering::Relaxed);
        Arc::new(r)
    }

    fn on_demand() -> Arc<Self> {
        Arc::new(Self {
            on_demand: true,
            ..Self::default()
        })
    }

    fn live_bytes(&self, pool: Pool) -> usize {
        self.state.lock().unwrap().live[pool.index()].values().sum()
    }

    fn live_blocks(&self, pool: Pool) -> usize {
        self.state.lock().unwrap().live[pool.index()].len()
    }

    fn assert_clean(&self) {
        let st = self.state.lock().unwrap();
        assert!(
            st.violations.is_empty(),
            "{} violations, first: {:?}",
            st.violations.len(),
            &st.violations[..st.violations.len().min(5)]
        );
    }
}

impl HeapEvents for Recorder {
    fn on_alloc(&self, pool: Pool, addr: usize, size: usize) {
        if !self.connected.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        if st.dropped {
            st.violations
                .push(format!("alloc {addr:#x} after heap drop"));
        }
        if let Some(old) = st.live[pool.index()].insert(addr, size) {
            st.violations.push(format!(
                "{pool:?}: double alloc at {addr:#x} ({old} then {size} B)"
            ));
        }
    }

    fn on_free(&self, pool: Pool, addr: usize, size: usize) {
        if !self.connected.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state.lock().unwrap();
        match st.live[pool.index()].remove(&addr) {
            Some(s) if s == size => {}
            Some(s) => st.violations.push(format!(
                "{pool:?}: free of {addr:#x} with {size} B, allocated {s} B"
            )),
            None if self.on_demand => st.tolerated_unknown_frees += 1,
            None => st
                .violations
                .push(format!("{pool:?}: free of unknown address {addr:#x}")),
        }
    }

    fn on_move(&self, pool: Pool, from: usize, to: usize, size: usize) {
        self.moves.fetch_add(1, Ordering::Relaxed);
        self.on_free(pool, from, size);
        self.on_alloc(pool, to, size);
    }

    fn on_pass_phase(&self, phase: PassPhase) {
        let mut st = self.state.lock().unwrap();
        let prev = st.phase.insert(std::thread::current().id(), phase);
        use PassPhase::*;
        let ok = matches!(
            (prev, phase),
            (None | Some(End), Begin)
                | (Some(Begin), Plan | Moves)
                | (Some(Plan), Moves)
                | (Some(Moves), Purge)
                | (Some(Purge), End)
        );
        if !ok {
            st.violations
                .push(format!("pass phase {phase:?} after {prev:?}"));
        }
        if phase == End {
            st.passes += 1;
        }
    }

    fn on_heap_drop(&self) {
        let mut st = self.state.lock().unwrap();
        st.dropped = true;
        for pool in &mut st.live {
            pool.clear();
        }
    }
}

/// Bytes of `len` derived from `seed` (cheap, position-dependent).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 7 * 8)) as u8 ^ i as u8)
        .collect()
}

/// One worker: a random mix of every operation that emits events, against its own
/// model of what it owns. Leaves some blocks allocated and hands some handles to the
/// next round's threads, so frees come from threads that did not allocate.
fn worker(
    heap: &Heap,
    seed: u64,
    ops: usize,
    inherited: Vec<(RawHandle, u64, usize)>,
) -> Vec<(RawHandle, u64, usize)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut handles = inherited;
    let mut fixed: Vec<(std::ptr::NonNull<u8>, Layout)> = Vec::new();
    for op in 0..ops {
        match rng.gen_range(0..100) {
            0..30 => {
                let len = if rng.gen_range(0..200) == 0 {
                    rng.gen_range(300_000..600_000)
                } else {
                    rng.gen_range(1..3000)
                };
                let s = rng.r#gen::<u64>();
                let h = heap.insert_bytes(&pattern(len, s)).expect("insert");
                handles.push((h, s, len));
            }
            30..50 if !handles.is_empty() => {
                let i = rng.gen_range(0..handles.len());
                let (h, s, len) = handles.swap_remove(i);
                assert_eq!(*heap.read(h).expect("live"), pattern(len, s)[..]);
                // A non-waiting free first (Busy while the compactor holds it), else wait.
                if rng.r#gen::<bool>() && heap.try_free_handle(h).is_ok() {
                    continue;
                }
                heap.free_handle(h).expect("live");
            }
            50..65 if !handles.is_empty() => {
                let i = rng.gen_range(0..handles.len());
                let (h, s, len) = handles[i];
                assert_eq!(*heap.read(h).expect("live"), pattern(len, s)[..], "op {op}");
            }
            65..72 if !handles.is_empty() => {
                let i = rng.gen_range(0..handles.len());
                let s = rng.r#gen::<u64>();
                let (h, _, len) = handles[i];
                heap.write(h)
                    .expect("live")
                    .copy_from_slice(&pattern(len, s));
                handles[i].1 = s;
            }
            72..76 if !handles.is_empty() => {
                let i = rng.gen_range(0..handles.len());
                let (h, s, len) = handles[i];
                let pin = heap.pin(h).expect("live");
                std::thread::yield_now();
                assert_eq!(pin.len(), len);
                drop(pin);
                if len > 256 << 10 {
                    // A large block moves by remapping (its own event path).
                    let _ = heap.relocate_large(h);
                    assert_eq!(*heap.read(h).expect("live"), pattern(len, s)[..]);
                }
            }
            76..88 => {
                let size = if rng.gen_range(0..100) == 0 {
                    rng.gen_range(300_000..500_000)
                } else {
                    rng.gen_range(0..5000)
                };
                let l = Layout::from_size_align(size, 1 << rng.gen_range(0..7)).unwrap();
                fixed.push((heap.alloc(l).expect("alloc"), l));
            }
            88..94 if !fixed.is_empty() => {
                let i = rng.gen_range(0..fixed.len());
                let (p, l) = fixed.swap_remove(i);
                // SAFETY: allocated above with `l`, freed once.
                unsafe { heap.dealloc(p, l) };
            }
            94..100 if !fixed.is_empty() => {
                let i = rng.gen_range(0..fixed.len());
                let (p, l) = fixed[i];
                let new = rng.gen_range(1..400_000);
                // SAFETY: allocated with `l`; the old pointer is replaced below.
                let q = unsafe { heap.realloc(p, l, new) }.expect("realloc");
                fixed[i] = (q, Layout::from_size_align(new, l.align()).unwrap());
            }
            _ => {}
        }
    }
    for (p, l) in fixed.drain(..) {
        // SAFETY: allocated with `l`, freed once.
        unsafe { heap.dealloc(p, l) };
    }
    handles
}

/// Threads in rounds (each round's threads exit, leaving cached blocks behind, and pass
/// their handles on) under a background compactor; returns what survived.
fn stress(
    heap: &Arc<Heap>,
    seed: u64,
    threads: usize,
    rounds: usize,
    ops: usize,
) -> Vec<(RawHandle, u64, usize)> {
    let bg =
        BackgroundCompactor::start(heap.clone(), Duration::from_micros(200), Budget::blocks(64));
    let mut carried: Vec<Vec<(RawHandle, u64, usize)>> = vec![Vec::new(); threads];
    for round in 0..rounds {
        let start = Arc::new(Barrier::new(threads));
        let joins: Vec<_> = carried
            .drain(..)
            .enumerate()
            .map(|(t, inherited)| {
                let (heap, start) = (heap.clone(), start.clone());
                let seed = seed ^ ((round * threads + t) as u64 * 0x51_7cc1);
                std::thread::spawn(move || {
                    start.wait();
                    worker(&heap, seed, ops, inherited)
                })
            })
            .collect();
        let mut outs: Vec<_> = joins.into_iter().map(|j| j.join().unwrap()).collect();
        // Pass each thread's handles to another thread next round.
        outs.rotate_left(1);
        carried = outs;
    }
    bg.stop();
    carried.into_iter().flatten().collect()
}

fn assert_matches_stats(heap: &Heap, rec: &Recorder) {
    let s = heap.stats();
    assert_eq!(
        rec.live_bytes(Pool::Movable) as u64,
        s.movable.live_bytes(),
        "movable bytes"
    );
    assert_eq!(
        rec.live_blocks(Pool::Movable) as u64,
        s.movable.live_blocks(),
        "movable blocks"
    );
    assert_eq!(
        rec.live_bytes(Pool::Fixed) as u64,
        s.fixed.live_bytes(),
        "fixed bytes"
    );
    assert_eq!(
        rec.live_blocks(Pool::Fixed) as u64,
        s.fixed.live_blocks(),
        "fixed blocks"
    );
    assert_eq!(
        rec.live_blocks(Pool::Large),
        s.large.live_blocks,
        "large blocks"
    );
}

#[test]
fn recorded_events_obey_tracys_rules_under_concurrent_compaction() {
    for seed in [1u64, 2, 3] {
        let rec = Recorder::new();
        let heap = Arc::new(Heap::with_events(HeapConfig::DEFAULT, rec.clone()));
        let survivors = stress(&heap, seed, 3, 3, 3000);
        rec.assert_clean();
        assert_matches_stats(&heap, &rec);
        assert!(
            rec.moves.load(Ordering::Relaxed) > 0,
            "the compactor moved blocks"
        );
        assert!(rec.state.lock().unwrap().passes > 0);

        // A full compaction at quiescence: every move is an exact free/alloc pair.
        let r = heap.compact_full();
        rec.assert_clean();
        assert_matches_stats(&heap, &rec);
        for (h, s, len) in &survivors {
            assert_eq!(
                *heap.read(*h).unwrap(),
                pattern(*len, *s)[..],
                "seed {seed}"
            );
        }
        let _ = r;

        // Free half, drop the heap with the rest live: the sink is told, and a new heap
        // reusing the addresses starts clean.
        for (h, ..) in survivors.iter().step_by(2) {
            heap.free_handle(*h).unwrap();
        }
        rec.assert_clean();
        assert_matches_stats(&heap, &rec);
        drop(heap);
        assert!(rec.state.lock().unwrap().dropped);
        assert_eq!(rec.live_blocks(Pool::Movable), 0);
        rec.assert_clean();
    }
}

#[test]
fn a_profiler_connecting_mid_run_never_sees_a_double_alloc() {
    for seed in [11u64, 12] {
        let rec = Recorder::on_demand();
        let heap = Arc::new(Heap::with_events(HeapConfig::DEFAULT, rec.clone()));
        let connector = {
            let rec = rec.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5 + seed % 10));
                rec.connected.store(true, Ordering::Release);
            })
        };
        let survivors = stress(&heap, seed, 2, 2, 3000);
        connector.join().unwrap();
        rec.assert_clean();
        // Everything the profiler saw allocated is still live, or was freed since.
        let st = rec.state.lock().unwrap();
        let seen: usize = st.live.iter().map(HashMap::len).sum();
        let s = heap.stats();
        assert!(
            seen as u64
                <= s.movable.live_blocks() + s.fixed.live_blocks() + s.large.live_blocks as u64
        );
        drop(st);
        for (h, ..) in survivors {
            heap.free_handle(h).unwrap();
        }
        rec.assert_clean();
    }
}

#[test]
fn a_pass_reports_its_phases_in_order() {
    let rec = Recorder::new();
    let heap = Heap::with_events(HeapConfig::DEFAULT, rec.clone());
    let hs: Vec<_> = (0..4096)
        .map(|_| heap.alloc_handle(64, 16).unwrap())
        .collect();
    for h in hs.iter().step_by(2) {
        heap.free_handle(*h).unwrap();
    }
    // Three small passes: the first plans, the later ones continue its plan.
    for _ in 0..3 {
        assert!(heap.compact(Budget::blocks(10)).ran);
    }
    let st = rec.state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    assert_eq!(st.passes, 3);
    assert_eq!(
        st.phase.get(&std::thread::current().id()),
        Some(&PassPhase::End)
    );
    drop(st);
    assert_eq!(rec.moves.load(Ordering::Relaxed), 30);
    assert_matches_stats(&heap, &rec);
}

#[test]
fn failed_and_in_place_resizes_keep_the_pool_consistent() {
    let rec = Recorder::new();
    let heap = Heap::with_events(HeapConfig::DEFAULT, rec.clone());
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = heap.alloc(l).unwrap();
    // In place (same class): free then alloc at the same address.
    // SAFETY: allocated with `l`.
    let q = unsafe { heap.realloc(p, l, 104) }.unwrap();
    assert_eq!(p, q);
    // An impossible size fails and leaves the block where it was, still allocated.
    let l2 = Layout::from_size_align(104, 8).unwrap();
    // SAFETY: allocated with `l2`; on failure it stays ours.
    assert!(unsafe { heap.realloc(q, l2, isize::MAX as usize) }.is_err());
    rec.assert_clean();
    assert_eq!(rec.live_bytes(Pool::Fixed), 104);
    // SAFETY: still allocated with `l2`.
    unsafe { heap.dealloc(q, l2) };
    assert_eq!(rec.live_blocks(Pool::Fixed), 0);
    rec.assert_clean();
}

/// The defrag demo, for its loop and its pictures.
#[cfg(feature = "tracy")]
#[path = "../examples/defrag.rs"]
#[allow(dead_code, reason = "only the demo's loop and picture are used here")]
mod defrag;

/// The real Tracy client, no server attached, through the defrag demo's loop.
#[cfg(feature = "tracy")]
mod real_client {
    use super::defrag;

    #[test]
    fn the_demo_loop_runs_under_the_real_client() {
        let bar = indicatif::ProgressBar::hidden();
        let dir = std::env::temp_dir().join(format!("tidyheap-tracy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for compact in [false, true] {
            let out = defrag::run(compact, 400, &bar, Some(&dir));
            assert_eq!(out.corrupt, 0);
            assert!(out.verified > 0);
        }
        for name in ["heap-before.png", "heap-after.png"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name} is a PNG");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        // Frame arenas: discard + one block per frame, under the real client.
        let mut arena = tidyheap::FrameArena::new();
        for i in 0..100u64 {
            let frame = arena.begin_frame();
            for j in 0..i {
                frame.alloc(j);
            }
            drop(frame);
            tidyheap::tracy::report_frame_arena(&arena, c"test scratch");
            tidyheap::tracy::frame_mark();
        }
    }
}

/// Frees racing the moves of the very blocks they free: a free that waited for a
/// block's move lock runs right after the unlock, so a move reported after the unlock
/// (instead of under it) would reach the sink after that free.
#[test]
fn frees_racing_moves_of_their_blocks_stay_ordered() {
    for seed in 0..4u64 {
        let rec = Recorder::new();
        let heap = Arc::new(Heap::with_events(HeapConfig::DEFAULT, rec.clone()));
        let mut rng = SmallRng::seed_from_u64(seed);
        let hs: Vec<_> = (0..40_000)
            .map(|_| heap.alloc_handle(rng.gen_range(16..200), 16).unwrap())
            .collect();
        let mut keep = Vec::new();
        for (i, h) in hs.into_iter().enumerate() {
            if i % 4 == 0 {
                keep.push(h);
            } else {
                heap.free_handle(h).unwrap();
            }
        }
        let compactor = {
            let heap = heap.clone();
            std::thread::spawn(move || heap.compact_full())
        };
        // Free the survivors while they are being moved, both ends towards the middle.
        while !keep.is_empty() {
            let i = if keep.len() % 2 == 0 {
                0
            } else {
                keep.len() - 1
            };
            heap.free_handle(keep.swap_remove(i)).unwrap();
        }
        compactor.join().unwrap();
        rec.assert_clean();
        assert_matches_stats(&heap, &rec);
    }
}
