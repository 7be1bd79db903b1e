//! The insert + remove measurement shared by `handles.rs` and `handles_mimalloc.rs`:
//! `batch` inserts then `batch` removes on top of `background` live entries, one
//! element = one pair, for any container given as an insert and a remove function.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId};

/// Benchmarks `insert`/`remove` pairs on `container` as `<group>/<name>/<background>`.
pub fn pairs<C, K>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    background: usize,
    batch: usize,
    mut container: C,
    insert: fn(&mut C, u64) -> K,
    remove: fn(&mut C, K) -> u64,
) {
    let _keep: Vec<K> = (0..background as u64)
        .map(|i| insert(&mut container, i))
        .collect();
    let mut keys: Vec<K> = Vec::with_capacity(batch);
    group.bench_function(BenchmarkId::new(name, background), |b| {
        b.iter(|| {
            for i in 0..batch as u64 {
                keys.push(insert(&mut container, black_box(i)));
            }
            let mut sum = 0u64;
            for k in keys.drain(..) {
                sum = sum.wrapping_add(remove(&mut container, k));
            }
            sum
        })
    });
}
