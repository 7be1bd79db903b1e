//! A compaction plan never outlives its spans (DESIGN invariant 7), and observers may
//! call back into the heap or panic without hurting it.
//!
//! Every test here does something *between* two budgeted passes of one plan (or inside
//! one, from an observer): frees that empty a planned span, `trim`, and reuse of the
//! span for fixed blocks or another size class.

use std::alloc::Layout;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tidyheap::{
    Budget, CompactionObserver, CompactionReport, Heap, HeapConfig, MoveEvent, RawHandle,
};

/// Span length of the small classes used here (64 KiB).
const SPAN: usize = 64 << 10;

fn span_of(addr: usize) -> usize {
    addr & !(SPAN - 1)
}

fn one_arena() -> Arc<Heap> {
    Arc::new(Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    }))
}

fn fill(buf: &mut [u8], seed: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (seed as usize).wrapping_mul(31).wrapping_add(j * 7) as u8;
    }
}

fn intact(buf: &[u8], seed: u64) -> bool {
    let mut want = vec![0; buf.len()];
    fill(&mut want, seed);
    want == buf
}

fn addr(heap: &Heap, h: RawHandle) -> usize {
    heap.pin(h).unwrap().as_ptr().as_ptr().addr()
}

/// Records every move.
#[derive(Default)]
struct Moves(Mutex<Vec<MoveEvent>>);

impl CompactionObserver for Moves {
    fn on_move(&self, ev: &MoveEvent) {
        self.0.lock().unwrap().push(*ev);
    }
}

/// The setup: 6000 handles of 64 B, of which one whole span and every 100th
/// block are kept. Returns the kept handles with their seeds.
fn sparse_heap(heap: &Heap) -> Vec<(RawHandle, u64)> {
    let hs: Vec<(RawHandle, u64)> = (0..6000u64)
        .map(|i| {
            let h = heap.alloc_handle(64, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), i);
            (h, i)
        })
        .collect();
    let first_span = span_of(addr(heap, hs[0].0));
    let mut keep = Vec::new();
    for (k, &(h, i)) in hs.iter().enumerate() {
        if span_of(addr(heap, h)) == first_span || k % 100 == 0 {
            keep.push((h, i));
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    keep
}

fn check_handles(heap: &Heap, hs: &[(RawHandle, u64)], len: usize) {
    for &(h, seed) in hs {
        let r = heap.read(h).unwrap();
        assert_eq!(r.len(), len, "length of {h:?}");
        assert!(intact(&r, seed), "contents of {h:?}");
    }
}

/// Frees every kept handle that lives in span `span`; returns how many.
fn free_span(heap: &Heap, keep: &mut Vec<(RawHandle, u64)>, span: usize) -> usize {
    let before = keep.len();
    keep.retain(|&(h, _)| {
        let inside = span_of(addr(heap, h)) == span;
        if inside {
            heap.free_handle(h).unwrap();
        }
        !inside
    });
    before - keep.len()
}

fn end_clean(heap: &Heap, keep: Vec<(RawHandle, u64)>) {
    for (h, _) in keep {
        heap.free_handle(h).unwrap();
    }
    heap.compact_full();
    heap.trim();
    let w = heap.walk();
    assert_eq!(w.movable_live_blocks, 0);
    assert_eq!(heap.stats().movable.live_bytes(), 0);
    assert_eq!(heap.stats().committed_bytes, 0, "{w:?}");
}

/// Defect 1 of the soundness issue, literally: the plan's target span is emptied,
/// trimmed and reused for fixed blocks before the next pass.
#[test]
fn target_reused_for_fixed_blocks_between_passes() {
    let heap = one_arena();
    let moves = Arc::new(Moves::default());
    heap.subscribe(moves.clone());
    let mut keep = sparse_heap(&heap);
    let r = heap.compact(Budget::blocks(1));
    assert_eq!(r.blocks_moved, 1, "{r:?}");
    let target = span_of(moves.0.lock().unwrap()[0].to);
    assert!(free_span(&heap, &mut keep, target) > 0);
    heap.trim();
    let layout = Layout::from_size_align(64, 16).unwrap();
    let fixed: Vec<NonNull<u8>> = (0..200).map(|_| heap.alloc(layout).unwrap()).collect();
    assert!(
        fixed.iter().any(|p| span_of(p.as_ptr().addr()) == target),
        "the emptied target must be reused, or this test tests nothing"
    );
    for (i, p) in fixed.iter().enumerate() {
        // SAFETY: a live 64 B block of ours.
        fill(
            unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), 64) },
            1 << 20 | i as u64,
        );
    }
    for _ in 0..50 {
        heap.compact(Budget::blocks(8));
    }
    heap.compact_full();
    for (i, p) in fixed.iter().enumerate() {
        // SAFETY: as above.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
        assert!(
            intact(bytes, 1 << 20 | i as u64),
            "fixed block {i} overwritten"
        );
    }
    check_handles(&heap, &keep, 64);
    for p in fixed {
        // SAFETY: allocated above with `layout`.
        unsafe { heap.dealloc(p, layout) };
    }
    end_clean(&heap, keep);
}

/// The same with the target reused by the 32 B class: lengths must stay right.
#[test]
fn target_reused_by_another_class_between_passes() {
    let heap = one_arena();
    let moves = Arc::new(Moves::default());
    heap.subscribe(moves.clone());
    let mut keep = sparse_heap(&heap);
    assert_eq!(heap.compact(Budget::blocks(1)).blocks_moved, 1);
    let target = span_of(moves.0.lock().unwrap()[0].to);
    free_span(&heap, &mut keep, target);
    heap.trim();
    let small: Vec<(RawHandle, u64)> = (0..200u64)
        .map(|i| {
            let h = heap.alloc_handle(32, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), 1 << 30 | i);
            (h, 1 << 30 | i)
        })
        .collect();
    assert!(
        small
            .iter()
            .any(|&(h, _)| span_of(addr(&heap, h)) == target),
        "the emptied target must be reused by the 32 B class"
    );
    for _ in 0..50 {
        heap.compact(Budget::blocks(8));
        check_handles(&heap, &small, 32);
    }
    heap.compact_full();
    check_handles(&heap, &keep, 64);
    check_handles(&heap, &small, 32);
    keep.extend(small);
    end_clean(&heap, keep);
}

/// A source span (not yet reached by the plan) emptied, trimmed and reused for fixed
/// blocks filled with words that look like live slot indexes, then for another class.
#[test]
fn sources_reused_between_passes() {
    let heap = one_arena();
    let mut keep = sparse_heap(&heap);
    assert_eq!(heap.compact(Budget::blocks(1)).blocks_moved, 1);
    // Every sparse span is a source; empty the last two the plan will reach.
    let mut spans: Vec<usize> = keep.iter().map(|&(h, _)| span_of(addr(&heap, h))).collect();
    spans.sort_unstable();
    spans.dedup();
    let victims = &spans[spans.len() - 2..];
    for &s in victims {
        free_span(&heap, &mut keep, s);
    }
    heap.trim();
    let layout = Layout::from_size_align(64, 16).unwrap();
    let fixed: Vec<NonNull<u8>> = (0..400).map(|_| heap.alloc(layout).unwrap()).collect();
    for p in &fixed {
        // Words equal to `slot index + 1` of live handles: what a side table would hold.
        // SAFETY: a live 64 B block of ours, 16-aligned.
        let words = unsafe { core::slice::from_raw_parts_mut(p.as_ptr().cast::<u32>(), 16) };
        for (j, w) in words.iter_mut().enumerate() {
            *w = keep[j % keep.len()].0.index() + 1;
        }
    }
    let snapshot: Vec<Vec<u32>> = fixed
        .iter()
        // SAFETY: as above.
        .map(|p| unsafe { core::slice::from_raw_parts(p.as_ptr().cast::<u32>(), 16) }.to_vec())
        .collect();
    let small: Vec<(RawHandle, u64)> = (0..2000u64)
        .map(|i| {
            let h = heap.alloc_handle(128, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), 1 << 40 | i);
            (h, 1 << 40 | i)
        })
        .collect();
    while !heap.compact(Budget::blocks(3)).complete {
        check_handles(&heap, &keep, 64);
    }
    for (p, want) in fixed.iter().zip(&snapshot) {
        // SAFETY: as above.
        let now = unsafe { core::slice::from_raw_parts(p.as_ptr().cast::<u32>(), 16) };
        assert_eq!(now, &want[..], "fixed block changed");
    }
    check_handles(&heap, &keep, 64);
    check_handles(&heap, &small, 128);
    for p in fixed {
        // SAFETY: allocated above with `layout`.
        unsafe { heap.dealloc(p, layout) };
    }
    keep.extend(small);
    end_clean(&heap, keep);
}

/// An observer that, on the first move, frees every other block of the source being
/// scanned, trims, and allocates fixed blocks: the scanned span empties under the pass
/// and must not be reused while the pass reads its side table.
struct EmptySourceMidScan {
    /// Weak: an observer holding its own heap would keep it alive for ever.
    heap: Weak<Heap>,
    keep: Mutex<Vec<(RawHandle, u64)>>,
    fixed: Mutex<Vec<NonNull<u8>>>,
    fired: AtomicUsize,
}

// SAFETY: the raw pointers are blocks owned by the test, touched under the mutex.
unsafe impl Send for EmptySourceMidScan {}
// SAFETY: as above.
unsafe impl Sync for EmptySourceMidScan {}

impl CompactionObserver for EmptySourceMidScan {
    fn on_move(&self, ev: &MoveEvent) {
        if self.fired.fetch_add(1, Ordering::Relaxed) != 0 {
            return;
        }
        let heap = self.heap.upgrade().expect("the test holds the heap");
        let source = span_of(ev.from);
        free_span(&heap, &mut self.keep.lock().unwrap(), source);
        heap.trim();
        let layout = Layout::from_size_align(64, 16).unwrap();
        let mut fixed = self.fixed.lock().unwrap();
        for i in 0..300 {
            let p = heap.alloc(layout).unwrap();
            assert_ne!(span_of(p.as_ptr().addr()), source, "scanned span reused");
            // SAFETY: a live 64 B block of ours.
            fill(
                unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), 64) },
                1 << 50 | i,
            );
            fixed.push(p);
        }
    }
}

#[test]
fn source_emptied_while_a_pass_scans_it() {
    let heap = one_arena();
    let keep = sparse_heap(&heap);
    let obs = Arc::new(EmptySourceMidScan {
        heap: Arc::downgrade(&heap),
        keep: Mutex::new(keep),
        fixed: Mutex::new(Vec::new()),
        fired: AtomicUsize::new(0),
    });
    heap.subscribe(obs.clone());
    let r = heap.compact(Budget::blocks(4));
    assert!(r.blocks_moved >= 1, "{r:?}");
    assert_eq!(obs.fired.load(Ordering::Relaxed) as u64, r.blocks_moved);
    heap.compact_full();
    let keep = std::mem::take(&mut *obs.keep.lock().unwrap());
    check_handles(&heap, &keep, 64);
    let layout = Layout::from_size_align(64, 16).unwrap();
    for (i, p) in obs.fixed.lock().unwrap().drain(..).enumerate() {
        // SAFETY: a live 64 B block of the observer's.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
        assert!(intact(bytes, 1 << 50 | i as u64), "fixed block {i}");
        // SAFETY: allocated by the observer with `layout`.
        unsafe { heap.dealloc(p, layout) };
    }
    end_clean(&heap, keep);
}

/// Calls back into the heap from inside a pass.
struct ReEnter {
    heap: Weak<Heap>,
    inner_reports: Mutex<Vec<CompactionReport>>,
    subscribed: AtomicUsize,
    late_moves: Arc<Moves>,
}

impl CompactionObserver for ReEnter {
    fn on_move(&self, _: &MoveEvent) {
        let heap = self.heap.upgrade().expect("the test holds the heap");
        let full = heap.compact_full();
        let one = heap.compact(Budget::blocks(1));
        self.inner_reports.lock().unwrap().extend([full, one]);
        if self.subscribed.fetch_add(1, Ordering::Relaxed) == 0 {
            heap.subscribe(self.late_moves.clone());
        }
    }

    fn on_pass(&self, _: &CompactionReport) {
        let heap = self.heap.upgrade().expect("the test holds the heap");
        assert!(!heap.compact_full().ran);
    }
}

/// Defect 6: an observer that calls `compact_full`, `compact` or `subscribe` neither
/// deadlocks nor nests a pass; a subscription made inside a pass hears later passes.
#[test]
fn observers_may_call_back_into_the_heap() {
    let heap = one_arena();
    let keep = sparse_heap(&heap);
    let late = Arc::new(Moves::default());
    let obs = Arc::new(ReEnter {
        heap: Arc::downgrade(&heap),
        inner_reports: Mutex::new(Vec::new()),
        subscribed: AtomicUsize::new(0),
        late_moves: late.clone(),
    });
    heap.subscribe(obs.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = heap.clone();
    std::thread::spawn(move || {
        let first = h2.compact(Budget::blocks(2));
        let rest = h2.compact_full();
        tx.send((first, rest)).unwrap();
    });
    let (first, rest) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("an observer calling back into the heap deadlocked");
    assert_eq!(first.blocks_moved, 2);
    let inner = obs.inner_reports.lock().unwrap();
    assert!(
        !inner.is_empty() && inner.iter().all(|r| !r.ran),
        "{inner:?}"
    );
    assert_eq!(
        late.0.lock().unwrap().len() as u64,
        rest.blocks_moved,
        "the late observer hears every move of the later passes"
    );
    drop(inner);
    check_handles(&heap, &keep, 64);
    end_clean(&heap, keep);
}

struct Panicky;

impl CompactionObserver for Panicky {
    fn on_move(&self, _: &MoveEvent) {
        panic!("observer panics");
    }
}

/// Defect 7 (observer part): a panicking observer strands no block and keeps the
/// accounting exact; the heap keeps working.
#[test]
fn panicking_observer_loses_nothing() {
    let heap = one_arena();
    let keep = sparse_heap(&heap);
    heap.subscribe(Arc::new(Panicky));
    for _ in 0..3 {
        let r = catch_unwind(AssertUnwindSafe(|| heap.compact(Budget::blocks(4))));
        assert!(r.is_err(), "the observer's panic reaches the caller");
    }
    check_handles(&heap, &keep, 64);
    let live: usize = keep.len() * 64;
    assert_eq!(heap.walk().movable_live_bytes, live);
    assert_eq!(heap.stats().movable.live_bytes(), live as u64);
    for (h, _) in keep {
        heap.free_handle(h).unwrap();
    }
    heap.trim();
    let r = catch_unwind(AssertUnwindSafe(|| heap.compact_full()));
    assert!(
        r.is_ok(),
        "nothing left to move, so no observer call: {r:?}"
    );
    heap.trim();
    let w = heap.walk();
    assert_eq!(w.movable_live_blocks, 0, "{w:?}");
    assert_eq!(
        heap.stats().committed_bytes,
        0,
        "a stranded block keeps a span"
    );
}

/// Panics on its `at`-th move event only, counting every event it hears.
struct PanicAt {
    heard: AtomicUsize,
    at: usize,
}

impl CompactionObserver for PanicAt {
    fn on_move(&self, _: &MoveEvent) {
        if self.heard.fetch_add(1, Ordering::Relaxed) + 1 == self.at {
            panic!("observer panics at move {}", self.at);
        }
    }
}

/// An observer that panics after several batches of one pass have moved (batches hold
/// at most 16 blocks, and each sends its old copies home in one go): every block moved
/// before the panic, in this batch or an earlier one, stays readable at its new place,
/// no old copy is stranded, the accounting stays exact, and the next pass carries on.
#[test]
fn an_observer_panicking_after_several_batches_loses_nothing() {
    let heap = one_arena();
    // 20 000 blocks, then every fourth kept (freed after all are allocated, so the
    // frees leave holes): about 5000 to move out of 20 spans.
    let all: Vec<(RawHandle, u64)> = (0..20_000u64)
        .map(|i| {
            let h = heap.alloc_handle(64, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), i);
            (h, i)
        })
        .collect();
    let mut keep = Vec::new();
    for (h, i) in all {
        if i % 4 == 0 {
            keep.push((h, i));
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    let obs = Arc::new(PanicAt {
        heard: AtomicUsize::new(0),
        at: 40,
    });
    heap.subscribe(obs.clone());
    let r = catch_unwind(AssertUnwindSafe(|| heap.compact(Budget::UNLIMITED)));
    let heard = obs.heard.load(Ordering::Relaxed);
    assert!(
        r.is_err(),
        "the observer's panic reaches the caller ({heard} moves heard)"
    );
    check_handles(&heap, &keep, 64);
    let live = keep.len() * 64;
    assert_eq!(heap.walk().movable_live_bytes, live);
    assert_eq!(heap.stats().movable.live_bytes(), live as u64);
    let rest = heap.compact(Budget::UNLIMITED);
    assert!(
        rest.blocks_moved > 0,
        "the next pass moves the rest: {rest:?}"
    );
    check_handles(&heap, &keep, 64);
    assert_eq!(heap.walk().movable_live_bytes, live);
    end_clean(&heap, keep);
}

/// Unsubscribing inside a pass: the pass keeps its observers, later passes do not call
/// the removed one, and the heap is freed once nothing else holds it.
#[test]
fn observers_unsubscribe_and_release_their_heap() {
    struct Once {
        heap: Weak<Heap>,
        me: Mutex<Option<Arc<dyn CompactionObserver>>>,
        calls: AtomicUsize,
    }
    impl CompactionObserver for Once {
        fn on_move(&self, _: &MoveEvent) {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if let (Some(heap), Some(me)) = (self.heap.upgrade(), self.me.lock().unwrap().take()) {
                assert!(heap.unsubscribe(&me));
            }
        }
    }
    let heap = one_arena();
    let keep = sparse_heap(&heap);
    let once = Arc::new(Once {
        heap: Arc::downgrade(&heap),
        me: Mutex::new(None),
        calls: AtomicUsize::new(0),
    });
    let dyn_once: Arc<dyn CompactionObserver> = once.clone();
    *once.me.lock().unwrap() = Some(dyn_once.clone());
    heap.subscribe(dyn_once.clone());
    let first = heap.compact(Budget::blocks(5));
    assert_eq!(
        once.calls.load(Ordering::Relaxed) as u64,
        first.blocks_moved
    );
    let rest = heap.compact_full();
    assert!(rest.blocks_moved > 0);
    assert_eq!(
        once.calls.load(Ordering::Relaxed) as u64,
        first.blocks_moved,
        "no call after unsubscribing"
    );
    assert!(!heap.unsubscribe(&dyn_once));
    end_clean(&heap, keep);
    let weak = Arc::downgrade(&heap);
    drop(heap);
    assert!(weak.upgrade().is_none(), "observers do not keep the heap");
}

/// A pass holds a run of destinations reserved in its target between passes (out
/// blocks of the target, taken from its home list without reading their links). Meanwhile
/// the program frees blocks of the target, reuses them, and refills from the target's
/// remaining home blocks: no block may be handed out twice, moved blocks and new ones
/// keep their contents, and accounting is exact at the end.
#[test]
fn target_freed_and_reused_while_destinations_are_reserved() {
    let heap = one_arena();
    let moves = Arc::new(Moves::default());
    heap.subscribe(moves.clone());
    let mut keep = sparse_heap(&heap);
    assert_eq!(heap.compact(Budget::blocks(1)).blocks_moved, 1);
    let target = span_of(moves.0.lock().unwrap()[0].to);
    // Free every other kept block of the target (a sparse span whose home blocks the
    // pass now holds; it stays a live target).
    let mut k = 0;
    keep.retain(|&(h, _)| {
        if span_of(addr(&heap, h)) != target {
            return true;
        }
        k += 1;
        if k % 2 == 0 {
            heap.free_handle(h).unwrap();
            false
        } else {
            true
        }
    });
    assert!(k >= 4, "the target must hold kept blocks: {k}");
    // Reuse: cached blocks first, then refills from the arena's partial spans.
    let fresh: Vec<(RawHandle, u64)> = (0..3000u64)
        .map(|i| {
            let h = heap.alloc_handle(64, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), 1 << 40 | i);
            (h, 1 << 40 | i)
        })
        .collect();
    for round in 0..40 {
        heap.compact(Budget::blocks(8));
        // Free and reallocate a few of the target's blocks between passes.
        if round % 4 == 0
            && let Some(pos) = keep
                .iter()
                .position(|&(h, _)| span_of(addr(&heap, h)) == target)
        {
            let (h, _) = keep.swap_remove(pos);
            heap.free_handle(h).unwrap();
            let h = heap.alloc_handle(64, 16).unwrap();
            fill(&mut heap.write(h).unwrap(), 1 << 41 | round);
            keep.push((h, 1 << 41 | round));
        }
        check_handles(&heap, &keep, 64);
        check_handles(&heap, &fresh, 64);
    }
    heap.compact_full();
    check_handles(&heap, &keep, 64);
    check_handles(&heap, &fresh, 64);
    keep.extend(fresh);
    end_clean(&heap, keep);
}
