//! The Bevy plugin's scratch memory and diagnostics, driven headless with
//! `app.update()`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use allocator_api2::vec::Vec as ScratchVec;
use bevy_app::{App, Update};
use bevy_diagnostic::{DiagnosticsStore, LogDiagnosticsPlugin};
use bevy_ecs::prelude::*;
use bevy_time::TimePlugin;
use tidyheap::bevy::{
    FrameAlloc, FrameMemory, HeapAssets, HeapAssetsAppExt, TidyheapConfig,
    TidyheapDiagnosticsPlugin, TidyheapPlugin, TidyheapStats,
};

mod bevy_common;
use bevy_common::{app_with, plugin};

#[test]
fn diagnostics_have_values_after_update_in_either_plugin_order() {
    for diagnostics_first in [false, true] {
        let mut app = App::new();
        if diagnostics_first {
            app.add_plugins((TidyheapDiagnosticsPlugin, TidyheapPlugin::default()));
        } else {
            app.add_plugins((TidyheapPlugin::default(), TidyheapDiagnosticsPlugin));
        }
        app.init_heap_assets::<[u64; 32]>();
        let mut assets = app.world_mut().resource_mut::<HeapAssets<[u64; 32]>>();
        let owners: Vec<_> = (0..10).map(|i| assets.add([i; 32])).collect();
        app.world_mut().spawn_batch(owners);
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
        let value = |p| store.get(&p).and_then(|d| d.value()).unwrap();
        let local = value(TidyheapDiagnosticsPlugin::NUMA_LOCAL_SPAN_BYTES);
        let remote = value(TidyheapDiagnosticsPlugin::NUMA_REMOTE_SPAN_BYTES);
        let spans = app
            .world()
            .resource::<tidyheap::bevy::TidyHeap>()
            .heap()
            .stats()
            .numa;
        assert!(local > 0.0, "the assets' spans count as local or remote");
        assert_eq!(
            local + remote,
            spans
                .nodes
                .iter()
                .map(|n| n.local_span_bytes + n.remote_span_bytes)
                .sum::<u64>() as f64,
            "the NUMA paths report the heap's node stats"
        );
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
