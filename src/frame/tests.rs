//! Unit tests of the frame arena's invariants: every chunk in exactly one list and the
//! counters agreeing with a walk (`audit`), lanes unclaimed and EMPTY between frames,
//! exclusive lane claims, the overflow lane, leaked tokens.

use core::alloc::Layout;

use super::*;
use crate::os::PAGE_SIZE;

fn small_arena(frames_in_flight: usize, lanes: usize) -> FrameArena {
    FrameArena::with_config(
        FrameConfig::new()
            .with_chunk_size(PAGE_SIZE)
            .with_frames_in_flight(frames_in_flight)
            .with_lanes(lanes)
            .with_trim_after(4),
    )
    .unwrap()
}

/// Allocates `count` blocks of 8-byte multiples (so no padding) through `$handle` (a
/// token or a shared view), fills them, and evaluates to the bytes requested.
macro_rules! churn {
    ($handle:expr, $seed:expr, $count:expr) => {{
        let (handle, seed) = ($handle, $seed);
        let mut total = 0;
        for i in 0..$count {
            let len = 8 * (1 + (seed * 31 + i * 7) % 40);
            let block = handle.alloc_slice_fill_with(len / 8, |j| (seed + i + j) as u64);
            assert_eq!(block[0], (seed + i) as u64);
            total += len;
        }
        total
    }};
}

#[test]
fn accounting_matches_a_walk_across_frames() {
    let mut arena = small_arena(2, 4);
    for k in 0..12 {
        let frame = arena.begin_frame();
        let mut expected = churn!(&frame, k, 50);
        if k % 3 == 0 {
            // Oversize: a dedicated chunk, released when the frame retires.
            frame.alloc_raw(3 * PAGE_SIZE, 8).unwrap();
            expected += 3 * PAGE_SIZE;
        }
        let shared = frame.shared();
        expected += std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|t| s.spawn(move || churn!(shared, 100 * t + k, 40)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        });
        frame.end();
        assert_eq!(arena.stats().frame_bytes, expected);
        let (chunks, _) = arena.audit();
        assert!(chunks > 0);
    }
    let stats = arena.stats();
    assert!(stats.high_water_bytes >= stats.frame_bytes);
    assert!(stats.peak_bytes_held >= stats.bytes_held);
}

#[test]
fn dedicated_chunks_never_enter_the_pool() {
    let mut arena = small_arena(1, 1);
    let frame = arena.begin_frame();
    frame.alloc_raw(10 * PAGE_SIZE, 64).unwrap();
    frame.end();
    assert_eq!(arena.stats().chunks_held, 1);
    drop(arena.begin_frame()); // frame 1 retires: its dedicated chunk is unmapped
    let stats = arena.stats();
    assert_eq!((stats.chunks_held, stats.chunk_releases), (0, 1));
    arena.audit();
}

#[test]
fn leaked_token_is_finished_by_the_next_begin() {
    let mut arena = small_arena(2, 2);
    let frame = arena.begin_frame();
    frame.alloc([7u8; 40]);
    core::mem::forget(frame);
    let frame = arena.begin_frame();
    assert_eq!(frame.index(), 2);
    assert_eq!(
        frame.stats().frame_bytes,
        40,
        "frame 1 was ended and counted"
    );
    frame.end();
    arena.audit();
}

#[test]
fn teardown_releases_every_chunk_even_with_a_leaked_token() {
    let mut arena = small_arena(3, 2);
    for k in 0..3 {
        churn!(&arena.begin_frame(), k, 100);
    }
    let frame = arena.begin_frame();
    churn!(&frame, 9, 100);
    frame.alloc_raw(2 * PAGE_SIZE, 8).unwrap();
    core::mem::forget(frame);
    // In use by the leaked frame, in flight and pooled chunks all go.
    assert!(arena.stats().chunks_held > 3);
    arena.release_all();
    let stats = arena.stats();
    assert_eq!((stats.chunks_held, stats.bytes_held), (0, 0));
    assert_eq!(stats.chunk_maps, stats.chunk_releases);
    assert_eq!(arena.audit(), (0, 0));
}

#[test]
fn claims_are_exclusive_and_overflow_threads_share_a_locked_lane() {
    let mut arena = small_arena(1, 2);
    let frame = arena.begin_frame();
    let shared = frame.shared();
    let blocks: Vec<Vec<&mut [u64]>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6u64)
            .map(|t| {
                let frame = shared;
                s.spawn(move || {
                    (0..200)
                        .map(|i| frame.alloc_slice_fill_with(5, |_| t * 1000 + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, thread_blocks) in blocks.iter().enumerate() {
        for (i, b) in thread_blocks.iter().enumerate() {
            assert!(b.iter().all(|&v| v == t as u64 * 1000 + i as u64));
        }
    }
    // Lane 0 is the token's; one thread got lane 1, the other five counted claims
    // beyond the lanes and shared the overflow lane.
    assert_eq!(frame.arena.next_lane.load(Ordering::Relaxed), 7);
    drop(blocks);
    frame.end();
    assert_eq!(arena.stats().frame_bytes, 6 * 200 * 40);
    arena.audit();
}

#[test]
fn a_thread_keeps_one_lane_when_alternating_arenas() {
    let mut a = small_arena(2, 4);
    let mut b = small_arena(2, 4);
    let fa = a.begin_frame();
    let fb = b.begin_frame();
    let (sa, sb) = (fa.shared(), fb.shared());
    let mut va = allocator_api2::vec::Vec::new_in(sa);
    let first = {
        va.push(0u32);
        va.as_ptr()
    };
    for i in 1..100u32 {
        va.push(i);
        sb.alloc(i);
    }
    assert_eq!(va.iter().sum::<u32>(), 4950);
    assert_eq!(va.as_ptr(), first, "the vector kept growing in place");
    // One claim (lane 1) per arena despite the evictions of the thread's cache.
    assert_eq!(fa.arena.next_lane.load(Ordering::Relaxed), 2);
    assert_eq!(fb.arena.next_lane.load(Ordering::Relaxed), 2);
    drop(va);
    fa.end();
    fb.end();
    a.audit();
    b.audit();
}

#[test]
fn frees_by_a_thread_without_a_lane_touch_nothing() {
    use allocator_api2::alloc::Allocator;
    let mut arena = small_arena(1, 3);
    let frame = arena.begin_frame();
    let shared = frame.shared();
    let layout = Layout::new::<[u64; 4]>();
    let addr = shared
        .allocate(layout)
        .unwrap()
        .cast::<u8>()
        .as_ptr()
        .expose_provenance();
    std::thread::scope(|s| {
        s.spawn(|| {
            let block = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(addr));
            // This thread holds no lane: the free is a no-op and claims nothing.
            // SAFETY: `block` is the live block of `layout` allocated above, not used
            // again.
            unsafe { shared.deallocate(block.unwrap(), layout) };
        });
    });
    assert_eq!(frame.arena.next_lane.load(Ordering::Relaxed), 2);
    frame.end();
    assert_eq!(
        arena.stats().frame_bytes,
        32,
        "the block was not given back"
    );
    arena.audit();
}

#[test]
fn trim_releases_only_long_idle_pooled_chunks() {
    let mut arena = small_arena(1, 1);
    churn!(&arena.begin_frame(), 0, 400); // several chunks
    let held = arena.stats().chunks_held;
    assert!(held > 2);
    for k in 2..=5 {
        // Frame 1's chunks were pooled at frame 2 and are released at frame 2 + 4 = 6.
        churn!(&arena.begin_frame(), k, 1); // keeps taking (and re-pooling) one chunk
        assert_eq!(arena.stats().chunks_held, held, "frame {k}");
    }
    drop(arena.begin_frame());
    assert_eq!(
        arena.stats().chunks_held,
        1,
        "only the chunk used by frame 5 stays"
    );
    arena.audit();
    assert_eq!(arena.trim(), 1);
    assert_eq!(arena.audit(), (0, 0));
}
