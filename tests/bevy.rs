//! The Bevy plugin, driven headless with `app.update()`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use allocator_api2::vec::Vec as ScratchVec;
use bevy_app::{App, First, Last, PostUpdate, TaskPoolOptions, TaskPoolPlugin, Update};
use bevy_diagnostic::{DiagnosticsStore, LogDiagnosticsPlugin};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::ScheduleLabel;
use bevy_time::TimePlugin;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Budget;
use tidyheap::bevy::{
    BudgetLimit, CompactionMode, ConfigError, FrameAlloc, FrameMemory, HeapAssetEvent, HeapAssets,
    HeapAssetsAppExt, HeapBlob, HeapHandle, HeapQuery, TidyHeap, TidyheapConfig,
    TidyheapDiagnosticsPlugin, TidyheapError, TidyheapPlugin, TidyheapStats, TidyheapSystems,
};
use tidyheap::frame::FrameConfigError;

/// An asset of `N` words whose contents follow from a seed (its checksum).
struct Blob<const N: usize>([u64; N]);

fn word(seed: u64, i: usize) -> u64 {
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl<const N: usize> Blob<N> {
    fn new(seed: u64) -> Self {
        Self(core::array::from_fn(|i| word(seed, i)))
    }

    fn intact(&self, seed: u64) -> bool {
        self.0.iter().enumerate().all(|(i, w)| *w == word(seed, i))
    }
}

#[derive(Component, Clone, Copy)]
struct Seed(u64);

/// Every app of this file runs its systems on 4 compute threads (the pool is global to
/// the process; whichever test starts first sets it, always to the same size).
fn app_with(plugin: TidyheapPlugin) -> App {
    let mut app = App::new();
    app.add_plugins(TaskPoolPlugin {
        task_pool_options: TaskPoolOptions::with_num_threads(4),
    })
    .add_plugins(plugin);
    app
}

fn plugin(config: TidyheapConfig) -> TidyheapPlugin {
    TidyheapPlugin::try_new(config).expect("a valid configuration")
}

/// Corruptions seen by checking systems.
#[derive(Resource, Default, Clone)]
struct Corruptions(Arc<AtomicUsize>);

/// Spawns `n` entities owning a `Blob<N>` each, returns them with their seeds.
fn spawn_blobs<const N: usize>(app: &mut App, n: usize, first_seed: u64) -> Vec<(Entity, u64)> {
    (0..n as u64)
        .map(|i| {
            let seed = first_seed + i;
            let h = app
                .world_mut()
                .resource_mut::<HeapAssets<Blob<N>>>()
                .add(Blob::new(seed));
            (app.world_mut().spawn((h, Seed(seed))).id(), seed)
        })
        .collect()
}

fn check_handles<const N: usize>(
    assets: Res<HeapAssets<Blob<N>>>,
    q: Query<(&HeapHandle<Blob<N>>, &Seed)>,
    bad: Res<Corruptions>,
) {
    let reader = assets.read();
    for (h, seed) in &q {
        if !reader.get(h).is_some_and(|b| b.intact(seed.0)) {
            bad.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn check_blobs<const N: usize>(
    blobs: HeapQuery<Blob<N>>,
    seeds: Query<&Seed>,
    bad: Res<Corruptions>,
) {
    blobs.par_for_each(|e, b| {
        let seed = seeds.get(e).expect("every blob entity has a seed").0;
        if !b.intact(seed) {
            bad.0.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Fragments a store of `Blob<N>`: `n` values, then every value whose index is not a
/// multiple of `keep_every` despawned. Returns the kept entities.
fn fragment<const N: usize>(app: &mut App, n: usize, keep_every: usize) -> Vec<(Entity, u64)> {
    let all = spawn_blobs::<N>(app, n, 1);
    let mut kept = Vec::new();
    for (i, (e, seed)) in all.into_iter().enumerate() {
        if i % keep_every == 0 {
            kept.push((e, seed));
        } else {
            app.world_mut().despawn(e);
        }
    }
    kept
}

#[test]
fn handles_resolve_and_contents_survive_many_frames_of_moves() {
    let mut app = app_with(plugin(
        TidyheapConfig::new()
            .with_budget(Budget::blocks(48).with_time(Duration::from_millis(50)))
            .with_fragmentation_threshold(0.0),
    ));
    app.init_heap_assets::<Blob<4>>()
        .init_heap_assets::<Blob<40>>()
        .init_heap_assets::<Blob<300>>()
        .init_resource::<Corruptions>()
        .add_systems(
            Update,
            (
                check_handles::<4>,
                check_handles::<40>,
                check_handles::<300>,
                check_blobs::<40>,
            ),
        );
    let mut rng = SmallRng::seed_from_u64(13);
    let mut live: Vec<(Entity, u64)> = Vec::new();
    let mut seed = 1u64;
    for frame in 0..300 {
        // Stream: spawn a few of each size, despawn random ones.
        for _ in 0..6 {
            seed += 1;
            let world = app.world_mut();
            let (h4, h40, h300, b40) = {
                let h4 = world
                    .resource_mut::<HeapAssets<Blob<4>>>()
                    .add(Blob::new(seed));
                let h40 = world
                    .resource_mut::<HeapAssets<Blob<40>>>()
                    .add(Blob::new(seed));
                let h300 = world
                    .resource_mut::<HeapAssets<Blob<300>>>()
                    .add(Blob::new(seed));
                let b40 = world
                    .resource_mut::<HeapAssets<Blob<40>>>()
                    .add_blob(Blob::new(seed));
                (h4, h40, h300, b40)
            };
            live.push((world.spawn((h4, h40, Seed(seed))).id(), seed));
            live.push((world.spawn((h300, b40, Seed(seed))).id(), seed));
        }
        let drops = if frame < 150 { 4 } else { 14 };
        for _ in 0..drops.min(live.len()) {
            let (e, _) = live.swap_remove(rng.gen_range(0..live.len()));
            app.world_mut().despawn(e);
        }
        app.update();
    }
    app.update(); // frees the last frame's drops
    let bad = app
        .world()
        .resource::<Corruptions>()
        .0
        .load(Ordering::Relaxed);
    let stats = app.world().resource::<TidyheapStats>().clone();
    assert_eq!(bad, 0, "corrupted reads");
    assert!(
        stats.total_moves > 0,
        "the compactor moved blocks: {stats:?}"
    );
    println!(
        "moves {} bytes {} passes {}",
        stats.total_moves, stats.total_bytes_moved, stats.total_passes
    );
    // Every live entity still resolves to its own contents.
    for (e, seed) in &live {
        let world = app.world();
        let entity = world.entity(*e);
        if let Some(h) = entity.get::<HeapHandle<Blob<4>>>() {
            assert!(
                world
                    .resource::<HeapAssets<Blob<4>>>()
                    .get(h)
                    .unwrap()
                    .intact(*seed)
            );
            let h = entity.get::<HeapHandle<Blob<40>>>().unwrap();
            assert!(
                world
                    .resource::<HeapAssets<Blob<40>>>()
                    .get(h)
                    .unwrap()
                    .intact(*seed)
            );
        } else {
            let h = entity.get::<HeapHandle<Blob<300>>>().unwrap();
            assert!(
                world
                    .resource::<HeapAssets<Blob<300>>>()
                    .get(h)
                    .unwrap()
                    .intact(*seed)
            );
            let b = entity.get::<HeapBlob<Blob<40>>>().unwrap();
            assert!(
                world
                    .resource::<HeapAssets<Blob<40>>>()
                    .get(b)
                    .unwrap()
                    .intact(*seed)
            );
        }
    }
    // Nothing leaked: each store holds exactly the live entities' values.
    let world = app.world();
    let small = world.resource::<HeapAssets<Blob<4>>>().len();
    let medium = world.resource::<HeapAssets<Blob<40>>>().len();
    let large = world.resource::<HeapAssets<Blob<300>>>().len();
    assert_eq!(small + large, live.len());
    assert_eq!(medium, live.len());
}

/// Runs frames on a heavily fragmented store of 256-byte values and returns each
/// frame's (moves, bytes).
fn frames_under(budget: Budget, frames: usize) -> Vec<(u64, u64)> {
    let mut app = app_with(plugin(
        TidyheapConfig::new()
            .with_budget(budget)
            .with_fragmentation_threshold(0.0),
    ));
    app.init_heap_assets::<Blob<32>>();
    fragment::<32>(&mut app, 4000, 4);
    (0..frames)
        .map(|_| {
            app.update();
            let f = app.world().resource::<TidyheapStats>().frame;
            (f.moves, f.bytes_moved)
        })
        .collect()
}

#[test]
fn each_frame_moves_exactly_its_move_budget() {
    let frames = frames_under(Budget::blocks(5), 40);
    // Thousands of blocks are waiting and nothing holds a guard in `Last`, so every
    // frame's pass stops exactly at its budget.
    for (i, (moves, bytes)) in frames.iter().enumerate() {
        assert_eq!(*moves, 5, "frame {i}");
        assert_eq!(*bytes, 5 * 256, "frame {i}");
    }
}

#[test]
fn each_frame_moves_at_most_its_byte_budget() {
    // 1000 bytes fit three 256-byte blocks, not four.
    let frames = frames_under(Budget::bytes(1000), 40);
    for (i, (moves, bytes)) in frames.iter().enumerate() {
        assert_eq!((*moves, *bytes), (3, 768), "frame {i}");
    }
}

#[test]
fn time_budget_is_measured_not_asserted() {
    let budget = Duration::from_micros(200);
    let mut app = app_with(plugin(
        TidyheapConfig::new()
            .with_budget(Budget::time(budget))
            .with_fragmentation_threshold(0.0),
    ));
    app.init_heap_assets::<Blob<32>>();
    fragment::<32>(&mut app, 4000, 4);
    let mut longest = Duration::ZERO;
    let mut moves = 0;
    for _ in 0..20 {
        app.update();
        let f = app.world().resource::<TidyheapStats>().frame;
        assert_eq!(f.passes, 1);
        longest = longest.max(f.max_pass_time);
        moves += f.moves;
    }
    assert!(moves > 0);
    println!("time budget {budget:?}: longest pass {longest:?}, {moves} moves in 20 frames");
}

#[test]
fn no_pass_runs_below_the_threshold() {
    let run = |threshold: f64| {
        let mut app = app_with(plugin(
            TidyheapConfig::new()
                .with_budget(Budget::blocks(100))
                .with_fragmentation_threshold(threshold),
        ));
        app.init_heap_assets::<Blob<32>>();
        fragment::<32>(&mut app, 4000, 2);
        for _ in 0..10 {
            app.update();
        }
        app.world().resource::<TidyheapStats>().clone()
    };
    let high = run(0.95);
    assert!(
        (0.2..0.95).contains(&high.fragmentation),
        "the heap is fragmented but below 0.95: {}",
        high.fragmentation
    );
    assert_eq!(high.below_threshold, 10);
    assert_eq!(
        (high.passes_started, high.total_passes, high.total_moves),
        (0, 0, 0)
    );

    let low = run(0.2);
    assert!(low.passes_started > 0);
    assert!(low.total_moves > 0);
    assert!(low.below_threshold < 10);
}

#[test]
fn diagnostics_have_values_after_update_in_either_plugin_order() {
    for diagnostics_first in [false, true] {
        let mut app = App::new();
        if diagnostics_first {
            app.add_plugins((TidyheapDiagnosticsPlugin, TidyheapPlugin::default()));
        } else {
            app.add_plugins((TidyheapPlugin::default(), TidyheapDiagnosticsPlugin));
        }
        app.init_heap_assets::<Blob<32>>();
        spawn_blobs::<32>(&mut app, 10, 1);
        app.update();
        let store = app.world().resource::<DiagnosticsStore>();
        for (path, _) in TidyheapDiagnosticsPlugin::PATHS {
            let d = store
                .get(&path)
                .unwrap_or_else(|| panic!("{path} registered"));
            assert!(d.value().is_some(), "{path} has a value");
        }
        let live = store
            .get(&TidyheapDiagnosticsPlugin::LIVE_BYTES)
            .and_then(|d| d.value())
            .unwrap();
        assert_eq!(live, (10 * 256) as f64);
    }
}

/// Lines logged by `LogDiagnosticsPlugin`.
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target() == "bevy_diagnostic" {
            LOGGED.lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn log_diagnostics_plugin_prints_the_tidyheap_paths() {
    log::set_logger(&Capture).expect("the only logger of this test binary");
    log::set_max_level(log::LevelFilter::Info);
    let mut app = App::new();
    app.add_plugins((
        TimePlugin,
        TidyheapPlugin::default(),
        TidyheapDiagnosticsPlugin,
        LogDiagnosticsPlugin {
            wait_duration: Duration::from_nanos(1),
            ..Default::default()
        },
    ));
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(1));
        app.update();
    }
    let logged = LOGGED.lock().unwrap();
    for (path, _) in TidyheapDiagnosticsPlugin::PATHS {
        assert!(
            logged.iter().any(|l| l.starts_with(path.as_str())),
            "{path} logged; got {logged:?}"
        );
    }
}

#[test]
fn scratch_resets_every_frame() {
    fn fill(scratch: FrameAlloc) {
        let words = scratch.alloc_slice_fill_with(1000, |i| i as u64);
        assert_eq!(words[999], 999);
        let mut list = ScratchVec::new_in(&scratch);
        list.extend(0..10u32);
        assert_eq!(list.iter().sum::<u32>(), 45);
    }
    let mut app = app_with(TidyheapPlugin::default());
    app.add_systems(Update, fill);
    let mut maps_at_10 = 0;
    for frame in 1..=40u64 {
        app.update();
        let memory = app.world().resource::<FrameMemory>();
        assert_eq!(memory.index(), frame + 1);
        let s = memory.stats();
        // Counted when the frame that used them ended, in the next `First`: exactly one
        // frame's bytes, never an accumulation of frames.
        // (The list was the lane's last block when it dropped, so its 40 bytes came back.)
        let expected = if frame == 1 { 0 } else { 8000 };
        assert_eq!(s.frame_bytes, expected, "frame {frame}");
        assert_eq!(s.high_water_bytes, expected);
        if frame == 10 {
            maps_at_10 = s.chunk_maps;
        }
        if frame > 10 {
            assert_eq!(s.chunk_maps, maps_at_10, "no new chunk after warm-up");
        }
    }
    assert_eq!(
        app.world().resource::<TidyheapStats>().scratch.frame_bytes,
        8000
    );
}

/// Two systems meet here; each reports whether the other arrived within 10 s.
#[derive(Resource, Clone, Default)]
struct Rendezvous {
    arrived: Arc<(Mutex<u32>, Condvar)>,
    met: Arc<[AtomicBool; 2]>,
    threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    corrupt: Arc<AtomicBool>,
}

impl Rendezvous {
    fn meet(&self, who: usize) {
        let (lock, cond) = &*self.arrived;
        let mut n = lock.lock().unwrap();
        *n += 1;
        cond.notify_all();
        let (n, timeout) = cond
            .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2)
            .unwrap();
        drop(n);
        self.met[who].store(!timeout.timed_out(), Ordering::SeqCst);
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
    }
}

fn scratch_system<const WHO: usize>(scratch: FrameAlloc, r: Res<Rendezvous>) {
    let mine = scratch.alloc_slice_fill_with(4096, |i| (WHO * 1_000_000 + i) as u32);
    let mut list = ScratchVec::new_in(&scratch);
    // Both systems allocate while the other is inside its own system too.
    r.meet(WHO);
    list.extend((0..4096).map(|i| (WHO * 1_000_000 + i) as u32));
    let more = scratch.alloc_slice_copy(&[WHO as u8; 512]);
    let intact = mine
        .iter()
        .enumerate()
        .all(|(i, v)| *v == (WHO * 1_000_000 + i) as u32)
        && list
            .iter()
            .enumerate()
            .all(|(i, v)| *v == (WHO * 1_000_000 + i) as u32)
        && more.iter().all(|b| *b == WHO as u8);
    if !intact {
        r.corrupt.store(true, Ordering::SeqCst);
    }
}

#[test]
fn two_scratch_systems_run_in_parallel() {
    let mut app = app_with(TidyheapPlugin::default());
    let r = Rendezvous::default();
    app.insert_resource(r.clone())
        .add_systems(Update, (scratch_system::<0>, scratch_system::<1>));
    app.update();
    assert!(
        r.met[0].load(Ordering::SeqCst) && r.met[1].load(Ordering::SeqCst),
        "both scratch systems were running at the same time"
    );
    let threads = r.threads.lock().unwrap().clone();
    assert_ne!(threads[0], threads[1]);
    assert!(!r.corrupt.load(Ordering::SeqCst));
}

#[test]
fn par_iter_bodies_allocate_from_their_own_lanes() {
    #[derive(Component)]
    struct Id(u32);
    #[derive(Resource, Default)]
    struct Sum(AtomicU64);
    fn body(scratch: FrameAlloc, q: Query<&Id>, sum: Res<Sum>) {
        let shared = scratch.shared();
        q.par_iter().for_each(|id| {
            let mut v = ScratchVec::new_in(shared);
            v.extend((0..64).map(|i| id.0 as u64 + i));
            sum.0.fetch_add(v.iter().sum::<u64>(), Ordering::Relaxed);
        });
    }
    let mut app = app_with(TidyheapPlugin::default());
    app.init_resource::<Sum>().add_systems(Update, body);
    app.world_mut().spawn_batch((0..2000).map(Id));
    app.update();
    let expected: u64 = (0..2000u64).map(|id| 64 * id + (0..64).sum::<u64>()).sum();
    assert_eq!(
        app.world().resource::<Sum>().0.load(Ordering::Relaxed),
        expected
    );
}

/// Messages of `HeapAssetEvent<Blob<32>>` read by a system, in order.
#[derive(Resource, Default)]
struct Seen(Vec<HeapAssetEvent<Blob<32>>>);

fn read_events(mut reader: MessageReader<HeapAssetEvent<Blob<32>>>, mut seen: ResMut<Seen>) {
    seen.0.extend(reader.read().copied());
}

#[test]
fn despawning_the_last_owner_frees_and_sends_removed() {
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<Blob<32>>()
        .init_resource::<Seen>()
        .add_systems(Update, read_events);
    let h = app
        .world_mut()
        .resource_mut::<HeapAssets<Blob<32>>>()
        .add(Blob::new(7));
    let id = h.id();
    let a = app.world_mut().spawn(h.clone()).id();
    let b = app.world_mut().spawn(h).id();
    app.update();
    app.update(); // messages sent in frame 1's `Last` are read in frame 2's `Update`
    assert_eq!(
        app.world().resource::<Seen>().0,
        [HeapAssetEvent::Added { id }]
    );

    app.world_mut().despawn(a);
    app.update();
    app.update();
    assert!(
        app.world().resource::<HeapAssets<Blob<32>>>().contains(id),
        "b still owns it"
    );
    assert_eq!(app.world().resource::<Seen>().0.len(), 1);

    app.world_mut().despawn(b);
    app.update();
    let assets = app.world().resource::<HeapAssets<Blob<32>>>();
    assert!(!assets.contains(id));
    assert!(assets.is_empty());
    assert_eq!(
        app.world()
            .resource::<TidyHeap>()
            .heap()
            .stats()
            .movable
            .live_bytes(),
        0
    );
    app.update();
    assert_eq!(
        app.world().resource::<Seen>().0,
        [HeapAssetEvent::Added { id }, HeapAssetEvent::Removed { id }]
    );
}

#[test]
fn a_stale_id_never_resolves_to_the_value_that_reuses_its_slot() {
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<Blob<32>>();
    let (e, _) = spawn_blobs::<32>(&mut app, 1, 1)[0];
    let old = app
        .world()
        .entity(e)
        .get::<HeapHandle<Blob<32>>>()
        .unwrap()
        .id();
    app.world_mut().despawn(e);
    // Between the despawn and the upkeep, the plain id still resolves to its own value.
    assert!(
        app.world()
            .resource::<HeapAssets<Blob<32>>>()
            .get(old)
            .unwrap()
            .intact(1)
    );
    app.update();
    let new = app
        .world_mut()
        .resource_mut::<HeapAssets<Blob<32>>>()
        .add(Blob::new(2));
    let assets = app.world().resource::<HeapAssets<Blob<32>>>();
    assert!(assets.get(old).is_none());
    assert!(assets.get(&new).unwrap().intact(2));
}

#[test]
fn explicit_remove_then_owner_drop_sends_one_removed() {
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<Blob<32>>()
        .init_resource::<Seen>()
        .add_systems(Update, read_events);
    let mut assets = app.world_mut().resource_mut::<HeapAssets<Blob<32>>>();
    let blob = assets.add_blob(Blob::new(3));
    let id = blob.id();
    assert!(assets.remove(id).unwrap().intact(3));
    let e = app.world_mut().spawn(blob).id();
    app.update();
    app.world_mut().despawn(e); // queues an id that no longer resolves
    app.update();
    app.update();
    assert_eq!(
        app.world().resource::<Seen>().0,
        [HeapAssetEvent::Added { id }, HeapAssetEvent::Removed { id }]
    );
}

#[test]
fn get_mut_sends_modified() {
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<Blob<32>>()
        .init_resource::<Seen>()
        .add_systems(Update, read_events);
    let mut assets = app.world_mut().resource_mut::<HeapAssets<Blob<32>>>();
    let h = assets.add(Blob::new(1));
    assets.get_mut(&h).unwrap().0[0] = 42;
    assert_eq!(assets.get(&h).unwrap().0[0], 42);
    app.update();
    app.update();
    let id = h.id();
    assert_eq!(
        app.world().resource::<Seen>().0,
        [
            HeapAssetEvent::Added { id },
            HeapAssetEvent::Modified { id }
        ]
    );
}

/// A value whose drop releases the owner of another value of the same store.
struct Node {
    child: Option<HeapHandle<Node>>,
}

#[test]
fn a_freed_value_that_owns_another_frees_it_in_the_same_upkeep() {
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<Node>();
    let mut assets = app.world_mut().resource_mut::<HeapAssets<Node>>();
    let leaf = assets.add(Node { child: None });
    let mid = assets.add(Node { child: Some(leaf) });
    let root = assets.add(Node { child: Some(mid) });
    assert_eq!(assets.len(), 3);
    assert!(assets.get(&root).unwrap().child.is_some());
    let e = app.world_mut().spawn(root).id();
    app.update();
    app.world_mut().despawn(e);
    app.update();
    assert!(app.world().resource::<HeapAssets<Node>>().is_empty());
}

#[derive(Resource, Default)]
struct Probe {
    failures: Vec<String>,
    runs: u64,
}

#[test]
fn user_systems_ordered_against_the_sets_see_the_documented_order() {
    fn before_begin(memory: Res<FrameMemory>, stats: Res<TidyheapStats>, mut p: ResMut<Probe>) {
        // Frame n (1-based) sees scratch frame n before the turnover, n + 1 after.
        let n = stats.frames + 1;
        if memory.index() != n {
            p.failures.push(format!(
                "before BeginFrame: index {} in frame {n}",
                memory.index()
            ));
        }
    }
    fn after_begin(memory: Res<FrameMemory>, stats: Res<TidyheapStats>, mut p: ResMut<Probe>) {
        let n = stats.frames + 1;
        if memory.index() != n + 1 {
            p.failures.push(format!(
                "after BeginFrame: index {} in frame {n}",
                memory.index()
            ));
        }
    }
    fn after_upkeep(
        stats: Res<TidyheapStats>,
        assets: Res<HeapAssets<Blob<32>>>,
        mut p: ResMut<Probe>,
    ) {
        // Upkeep has freed the value dropped in `Update`; `Compact` has not run yet.
        if !assets.is_empty() {
            p.failures
                .push("after Upkeep: the dropped value is still there".into());
        }
        if stats.frames != stats.reports {
            p.failures.push("after Upkeep: Compact already ran".into());
        }
    }
    fn after_compact(stats: Res<TidyheapStats>, mut p: ResMut<Probe>) {
        if stats.frames != stats.reports + 1 {
            p.failures.push("between Compact and Report".into());
        }
    }
    fn after_report(stats: Res<TidyheapStats>, mut p: ResMut<Probe>) {
        if stats.frames != stats.reports {
            p.failures.push("after Report".into());
        }
        p.runs += 1;
    }
    fn drop_everything(mut commands: Commands, q: Query<Entity, With<HeapHandle<Blob<32>>>>) {
        for e in &q {
            commands.entity(e).despawn();
        }
    }

    // In the default schedule (`Last`) and in another one.
    for custom in [false, true] {
        let config = if custom {
            TidyheapConfig::new().with_schedule(PostUpdate)
        } else {
            TidyheapConfig::new()
        };
        let mut app = app_with(plugin(config));
        let schedule = if custom {
            PostUpdate.intern()
        } else {
            Last.intern()
        };
        app.init_heap_assets::<Blob<32>>()
            .init_resource::<Probe>()
            .add_systems(
                First,
                (
                    before_begin.before(TidyheapSystems::BeginFrame),
                    after_begin.after(TidyheapSystems::BeginFrame),
                ),
            )
            .add_systems(Update, drop_everything)
            .add_systems(
                schedule,
                (
                    after_upkeep
                        .after(TidyheapSystems::Upkeep)
                        .before(TidyheapSystems::Compact),
                    after_compact
                        .after(TidyheapSystems::Compact)
                        .before(TidyheapSystems::Report),
                    after_report.after(TidyheapSystems::Report),
                ),
            );
        for _ in 0..5 {
            spawn_blobs::<32>(&mut app, 3, 1);
            app.update();
        }
        let p = app.world().resource::<Probe>();
        assert_eq!(p.failures, Vec::<String>::new());
        assert_eq!(p.runs, 5);
    }
}

#[test]
fn malformed_configuration_is_an_error_before_build() {
    let cases = [
        (
            TidyheapConfig::new().with_frames_in_flight(0),
            ConfigError::Frames(FrameConfigError::FramesInFlight(0)),
        ),
        (
            TidyheapConfig::new().with_frames_in_flight(65),
            ConfigError::Frames(FrameConfigError::FramesInFlight(65)),
        ),
        (
            TidyheapConfig::new().with_budget(Budget::UNLIMITED),
            ConfigError::UnboundedBudget,
        ),
        (
            TidyheapConfig::new().with_budget(Budget::bytes(0)),
            ConfigError::EmptyBudget(BudgetLimit::Bytes),
        ),
        (
            TidyheapConfig::new().with_budget(Budget::blocks(0).with_bytes(100)),
            ConfigError::EmptyBudget(BudgetLimit::Moves),
        ),
        (
            TidyheapConfig::new().with_budget(Budget::time(Duration::ZERO)),
            ConfigError::EmptyBudget(BudgetLimit::Time),
        ),
        (
            TidyheapConfig::new().with_fragmentation_threshold(-0.1),
            ConfigError::Threshold(-0.1),
        ),
        (
            TidyheapConfig::new().with_fragmentation_threshold(1.5),
            ConfigError::Threshold(1.5),
        ),
    ];
    for (config, expected) in cases {
        let err = TidyheapPlugin::try_new(config).unwrap_err();
        assert_eq!(err, expected);
        assert!(
            err.to_string()
                .starts_with("tidyheap plugin configuration: ")
        );
    }
    let nan = TidyheapPlugin::try_new(TidyheapConfig::new().with_fragmentation_threshold(f64::NAN));
    assert!(matches!(nan, Err(ConfigError::Threshold(t)) if t.is_nan()));
    // The edges are accepted.
    for ok in [
        TidyheapConfig::new().with_frames_in_flight(1),
        TidyheapConfig::new().with_frames_in_flight(64),
        TidyheapConfig::new().with_fragmentation_threshold(0.0),
        TidyheapConfig::new().with_fragmentation_threshold(1.0),
        TidyheapConfig::new().with_budget(Budget::blocks(1)),
    ] {
        let mut app = App::new();
        app.add_plugins(plugin(ok));
        app.update();
    }
}

#[test]
fn registering_a_store_without_the_plugin_is_an_error() {
    let mut app = App::new();
    let err = app.try_init_heap_assets::<u32>().map(|_| ()).unwrap_err();
    assert!(matches!(err, TidyheapError::PluginMissing));
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        app.init_heap_assets::<u32>();
    }))
    .unwrap_err();
    let msg = panic.downcast_ref::<String>().unwrap();
    assert!(msg.contains("add TidyheapPlugin"), "{msg}");
    // Registering twice is harmless.
    let mut app = app_with(TidyheapPlugin::default());
    app.init_heap_assets::<u32>().init_heap_assets::<u32>();
    app.update();
}

#[test]
fn background_mode_compacts_off_the_schedule() {
    let mut app = app_with(plugin(
        TidyheapConfig::new()
            .with_budget(Budget::blocks(64))
            .with_fragmentation_threshold(0.0)
            .with_mode(CompactionMode::Background),
    ));
    app.init_heap_assets::<Blob<32>>()
        .init_resource::<Corruptions>()
        .add_systems(Update, check_handles::<32>);
    let kept = fragment::<32>(&mut app, 4000, 4);
    // The thread runs when the OS schedules it: wait for progress, bounded.
    let mut frames = 0;
    while app.world().resource::<TidyheapStats>().total_moves == 0 && frames < 20_000 {
        app.update();
        frames += 1;
    }
    for _ in 0..50 {
        app.update();
    }
    let stats = app.world().resource::<TidyheapStats>().clone();
    assert!(stats.total_moves > 0, "background passes moved blocks");
    assert!(stats.total_passes > 0);
    assert_eq!(
        app.world()
            .resource::<Corruptions>()
            .0
            .load(Ordering::Relaxed),
        0
    );
    let assets = app.world().resource::<HeapAssets<Blob<32>>>();
    for (e, seed) in kept {
        let h = app.world().entity(e).get::<HeapHandle<Blob<32>>>().unwrap();
        assert!(assets.get(h).unwrap().intact(seed));
    }
    drop(app); // stops and joins the thread
}

/// Raw blocks handed out in frame `k`, with the frame index and a pattern.
#[derive(Resource, Default)]
struct InFlight {
    blocks: Vec<(u64, usize)>,
    checked: u64,
    failures: Vec<String>,
}

#[test]
fn raw_scratch_blocks_live_until_frame_k_plus_n() {
    const N: usize = 3;
    const WORDS: usize = 512;
    fn produce(scratch: FrameAlloc, mut f: ResMut<InFlight>) {
        let layout = std::alloc::Layout::array::<u64>(WORDS).unwrap();
        let p = scratch.alloc_layout(layout).unwrap().cast::<u64>();
        let k = scratch.index();
        for i in 0..WORDS {
            // SAFETY: a fresh block of `WORDS` u64s, valid until frame k + N begins.
            unsafe { p.add(i).write(k * 1_000_000 + i as u64) };
        }
        // Plenty of other scratch use in the same frame, from several threads.
        let shared = scratch.shared();
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(move || shared.alloc_slice_fill_with(20_000, |i| i as u64)[19_999]);
            }
        });
        f.blocks.push((k, p.as_ptr() as usize));
    }
    fn consume(scratch: FrameAlloc, mut f: ResMut<InFlight>) {
        let now = scratch.index();
        let f = &mut *f;
        // Blocks of frames k > now - N are still valid.
        f.blocks.retain(|&(k, _)| k + N as u64 > now);
        for &(k, addr) in &f.blocks {
            let p = addr as *const u64;
            for i in 0..WORDS {
                // SAFETY: the block came from frame k, and frame k + N has not begun
                // (`retain` above), so it is still valid and nobody else writes it.
                let v = unsafe { p.add(i).read() };
                if v != k * 1_000_000 + i as u64 {
                    f.failures
                        .push(format!("frame {k} block read in frame {now}, word {i}"));
                    break;
                }
            }
            f.checked += 1;
        }
    }
    let mut app = app_with(plugin(TidyheapConfig::new().with_frames_in_flight(N)));
    app.init_resource::<InFlight>()
        .add_systems(Update, (consume, produce).chain());
    for _ in 0..30 {
        app.update();
    }
    let f = app.world().resource::<InFlight>();
    assert_eq!(f.failures, Vec::<String>::new());
    // From the third frame on, each frame checks the blocks of the N - 1 frames before
    // it, then its own is added.
    assert_eq!(f.checked, (N as u64 - 1) * 30 - 3);
}

/// A value whose drop panics once.
struct Grenade(Arc<AtomicBool>);

impl Drop for Grenade {
    fn drop(&mut self) {
        if self.0.swap(false, Ordering::SeqCst) {
            panic!("a user Drop panicked");
        }
    }
}

#[test]
fn a_panicking_value_drop_loses_no_other_queued_value() {
    let mut app = App::new();
    app.add_plugins(TidyheapPlugin::default())
        .init_heap_assets::<Grenade>();
    // A panic unwinding through `App::update` leaves the app without its main schedule,
    // so this test runs the plugin's schedule (`Last`) by hand, which survives it.
    let mut last = app
        .world_mut()
        .resource_mut::<Schedules>()
        .remove(Last)
        .expect("the plugin's schedule");
    last.set_executor(bevy_ecs::schedule::SingleThreadedExecutor::new());
    let armed = Arc::new(AtomicBool::new(true));
    let mut assets = app.world_mut().resource_mut::<HeapAssets<Grenade>>();
    let handles: Vec<_> = (0..5).map(|_| assets.add(Grenade(armed.clone()))).collect();
    let bomb = assets.add(Grenade(armed.clone()));
    drop(handles);
    drop(bomb); // queued last: freed first
    let world = app.world_mut();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| last.run(world)));
    assert!(r.is_err(), "the drop's panic reached the caller");
    assert!(!armed.load(Ordering::SeqCst));
    assert_eq!(
        world.resource::<HeapAssets<Grenade>>().len(),
        5,
        "the panicking value is gone, the other five are still queued"
    );
    // (Bevy's executor may skip the systems of the first run after a panic.)
    for _ in 0..3 {
        last.run(world);
    }
    assert!(world.resource::<HeapAssets<Grenade>>().is_empty());
    let heap = world.resource::<TidyHeap>().heap().clone();
    assert_eq!(heap.stats().movable.live_bytes(), 0);
}

/// The model test's asset: 1 KiB, so a few hundred of them span several spans.
type Model = Blob<128>;

/// Every `HeapAssetEvent<Model>` ever read.
#[derive(Resource, Default)]
struct AllEvents(Vec<HeapAssetEvent<Model>>);

fn read_all(mut reader: MessageReader<HeapAssetEvent<Model>>, mut seen: ResMut<AllEvents>) {
    seen.0.extend(reader.read().copied());
}

/// What the model knows of one value.
struct ModelValue {
    seed: u64,
    owners: usize,
    /// Removed (explicitly, or by the upkeep after its last owner went).
    gone: bool,
}

/// Random sequences of add, clone, despawn, explicit remove, write and frame (with a
/// compaction pass every frame) against a simple model, for several seeds: contents,
/// liveness and the exact multiset of messages must match.
#[test]
fn differential_model_of_assets_owners_and_messages() {
    use std::collections::HashMap;
    use tidyheap::Handle;
    for seed in 1..=4u64 {
        let mut app = app_with(plugin(
            TidyheapConfig::new()
                .with_budget(Budget::blocks(16))
                .with_fragmentation_threshold(0.0),
        ));
        app.init_heap_assets::<Model>()
            .init_resource::<AllEvents>()
            .add_systems(Update, read_all);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut model: HashMap<Handle<Model>, ModelValue> = HashMap::new();
        let mut entities: Vec<(Entity, Handle<Model>)> = Vec::new();
        let mut expected: Vec<(u8, Handle<Model>)> = Vec::new(); // (kind, id)
        let mut next = 0u64;
        for step in 0..3000 {
            let world = app.world_mut();
            match rng.gen_range(0..100) {
                0..25 => {
                    next += 1;
                    let mut assets = world.resource_mut::<HeapAssets<Model>>();
                    let (id, e) = if rng.gen_bool(0.5) {
                        let h = assets.add(Blob::new(next));
                        (h.id(), world.spawn(h).id())
                    } else {
                        let b = assets.add_blob(Blob::new(next));
                        (b.id(), world.spawn(b).id())
                    };
                    model.insert(
                        id,
                        ModelValue {
                            seed: next,
                            owners: 1,
                            gone: false,
                        },
                    );
                    entities.push((e, id));
                    expected.push((0, id));
                }
                25..35 if !entities.is_empty() => {
                    let (e, id) = entities[rng.gen_range(0..entities.len())];
                    if let Some(h) = world.entity(e).get::<HeapHandle<Model>>() {
                        let h = h.clone();
                        entities.push((world.spawn(h).id(), id));
                        model.get_mut(&id).unwrap().owners += 1;
                    }
                }
                35..60 if !entities.is_empty() => {
                    let (e, id) = entities.swap_remove(rng.gen_range(0..entities.len()));
                    world.despawn(e);
                    model.get_mut(&id).unwrap().owners -= 1;
                }
                60..67 if !entities.is_empty() => {
                    let (_, id) = entities[rng.gen_range(0..entities.len())];
                    let removed = world.resource_mut::<HeapAssets<Model>>().remove(id);
                    let m = model.get_mut(&id).unwrap();
                    assert_eq!(removed.is_some(), !m.gone, "step {step}");
                    if !m.gone {
                        assert!(removed.unwrap().intact(m.seed));
                        m.gone = true;
                        expected.push((2, id));
                    }
                }
                67..80 if !entities.is_empty() => {
                    let (_, id) = entities[rng.gen_range(0..entities.len())];
                    next += 1;
                    let mut assets = world.resource_mut::<HeapAssets<Model>>();
                    let m = model.get_mut(&id).unwrap();
                    match assets.get_mut(id) {
                        Some(mut v) => {
                            assert!(!m.gone && v.intact(m.seed), "step {step}");
                            *v = Blob::new(next);
                            m.seed = next;
                            expected.push((1, id));
                        }
                        None => assert!(m.gone, "step {step}"),
                    }
                }
                _ => {
                    app.update();
                    for (id, m) in model.iter_mut() {
                        if m.owners == 0 && !m.gone {
                            m.gone = true;
                            expected.push((2, *id));
                        }
                    }
                }
            }
            // Every id resolves exactly while the model says it is there.
            if step % 50 == 0 {
                let assets = app.world().resource::<HeapAssets<Model>>();
                for (id, m) in &model {
                    let pending = m.owners == 0 && !m.gone; // freed at the next upkeep
                    match assets.get(*id) {
                        Some(v) => assert!((!m.gone || pending) && v.intact(m.seed), "step {step}"),
                        None => assert!(m.gone, "step {step}"),
                    }
                }
                let live = model.values().filter(|m| !m.gone).count();
                assert_eq!(assets.len(), live, "step {step}");
            }
        }
        // Drop everything, then two frames: the upkeep frees, the next frame's readers
        // see the last messages.
        for (e, id) in entities.drain(..) {
            app.world_mut().despawn(e);
            model.get_mut(&id).unwrap().owners -= 1;
        }
        app.update();
        app.update();
        for (id, m) in model.iter_mut() {
            assert_eq!(m.owners, 0);
            if !m.gone {
                m.gone = true;
                expected.push((2, *id));
            }
        }
        assert!(app.world().resource::<HeapAssets<Model>>().is_empty());
        let kind = |e: &HeapAssetEvent<Model>| match e {
            HeapAssetEvent::Added { .. } => 0u8,
            HeapAssetEvent::Modified { .. } => 1,
            HeapAssetEvent::Removed { .. } => 2,
        };
        let mut actual: Vec<(u8, u64)> = app
            .world()
            .resource::<AllEvents>()
            .0
            .iter()
            .map(|e| (kind(e), e.id().raw().to_bits()))
            .collect();
        let mut expected: Vec<(u8, u64)> = expected
            .iter()
            .map(|(k, id)| (*k, id.raw().to_bits()))
            .collect();
        actual.sort_unstable();
        expected.sort_unstable();
        assert_eq!(actual, expected, "seed {seed}");
        let stats = app.world().resource::<TidyheapStats>();
        assert!(
            stats.total_moves > 0,
            "seed {seed}: the compactor moved values"
        );
    }
}
