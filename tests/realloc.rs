//! `realloc` of pool blocks: which reallocations keep the block in place (the rule on
//! `HeapInner::resize_in_place`: within the block's own class, and below it down to half
//! the block for classes of at least 1 KiB), with contents and exact accounting, checked
//! by a differential model on several seeds: blocks of 1 B to 300 KB (across the
//! pool/large boundary) resized at random, freed with their current layout on this
//! thread or another, shrunk blocks resized again. The model also follows blocks a
//! realloc grew out of the pools (`src/pool/heap/resize.rs`, "Blocks grown out of the
//! pools"): resized in place within the pool range, freed with pool layouts.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;
use tidyheap::size_class::{self, MAX_SMALL};

/// Classes whose blocks a realloc may shrink in place.
const SHRINK_MIN: usize = 1024;
/// A pool block grown by a realloc into a class of this size or more leaves the pools.
const GROW_OUT_MIN: usize = 64 << 10;
/// A block out of the pools stays out while resized to this size or more.
const GROWN_KEEP_MIN: usize = 32 << 10;

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// The block size of the class serving `size` bytes (None: a large block).
fn class_size(size: usize) -> Option<usize> {
    size_class::class_for(size, 8).map(size_class::size)
}

/// Whether a block of `real` bytes (its class) stays in place for `new` bytes.
fn stays(real: usize, new: usize) -> bool {
    match class_size(new) {
        Some(c) if c == real => true,
        Some(c) => c < real && real >= SHRINK_MIN && 2 * new >= real,
        None => false,
    }
}

/// Where a block of the model lives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Home {
    /// A pool block of this size (its class, kept by an in-place shrink).
    Pool(usize),
    /// Out of the pools, in a large mapping, with a pool layout.
    Grown,
    /// A large block of a layout past the pools.
    Large,
}

/// Where a block of `old` bytes living in `home` is after a realloc to `new`, and
/// whether it kept its address.
fn after_realloc(home: Home, old: usize, new: usize) -> (Home, Option<bool>) {
    let moved_to = |new: usize| match class_size(new) {
        Some(c) => Home::Pool(c),
        None => Home::Large,
    };
    match (home, class_size(new)) {
        (Home::Pool(real), _) if stays(real, new) => (home, Some(true)),
        (Home::Pool(_), Some(c)) if new > old && c >= GROW_OUT_MIN => (Home::Grown, Some(false)),
        (Home::Pool(_), _) => (moved_to(new), Some(false)),
        (Home::Grown | Home::Large, None) => (Home::Large, None),
        (Home::Grown | Home::Large, Some(_)) if new >= GROWN_KEEP_MIN => (Home::Grown, Some(true)),
        (Home::Grown | Home::Large, Some(c)) => (Home::Pool(c), Some(false)),
    }
}

/// One live block of the model.
struct Block {
    ptr: NonNull<u8>,
    /// The size of its current layout.
    size: usize,
    home: Home,
    /// The byte pattern of its first `size` bytes.
    seed: u8,
}

fn fill(p: NonNull<u8>, len: usize, seed: u8) {
    // SAFETY: the caller's block holds at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 251) as u8);
    }
}

fn check(p: NonNull<u8>, len: usize, seed: u8) {
    // SAFETY: the caller's block holds at least `len` initialised bytes.
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), len) };
    for (i, &b) in s.iter().enumerate() {
        assert_eq!(b, seed.wrapping_add((i % 251) as u8), "byte {i} of {len}");
    }
}

fn random_size(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..10) {
        0..=3 => rng.gen_range(1..=SHRINK_MIN * 2),
        4..=8 => rng.gen_range(1..=64 << 10),
        _ => rng.gen_range(1..=MAX_SMALL + 40_000),
    }
}

fn model(seed: u64, steps: usize) {
    let heap = Arc::new(Heap::new());
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut live: Vec<Block> = Vec::new();
    let (mut in_place, mut moved, mut grown) = (0u32, 0u32, 0u32);
    for step in 0..steps {
        match rng.gen_range(0..10) {
            0..=2 if live.len() < 200 => {
                let size = random_size(&mut rng);
                let ptr = heap.alloc(l(size)).unwrap();
                let seed = step as u8;
                fill(ptr, size, seed);
                live.push(Block {
                    ptr,
                    size,
                    home: class_size(size).map_or(Home::Large, Home::Pool),
                    seed,
                });
            }
            0..=6 if !live.is_empty() => {
                let i = rng.gen_range(0..live.len());
                let b = &mut live[i];
                let new = random_size(&mut rng);
                // SAFETY: a live block of `heap` with this layout.
                let p = unsafe { heap.realloc(b.ptr, l(b.size), new) }.unwrap();
                check(p, b.size.min(new), b.seed);
                let (home, kept) = after_realloc(b.home, b.size, new);
                if let Some(want) = kept {
                    assert_eq!(
                        p == b.ptr,
                        want,
                        "seed {seed} step {step}: {} B block ({:?}) to {new} B",
                        b.size,
                        b.home
                    );
                    if want {
                        in_place += 1;
                    } else {
                        moved += 1;
                    }
                }
                if home == Home::Grown {
                    grown += 1;
                }
                b.home = home;
                b.ptr = p;
                b.size = new;
                fill(p, new, b.seed);
            }
            _ if !live.is_empty() => {
                let b = live.swap_remove(rng.gen_range(0..live.len()));
                check(b.ptr, b.size, b.seed);
                let (p, size) = (b.ptr.as_ptr() as usize, b.size);
                if rng.gen_bool(0.3) {
                    // Freed by another thread: the remote path must find the block's
                    // class. A joined (not scoped) thread has also run its exit hook,
                    // which delivers the frees it batched, so the counts are exact after.
                    let heap = Arc::clone(&heap);
                    std::thread::spawn(move || {
                        let p = NonNull::new(p as *mut u8).unwrap();
                        // SAFETY: a live block of `heap` with this layout, freed once.
                        unsafe { heap.dealloc(p, l(size)) };
                    })
                    .join()
                    .unwrap();
                } else {
                    // SAFETY: as above.
                    unsafe { heap.dealloc(b.ptr, l(size)) };
                }
            }
            _ => {}
        }
        let want: usize = live.iter().map(|b| b.size).sum();
        let s = heap.stats();
        assert_eq!(
            s.fixed.live_bytes() + s.large.live_bytes as u64,
            want as u64,
            "seed {seed} step {step}: live bytes"
        );
    }
    assert!(
        in_place > 50 && moved > 50 && grown > 50,
        "every path ran: {in_place} / {moved} / {grown}"
    );
    for b in live {
        // SAFETY: live blocks of `heap` with these layouts, each freed once.
        unsafe { heap.dealloc(b.ptr, l(b.size)) };
    }
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.live_bytes(), 0);
    assert_eq!(
        s.committed_bytes, 0,
        "every span went home and was given back"
    );
}

#[test]
fn differential_model_of_realloc_in_place_and_moved() {
    let steps = std::env::var("TIDYHEAP_REALLOC_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    for seed in 0..4 {
        model(seed, steps);
    }
}

#[test]
fn a_shrunk_block_goes_home_to_its_own_class() {
    let heap = Heap::new();
    let p = heap.alloc(l(4000)).unwrap();
    fill(p, 4000, 9);
    // SAFETY: live blocks with these layouts.
    let q = unsafe { heap.realloc(p, l(4000), 2048) }.unwrap();
    assert_eq!(p, q, "2048 B still fills half of the 4 KiB block");
    check(q, 2048, 9);
    // Below half: it moves.
    // SAFETY: as above.
    let r = unsafe { heap.realloc(q, l(2048), 2047) }.unwrap();
    assert_ne!(q, r);
    check(r, 2047, 9);
    // SAFETY: as above.
    let q = unsafe { heap.realloc(r, l(2047), 2500) }.unwrap();
    // SAFETY: as above, freed once.
    unsafe { heap.dealloc(q, l(2500)) };
    // The freed 4 KiB block serves a 4 KiB request again, and the 2560 B class never
    // saw it: its next block is a fresh one.
    let again = heap.alloc(l(4096)).unwrap();
    assert_eq!(again, p, "the shrunk block went back to the 4 KiB class");
    // SAFETY: as above.
    unsafe { heap.dealloc(again, l(4096)) };
    assert_eq!(heap.stats().live_bytes(), 0);
}
