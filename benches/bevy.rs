//! The Bevy plugin against what a Bevy user has already.
//!
//! * `bevy_asset_read/{peer}/{entities}`: one run of a system that reads the asset of
//!   every entity through its handle component and sums a field (entities spawned in
//!   random order relative to their assets, so reads are random accesses).
//!   `bevy_assets` is `bevy_asset::Assets<T>::get` with a component wrapping
//!   `bevy_asset::Handle<T>`; `tidyheap_reader` is `Res<HeapAssets<T>>` with one
//!   [`HeapAssets::read`] view per run and `HeapHandle<T>` components (the documented
//!   path); `tidyheap_get` calls `HeapAssets::get` per entity; `tidyheap_query` is
//!   `HeapQuery::for_each` over `HeapBlob<T>` components. Target (DESIGN):
//!   `tidyheap_reader` ≤ 1.2× `bevy_assets`.
//! * `bevy_scratch/{peer}`: one frame (`First` + `Update`) of a system that builds 256
//!   lists of 64 `u32` and sums them. `tidyheap` uses `FrameAlloc` with
//!   `allocator_api2::vec::Vec`s (the frame turns over in `First`); `tidyheap_slices`
//!   fills slices with `FrameAlloc::alloc_slice_fill_with` instead; `local_vec` reuses a `Local<Vec<Vec<u32>>>` (cleared, capacity kept);
//!   `bumpalo` resets a `Local<Bump>` and builds `bumpalo::collections::Vec`s.
//!
//! Each group is followed by an interleaved run of the same cases (every peer once per
//! round; medians and ratios printed): on a loaded machine those ratios are the ones to
//! trust. All systems run on the single-threaded executor, so the numbers are the systems' own
//! cost. `cargo test --benches` runs every case once with small sizes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use allocator_api2::vec::Vec as ScratchVec;
use bevy_app::{App, First, Update};
use bevy_asset::{Asset, Assets, Handle as BevyHandle};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::{ScheduleLabel, SingleThreadedExecutor};
use bevy_reflect::TypePath;
use bumpalo::Bump;
use criterion::{BenchmarkId, Criterion};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use tidyheap::bevy::{
    FrameAlloc, HeapAssets, HeapAssetsAppExt, HeapBlob, HeapHandle, HeapQuery, TidyheapPlugin,
};

/// A small mesh-like asset: 64 bytes.
#[derive(Asset, TypePath)]
struct Mesh {
    vertices: [f32; 15],
    id: u32,
}

impl Mesh {
    fn new(i: u32) -> Self {
        Self {
            vertices: [i as f32; 15],
            id: i,
        }
    }

    /// What the read systems sum: two fields, `2 * id`.
    fn weight(&self) -> u64 {
        self.id as u64 + self.vertices[14] as u64
    }
}

#[derive(Component)]
struct BevyMesh(BevyHandle<Mesh>);

/// The sum a read system stores, so the reads cannot be optimised away.
#[derive(Resource, Default)]
struct Sum(u64);

fn read_bevy(assets: Res<Assets<Mesh>>, q: Query<&BevyMesh>, mut sum: ResMut<Sum>) {
    let mut s = 0u64;
    for h in &q {
        s += assets.get(&h.0).map_or(0, |m| m.weight());
    }
    sum.0 = s;
}

fn read_tidyheap(assets: Res<HeapAssets<Mesh>>, q: Query<&HeapHandle<Mesh>>, mut sum: ResMut<Sum>) {
    let reader = assets.read();
    let mut s = 0u64;
    for h in &q {
        s += reader.get(h).map_or(0, |m| m.weight());
    }
    sum.0 = s;
}

fn get_tidyheap(assets: Res<HeapAssets<Mesh>>, q: Query<&HeapHandle<Mesh>>, mut sum: ResMut<Sum>) {
    let mut s = 0u64;
    for h in &q {
        s += assets.get(h).map_or(0, |m| m.weight());
    }
    sum.0 = s;
}

fn query_tidyheap(blobs: HeapQuery<Mesh>, mut sum: ResMut<Sum>) {
    let mut s = 0u64;
    blobs.for_each(|_, m| s += m.weight());
    sum.0 = s;
}

fn single_threaded(app: &mut App) {
    for label in [First.intern(), Update.intern()] {
        app.edit_schedule(label, |s| {
            s.set_executor(SingleThreadedExecutor::new());
        });
    }
}

/// Spawns `n` entities whose components come from `make(i)`, in a shuffled order.
fn spawn_shuffled<C: Component>(app: &mut App, n: u32, mut make: impl FnMut(u32) -> C) {
    let mut comps: Vec<Option<C>> = (0..n).map(|i| Some(make(i))).collect();
    let mut order: Vec<u32> = (0..n).collect();
    order.shuffle(&mut SmallRng::seed_from_u64(7));
    let batch: Vec<C> = order
        .iter()
        .map(|&i| comps[i as usize].take().expect("each once"))
        .collect();
    app.world_mut().spawn_batch(batch);
}

fn run_update(app: &mut App) -> u64 {
    app.world_mut().run_schedule(Update);
    app.world().resource::<Sum>().0
}

/// The app of one `bevy_asset_read` peer, with `n` entities and its read system.
fn asset_read_app(peer: &str, n: u32) -> App {
    let mut app = App::new();
    app.init_resource::<Sum>();
    match peer {
        "bevy_assets" => {
            app.init_resource::<Assets<Mesh>>();
            let handles: Vec<_> = {
                let mut assets = app.world_mut().resource_mut::<Assets<Mesh>>();
                (0..n).map(|i| assets.add(Mesh::new(i))).collect()
            };
            spawn_shuffled(&mut app, n, |i| BevyMesh(handles[i as usize].clone()));
            app.add_systems(Update, read_bevy);
        }
        "tidyheap_query" => {
            app.add_plugins(TidyheapPlugin::default())
                .init_heap_assets::<Mesh>();
            let mut blobs: Vec<Option<HeapBlob<Mesh>>> = {
                let mut assets = app.world_mut().resource_mut::<HeapAssets<Mesh>>();
                (0..n)
                    .map(|i| Some(assets.add_blob(Mesh::new(i))))
                    .collect()
            };
            spawn_shuffled(&mut app, n, |i| {
                blobs[i as usize].take().expect("each once")
            });
            app.add_systems(Update, query_tidyheap);
        }
        _ => {
            app.add_plugins(TidyheapPlugin::default())
                .init_heap_assets::<Mesh>();
            let handles: Vec<HeapHandle<Mesh>> = {
                let mut assets = app.world_mut().resource_mut::<HeapAssets<Mesh>>();
                (0..n).map(|i| assets.add(Mesh::new(i))).collect()
            };
            spawn_shuffled(&mut app, n, |i| handles[i as usize].clone());
            if peer == "tidyheap_reader" {
                app.add_systems(Update, read_tidyheap);
            } else {
                app.add_systems(Update, get_tidyheap);
            }
        }
    }
    single_threaded(&mut app);
    assert_eq!(run_update(&mut app), 2 * (0..n as u64).sum::<u64>());
    app
}

const READ_PEERS: [&str; 4] = [
    "bevy_assets",
    "tidyheap_reader",
    "tidyheap_get",
    "tidyheap_query",
];

fn asset_read(c: &mut Criterion, apps: &mut [(&str, App)], n: u32) {
    let mut group = c.benchmark_group("bevy_asset_read");
    for (peer, app) in apps.iter_mut() {
        group.bench_function(BenchmarkId::new(*peer, n), |b| {
            b.iter(|| black_box(run_update(app)))
        });
    }
    group.finish();
}

/// The cases of a group again, interleaved: each round runs every peer once (`run`), so
/// a change in the machine's load hits all of them alike. Prints each peer's median and
/// its ratio to the first peer.
fn interleaved(group: &str, apps: &mut [(&str, App)], rounds: usize, run: fn(&mut App) -> u64) {
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); apps.len()];
    for _ in 0..rounds {
        for (i, (_, app)) in apps.iter_mut().enumerate() {
            let start = Instant::now();
            black_box(run(app));
            times[i].push(start.elapsed());
        }
    }
    let medians: Vec<Duration> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect();
    println!(
        "\n{group} interleaved, {rounds} rounds (median per run, ratio to {}):",
        apps[0].0
    );
    for ((peer, _), m) in apps.iter().zip(&medians) {
        println!(
            "  {peer:<16} {m:>12.3?}  {:.2}x",
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
}

const LISTS: usize = 256;
const LEN: u32 = 64;

fn scratch_tidyheap(scratch: FrameAlloc, mut sum: ResMut<Sum>) {
    let mut lists = ScratchVec::with_capacity_in(LISTS, &scratch);
    for l in 0..LISTS as u32 {
        let mut v = ScratchVec::with_capacity_in(LEN as usize, &scratch);
        v.extend((0..LEN).map(|i| i ^ l));
        lists.push(v);
    }
    sum.0 = lists.iter().flatten().map(|&x| x as u64).sum();
}

fn scratch_tidyheap_slices(scratch: FrameAlloc, mut sum: ResMut<Sum>) {
    let lists = scratch.alloc_slice_fill_with(LISTS, |l| {
        &*scratch.alloc_slice_fill_with(LEN as usize, |i| i as u32 ^ l as u32)
    });
    sum.0 = lists.iter().copied().flatten().map(|&x| x as u64).sum();
}

fn scratch_local_vec(mut lists: Local<Vec<Vec<u32>>>, mut sum: ResMut<Sum>) {
    lists.resize_with(LISTS, Vec::new);
    for (l, v) in lists.iter_mut().enumerate() {
        v.clear();
        v.extend((0..LEN).map(|i| i ^ l as u32));
    }
    sum.0 = lists.iter().flatten().map(|&x| x as u64).sum();
}

fn scratch_bumpalo(mut bump: Local<Bump>, mut sum: ResMut<Sum>) {
    bump.reset();
    let bump = &*bump;
    let mut lists = bumpalo::collections::Vec::with_capacity_in(LISTS, bump);
    for l in 0..LISTS as u32 {
        let mut v = bumpalo::collections::Vec::with_capacity_in(LEN as usize, bump);
        v.extend((0..LEN).map(|i| i ^ l));
        lists.push(v);
    }
    sum.0 = lists.iter().flatten().map(|&x| x as u64).sum();
}

fn run_frame(app: &mut App) -> u64 {
    app.world_mut().run_schedule(First);
    app.world_mut().run_schedule(Update);
    app.world().resource::<Sum>().0
}

const SCRATCH_PEERS: [&str; 4] = ["local_vec", "tidyheap", "tidyheap_slices", "bumpalo"];

fn scratch_app(peer: &str) -> App {
    let expected: u64 = (0..LISTS as u32)
        .flat_map(|l| (0..LEN).map(move |i| (i ^ l) as u64))
        .sum();
    let mut app = App::new();
    app.init_resource::<Sum>();
    match peer {
        "tidyheap" => {
            app.add_plugins(TidyheapPlugin::default())
                .add_systems(Update, scratch_tidyheap);
        }
        "tidyheap_slices" => {
            app.add_plugins(TidyheapPlugin::default())
                .add_systems(Update, scratch_tidyheap_slices);
        }
        "local_vec" => {
            app.add_systems(Update, scratch_local_vec);
        }
        _ => {
            app.add_systems(Update, scratch_bumpalo);
        }
    }
    single_threaded(&mut app);
    assert_eq!(run_frame(&mut app), expected);
    app
}

fn scratch(c: &mut Criterion, apps: &mut [(&str, App)]) {
    let mut group = c.benchmark_group("bevy_scratch");
    for (peer, app) in apps.iter_mut() {
        group.bench_function(BenchmarkId::from_parameter(*peer), |b| {
            b.iter(|| black_box(run_frame(app)))
        });
    }
    group.finish();
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let n = if bench { 100_000 } else { 1_000 };
    let mut apps: Vec<(&str, App)> = READ_PEERS
        .iter()
        .map(|peer| (*peer, asset_read_app(peer, n)))
        .collect();
    asset_read(&mut c, &mut apps, n);
    interleaved(
        "bevy_asset_read",
        &mut apps,
        if bench { 200 } else { 2 },
        run_update,
    );
    drop(apps);
    let mut apps: Vec<(&str, App)> = SCRATCH_PEERS
        .iter()
        .map(|peer| (*peer, scratch_app(peer)))
        .collect();
    scratch(&mut c, &mut apps);
    interleaved(
        "bevy_scratch",
        &mut apps,
        if bench { 5000 } else { 2 },
        run_frame,
    );
    c.final_summary();
}
