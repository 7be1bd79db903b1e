//! Level-streaming stress (issue 9): the headline use of tidyheap, as a game does it.
//!
//! Levels of mixed raw handles, fixed blocks and store values are loaded a slice per
//! frame, touched (read, verified, rewritten) every frame, lose and gain members every
//! frame, and are unloaded whole; every frame ends with a budgeted compaction pass
//! (`Budget::blocks(1..=6)` or a time budget), or a [`BackgroundCompactor`] runs beside
//! two threads that stream their own levels and share a set of assets. Every block's
//! contents are checksummed; nothing may be corrupted, nothing may leak, accounting must
//! be exact at the end, and the compactor must have moved blocks.
//!
//! Frames per run: `TIDYHEAP_STREAM_FRAMES` (default short; `.ci/run` runs a long
//! version in release).

use std::alloc::Layout;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::size_class;
use tidyheap::{
    BackgroundCompactor, Budget, CompactionObserver, Handle, Heap, HeapConfig, MoveEvent,
    RawHandle, Store,
};

fn frames() -> usize {
    std::env::var("TIDYHEAP_STREAM_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 60 } else { 400 })
}

/// A 64-bit checksum of `bytes` (word-wise, so it is cheap in debug builds too).
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x100_0000_01B3).rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    h
}

/// Fills `bytes` with a fresh pseudo-random pattern (word-wise: cheap in debug builds)
/// and returns its checksum.
fn fill(rng: &mut SmallRng, bytes: &mut [u8]) -> u64 {
    let mut x: u64 = rng.r#gen();
    let mut next = || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 31)
    };
    let mut words = bytes.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&next().to_le_bytes());
    }
    let tail = next().to_le_bytes();
    let rest = words.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&tail[..n]);
    checksum(bytes)
}

/// A store value of fixed size.
type Blob = [u64; 32];

fn blob_sum(b: &Blob) -> u64 {
    b.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, &w| {
        (h ^ w).wrapping_mul(0x100_0000_01B3).rotate_left(31)
    })
}

/// Where an item's bytes live.
#[derive(Clone, Copy, Debug)]
enum Place {
    Raw(RawHandle),
    /// A fixed block: address (as `usize`, so items can cross threads) and layout.
    Fixed(usize, Layout),
    Blob(Handle<Blob>),
    Bytes(Handle<Vec<u8>>),
}

#[derive(Clone, Copy, Debug)]
struct Item {
    place: Place,
    /// Requested bytes in the pools or large path (a `Vec`'s header for `Bytes`).
    len: usize,
    sum: u64,
}

/// One thread's levels on a shared heap.
struct World<'h> {
    name: String,
    heap: &'h Heap,
    blobs: Store<Blob>,
    bytes: Store<Vec<u8>>,
    rng: SmallRng,
    levels: VecDeque<(Vec<Item>, usize)>,
    /// Items verified, and blocks moved by this world's own passes.
    verified: u64,
    moved: u64,
}

impl<'h> World<'h> {
    fn new(name: &str, heap: &'h Arc<Heap>, seed: u64) -> Self {
        Self {
            name: name.to_owned(),
            heap,
            blobs: Store::new_in(heap.clone()),
            bytes: Store::new_in(heap.clone()),
            rng: SmallRng::seed_from_u64(seed),
            levels: VecDeque::new(),
            verified: 0,
            moved: 0,
        }
    }

    /// A new item: mostly small pool blocks of a few hot sizes, some larger, a few
    /// above the pool limit.
    fn birth(&mut self) -> Item {
        // Debug builds stream fewer bytes (checksums are slow there).
        let (mid, large) = if cfg!(debug_assertions) {
            (16 << 10, 300 << 10)
        } else {
            (64 << 10, 1 << 20)
        };
        let size = match self.rng.gen_range(0..100) {
            0..50 => [16, 32, 48, 64, 96, 128, 256][self.rng.gen_range(0..7)],
            50..85 => self.rng.gen_range(0..4096),
            85..99 => self.rng.gen_range(4096..=mid),
            _ => self.rng.gen_range(260 << 10..=large),
        };
        match self.rng.gen_range(0..10) {
            0..4 => {
                let h = self.heap.alloc_handle(size, 16).expect("alloc_handle");
                let sum = fill(&mut self.rng, &mut self.heap.write(h).expect("fresh"));
                Item {
                    place: Place::Raw(h),
                    len: size,
                    sum,
                }
            }
            4..7 => {
                let layout = Layout::from_size_align(size, 16).expect("layout");
                let p = self.heap.alloc(layout).expect("alloc");
                // SAFETY: a fresh block of `size` writable bytes, ours.
                let b = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), size) };
                let sum = fill(&mut self.rng, b);
                Item {
                    place: Place::Fixed(p.as_ptr() as usize, layout),
                    len: size,
                    sum,
                }
            }
            7 | 8 => {
                let mut b: Blob = [0; 32];
                self.rng.fill(&mut b[..]);
                let sum = blob_sum(&b);
                Item {
                    place: Place::Blob(self.blobs.insert(b)),
                    len: size_of::<Blob>(),
                    sum,
                }
            }
            _ => {
                let mut v = vec![0u8; size.min(8192)];
                let sum = fill(&mut self.rng, &mut v);
                Item {
                    place: Place::Bytes(self.bytes.insert(v)),
                    len: size_of::<Vec<u8>>(),
                    sum,
                }
            }
        }
    }

    fn verify(&self, it: &Item) {
        let got = match it.place {
            Place::Raw(h) => {
                let g = self.heap.read(h).expect("a live raw handle resolves");
                assert_eq!(g.len(), it.len, "{}: length of {h:?}", self.name);
                checksum(&g)
            }
            Place::Fixed(p, l) => {
                // SAFETY: the block is live and ours, `l.size()` bytes.
                checksum(unsafe { core::slice::from_raw_parts(p as *const u8, l.size()) })
            }
            Place::Blob(h) => blob_sum(&self.blobs.get(h).expect("a live blob resolves")),
            Place::Bytes(h) => checksum(&self.bytes.get(h).expect("a live value resolves")),
        };
        assert_eq!(got, it.sum, "{}: corrupted item {it:?}", self.name);
    }

    fn rewrite(&mut self, it: &mut Item) {
        it.sum = match it.place {
            Place::Raw(h) => fill(&mut self.rng, &mut self.heap.write(h).expect("live")),
            Place::Fixed(p, l) => {
                // SAFETY: the block is live and ours, `l.size()` bytes.
                fill(&mut self.rng, unsafe {
                    core::slice::from_raw_parts_mut(p as *mut u8, l.size())
                })
            }
            Place::Blob(h) => {
                let mut g = self.blobs.get_mut(h).expect("live");
                self.rng.fill(&mut g[..]);
                blob_sum(&g)
            }
            Place::Bytes(h) => {
                let mut g = self.bytes.get_mut(h).expect("live");
                let extra = self.rng.gen_range(0..64);
                g.extend((0..extra).map(|i| i as u8));
                checksum(&g)
            }
        };
    }

    fn death(&mut self, it: Item) {
        self.verify(&it);
        match it.place {
            Place::Raw(h) => self.heap.free_handle(h).expect("live"),
            Place::Fixed(p, l) => {
                // SAFETY: allocated by this heap with `l`, freed once.
                unsafe {
                    self.heap
                        .dealloc(core::ptr::NonNull::new(p as *mut u8).expect("non-null"), l)
                }
            }
            Place::Blob(h) => {
                assert!(self.blobs.remove(h).is_some());
            }
            Place::Bytes(h) => {
                assert!(self.bytes.remove(h).is_some());
            }
        }
    }

    /// One frame of the game: stream in, touch, churn, unload.
    fn frame(&mut self) {
        if self.levels.is_empty() || self.rng.gen_ratio(1, 12) {
            // Debug builds stream smaller levels, so `cargo test` stays quick.
            let target = if cfg!(debug_assertions) {
                self.rng.gen_range(100..600)
            } else {
                self.rng.gen_range(200..1500)
            };
            self.levels.push_back((Vec::new(), target));
        }
        // Loading levels stream in a slice per frame.
        for l in 0..self.levels.len() {
            let (len, target) = (self.levels[l].0.len(), self.levels[l].1);
            for _ in 0..(target.saturating_sub(len)).min(120) {
                let it = self.birth();
                self.levels[l].0.push(it);
            }
        }
        // Churn: some members die, some are born, some are touched.
        for l in 0..self.levels.len() {
            let n = self.levels[l].0.len();
            if n == 0 {
                continue;
            }
            for _ in 0..n / 40 + 1 {
                let i = self.rng.gen_range(0..self.levels[l].0.len());
                let it = self.levels[l].0.swap_remove(i);
                self.death(it);
                if self.levels[l].0.is_empty() {
                    break;
                }
            }
            for _ in 0..n / 50 {
                let it = self.birth();
                self.levels[l].0.push(it);
            }
            for _ in 0..16 {
                let k = self.levels[l].0.len();
                if k == 0 {
                    break;
                }
                let i = self.rng.gen_range(0..k);
                let mut it = self.levels[l].0[i];
                self.verify(&it);
                self.verified += 1;
                if self.rng.gen_ratio(1, 4) {
                    self.rewrite(&mut it);
                    self.levels[l].0[i] = it;
                }
            }
        }
        // The oldest level goes when too many are loaded.
        if self.levels.len() > 3 {
            let (old, _) = self.levels.pop_front().expect("non-empty");
            for it in old {
                self.death(it);
            }
        }
    }

    fn verify_all(&mut self) {
        for (l, _) in &self.levels {
            for it in l {
                self.verify(it);
            }
        }
        self.verified += self.levels.iter().map(|(l, _)| l.len() as u64).sum::<u64>();
    }

    /// Live (fixed blocks, fixed bytes, movable blocks, movable bytes, large blocks, large bytes).
    fn live(&self) -> [usize; 6] {
        let mut t = [0usize; 6];
        for (l, _) in &self.levels {
            for it in l {
                let pooled = size_class::class_for(it.len, 16).is_some();
                let k = match it.place {
                    Place::Fixed(..) if pooled => 0,
                    Place::Raw(_) if !pooled => 4,
                    Place::Fixed(..) => 4,
                    _ => 2,
                };
                t[k] += 1;
                t[k + 1] += it.len;
            }
        }
        t
    }

    fn unload_all(&mut self) {
        while let Some((l, _)) = self.levels.pop_front() {
            for it in l {
                self.death(it);
            }
        }
        assert!(self.blobs.is_empty() && self.bytes.is_empty());
    }
}

/// `stats` and `walk` against the expected live figures (from the calling thread, the
/// only one using the heap: its trim brings every cached block home).
fn check_accounting(heap: &Heap, live: [usize; 6], what: &str) {
    heap.trim();
    let (s, w) = (heap.stats(), heap.walk());
    let ctx = format!("{what}: {s:?}\n{w:?}");
    assert_eq!(s.fixed.live_blocks(), live[0] as u64, "fixed blocks; {ctx}");
    assert_eq!(s.fixed.live_bytes(), live[1] as u64, "fixed bytes; {ctx}");
    assert_eq!(
        s.movable.live_blocks(),
        live[2] as u64,
        "movable blocks; {ctx}"
    );
    assert_eq!(
        s.movable.live_bytes(),
        live[3] as u64,
        "movable bytes; {ctx}"
    );
    assert_eq!(s.large.live_blocks, live[4], "large blocks; {ctx}");
    assert_eq!(s.large.live_bytes, live[5], "large bytes; {ctx}");
    assert_eq!(
        w.out_blocks,
        [live[0], live[2]],
        "blocks out of their spans; {ctx}"
    );
    assert_eq!(
        w.movable_live_blocks, live[2],
        "walk: movable blocks; {ctx}"
    );
    assert_eq!(w.movable_live_bytes, live[3], "walk: movable bytes; {ctx}");
    assert_eq!(w.committed_bytes, s.committed_bytes, "committed; {ctx}");
    assert_eq!(
        heap.fragmentation().live_bytes,
        live[3],
        "fragmentation; {ctx}"
    );
}

/// Everything freed: nothing live, nothing committed once compacted and trimmed.
fn check_empty(heap: &Heap) {
    check_accounting(heap, [0; 6], "everything freed");
    heap.compact_full();
    heap.trim();
    let (s, w) = (heap.stats(), heap.walk());
    assert_eq!(s.committed_bytes, 0, "{s:?}");
    assert_eq!(w.spans, 0, "{w:?}");
    assert_eq!(s.large.mapped_bytes, 0, "{s:?}");
}

fn add(a: [usize; 6], b: [usize; 6]) -> [usize; 6] {
    core::array::from_fn(|i| a[i] + b[i])
}

fn heap(arenas: usize) -> Arc<Heap> {
    Arc::new(Heap::with_config(HeapConfig {
        arenas,
        ..HeapConfig::DEFAULT
    }))
}

/// Frames with a per-frame budget chosen by `budget(frame)`.
fn stream_with_budgets(arenas: usize, seed: u64, budget: impl Fn(&mut SmallRng) -> Budget) {
    let heap = heap(arenas);
    let mut w = World::new("main", &heap, seed);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xB0D6E7);
    let mut complete_plans = 0;
    for f in 0..frames() {
        w.frame();
        let r = heap.compact(budget(&mut rng));
        assert!(r.ran);
        w.moved += r.blocks_moved;
        complete_plans += u64::from(r.complete && r.blocks_moved > 0);
        if f % 25 == 24 {
            w.verify_all();
            check_accounting(&heap, w.live(), &format!("frame {f}"));
        }
    }
    w.verify_all();
    check_accounting(&heap, w.live(), "end of the run");
    assert!(
        w.moved > 0,
        "the compactor moved nothing in {} frames",
        frames()
    );
    eprintln!(
        "arenas {arenas}: {} blocks moved, {complete_plans} plans finished, {} items verified",
        w.moved, w.verified
    );
    w.unload_all();
    drop(w);
    check_empty(&heap);
}

#[test]
fn streaming_with_block_budgets() {
    for (arenas, seed) in [(1, 11), (2, 12), (4, 13)] {
        stream_with_budgets(arenas, seed, |rng| Budget::blocks(rng.gen_range(1..=6)));
    }
}

#[test]
fn streaming_with_time_budgets() {
    for (arenas, seed) in [(1, 21), (3, 22)] {
        stream_with_budgets(arenas, seed, |rng| {
            Budget::time(Duration::from_micros(rng.gen_range(20..400)))
        });
    }
}

/// Counts moves seen by observers.
#[derive(Default)]
struct MoveCount(AtomicU64);

impl CompactionObserver for MoveCount {
    fn on_move(&self, _: &MoveEvent) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Assets both streaming threads read and rewrite: every word of a blob, and every byte
/// of a raw block, holds the same value, so a torn copy shows.
struct SharedAssets {
    blobs: Store<Blob>,
    blob_handles: Vec<Handle<Blob>>,
    raws: Vec<RawHandle>,
}

impl SharedAssets {
    fn new(heap: &Arc<Heap>) -> Self {
        let blobs = Store::new_in(heap.clone());
        let blob_handles = (0..300u64).map(|i| blobs.insert([i; 32])).collect();
        let raws = (0..300usize)
            .map(|i| {
                let h = heap.alloc_handle(16 + i % 200, 16).expect("alloc");
                heap.write(h).expect("live").fill(i as u8);
                h
            })
            .collect();
        Self {
            blobs,
            blob_handles,
            raws,
        }
    }

    fn touch(&self, heap: &Heap, rng: &mut SmallRng) {
        for _ in 0..8 {
            let h = self.blob_handles[rng.gen_range(0..self.blob_handles.len())];
            if rng.gen_ratio(1, 3) {
                let v = rng.r#gen();
                *self.blobs.get_mut(h).expect("live") = [v; 32];
            } else {
                let g = self.blobs.get(h).expect("live");
                assert!(
                    g.iter().all(|&w| w == g[0]),
                    "torn shared blob {h:?}: {:?}",
                    &*g
                );
            }
            let r = self.raws[rng.gen_range(0..self.raws.len())];
            if rng.gen_ratio(1, 3) {
                let v = rng.r#gen();
                heap.write(r).expect("live").fill(v);
            } else {
                let g = heap.read(r).expect("live");
                assert!(g.iter().all(|&b| b == g[0]), "torn shared block {r:?}");
            }
        }
    }

    fn live(&self, heap: &Heap) -> [usize; 6] {
        let raw_bytes: usize = self
            .raws
            .iter()
            .map(|&h| heap.read(h).expect("live").len())
            .sum();
        [
            0,
            0,
            self.blob_handles.len() + self.raws.len(),
            self.blob_handles.len() * size_of::<Blob>() + raw_bytes,
            0,
            0,
        ]
    }

    fn free(self, heap: &Heap) {
        for h in self.blob_handles {
            let v = self.blobs.remove(h).expect("live");
            assert!(v.iter().all(|&w| w == v[0]));
        }
        for h in self.raws {
            heap.free_handle(h).expect("live");
        }
    }
}

fn stream_in_background(budget: Budget) {
    let heap = heap(2);
    let moves = Arc::new(MoveCount::default());
    heap.subscribe(moves.clone());
    let shared = SharedAssets::new(&heap);
    let bg = BackgroundCompactor::start(heap.clone(), Duration::from_micros(200), budget);
    let worlds: Vec<World<'_>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (heap, shared) = (&heap, &shared);
                s.spawn(move || {
                    let mut w = World::new(&format!("thread {t}"), heap, 100 + t);
                    let mut rng = SmallRng::seed_from_u64(200 + t);
                    for f in 0..frames() {
                        w.frame();
                        shared.touch(heap, &mut rng);
                        if f % 25 == 24 {
                            w.verify_all();
                        }
                    }
                    w.verify_all();
                    w
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a streaming thread failed"))
            .collect()
    });
    let passes = bg.stop();
    // Quiescent now: the worker threads exited (their caches went home) and the
    // compactor thread is joined.
    let mut live = shared.live(&heap);
    for w in &worlds {
        live = add(live, w.live());
    }
    check_accounting(&heap, live, "after the background run");
    let moved = moves.0.load(Ordering::Relaxed);
    eprintln!("{budget:?}: {passes} background passes moved {moved} blocks");
    assert!(
        moved > 0,
        "the background compactor moved nothing in {passes} passes"
    );
    for mut w in worlds {
        w.verify_all();
        w.unload_all();
    }
    shared.free(&heap);
    check_empty(&heap);
}

#[test]
fn streaming_with_background_compactor_block_budget() {
    stream_in_background(Budget::blocks(4));
}

#[test]
fn streaming_with_background_compactor_time_budget() {
    stream_in_background(Budget::time(Duration::from_micros(300)));
}
