//! Blocks a realloc grew out of the pools (`src/pool/heap/resize.rs`, "Blocks grown out
//! of the pools"): they keep pool layouts but live in large mappings, so `dealloc` and
//! `realloc` must find them by address. A free routed by the layout alone would take
//! such a block for a pool block and abort (or corrupt a span); these tests free and
//! resize them every way a caller can: on the thread that grew them and on another,
//! through `Heap` and through `Global`'s `GlobalAlloc` impl, after resizes within the
//! pool range, past it and back, with exact accounting and contents checked.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

use tidyheap::size_class::MAX_SMALL;
use tidyheap::{Global, Heap};

/// Not the process allocator: its counters see only this file's blocks.
static GLOBAL: Global = Global::new();

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn fill(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the caller's block holds at least `len` bytes.
    let s = unsafe { std::slice::from_raw_parts_mut(p, len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = seed.wrapping_add((i % 253) as u8);
    }
}

fn check(p: *mut u8, len: usize, seed: u8) {
    // SAFETY: the caller's block holds at least `len` initialised bytes.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    for (i, &b) in s.iter().enumerate() {
        assert_eq!(b, seed.wrapping_add((i % 253) as u8), "byte {i} of {len}");
    }
}

/// How a test frees its grown block.
#[derive(Clone, Copy, Debug)]
enum Free {
    Here,
    OtherThread,
}

fn free_heap(heap: &Arc<Heap>, p: NonNull<u8>, layout: Layout, how: Free) {
    match how {
        // SAFETY: a live block of `heap` with `layout`, freed once.
        Free::Here => unsafe { heap.dealloc(p, layout) },
        Free::OtherThread => {
            let addr = p.as_ptr() as usize;
            let heap = Arc::clone(heap);
            // Joined, not scoped: the thread's exit hook has sent its cache home after.
            std::thread::spawn(move || {
                let p = NonNull::new(addr as *mut u8).unwrap();
                // SAFETY: as above; this thread has a cache of `heap` too.
                unsafe {
                    let warm = heap.alloc(l(64)).unwrap();
                    heap.dealloc(warm, l(64));
                    heap.dealloc(p, layout);
                }
            })
            .join()
            .unwrap();
        }
    }
}

#[test]
fn a_heap_frees_grown_blocks_by_address() {
    let heap = Arc::new(Heap::new());
    for how in [Free::Here, Free::OtherThread] {
        let p = heap.alloc(l(1000)).unwrap();
        fill(p.as_ptr(), 1000, 1);
        // SAFETY: live blocks of `heap` with the layouts passed, each used only through
        // the pointer the last call returned.
        let q = unsafe { heap.realloc(p, l(1000), 100_000) }.unwrap();
        assert_ne!(p, q);
        check(q.as_ptr(), 1000, 1);
        let s = heap.stats();
        assert_eq!(
            (
                s.large.live_blocks,
                s.large.live_bytes,
                s.fixed.live_bytes()
            ),
            (1, 100_000, 0),
            "{how:?}: the grown block is a large mapping counted at its size"
        );
        fill(q.as_ptr(), 100_000, 2);
        // Within the pool range it stays where it is.
        // SAFETY: as above.
        let r = unsafe { heap.realloc(q, l(100_000), 250_000) }.unwrap();
        assert_eq!(
            r, q,
            "{how:?}: grown blocks grow in place within the pools' range"
        );
        check(r.as_ptr(), 100_000, 2);
        // SAFETY: as above.
        let r = unsafe { heap.realloc(r, l(250_000), 40_000) }.unwrap();
        assert_eq!(r, q, "{how:?}: and shrink in place down to 32 KiB");
        // Every byte `usable_size` promises for the layout is there.
        let usable = heap.usable_size(l(40_000));
        fill(r.as_ptr(), usable, 3);
        check(r.as_ptr(), usable, 3);
        assert_eq!(heap.stats().large.live_bytes, 40_000);
        free_heap(&heap, r, l(40_000), how);
        let s = heap.stats();
        assert_eq!(
            (s.large.live_blocks, s.large.live_bytes, s.live_bytes()),
            (0, 0, 0),
            "{how:?}: freed as a large block"
        );
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
}

#[test]
fn grown_blocks_cross_the_pool_boundary_both_ways() {
    let heap = Heap::new();
    let p = heap.alloc(l(70_000)).unwrap();
    fill(p.as_ptr(), 70_000, 4);
    // SAFETY: live blocks of `heap` with the layouts passed, each used only through
    // the pointer the last call returned, freed once.
    unsafe {
        let q = heap.realloc(p, l(70_000), 80_000).unwrap();
        // Past the pools: an ordinary large block, grown by `mremap`.
        let r = heap.realloc(q, l(80_000), MAX_SMALL + 50_000).unwrap();
        check(r.as_ptr(), 70_000, 4);
        fill(r.as_ptr(), MAX_SMALL + 50_000, 5);
        // Back into the pool range, still big: its mapping shrinks where it is.
        let s = heap.realloc(r, l(MAX_SMALL + 50_000), 90_000).unwrap();
        assert_eq!(s, r, "a large block shrunk into the pools' range stays put");
        check(s.as_ptr(), 90_000, 5);
        assert_eq!(heap.stats().large.live_bytes, 90_000);
        // Small: back into the pools.
        let t = heap.realloc(s, l(90_000), 5000).unwrap();
        assert_ne!(t, s);
        check(t.as_ptr(), 5000, 5);
        let st = heap.stats();
        assert_eq!((st.large.live_blocks, st.fixed.live_bytes()), (0, 5000));
        heap.dealloc(t, l(5000));
    }
    assert_eq!(heap.stats().live_bytes(), 0);
}

#[test]
fn global_frees_and_resizes_grown_blocks_by_address() {
    // SAFETY: `GLOBAL` is a static; every block is live with the layout passed, used
    // only through the pointer the last call returned, and freed once.
    unsafe {
        let warm = GLOBAL.alloc(l(64));
        GLOBAL.dealloc(warm, l(64));
        let before = GLOBAL.stats();
        for round in 0..4u8 {
            let p = GLOBAL.alloc(l(3000));
            fill(p, 3000, round);
            let q = GLOBAL.realloc(p, l(3000), 120_000);
            assert!(!q.is_null());
            check(q, 3000, round);
            let r = GLOBAL.realloc(q, l(120_000), 60_000);
            assert_eq!(r, q, "in place within the pools' range");
            if round % 2 == 0 {
                GLOBAL.dealloc(r, l(60_000));
            } else {
                let addr = r as usize;
                std::thread::spawn(move || GLOBAL.dealloc(addr as *mut u8, l(60_000)))
                    .join()
                    .unwrap();
            }
        }
        let after = GLOBAL.stats();
        assert_eq!(after.large.live_blocks, before.large.live_blocks);
        assert_eq!(after.live_bytes(), before.live_bytes());
    }
}

/// A grow-out the commit limit refuses (a grown block maps 256 KiB) stays in the pools,
/// whose smaller block fits: the realloc succeeds instead of failing.
#[test]
fn a_refused_grow_out_moves_within_the_pools() {
    let heap = Heap::with_config(tidyheap::HeapConfig {
        commit_limit: 200 << 10,
        ..tidyheap::HeapConfig::DEFAULT
    });
    let p = heap.alloc(l(1000)).unwrap();
    fill(p.as_ptr(), 1000, 6);
    // SAFETY: `p` is live with that layout; only the result is used after, freed once.
    unsafe {
        let q = heap.realloc(p, l(1000), 100_000).unwrap();
        check(q.as_ptr(), 1000, 6);
        let s = heap.stats();
        assert_eq!((s.large.live_blocks, s.fixed.live_bytes()), (0, 100_000));
        heap.dealloc(q, l(100_000));
    }
    assert_eq!(heap.stats().live_bytes(), 0);
}
