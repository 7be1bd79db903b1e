//! The `database` workload's kernel (`benches/common/database.rs`, bench size: 500 000
//! records of 50–200 B written in full, three quarters deleted in random order in
//! batches of 1 000 with 250 inserts after each, then the rest freed) for one peer, as a
//! plain function callgrind can count on its own, with its cache simulation showing the
//! misses (see `benches/README.md`, "Database misses"):
//!
//! ```sh
//! cargo build --release --example database_instructions
//! valgrind --tool=callgrind --cache-sim=yes \
//!   --toggle-collect='database_instructions::kernel*' \
//!   target/release/examples/database_instructions <peer> <runs>
//! ```
//!
//! Peers: `tidyheap` (a `Heap`, kept from run to run like the bench's), `mimalloc`,
//! `system`. One warm-up run goes before the counted ones; `Collected` ÷ (runs ×
//! [`OPS`]) is the count per operation (an allocation or a free).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use mimalloc::MiMalloc;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;

const RECORDS: usize = 500_000;
const BATCH: usize = 1_000;
const REINSERT: usize = BATCH / 4;

/// The request sequence: the bench's, from the same seed.
struct Script {
    sizes: Vec<u32>,
    deletions: Vec<u32>,
}

impl Script {
    fn new() -> Self {
        let mut rng = SmallRng::seed_from_u64(0xdb);
        let mut order: Vec<u32> = (0..RECORDS as u32).collect();
        order.shuffle(&mut rng);
        order.truncate(RECORDS - RECORDS / 4);
        let total = RECORDS + order.len().div_ceil(BATCH) * REINSERT;
        let sizes = (0..total).map(|_| rng.gen_range(50..=200)).collect();
        Self {
            sizes,
            deletions: order,
        }
    }
}

fn layout(size: u32) -> Layout {
    Layout::from_size_align(size as usize, 8).expect("layout")
}

/// The warm-up run (not counted: its name does not match the toggle).
#[inline(never)]
fn warm_up(
    script: &Script,
    recs: &mut [(*mut u8, u32)],
    alloc: impl Fn(Layout) -> *mut u8,
    free: impl Fn(*mut u8, Layout),
) {
    body(script, recs, alloc, free);
}

/// The counted runs (a loop, so the linker does not fold this with [`warm_up`]).
#[inline(never)]
fn kernel(
    runs: u32,
    script: &Script,
    recs: &mut [(*mut u8, u32)],
    alloc: impl Fn(Layout) -> *mut u8 + Copy,
    free: impl Fn(*mut u8, Layout) + Copy,
) {
    for _ in 0..runs {
        body(script, recs, alloc, free);
    }
}

#[inline(always)]
fn body(
    script: &Script,
    recs: &mut [(*mut u8, u32)],
    alloc: impl Fn(Layout) -> *mut u8,
    free: impl Fn(*mut u8, Layout),
) {
    let insert = |recs: &mut [(*mut u8, u32)], i: usize| {
        let size = script.sizes[i];
        let p = alloc(layout(size));
        assert!(!p.is_null());
        // SAFETY: a fresh block of at least `size` bytes.
        unsafe { p.write_bytes(i as u8, size as usize) };
        recs[i] = (p, size);
    };
    for i in 0..RECORDS {
        insert(recs, i);
    }
    let mut next = RECORDS;
    for batch in script.deletions.chunks(BATCH) {
        for &i in batch {
            let (p, size) = std::mem::replace(&mut recs[i as usize], (std::ptr::null_mut(), 0));
            free(p, layout(size));
        }
        for _ in 0..REINSERT {
            insert(recs, next);
            next += 1;
        }
    }
    for &(p, size) in recs.iter() {
        if !p.is_null() {
            free(p, layout(size));
        }
    }
}

/// Operations per run: every record is allocated once and freed once.
const OPS: usize = 2 * (RECORDS + (RECORDS - RECORDS / 4).div_ceil(BATCH) * REINSERT);

fn main() {
    let mut args = std::env::args().skip(1);
    let peer = args.next().unwrap_or_else(|| "tidyheap".into());
    let runs: u32 = args.next().map_or(1, |s| s.parse().expect("runs"));
    let script = Script::new();
    assert_eq!(OPS, 2 * script.sizes.len());
    let mut recs = vec![(std::ptr::null_mut::<u8>(), 0u32); script.sizes.len()];
    let heap = Heap::new();
    let ga = |a: &dyn GlobalAlloc, recs: &mut [(*mut u8, u32)]| {
        // SAFETY: nonzero sizes; each block is live with its layout, freed once.
        let alloc = |l| unsafe { a.alloc(l) };
        // SAFETY: as above.
        let free = |p, l| unsafe { a.dealloc(p, l) };
        warm_up(&script, recs, alloc, free);
        kernel(runs, &script, recs, alloc, free);
    };
    match peer.as_str() {
        "tidyheap" => {
            let alloc = |l| heap.alloc(l).map_or(std::ptr::null_mut(), NonNull::as_ptr);
            // SAFETY: a live block of `heap` with this layout, freed once.
            let free = |p: *mut u8, l| unsafe { heap.dealloc(NonNull::new(p).expect("live"), l) };
            warm_up(&script, &mut recs, alloc, free);
            kernel(runs, &script, &mut recs, alloc, free);
        }
        "mimalloc" => ga(&MiMalloc, &mut recs),
        "system" => ga(&System, &mut recs),
        other => panic!("unknown peer {other:?}"),
    }
    println!("{peer}: {runs} runs of {OPS} operations after one warm-up");
}
