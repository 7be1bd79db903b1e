//! Owner-local sets (`pool::owned`, issue 12): a fixed list's overflow puts the owner's
//! blocks into their spans' local sets without the arena lock, refills take them back,
//! and the sets are merged home when a span is wholly free, at thread exit (park) and on
//! `trim`. A differential model over several seeds: random allocations, frees (own and
//! remote, to live and to exited owners), bursts that overflow and refill the lists,
//! threads that exit with blocks in local sets, other threads adopting their spans, and
//! `trim`s, checked against a model of the live blocks: no block is handed out twice
//! (an address live twice), every block keeps its bytes, and at quiescence the walk and
//! the stats find no fixed block out of its span.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Mutex;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;

/// A live block: address, layout, and the seed its bytes were filled from.
struct Block(NonNull<u8>, Layout, u64);
// SAFETY: blocks move between threads whole; only their holder touches them.
unsafe impl Send for Block {}

/// The model: every live block by address, whoever holds it.
struct Model(Mutex<HashMap<usize, usize>>);

impl Model {
    fn alloc(&self, heap: &Heap, rng: &mut SmallRng, size: usize) -> Block {
        let l = Layout::from_size_align(size, 8).unwrap();
        let p = heap.alloc(l).unwrap();
        let prev = self.0.lock().unwrap().insert(p.as_ptr() as usize, size);
        assert!(prev.is_none(), "{p:p} handed out while live");
        let seed = rng.r#gen::<u64>();
        for i in 0..size {
            // SAFETY: the block holds `size` writable bytes.
            unsafe {
                p.as_ptr()
                    .add(i)
                    .write(seed.wrapping_add(i as u64 * 7) as u8)
            };
        }
        Block(p, l, seed)
    }

    fn free(&self, heap: &Heap, b: Block) {
        for i in 0..b.1.size() {
            // SAFETY: the block holds `b.1.size()` bytes, written by `alloc`.
            let got = unsafe { b.0.as_ptr().add(i).read() };
            assert_eq!(
                got,
                b.2.wrapping_add(i as u64 * 7) as u8,
                "byte {i} of {:p}",
                b.0
            );
        }
        let had = self.0.lock().unwrap().remove(&(b.0.as_ptr() as usize));
        assert_eq!(had, Some(b.1.size()), "{:p} freed but not live", b.0);
        // SAFETY: the block is live with this layout and freed once.
        unsafe { heap.dealloc(b.0, b.1) };
    }
}

fn size(rng: &mut SmallRng) -> usize {
    *[16, 48, 64, 64, 64, 200, 1000].choose(rng).unwrap()
}

/// Allocates `n` blocks of one size and frees them in a random order: the list
/// overflows into local sets, spans go wholly free, refills take from the sets.
fn burst(model: &Model, heap: &Heap, rng: &mut SmallRng, n: usize) {
    let s = size(rng);
    let mut bs: Vec<Block> = (0..n).map(|_| model.alloc(heap, rng, s)).collect();
    bs.shuffle(rng);
    for b in bs {
        model.free(heap, b);
    }
}

/// A thread's life: bursts, some blocks kept, remote frees of `theirs`; it exits with
/// blocks in its local sets (parked) and hands its kept blocks back.
fn worker(model: &Model, heap: &Heap, seed: u64, theirs: Vec<Block>) -> Vec<Block> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut kept = Vec::new();
    for b in theirs {
        model.free(heap, b);
    }
    for _ in 0..rng.gen_range(1..4) {
        let n = rng.gen_range(100..3000);
        let s = size(&mut rng);
        let mut bs: Vec<Block> = (0..n).map(|_| model.alloc(heap, &mut rng, s)).collect();
        bs.shuffle(&mut rng);
        // Keep some: the thread's spans then have blocks out when it parks.
        for b in bs.drain(..n / 8) {
            kept.push(b);
        }
        for b in bs {
            model.free(heap, b);
        }
        if rng.gen_ratio(1, 4) {
            heap.trim();
        }
    }
    kept
}

fn assert_quiescent(heap: &Heap) {
    heap.trim();
    let (walk, stats) = (heap.walk(), heap.stats());
    assert_eq!(stats.fixed.live_blocks(), 0, "{:?}", stats.fixed);
    assert_eq!(stats.fixed.live_bytes(), 0, "{:?}", stats.fixed);
    assert_eq!(
        walk.out_blocks[0], 0,
        "fixed blocks still out of their spans (local sets not merged)"
    );
    assert_eq!(walk.committed_bytes, stats.committed_bytes);
    assert_eq!(walk.spans, stats.spans);
}

fn run(seed: u64, steps: usize) {
    let heap = Heap::new();
    let model = Model(Mutex::new(HashMap::new()));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut live: Vec<Block> = Vec::new();
    for step in 0..steps {
        match rng.gen_range(0..100) {
            0..40 => {
                let s = size(&mut rng);
                live.push(model.alloc(&heap, &mut rng, s));
            }
            40..70 if !live.is_empty() => {
                let i = rng.gen_range(0..live.len());
                model.free(&heap, live.swap_remove(i));
            }
            70..80 => {
                let n = rng.gen_range(50..2500);
                burst(&model, &heap, &mut rng, n);
            }
            80..84 => {
                heap.trim();
            }
            84..94 => {
                // An exiting thread (sequential): frees some of ours remotely, parks.
                let k = rng.gen_range(0..=live.len().min(64));
                let theirs: Vec<Block> = live.drain(..k).collect();
                let s = rng.r#gen();
                let (m, h) = (&model, &heap);
                live.extend(std::thread::scope(|sc| {
                    sc.spawn(move || worker(m, h, s, theirs)).join().unwrap()
                }));
            }
            94..100 => {
                // A thread running beside us: remote frees to a claimed owner (us) while
                // we overflow and refill, and it exits (parks) meanwhile.
                let k = rng.gen_range(0..=live.len().min(256));
                let theirs: Vec<Block> = live.drain(..k).collect();
                let s = rng.r#gen();
                let n = rng.gen_range(100..2000);
                let (m, h) = (&model, &heap);
                let kept = std::thread::scope(|sc| {
                    let t = sc.spawn(move || worker(m, h, s, theirs));
                    burst(m, h, &mut rng, n);
                    t.join().unwrap()
                });
                live.extend(kept);
            }
            _ => {}
        }
        if step % 500 == 499 {
            let (walk, stats) = (heap.walk(), heap.stats());
            assert_eq!(
                stats.fixed.live_blocks() as usize,
                live.len(),
                "step {step}"
            );
            assert!(
                walk.out_blocks[0] >= live.len(),
                "step {step}: live blocks not out"
            );
        }
    }
    live.shuffle(&mut rng);
    for b in live {
        model.free(&heap, b);
    }
    assert!(model.0.lock().unwrap().is_empty());
    assert_quiescent(&heap);
}

#[test]
fn owner_local_sets_match_a_model() {
    let steps = if cfg!(debug_assertions) { 600 } else { 3000 };
    for seed in [1, 2, 3, 0xfeed, 0x5eed_1234] {
        run(seed, steps);
    }
}

/// A thread that exits right after its frees went into local sets (no refill took them
/// back, and a kept block in every span stops the wholly-free merges) leaves only its
/// kept blocks and its parked list out: its park merges the local sets home. Then
/// another thread adopts the spans, and `trim` finds every span empty in the end.
#[test]
fn exit_with_full_local_sets_merges_them_home() {
    let heap = Heap::new();
    let model = Model(Mutex::new(HashMap::new()));
    let mut kept = Vec::new();
    for round in 0..4u64 {
        let k = std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut rng = SmallRng::seed_from_u64(round);
                let mut bs: Vec<Block> = (0..5000)
                    .map(|_| model.alloc(&heap, &mut rng, 64))
                    .collect();
                let keep: Vec<Block> = (0..bs.len())
                    .rev()
                    .step_by(100)
                    .map(|i| bs.swap_remove(i))
                    .collect();
                bs.shuffle(&mut rng);
                for b in bs {
                    model.free(&heap, b);
                }
                keep
            })
            .join()
            .unwrap()
        });
        kept.extend(k);
        let out = heap.walk().out_blocks[0];
        // A 64 B list holds at most 32 KiB (512 blocks) when its thread parks.
        assert!(
            out <= kept.len() + 512,
            "round {round}: {out} blocks out, {} live",
            kept.len()
        );
    }
    for b in kept {
        model.free(&heap, b);
    }
    assert_quiescent(&heap);
}
