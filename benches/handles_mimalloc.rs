//! Handle insert + remove with mimalloc as this binary's global allocator (issue 10):
//! `SlotMap<K, Box<u64>>` then allocates its boxes from mimalloc, the allocator a game
//! that cares would use, while `Store<u64>` uses its own pools either way.
//!
//! `handle_insert_remove_mimalloc/<peer>/10000`: `BATCH` inserts then `BATCH` removes on
//! top of 10 000 live entries; one element = one insert + remove pair. Run with
//! `cargo bench --bench handles_mimalloc`; `cargo test --bench handles_mimalloc` runs
//! each once on small sizes.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::Store;

#[path = "common/insert_remove.rs"]
mod insert_remove;
use insert_remove::pairs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 1024;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let background = if bench { 10_000 } else { 100 };
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut group = c.benchmark_group("handle_insert_remove_mimalloc");
    group.throughput(Throughput::Elements(BATCH as u64));

    let g = &mut group;
    pairs(
        g,
        "tidyheap_store",
        background,
        BATCH,
        Store::<u64>::new(),
        |s, i| s.insert(i),
        |s, h| s.remove(h).expect("live handle"),
    );
    pairs(
        g,
        "slotmap_box",
        background,
        BATCH,
        SlotMap::<DefaultKey, Box<u64>>::new(),
        |m, i| m.insert(Box::new(i)),
        |m, k| *m.remove(k).expect("live key"),
    );
    pairs(
        g,
        "slotmap",
        background,
        BATCH,
        SlotMap::<DefaultKey, u64>::new(),
        |m, i| m.insert(i),
        |m, k| m.remove(k).expect("live key"),
    );
    group.finish();
    c.final_summary();
}
