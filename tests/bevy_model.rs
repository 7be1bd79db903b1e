//! A differential model of the Bevy plugin's stores: owners, explicit removes, writes
//! and messages against a simple model, with compaction every frame.

use bevy_app::Update;
use bevy_ecs::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Budget;
use tidyheap::bevy::{
    HeapAssetEvent, HeapAssets, HeapAssetsAppExt, HeapHandle, TidyheapConfig, TidyheapStats,
};

mod bevy_common;
use bevy_common::{app_with, plugin};

/// The model test's asset: 1 KiB whose contents follow from a seed, so a few hundred
/// of them span several spans.
struct Model([u64; 128]);

fn word(seed: u64, i: usize) -> u64 {
    let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl Model {
    fn new(seed: u64) -> Self {
        Self(core::array::from_fn(|i| word(seed, i)))
    }

    fn intact(&self, seed: u64) -> bool {
        self.0.iter().enumerate().all(|(i, w)| *w == word(seed, i))
    }
}

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
                        let h = assets.add(Model::new(next));
                        (h.id(), world.spawn(h).id())
                    } else {
                        let b = assets.add_blob(Model::new(next));
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
                            *v = Model::new(next);
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
