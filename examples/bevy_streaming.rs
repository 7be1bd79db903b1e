//! A headless Bevy app streaming mesh-like assets in and out for a few thousand frames,
//! with tidyheap compacting their heap a little every frame.
//!
//! ```sh
//! cargo run --release --example bevy_streaming --features bevy            # 3000 frames
//! cargo run --release --example bevy_streaming --features bevy -- --frames 300
//! cargo run --release --example bevy_streaming --features bevy -- --no-compact
//! ```
//!
//! Thousands of entities own meshes of four sizes (72 B to 32 KiB, in four
//! `HeapAssets<Mesh<N>>` stores on one heap) and a per-entity navigation blob
//! (`HeapBlob`). Every frame a streaming system despawns and spawns entities (the live
//! count follows a slow wave, so the heap grows and shrinks and fragments), parallel
//! systems read the meshes (`par_iter` with scratch allocations in the bodies), and the
//! plugin runs one budgeted compaction pass in `Last`. At the end the app verifies every
//! asset's checksum and prints a table. The exit code is non-zero on any corruption.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allocator_api2::vec::Vec as ScratchVec;
use bevy_app::{App, AppExit, Last, ScheduleRunnerPlugin, TaskPoolPlugin, Update};
use bevy_diagnostic::FrameCountPlugin;
use bevy_ecs::prelude::*;
use bevy_time::TimePlugin;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Budget;
use tidyheap::bevy::{
    FrameAlloc, HeapAssets, HeapAssetsAppExt, HeapBlob, HeapHandle, HeapQuery, TidyHeap,
    TidyheapConfig, TidyheapPlugin, TidyheapStats, TidyheapSystems,
};

/// A mesh-like asset: `N` words derived from `seed`.
struct Mesh<const N: usize> {
    seed: u64,
    words: [u32; N],
}

fn word(seed: u64, i: usize) -> u32 {
    let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z ^ (z >> 31)) as u32
}

impl<const N: usize> Mesh<N> {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            words: core::array::from_fn(|i| word(seed, i)),
        }
    }

    /// Full check of every word.
    fn intact(&self, seed: u64) -> bool {
        self.seed == seed
            && self
                .words
                .iter()
                .enumerate()
                .all(|(i, w)| *w == word(seed, i))
    }

    /// Cheap check: three words.
    fn spot_check(&self, seed: u64) -> bool {
        self.seed == seed
            && [0, N / 2, N - 1]
                .into_iter()
                .all(|i| self.words[i] == word(seed, i))
    }
}

/// Navigation data: one per entity, uniquely owned.
type Nav = Mesh<64>;

#[derive(Component, Clone, Copy)]
struct Streamed {
    seed: u64,
}

#[derive(Resource)]
struct Run {
    frames: u64,
    rng: SmallRng,
    next_seed: u64,
    spot_failures: AtomicU64,
    frame_times: Vec<Duration>,
    pass_times: Vec<Duration>,
    bytes_moved: Vec<u64>,
    last_frame_end: Option<Instant>,
    peak_live: usize,
    spawned: u64,
    despawned: u64,
}

fn target_population(frame: u64) -> usize {
    // A slow wave between 2000 and 6000 entities: a period of 600 frames.
    let phase = (frame % 600) as f64 / 600.0 * std::f64::consts::TAU;
    (4000.0 + 2000.0 * phase.sin()) as usize
}

#[allow(clippy::too_many_arguments)]
fn stream(
    mut commands: Commands,
    mut run: ResMut<Run>,
    mut small: ResMut<HeapAssets<Mesh<16>>>,
    mut medium: ResMut<HeapAssets<Mesh<120>>>,
    mut large: ResMut<HeapAssets<Mesh<1000>>>,
    mut huge: ResMut<HeapAssets<Mesh<8000>>>,
    mut nav: ResMut<HeapAssets<Nav>>,
    live: Query<Entity, With<Streamed>>,
    mut frame: Local<u64>,
) {
    *frame += 1;
    let run = &mut *run;
    let count = live.iter().len();
    let target = target_population(*frame);
    // Churn 1 % of the population every frame, plus the wave's drift.
    let churn = count / 100;
    let despawn = churn + count.saturating_sub(target).min(40);
    let spawn = churn + target.saturating_sub(count).min(40);
    for e in live.iter() {
        if run.rng.gen_range(0..count.max(1)) < despawn {
            commands.entity(e).despawn();
            run.despawned += 1;
        }
    }
    for _ in 0..spawn {
        run.next_seed += 1;
        let seed = run.next_seed;
        let blob: HeapBlob<Nav> = nav.add_blob(Nav::new(seed));
        let tag = Streamed { seed };
        match run.rng.gen_range(0..100) {
            0..50 => commands.spawn((tag, blob, small.add(Mesh::new(seed)))),
            50..80 => commands.spawn((tag, blob, medium.add(Mesh::new(seed)))),
            80..95 => commands.spawn((tag, blob, large.add(Mesh::new(seed)))),
            _ => commands.spawn((tag, blob, huge.add(Mesh::new(seed)))),
        };
        run.spawned += 1;
    }
    run.peak_live = run.peak_live.max(count);
}

/// Reads every mesh of one size in parallel: a spot check per mesh, a full check of
/// one entity in 64 (rotating), and scratch buffers in the bodies.
fn read_meshes<const N: usize>(
    meshes: Res<HeapAssets<Mesh<N>>>,
    scratch: FrameAlloc,
    q: Query<(Entity, &Streamed, &HeapHandle<Mesh<N>>)>,
    run: Res<Run>,
    mut frame: Local<u64>,
) {
    *frame += 1;
    let reader = meshes.read();
    let shared = scratch.shared();
    let rotate = *frame % 64;
    q.par_iter().for_each(|(e, s, h)| {
        let mesh = reader.get(h).expect("an owned mesh resolves");
        let mut ok = mesh.spot_check(s.seed);
        if e.index_u32() as u64 % 64 == rotate {
            ok &= mesh.intact(s.seed);
        }
        // Per-entity scratch: a small "visible triangles" list, kept for the frame.
        let tris = shared.alloc_slice_fill_with(8, |i| mesh.words[i] % 3);
        ok &= tris.iter().all(|t| *t < 3);
        if !ok {
            run.spot_failures.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Per-system scratch: the ids of this size, gathered for a later pass.
    let mut ids = ScratchVec::with_capacity_in(q.iter().len(), &scratch);
    ids.extend(q.iter().map(|(e, _, _)| e));
    let sorted = scratch.alloc_slice_copy(&ids);
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[0] < w[1]));
}

fn read_nav(nav: HeapQuery<Nav>, seeds: Query<&Streamed>, run: Res<Run>) {
    nav.par_for_each(|e, blob| {
        let seed = seeds.get(e).expect("nav entities are streamed").seed;
        if !blob.spot_check(seed) {
            run.spot_failures.fetch_add(1, Ordering::Relaxed);
        }
    });
}

fn record(mut run: ResMut<Run>, stats: Res<TidyheapStats>) {
    let now = Instant::now();
    if let Some(last) = run.last_frame_end {
        run.frame_times.push(now - last);
    }
    run.last_frame_end = Some(now);
    if stats.frame.passes > 0 {
        run.pass_times.push(stats.frame.max_pass_time);
    }
    run.bytes_moved.push(stats.frame.bytes_moved);
}

fn verify<const N: usize>(world: &mut World) -> (u64, u64) {
    let mut q = world.query::<(&Streamed, &HeapHandle<Mesh<N>>)>();
    let assets = world.resource::<HeapAssets<Mesh<N>>>();
    let (mut checked, mut bad) = (0, 0);
    for (s, h) in q.iter(world) {
        checked += 1;
        if !assets.get(h).is_some_and(|m| m.intact(s.seed)) {
            bad += 1;
        }
    }
    assert_eq!(
        assets.len() as u64,
        checked,
        "every mesh of size {N} is owned"
    );
    (checked, bad)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn finish(world: &mut World) {
    let frames = world.resource::<TidyheapStats>().reports;
    if frames < world.resource::<Run>().frames {
        return;
    }
    let mut checked = 0;
    let mut bad = 0;
    for (c, b) in [
        verify::<16>(world),
        verify::<120>(world),
        verify::<1000>(world),
        verify::<8000>(world),
    ] {
        checked += c;
        bad += b;
    }
    let mut q = world.query::<(&Streamed, &HeapBlob<Nav>)>();
    let nav = world.resource::<HeapAssets<Nav>>();
    for (s, b) in q.iter(world) {
        checked += 1;
        if !nav.get(b).is_some_and(|m| m.intact(s.seed)) {
            bad += 1;
        }
    }
    let heap = world.resource::<TidyHeap>().heap().clone();
    let full = heap.fragmentation();
    let stats = world.resource::<TidyheapStats>().clone();
    let run = world.resource::<Run>();
    let spot = run.spot_failures.load(Ordering::Relaxed);

    let mut frame_times = run.frame_times.clone();
    frame_times.sort();
    let mut pass_times = run.pass_times.clone();
    pass_times.sort();
    let moved: u64 = run.bytes_moved.iter().sum();
    let mib = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "\nbevy_streaming: {frames} frames, {} spawned, {} despawned, peak {} live entities",
        run.spawned, run.despawned, run.peak_live
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| fragmentation at the end (movable spans, full walk) | {:.3} |",
        full.ratio
    );
    println!(
        "| of which holes / class rounding / metadata and tails | {:.2} / {:.2} / {:.2} MiB |",
        mib(full.external_bytes as f64),
        mib(full.internal_bytes as f64),
        mib((full.metadata_bytes + full.tail_bytes) as f64)
    );
    println!(
        "| fragmentation at the end (pool counters) | {:.3} |",
        stats.fragmentation
    );
    println!(
        "| committed / live at the end | {:.2} MiB / {:.2} MiB = {:.3} |",
        mib(full.committed_bytes as f64),
        mib(full.live_bytes as f64),
        full.committed_bytes as f64 / full.live_bytes.max(1) as f64
    );
    println!(
        "| bytes moved per frame (mean) | {:.1} KiB |",
        moved as f64 / frames as f64 / 1024.0
    );
    println!("| blocks moved, total | {} |", stats.total_moves);
    println!(
        "| frames with a pass / below threshold | {} / {} |",
        stats.passes_started, stats.below_threshold
    );
    println!(
        "| pass time p50 / p99 / max | {:?} / {:?} / {:?} |",
        percentile(&pass_times, 0.5),
        percentile(&pass_times, 0.99),
        pass_times.last().copied().unwrap_or_default()
    );
    println!(
        "| frame time p50 / p99 | {:?} / {:?} |",
        percentile(&frame_times, 0.5),
        percentile(&frame_times, 0.99)
    );
    println!(
        "| scratch high water (one frame) | {:.1} KiB |",
        stats.scratch.high_water_bytes as f64 / 1024.0
    );
    println!(
        "| scratch mapped, peak | {:.1} KiB |",
        stats.scratch.peak_bytes_held as f64 / 1024.0
    );
    println!("| assets verified at the end | {checked}, {bad} corrupt |");
    println!("| spot-check failures during the run | {spot} |");
    let exit = if bad == 0 && spot == 0 {
        println!("\nall checksums verified");
        AppExit::Success
    } else {
        eprintln!("\nCORRUPTION: {bad} at the end, {spot} during the run");
        AppExit::error()
    };
    world.write_message(exit);
}

fn main() {
    let mut frames = 3000u64;
    let mut threshold = 0.05;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            // The same run without compaction, for comparison.
            "--no-compact" => threshold = 1.0,
            "--frames" => {
                frames = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("--frames takes a positive number"));
            }
            other => panic!("unknown argument {other:?} (try --frames N, --no-compact)"),
        }
    }
    let plugin = TidyheapPlugin::try_new(
        TidyheapConfig::new()
            .with_budget(Budget::time(Duration::from_micros(500)).with_bytes(2 << 20))
            .with_fragmentation_threshold(threshold),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut app = App::new();
    app.add_plugins((
        TaskPoolPlugin::default(),
        FrameCountPlugin,
        TimePlugin,
        ScheduleRunnerPlugin::run_loop(Duration::ZERO),
        plugin,
    ))
    .init_heap_assets::<Mesh<16>>()
    .init_heap_assets::<Mesh<120>>()
    .init_heap_assets::<Mesh<1000>>()
    .init_heap_assets::<Mesh<8000>>()
    .init_heap_assets::<Nav>()
    .insert_resource(Run {
        frames,
        rng: SmallRng::seed_from_u64(0x7ed1),
        next_seed: 0,
        spot_failures: AtomicU64::new(0),
        frame_times: Vec::new(),
        pass_times: Vec::new(),
        bytes_moved: Vec::new(),
        last_frame_end: None,
        peak_live: 0,
        spawned: 0,
        despawned: 0,
    })
    .add_systems(
        Update,
        (
            stream,
            (
                read_meshes::<16>,
                read_meshes::<120>,
                read_meshes::<1000>,
                read_meshes::<8000>,
                read_nav,
            )
                .after(stream),
        ),
    )
    .add_systems(
        Last,
        (record, finish).chain().after(TidyheapSystems::Report),
    );
    match app.run() {
        AppExit::Success => {}
        AppExit::Error(code) => std::process::exit(code.get().into()),
    }
}
