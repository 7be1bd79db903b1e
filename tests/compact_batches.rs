//! A differential model of what the program does *between two batches* of one
//! compaction pass and between the passes of one plan: frees (single blocks, and runs
//! that empty whole spans), new allocations of other size classes (which reuse the
//! emptied spans), rewrites, reads and `trim`, against a plain map of every live
//! handle's contents. A pass moves a source span's blocks in batches and returns each
//! batch's old copies home at once (`compact::moves`); observers hear of a batch's
//! moves after that, so an action taken from an observer lands between two batches.
//!
//! Checked after every pass and at the end: every live handle reads back exactly what
//! was last written (no torn or lost block), every freed handle stays stale, and at
//! quiescence the side tables' live bytes equal the model's.

use std::sync::{Arc, Mutex, Weak};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Budget, CompactionObserver, Heap, HeapConfig, MoveEvent, RawHandle};

/// Sizes of new blocks: several classes, so an emptied span is reused by another one.
const SIZES: [usize; 5] = [24, 64, 100, 256, 1000];

fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
}

fn intact(buf: &[u8], seed: u64) -> bool {
    let mut want = vec![0; buf.len()];
    fill(&mut want, seed);
    want == buf
}

/// The model: live handles in allocation order with their length and content seed,
/// and some freed handles (which must stay stale).
struct Model {
    live: Vec<(RawHandle, usize, u64)>,
    dead: Vec<RawHandle>,
    next: u64,
    rng: SmallRng,
}

impl Model {
    fn new(seed: u64) -> Self {
        Model {
            live: Vec::new(),
            dead: Vec::new(),
            next: 1,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A fragmented start: `per_size` blocks of each of `sizes`, then every other block
    /// freed (each free shifts the rest down, so index `i` skips one survivor).
    fn fragmented(&mut self, heap: &Heap, sizes: &[usize], per_size: usize) {
        for &size in sizes {
            for _ in 0..per_size {
                self.alloc(heap, size);
            }
        }
        let mut i = 0;
        while i < self.live.len() {
            self.free_at(heap, i);
            i += 1;
        }
    }

    fn alloc(&mut self, heap: &Heap, size: usize) {
        let h = heap.alloc_handle(size, 16).expect("alloc_handle");
        let seed = self.next;
        self.next += 1;
        fill(&mut heap.write(h).expect("a new handle"), seed);
        self.live.push((h, size, seed));
    }

    fn free_at(&mut self, heap: &Heap, i: usize) {
        let (h, _, _) = self.live.remove(i);
        heap.free_handle(h).expect("a live handle");
        if self.dead.len() < 4096 {
            self.dead.push(h);
        }
    }

    /// One random action; `trim` only if `may_trim`.
    fn act(&mut self, heap: &Heap, may_trim: bool) {
        let n = self.live.len();
        match self.rng.gen_range(0..100) {
            // A single free anywhere: often a block of a batch still to come.
            0..=29 if n > 0 => {
                let i = self.rng.gen_range(0..n);
                self.free_at(heap, i);
            }
            // A run of blocks allocated together: empties their spans.
            30..=34 if n > 0 => {
                let start = self.rng.gen_range(0..n);
                let len = self.rng.gen_range(1..=600).min(n - start);
                for _ in 0..len {
                    self.free_at(heap, start);
                }
            }
            // New blocks, of any class: reuse of emptied (maybe purged) spans.
            35..=64 => {
                let size = SIZES[self.rng.gen_range(0..SIZES.len())];
                for _ in 0..self.rng.gen_range(1..=40) {
                    self.alloc(heap, size);
                }
            }
            // A rewrite.
            65..=79 if n > 0 => {
                let i = self.rng.gen_range(0..n);
                let seed = self.next;
                self.next += 1;
                fill(&mut heap.write(self.live[i].0).expect("live"), seed);
                self.live[i].2 = seed;
            }
            // A read.
            80..=94 if n > 0 => {
                let (h, len, seed) = self.live[self.rng.gen_range(0..n)];
                let r = heap.read(h).expect("live");
                assert_eq!(r.len(), len);
                assert!(intact(&r, seed), "a live block read back changed");
            }
            95..=99 if may_trim => {
                heap.trim();
            }
            _ => {}
        }
    }

    fn check(&self, heap: &Heap) {
        for &(h, len, seed) in &self.live {
            let r = heap.read(h).expect("a live handle resolves");
            assert_eq!(r.len(), len);
            assert!(intact(&r, seed), "live block {h:?} lost its contents");
        }
        for &h in &self.dead {
            assert!(heap.read(h).is_err(), "freed handle {h:?} resolves");
        }
    }

    fn live_bytes(&self) -> usize {
        self.live.iter().map(|&(_, len, _)| len).sum()
    }
}

/// Acts on the heap between two batches (it hears of a batch's moves after the
/// batch): a few actions on some moves, never `trim` if `may_trim` is false.
struct Between {
    heap: Weak<Heap>,
    model: Arc<Mutex<Model>>,
    may_trim: bool,
}

impl CompactionObserver for Between {
    fn on_move(&self, ev: &MoveEvent) {
        let heap = self.heap.upgrade().expect("the test holds the heap");
        let mut m = self.model.lock().unwrap();
        assert!(ev.size <= ev.class_size);
        if m.rng.gen_range(0..4) == 0 {
            for _ in 0..m.rng.gen_range(1..=3) {
                m.act(&heap, self.may_trim);
            }
        }
    }
}

fn run(seed: u64, arenas: usize, may_trim: bool) {
    let heap = Arc::new(Heap::with_config(HeapConfig {
        arenas,
        ..HeapConfig::DEFAULT
    }));
    let model = Arc::new(Mutex::new(Model::new(seed)));
    model.lock().unwrap().fragmented(&heap, &[64, 256], 6000);
    heap.subscribe(Arc::new(Between {
        heap: Arc::downgrade(&heap),
        model: model.clone(),
        may_trim,
    }));
    let mut moved = 0;
    for round in 0..120 {
        // Small budgets: one plan runs over many passes, each over a few batches.
        let budget = match round % 3 {
            0 => Budget::blocks(40),
            1 => Budget::bytes(9000),
            _ => Budget::blocks(200),
        };
        moved += heap.compact(budget).blocks_moved;
        let mut m = model.lock().unwrap();
        for _ in 0..m.rng.gen_range(0..6) {
            m.act(&heap, true);
        }
        m.check(&heap);
    }
    heap.compact_full();
    let m = model.lock().unwrap();
    m.check(&heap);
    assert!(moved > 0, "seed {seed}: the passes moved blocks");
    assert_eq!(
        heap.fragmentation().live_bytes,
        m.live_bytes(),
        "seed {seed}: the side tables count exactly the model's live bytes"
    );
    let live = m.live.clone();
    drop(m);
    for (h, _, _) in live {
        heap.free_handle(h).expect("live");
    }
    empty_at_the_end(&heap);
}

/// With every handle freed, `trim` leaves no movable span serving a class: every old
/// copy and unused destination went home (a block lost on the way keeps its span).
fn empty_at_the_end(heap: &Heap) {
    heap.trim();
    let f = heap.fragmentation();
    assert_eq!(f.live_bytes, 0);
    assert_eq!(f.committed_bytes, 0, "spans kept by lost blocks: {f:?}");
}

/// Another thread frees, allocates, rewrites and reads its own handles while this one
/// runs budgeted passes: its frees land between a pass's choice of a batch and the
/// moves (each move re-validates its block), and its allocations reuse emptied spans.
fn run_threaded(seed: u64) {
    let heap = Arc::new(Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    }));
    let mut m = Model::new(seed);
    m.fragmented(&heap, &[64, 256, 1000], 3000);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (heap, stop) = (heap.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                m.act(&heap, false);
                if m.live.len() > 20_000 {
                    m.free_at(&heap, 0);
                }
            }
            m
        })
    };
    let mut moved = 0;
    for round in 0..400 {
        let budget = if round % 2 == 0 {
            Budget::blocks(64)
        } else {
            Budget::bytes(16 << 10)
        };
        moved += heap.compact(budget).blocks_moved;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let m = worker.join().expect("the worker");
    m.check(&heap);
    heap.compact_full();
    m.check(&heap);
    assert!(moved > 0, "seed {seed}: the passes moved blocks");
    assert_eq!(heap.fragmentation().live_bytes, m.live_bytes());
    for &(h, _, _) in &m.live {
        heap.free_handle(h).expect("live");
    }
    empty_at_the_end(&heap);
}

#[test]
fn actions_between_batches_one_arena() {
    for seed in 1..=4 {
        run(seed, 1, true);
    }
}

#[test]
fn actions_between_batches_no_trim_inside_passes() {
    for seed in 11..=13 {
        run(seed, 1, false);
    }
}

#[test]
fn actions_between_batches_default_arenas() {
    for seed in 21..=22 {
        run(seed, HeapConfig::DEFAULT.arenas, true);
    }
}

#[test]
fn frees_and_allocations_on_another_thread_during_passes() {
    for seed in 31..=33 {
        run_threaded(seed);
    }
}
