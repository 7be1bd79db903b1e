//! Ports of four mimalloc-bench patterns, each run with 1 or 2 threads.
//!
//! * `larson`: each thread owns an array of `slots` objects (16–512 B) and replaces a
//!   random one `ops` times per round; after every round its threads exit and new ones
//!   take over the arrays (rotated), so most objects are freed by a thread other than
//!   the one that allocated them (larson's server simulation). One operation is one
//!   free + allocation.
//! * `xmalloc`: one thread allocates objects (16–256 B) in batches and another frees
//!   them (batches travel through a bounded channel, and empty batch vectors come back).
//!   With 1 thread, the same thread frees each batch right after filling it. One
//!   operation is one object (allocated and freed).
//! * `cache_scratch`: the main thread allocates one 8 B object per thread, back to back;
//!   each thread frees its object, then `iters` times allocates an 8 B object, writes
//!   each of its bytes `writes` times and frees it. An allocator that hands a thread a
//!   block sharing a cache line with another thread's block makes them falsely share.
//!   One operation is one 8-byte round of writes. tidyheap runs it on a fresh heap each
//!   time, as the original runs in a fresh process (the other peers' process heaps
//!   cannot be reset).
//! * `mstress`: `phases` phases; each phase starts fresh threads that do `ops` random
//!   steps: 50 % allocate (90 % 16–256 B, 9 % 256 B–4 KiB, 1 % 4–64 KiB), 25 % free one
//!   of their own objects, 25 % swap one of theirs into a shared transfer array (taking
//!   out whatever an earlier thread, or an earlier phase, left there). Threads free
//!   what they hold when they exit; the transfer array outlives them (mimalloc's
//!   `test-stress`). One operation is one step.
//!
//! Each thread does the same work whatever the thread count, so the ideal scaling
//! ratio (2-thread throughput ÷ 1-thread throughput) is 2.0 on two free cores.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::mpsc::sync_channel;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;

use super::Mode;
use super::peers::{self, Mi, Peer, SendPtr, Sys, layout};

/// The patterns, in table order.
pub const NAMES: [&str; 4] = ["larson", "xmalloc", "cache_scratch", "mstress"];

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    larson_slots: usize,
    larson_ops: usize,
    larson_rounds: usize,
    xmalloc_objects: usize,
    xmalloc_batch: usize,
    cache_iters: usize,
    cache_writes: usize,
    mstress_phases: usize,
    mstress_ops: usize,
    mstress_transfer: usize,
}

impl Scale {
    /// The sizes for `mode`.
    pub fn new(mode: Mode) -> Self {
        match mode {
            Mode::Test => Self {
                larson_slots: 50,
                larson_ops: 200,
                larson_rounds: 2,
                xmalloc_objects: 1_000,
                xmalloc_batch: 16,
                cache_iters: 2,
                cache_writes: 100,
                mstress_phases: 2,
                mstress_ops: 500,
                mstress_transfer: 16,
            },
            Mode::Report | Mode::Bench => Self {
                larson_slots: 1_000,
                larson_ops: 100_000,
                larson_rounds: 10,
                xmalloc_objects: 2_000_000,
                xmalloc_batch: 128,
                cache_iters: 100,
                cache_writes: 20_000,
                mstress_phases: 10,
                mstress_ops: 100_000,
                mstress_transfer: 1_000,
            },
        }
    }
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// Wall time of the pattern (threads' start and end included).
    pub elapsed: Duration,
    /// Operations done by all threads together.
    pub ops: u64,
}

impl Run {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Operations one run of `pattern` does with `threads` threads.
pub fn ops(pattern: &str, threads: usize, s: &Scale) -> u64 {
    let per_thread = match pattern {
        "larson" => s.larson_ops * s.larson_rounds,
        // One thread fills and frees; two split the same objects between them.
        "xmalloc" => return s.xmalloc_objects as u64,
        "cache_scratch" => s.cache_iters * s.cache_writes,
        "mstress" => s.mstress_ops * s.mstress_phases,
        _ => panic!("unknown pattern {pattern}"),
    };
    (per_thread * threads) as u64
}

/// Runs `pattern` (one of [`NAMES`]) on the peer called `peer` (one of
/// [`peers::NAMES`]) with `threads` threads (1 or more; `xmalloc` uses 1 or 2).
pub fn run(pattern: &str, peer: &str, threads: usize, s: &Scale) -> Run {
    match peer {
        // Like the original's fresh process: whether blocks of different threads share
        // a cache line depends on where the allocator starts from.
        "tidyheap" if pattern == "cache_scratch" => run_on(pattern, &Heap::new(), threads, s),
        "tidyheap" => run_on(pattern, tidy_heap(), threads, s),
        "system" => run_on(pattern, &Sys, threads, s),
        "mimalloc" => run_on(pattern, &Mi, threads, s),
        _ => panic!("unknown peer {peer}"),
    }
}

/// tidyheap's heap for these patterns, kept from run to run like the other peers'
/// process heaps.
fn tidy_heap() -> &'static Heap {
    static HEAP: OnceLock<Heap> = OnceLock::new();
    HEAP.get_or_init(Heap::new)
}

fn run_on<P: Peer>(pattern: &str, peer: &P, threads: usize, s: &Scale) -> Run {
    assert!(threads >= 1, "at least one thread");
    let elapsed = match pattern {
        "larson" => larson(peer, threads, s),
        "xmalloc" => xmalloc(peer, threads, s),
        "cache_scratch" => cache_scratch(peer, threads, s),
        "mstress" => mstress(peer, threads, s),
        _ => panic!("unknown pattern {pattern}"),
    };
    Run {
        elapsed,
        ops: ops(pattern, threads, s),
    }
}

/// Allocates `size` bytes and stamps the first 8 with `size` (so whoever frees the
/// object knows its layout).
///
/// # Safety
///
/// `size >= 8`.
#[inline(always)]
unsafe fn new_obj<P: Peer>(peer: &P, size: usize) -> SendPtr {
    // SAFETY: `size >= 8` (caller): nonzero, and room for the stamp at alignment 8.
    unsafe {
        let p = peers::alloc_or_die(peer, layout(size));
        p.cast::<u64>().write(size as u64);
        SendPtr(p)
    }
}

/// Frees an object made by [`new_obj`].
///
/// # Safety
///
/// `o` is a live object of `peer` made by [`new_obj`], not used afterwards.
#[inline(always)]
unsafe fn free_obj<P: Peer>(peer: &P, o: SendPtr) {
    // SAFETY: the stamp holds the size the object was allocated with (caller).
    unsafe {
        let size = o.0.cast::<u64>().read() as usize;
        peer.dealloc(o.0, layout(size));
    }
}

fn larson<P: Peer>(peer: &P, threads: usize, s: &Scale) -> Duration {
    let mut rng = SmallRng::seed_from_u64(0x1a5);
    let mut arrays: Vec<Vec<SendPtr>> = (0..threads)
        .map(|_| {
            (0..s.larson_slots)
                // SAFETY: sizes are at least 16.
                .map(|_| unsafe { new_obj(peer, rng.gen_range(16..=512)) })
                .collect()
        })
        .collect();
    let start = Instant::now();
    for round in 0..s.larson_rounds {
        arrays = thread::scope(|sc| {
            let workers: Vec<_> = arrays
                .drain(..)
                .enumerate()
                .map(|(t, mut arr)| {
                    sc.spawn(move || {
                        let mut rng = SmallRng::seed_from_u64((round * 64 + t) as u64);
                        for _ in 0..s.larson_ops {
                            let i = rng.gen_range(0..arr.len());
                            // SAFETY: `arr[i]` is live and replaced right away; sizes
                            // are at least 16.
                            unsafe {
                                free_obj(peer, arr[i]);
                                arr[i] = new_obj(peer, rng.gen_range(16..=512));
                            }
                        }
                        arr
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("larson worker"))
                .collect()
        });
        arrays.rotate_left(1);
    }
    let elapsed = start.elapsed();
    for o in arrays.into_iter().flatten() {
        // SAFETY: every array entry is live and freed once.
        unsafe { free_obj(peer, o) };
    }
    elapsed
}

fn xmalloc<P: Peer>(peer: &P, threads: usize, s: &Scale) -> Duration {
    let batch = s.xmalloc_batch;
    let batches = s.xmalloc_objects / batch;
    let fill = |rng: &mut SmallRng, v: &mut Vec<SendPtr>| {
        // SAFETY: sizes are at least 16.
        v.extend((0..batch).map(|_| unsafe { new_obj(peer, rng.gen_range(16..=256)) }));
    };
    let drain = |v: &mut Vec<SendPtr>| {
        for o in v.drain(..) {
            // SAFETY: each object in a batch is live and freed once.
            unsafe { free_obj(peer, o) };
        }
    };
    let mut rng = SmallRng::seed_from_u64(0x8a1);
    if threads == 1 {
        let mut v = Vec::with_capacity(batch);
        let start = Instant::now();
        for _ in 0..batches {
            fill(&mut rng, &mut v);
            drain(&mut v);
        }
        return start.elapsed();
    }
    const IN_FLIGHT: usize = 16;
    let (full_tx, full_rx) = sync_channel::<Vec<SendPtr>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = sync_channel::<Vec<SendPtr>>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        empty_tx
            .send(Vec::with_capacity(batch))
            .expect("room for every batch vector");
    }
    let start = Instant::now();
    thread::scope(|sc| {
        sc.spawn(move || {
            for mut v in full_rx {
                drain(&mut v);
                // The producer may be done and gone; then the vector is just dropped.
                let _ = empty_tx.send(v);
            }
        });
        sc.spawn(move || {
            for _ in 0..batches {
                let mut v = empty_rx.recv().expect("the consumer returns vectors");
                fill(&mut rng, &mut v);
                full_tx.send(v).expect("the consumer runs until we hang up");
            }
        });
    });
    start.elapsed()
}

fn cache_scratch<P: Peer>(peer: &P, threads: usize, s: &Scale) -> Duration {
    let l = layout(8);
    let first: Vec<SendPtr> = (0..threads)
        // SAFETY: a nonzero size.
        .map(|_| SendPtr(unsafe { peers::alloc_or_die(peer, l) }))
        .collect();
    let start = Instant::now();
    thread::scope(|sc| {
        for o in first {
            sc.spawn(move || {
                // SAFETY: `o` was allocated with `l` and handed to this thread alone.
                unsafe { peer.dealloc(o.ptr(), l) };
                for i in 0..s.cache_iters {
                    // SAFETY: an 8 B block, written inside its bounds, then freed once
                    // with its layout.
                    unsafe {
                        let o = peers::alloc_or_die(peer, l);
                        o.write_bytes(i as u8, 8);
                        for _ in 0..s.cache_writes {
                            for j in 0..8 {
                                let b = o.add(j);
                                b.write_volatile(b.read_volatile().wrapping_add(1));
                            }
                        }
                        peer.dealloc(o, l);
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// An mstress object size: mostly small, some medium, a few large.
fn mstress_size(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..100) {
        0..90 => rng.gen_range(16..=256),
        90..99 => rng.gen_range(256..=4096),
        _ => rng.gen_range(4096..=65536),
    }
}

fn mstress<P: Peer>(peer: &P, threads: usize, s: &Scale) -> Duration {
    let transfer: Vec<AtomicPtr<u8>> = (0..s.mstress_transfer)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let transfer = &transfer;
    let start = Instant::now();
    for phase in 0..s.mstress_phases {
        thread::scope(|sc| {
            for t in 0..threads {
                sc.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64((phase * 64 + t) as u64 ^ 0x57e5);
                    let mut mine: Vec<SendPtr> = Vec::with_capacity(s.mstress_ops / 2);
                    for _ in 0..s.mstress_ops {
                        match rng.gen_range(0..100) {
                            // SAFETY: sizes are at least 16.
                            0..50 => mine.push(unsafe { new_obj(peer, mstress_size(&mut rng)) }),
                            50..75 => {
                                if !mine.is_empty() {
                                    let o = mine.swap_remove(rng.gen_range(0..mine.len()));
                                    // SAFETY: removed from `mine`, so live and freed once.
                                    unsafe { free_obj(peer, o) };
                                }
                            }
                            _ => {
                                let give = mine.pop().map_or(std::ptr::null_mut(), |o| o.0);
                                let slot = &transfer[rng.gen_range(0..transfer.len())];
                                let got = slot.swap(give, Ordering::AcqRel);
                                if !got.is_null() {
                                    mine.push(SendPtr(got));
                                }
                            }
                        }
                    }
                    for o in mine {
                        // SAFETY: every object this thread holds is live, freed once.
                        unsafe { free_obj(peer, o) };
                    }
                });
            }
        });
    }
    let elapsed = start.elapsed();
    for slot in transfer {
        let o = slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !o.is_null() {
            // SAFETY: objects left in the transfer array are live; each slot is
            // emptied once.
            unsafe { free_obj(peer, SendPtr(o)) };
        }
    }
    elapsed
}
