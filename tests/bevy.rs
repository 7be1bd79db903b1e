//! The Bevy plugin, driven headless with `app.update()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bevy_app::{App, First, Last, PostUpdate, Update};
use bevy_ecs::prelude::*;
use bevy_ecs::schedule::ScheduleLabel;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Budget;
use tidyheap::bevy::{
    BudgetLimit, CompactionMode, ConfigError, FrameMemory, HeapAssetEvent, HeapAssets,
    HeapAssetsAppExt, HeapBlob, HeapHandle, HeapQuery, TidyHeap, TidyheapConfig, TidyheapError,
    TidyheapPlugin, TidyheapStats, TidyheapSystems,
};
use tidyheap::frame::FrameConfigError;

mod bevy_common;
use bevy_common::{app_with, plugin};

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

#[test]
fn an_owning_handle_never_resolves_in_another_apps_store() {
    let app = || {
        let mut app = app_with(TidyheapPlugin::default());
        app.init_heap_assets::<Blob<32>>();
        app
    };
    let (mut a, mut b) = (app(), app());
    let from_a = a
        .world_mut()
        .resource_mut::<HeapAssets<Blob<32>>>()
        .add_blob(Blob::new(1));
    let from_b = b
        .world_mut()
        .resource_mut::<HeapAssets<Blob<32>>>()
        .add(Blob::new(2));
    let mut in_b = b.world_mut().resource_mut::<HeapAssets<Blob<32>>>();
    // Both stores are the first of their heaps, so the slot and generation of `from_a`
    // name `from_b`'s value in `b` (a plain id carries no store identity, and today's
    // store tags are per heap): only the owner's store identity tells them apart.
    assert!(in_b.get(&from_a).is_none());
    assert!(in_b.read().get(&from_a).is_none());
    assert!(!in_b.contains(&from_a));
    assert!(in_b.get_mut(&from_a).is_none());
    assert!(in_b.remove(&from_a).is_none());
    assert!(in_b.get(&from_b).unwrap().intact(2));
    let in_a = a.world().resource::<HeapAssets<Blob<32>>>();
    assert!(in_a.get(&from_a).unwrap().intact(1));
    assert!(in_a.get(&from_b).is_none());
}

/// With the `tracy` feature too, the plugin's own heap reports to Tracy (through its
/// event sink) and the frame's report step plots; the real client runs, no server.
#[cfg(feature = "tracy")]
#[test]
fn with_tracy_the_plugins_heap_reports_to_tracy() {
    let mut app = App::new();
    tidyheap::bevy::TidyheapPlugin::default()
        .try_build(&mut app)
        .unwrap();
    let heap = app
        .world()
        .resource::<tidyheap::bevy::TidyHeap>()
        .heap()
        .clone();
    assert!(heap.has_events(), "the plugin's heap has Tracy's sink");
    for _ in 0..10 {
        app.update();
    }
}
