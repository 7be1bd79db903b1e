//! loom models of the frame arena's concurrent protocols: lane claims, the lock-free
//! pop-only free stack, the overflow lane's lock, and the frame boundary's view of what
//! the threads did. loom's `UnsafeCell` tracking reports any two threads touching one
//! lane's bump state without a happens-before edge.

use loom::sync::Arc;
use loom::thread;

use super::chunk::{self, ChunkList, Counters, FreeStack};
use super::*;
use crate::os::PAGE_SIZE;

fn tiny_config(lanes: usize) -> FrameConfig {
    FrameConfig::new()
        .with_chunk_size(PAGE_SIZE)
        .with_frames_in_flight(1)
        .with_lanes(lanes)
        .with_trim_after(u64::MAX)
}

/// Opens a frame of `arena`, hands `&'static Frame` to `body` (which must join every
/// thread it spawns), ends the frame and gives the arena back.
fn with_shared_frame(arena: FrameArena, body: impl FnOnce(&'static Frame<'static>)) -> FrameArena {
    let arena = Box::into_raw(Box::new(arena));
    // SAFETY: `arena` is a leaked box, reclaimed below only after the frame is dropped.
    let frame = Box::into_raw(Box::new(unsafe { &mut *arena }.begin_frame()));
    // SAFETY: the frame stays alive until the `Box::from_raw` below, which runs after
    // `body` has joined every thread that used the reference.
    body(unsafe { &*frame });
    // SAFETY:
    // * `frame` came from `Box::into_raw` and is reclaimed once;
    // * every user of the shared reference was joined inside `body`.
    drop(unsafe { Box::from_raw(frame) });
    // SAFETY: the frame borrowing the arena is gone; `arena` is reclaimed once.
    *unsafe { Box::from_raw(arena) }
}

/// Allocates two blocks through `frame`, fills each with `tag`, and checks both after
/// the second allocation (which may take a chunk while the other thread does the same).
fn fill_two(frame: FrameShared<'_>, tag: u8, first: usize) {
    let a = frame.alloc_raw(first, 8).unwrap();
    // SAFETY: fresh block of `first` bytes.
    unsafe { a.as_ptr().write_bytes(tag, first) };
    let b = frame.alloc_raw(64, 8).unwrap();
    // SAFETY: fresh block of 64 bytes.
    unsafe { b.as_ptr().write_bytes(tag, 64) };
    // SAFETY: both blocks are live for the whole frame.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a.as_ptr(), first),
            core::slice::from_raw_parts(b.as_ptr(), 64),
        )
    };
    assert!(
        a.iter().chain(b).all(|&x| x == tag),
        "a block was overwritten"
    );
}

#[test]
fn loom_two_lanes_race_for_one_pooled_chunk() {
    loom::model(|| {
        let mut arena = FrameArena::with_config(tiny_config(3)).unwrap();
        // Warm-up: one chunk, pooled when the next frame begins.
        arena.begin_frame().alloc(1u8);
        let mut arena = with_shared_frame(arena, |frame| {
            let shared = frame.shared();
            let threads: Vec<_> = [1u8, 2]
                .into_iter()
                .map(|tag| thread::spawn(move || fill_two(shared, tag, 2000)))
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        });
        // The warm-up chunk sat in the pool; one thread popped it, the other mapped one.
        let stats = arena.stats();
        assert_eq!(stats.chunk_maps, 2);
        assert_eq!(stats.frame_bytes, 2 * (2000 + 64));
        assert_eq!(arena.audit().0, 2);
    });
}

#[test]
fn loom_overflow_lane_serialises_threads_beyond_the_lanes() {
    loom::model(|| {
        // One lane: the token's. Both spawned threads share the overflow lane while the
        // model's main thread bumps lane 0 through the token.
        let arena = FrameArena::with_config(tiny_config(1)).unwrap();
        let mut arena = with_shared_frame(arena, |frame| {
            let shared = frame.shared();
            let threads: Vec<_> = [1u8, 2]
                .into_iter()
                .map(|tag| thread::spawn(move || fill_two(shared, tag, 104)))
                .collect();
            let mine = frame.alloc_slice_fill_with(4, |i| i as u64);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(mine, &[0, 1, 2, 3]);
        });
        assert_eq!(arena.stats().frame_bytes, 32 + 2 * (104 + 64));
        assert_eq!(arena.audit().0, 2);
    });
}

#[test]
fn loom_free_stack_pops_are_exclusive() {
    loom::model(|| {
        let counters = Arc::new(Counters::default());
        let mut stack = FreeStack::new();
        for _ in 0..2 {
            let c = chunk::map(PAGE_SIZE, PAGE_SIZE, false, &counters).unwrap();
            // SAFETY: fresh chunk in no list.
            stack.with_list(|list| unsafe { list.push(c) });
        }
        let stack = Arc::new(stack);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let stack = Arc::clone(&stack);
                thread::spawn(move || {
                    // Pop, then relink the chunk into a private list (a write of `next`
                    // that may race with the other thread's stale read of it).
                    let mut mine = ChunkList::new();
                    let c = stack.pop().expect("two chunks for two pops");
                    // SAFETY: the pop gave us exclusive ownership.
                    unsafe { mine.push(c) };
                    let addr = mine.pop().unwrap().as_ptr().expose_provenance();
                    addr
                })
            })
            .collect();
        let got: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_ne!(got[0], got[1], "a chunk was popped twice");
        let mut stack = Arc::try_unwrap(stack).unwrap_or_else(|_| panic!("threads joined"));
        assert!(stack.pop().is_none());
        for addr in got {
            let c = NonNull::new(core::ptr::with_exposed_provenance_mut(addr)).unwrap();
            // SAFETY: popped exactly once above, in no list, unused.
            unsafe { chunk::release(c, &counters) };
        }
        assert_eq!(counters.chunks_held.load(Ordering::Relaxed), 0);
    });
}
