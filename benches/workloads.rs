//! Realistic workloads on tidyheap and its peers, in the same groups.
//!
//! * `database/<peer>/<records>`: small records held, then deleted in batches in random
//!   order (peers: `tidyheap`, `system`, `mimalloc`);
//! * `web_server/<peer>/<requests>`: a burst of allocations per request, all released at
//!   its end (`tidyheap_frame`, `tidyheap`, `system`, `mimalloc`, `bumpalo`);
//! * `game_engine/<peer>/<frames>`: frame temporaries, streamed assets behind handles,
//!   tidyheap compacting a little every frame (`tidyheap`, `tidyheap_nocompact`,
//!   `system`, `mimalloc`, `mimalloc_bumpalo`);
//! * `ml_tensors/<peer>/<max size>`: tensors of 1–256 MiB reallocated often (`tidyheap`,
//!   `system`, `mimalloc`).
//!
//! The workloads themselves are in `benches/common/` (shared with `examples/report/`),
//! with what one operation is for each. Throughput is in those operations. Before each
//! group one untimed, probed run per peer prints its peak RSS rise, the RSS rise and live
//! bytes at the workload's end point, and fragmentation (`1 - live / RSS rise`, and
//! tidyheap's own figure from its stats). RSS is read from `/proc/self/statm`.
//!
//! `cargo bench --bench workloads` runs full sizes; `cargo test --bench workloads` runs
//! everything once on tiny sizes.

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Mode, Workload};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};

fn bench(c: &mut Criterion, w: &dyn Workload, probe: bool) {
    if probe {
        println!("\n{} ({} per run), probed runs:", w.name(), w.ops());
        for &peer in w.peers() {
            println!("  {peer:<17} {}", w.run(peer, true).describe());
        }
    }
    let mut group = c.benchmark_group(w.name());
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(w.ops()));
    for &peer in w.peers() {
        group.bench_function(BenchmarkId::new(peer, w.size()), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| w.run(peer, false).elapsed).sum())
        });
    }
    group.finish();
}

fn main() {
    let mode = Mode::from_args();
    let probe = !std::env::args().any(|a| a == "--list");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for w in common::workloads(mode) {
        bench(&mut c, w.as_ref(), probe);
    }
    c.final_summary();
}
