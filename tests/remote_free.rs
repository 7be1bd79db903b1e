//! Thread-owned fixed spans and remote-free lists (issue 12): a block freed by another
//! thread goes home to the thread whose span it came from, so two threads' live blocks
//! never share a cache line; producers and consumers free each other's blocks while
//! threads come and go, with pattern checks on every block and exact accounting at
//! quiescence.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Barrier, mpsc};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Heap, HeapConfig};

/// A live block: address, layout, and the seed its bytes were filled from.
struct Block(NonNull<u8>, Layout, u64);
// SAFETY: the test hands blocks between threads whole; only one thread writes a block,
// and shared references only read it.
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}

fn fill(p: NonNull<u8>, l: Layout, seed: u64) {
    for i in 0..l.size() {
        // SAFETY: the block holds `l.size()` writable bytes.
        unsafe {
            p.as_ptr()
                .add(i)
                .write(seed.wrapping_add(i as u64 * 31) as u8)
        };
    }
}

fn check(b: &Block) {
    for i in 0..b.1.size() {
        // SAFETY: the block holds `b.1.size()` bytes, written by `fill`.
        let got = unsafe { b.0.as_ptr().add(i).read() };
        assert_eq!(
            got,
            b.2.wrapping_add(i as u64 * 31) as u8,
            "byte {i} of {:p}",
            b.0
        );
    }
}

fn alloc(heap: &Heap, rng: &mut SmallRng, max: usize) -> Block {
    let l = Layout::from_size_align(rng.gen_range(1..=max), 8).unwrap();
    let p = heap.alloc(l).unwrap();
    let seed = rng.r#gen::<u64>();
    fill(p, l, seed);
    Block(p, l, seed)
}

fn free(heap: &Heap, b: Block) {
    check(&b);
    // SAFETY: the block is live with this layout and freed once.
    unsafe { heap.dealloc(b.0, b.1) };
}

/// The accounting at quiescence (DESIGN invariant 5), after the only thread left
/// trimmed: no fixed block live or out of its span, and the walk agrees with the stats.
fn assert_quiescent(heap: &Heap) {
    heap.trim();
    let (walk, stats) = (heap.walk(), heap.stats());
    assert_eq!(stats.fixed.live_bytes(), 0, "{:?}", stats.fixed);
    assert_eq!(stats.fixed.live_blocks(), 0, "{:?}", stats.fixed);
    assert_eq!(
        walk.out_blocks[0], 0,
        "fixed blocks still out of their spans"
    );
    assert_eq!(walk.committed_bytes, stats.committed_bytes);
    assert_eq!(walk.spans, stats.spans);
}

/// The cache_scratch pattern: the main thread allocates small objects for two workers
/// (interleaved, so neighbours go to different workers); each worker frees the ones it
/// got, then allocates its own and keeps them live. Freed blocks must go back to the
/// main thread's spans, not be handed straight back to the worker that freed them, or
/// the workers' live blocks share cache lines. Fails on the code before remote-free
/// lists (a worker's first allocations reuse the blocks it just freed).
#[test]
fn two_threads_live_blocks_never_share_a_cache_line() {
    const PER_WORKER: usize = 256;
    for size in [8usize, 16, 24, 48] {
        let heap = Heap::with_config(HeapConfig {
            arenas: 1,
            ..HeapConfig::DEFAULT
        });
        let l = Layout::from_size_align(size, 8).unwrap();
        let mut handed: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for i in 0..2 * PER_WORKER {
            handed[i % 2].push(heap.alloc(l).unwrap().as_ptr() as usize);
        }
        // The main thread keeps some of its blocks live, too.
        let kept: Vec<usize> = (0..PER_WORKER)
            .map(|_| heap.alloc(l).unwrap().as_ptr() as usize)
            .collect();
        let barrier = Barrier::new(2);
        let live: Vec<Vec<usize>> = std::thread::scope(|s| {
            let workers: Vec<_> = handed
                .into_iter()
                .map(|mine| {
                    let (heap, barrier) = (&heap, &barrier);
                    s.spawn(move || {
                        for a in mine {
                            // SAFETY: the block is live with layout `l`, freed once.
                            unsafe { heap.dealloc(NonNull::new(a as *mut u8).unwrap(), l) };
                        }
                        barrier.wait();
                        let own: Vec<usize> = (0..PER_WORKER)
                            .map(|_| {
                                let p = heap.alloc(l).unwrap();
                                // SAFETY: the block holds `size` writable bytes.
                                unsafe { p.as_ptr().write_bytes(0xa5, size) };
                                p.as_ptr() as usize
                            })
                            .collect();
                        // Both workers hold their blocks until both have them.
                        barrier.wait();
                        own
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut line_owner: HashMap<usize, usize> = HashMap::new();
        for (who, set) in [&live[0], &live[1], &kept].into_iter().enumerate() {
            for &a in set {
                for line in [a / 64, (a + size - 1) / 64] {
                    let prev = *line_owner.entry(line).or_insert(who);
                    assert_eq!(
                        prev,
                        who,
                        "{size} B: line {:#x} holds live blocks of threads {prev} and {who}",
                        line * 64
                    );
                }
            }
        }
        for a in live.into_iter().flatten().chain(kept) {
            // SAFETY: every block is live with layout `l`, freed once.
            unsafe { heap.dealloc(NonNull::new(a as *mut u8).unwrap(), l) };
        }
        assert_quiescent(&heap);
    }
}

/// Many producers and consumers: producers allocate pattern-filled blocks and send them
/// to consumers, which check and free them (remote frees), allocate their own and send
/// some back for producers to free. Producers come in waves and exit while consumers
/// still hold their blocks, so frees land on parked records' remote lists, and later
/// producers claim those records. Every block's bytes are checked before its free.
#[test]
fn cross_thread_frees_with_exiting_producers_keep_every_block() {
    const CONSUMERS: usize = 3;
    const PRODUCERS: usize = 3;
    let waves = if cfg!(debug_assertions) { 6 } else { 30 };
    let per_producer = 600usize;
    for arenas in [1, 2] {
        let heap = Heap::with_config(HeapConfig {
            arenas,
            ..HeapConfig::DEFAULT
        });
        let (to_consumers, inboxes): (Vec<_>, Vec<_>) =
            (0..CONSUMERS).map(|_| mpsc::channel::<Block>()).unzip();
        let (back_tx, back_rx) = mpsc::channel::<Block>();
        let back_rx = std::sync::Mutex::new(back_rx);
        std::thread::scope(|s| {
            let consumers: Vec<_> = inboxes
                .into_iter()
                .enumerate()
                .map(|(c, rx)| {
                    let (heap, back_tx) = (&heap, back_tx.clone());
                    s.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64(1000 + c as u64);
                        let mut held = Vec::new();
                        for (n, b) in rx.into_iter().enumerate() {
                            check(&b);
                            match n % 4 {
                                0 | 1 => free(heap, b),
                                2 => held.push(b),
                                _ => {
                                    back_tx.send(b).unwrap();
                                    back_tx.send(alloc(heap, &mut rng, 700)).unwrap();
                                }
                            }
                            if held.len() > 300 {
                                let at = rng.gen_range(0..held.len() - 150);
                                for b in held.drain(at..at + 150) {
                                    free(heap, b);
                                }
                            }
                        }
                        for b in held {
                            free(heap, b);
                        }
                    })
                })
                .collect();
            drop(back_tx);
            for wave in 0..waves {
                let producers: Vec<_> = (0..PRODUCERS)
                    .map(|p| {
                        let heap = &heap;
                        let to: Vec<_> = to_consumers.clone();
                        let back_rx = &back_rx;
                        s.spawn(move || {
                            let mut rng = SmallRng::seed_from_u64((wave * PRODUCERS + p) as u64);
                            let mut mine = Vec::new();
                            for i in 0..per_producer {
                                let b = alloc(heap, &mut rng, 2000);
                                if i % 5 == 0 {
                                    mine.push(b);
                                } else {
                                    to[rng.gen_range(0..CONSUMERS)].send(b).unwrap();
                                }
                                if i % 3 == 0
                                    && let Ok(b) = back_rx.lock().unwrap().try_recv()
                                {
                                    free(heap, b);
                                }
                            }
                            // Half of what it kept goes to consumers as it exits.
                            for (j, b) in mine.into_iter().enumerate() {
                                if j % 2 == 0 {
                                    free(heap, b);
                                } else {
                                    to[j % CONSUMERS].send(b).unwrap();
                                }
                            }
                        })
                    })
                    .collect();
                for p in producers {
                    p.join().unwrap();
                }
            }
            drop(to_consumers);
            for c in consumers {
                c.join().unwrap();
            }
        });
        // Blocks sent back after the last producer exited.
        while let Ok(b) = back_rx.lock().unwrap().try_recv() {
            free(&heap, b);
        }
        assert_quiescent(&heap);
    }
}

/// A thread frees blocks of a span whose owner thread has exited (its record parked):
/// the frees land on the parked record's remote list; `trim` brings them home, and a
/// new thread that claims the record collects what arrives later. No block is lost or
/// handed out twice: every live block keeps its bytes.
#[test]
fn frees_to_a_parked_owner_are_collected_by_trim_and_by_the_next_claimant() {
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    for round in 0..4u64 {
        let blocks: Vec<Block> = std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = SmallRng::seed_from_u64(round);
                (0..2000).map(|_| alloc(&heap, &mut rng, 300)).collect()
            })
            .join()
            .unwrap()
        });
        let (first, second) = blocks.split_at(1000);
        let mut rng = SmallRng::seed_from_u64(round + 100);
        let mine: Vec<Block> = (0..500).map(|_| alloc(&heap, &mut rng, 300)).collect();
        for b in first {
            free(&heap, Block(b.0, b.1, b.2));
        }
        if round % 2 == 0 {
            heap.trim();
        }
        // A new thread claims the parked record and allocates: it must never get a
        // block that is still live here.
        let fresh: Vec<Block> = std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = SmallRng::seed_from_u64(round + 200);
                let got: Vec<Block> = (0..3000).map(|_| alloc(&heap, &mut rng, 300)).collect();
                for b in second {
                    check(b);
                }
                got
            })
            .join()
            .unwrap()
        });
        for b in second.iter().chain(&mine) {
            check(b);
        }
        for b in second {
            free(&heap, Block(b.0, b.1, b.2));
        }
        for b in fresh.into_iter().chain(mine) {
            free(&heap, b);
        }
    }
    assert_quiescent(&heap);
}

/// A thread's counters move into the heap's shared ones when it exits (its record is
/// parked for the next thread). `std::thread::scope` returns before its threads'
/// thread-local destructors run, so that move can overlap a `stats()` the program takes
/// right after the scope: the snapshot must still count every free that returned.
#[test]
fn stats_count_every_returned_free_while_threads_exit() {
    let heap = Heap::new();
    let mut rng = SmallRng::seed_from_u64(0x5ca1e);
    for round in 0..3000 {
        let blocks: Vec<(usize, Layout)> = (0..48)
            .map(|_| {
                let l = Layout::from_size_align(rng.gen_range(1..=8192), 8).unwrap();
                (heap.alloc(l).unwrap().as_ptr() as usize, l)
            })
            .collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for &(p, l) in &blocks {
                    // SAFETY: live blocks of `heap` with these layouts, each freed once.
                    unsafe { heap.dealloc(NonNull::new(p as *mut u8).unwrap(), l) };
                }
            });
        });
        let s = heap.stats();
        assert_eq!(
            s.fixed.live_bytes(),
            0,
            "round {round}: a returned free not counted"
        );
        assert_eq!(s.fixed.allocations, s.fixed.frees, "round {round}");
    }
}
