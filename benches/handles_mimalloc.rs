//! Handle insert + remove with mimalloc as this binary's global allocator (issue 10):
//! `SlotMap<K, Box<u64>>` then allocates its boxes from mimalloc, the allocator a game
//! that cares would use, while `Store<u64>` uses its own pools either way.
//!
//! `handle_insert_remove_mimalloc/<peer>/10000`: `BATCH` inserts then `BATCH` removes on
//! top of 10 000 live entries; one element = one insert + remove pair. Run with
//! `cargo bench --bench handles_mimalloc`; `cargo test --bench handles_mimalloc` runs
//! each once on small sizes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::{Handle, Store};

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

    let store: Store<u64> = Store::new();
    let _keep: Vec<Handle<u64>> = (0..background as u64).map(|i| store.insert(i)).collect();
    let mut hs: Vec<Handle<u64>> = Vec::with_capacity(BATCH);
    group.bench_function(BenchmarkId::new("tidyheap_store", background), |b| {
        b.iter(|| {
            for i in 0..BATCH as u64 {
                hs.push(store.insert(black_box(i)));
            }
            let mut sum = 0u64;
            for h in hs.drain(..) {
                sum = sum.wrapping_add(store.remove(h).expect("live handle"));
            }
            sum
        })
    });

    let mut keys: Vec<DefaultKey> = Vec::with_capacity(BATCH);
    let mut smb: SlotMap<DefaultKey, Box<u64>> = SlotMap::new();
    let _keep_smb: Vec<DefaultKey> = (0..background as u64)
        .map(|i| smb.insert(Box::new(i)))
        .collect();
    group.bench_function(BenchmarkId::new("slotmap_box", background), |b| {
        b.iter(|| {
            for i in 0..BATCH as u64 {
                keys.push(smb.insert(Box::new(black_box(i))));
            }
            let mut sum = 0u64;
            for k in keys.drain(..) {
                sum = sum.wrapping_add(*smb.remove(k).expect("live key"));
            }
            sum
        })
    });

    let mut sm: SlotMap<DefaultKey, u64> = SlotMap::new();
    let _keep_sm: Vec<DefaultKey> = (0..background as u64).map(|i| sm.insert(i)).collect();
    group.bench_function(BenchmarkId::new("slotmap", background), |b| {
        b.iter(|| {
            for i in 0..BATCH as u64 {
                keys.push(sm.insert(black_box(i)));
            }
            let mut sum = 0u64;
            for k in keys.drain(..) {
                sum = sum.wrapping_add(sm.remove(k).expect("live key"));
            }
            sum
        })
    });
    group.finish();
    c.final_summary();
}
