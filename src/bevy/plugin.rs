//! `TidyheapPlugin::build`, the system sets, and the compact and report systems.

use core::time::Duration;
use std::sync::Arc;

use bevy_app::{App, First, Plugin};
use bevy_ecs::prelude::{Res, ResMut, Resource, SystemSet};
use bevy_ecs::schedule::IntoScheduleConfigs;
use parking_lot::Mutex;

use super::TidyheapError;
use super::background::BackgroundPass;
use super::config::{CompactionMode, TidyheapConfig, TidyheapPlugin};
use super::diagnostics::{self, DiagnosticsRequested};
use super::scratch::{self, FrameMemory};
use crate::frame::{FrameArena, FrameStats};
use crate::{CompactionObserver, CompactionReport, Heap};

/// The plugin's system sets, for ordering your systems around them.
///
/// Each frame runs, in this order:
///
/// 1. `BeginFrame`, in `First`: the scratch frame turns over ([`FrameMemory::index`]
///    grows by one; memory of frame `index − N` is reclaimed).
/// 2. your systems (`PreUpdate` … `PostUpdate`);
/// 3. in the configured schedule (default `Last`), chained:
///    * `Upkeep`: every `HeapAssets<T>` frees the values whose last owner was dropped
///      and sends its queued [`HeapAssetEvent`](super::HeapAssetEvent) messages;
///    * `Compact`: measures fragmentation and, at or above the threshold, runs one
///      budgeted pass (or signals the background thread);
///    * `Report`: folds the frame's passes into [`TidyheapStats`] and the diagnostics.
///
/// # Examples
///
/// ```
/// use bevy_app::{App, Last};
/// use bevy_ecs::prelude::*;
/// use tidyheap::bevy::{TidyheapPlugin, TidyheapStats, TidyheapSystems};
///
/// fn after_report(stats: Res<TidyheapStats>) {
///     assert_eq!(stats.reports, stats.frames);
/// }
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default())
///     .add_systems(Last, after_report.after(TidyheapSystems::Report));
/// app.update();
/// ```
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TidyheapSystems {
    /// Scratch frame turnover, in `First`.
    BeginFrame,
    /// Freeing dropped assets and sending asset messages, in the configured schedule.
    Upkeep,
    /// The compaction decision and pass, after `Upkeep`.
    Compact,
    /// Statistics and diagnostics, after `Compact`.
    Report,
}

/// The plugin's heap: every `HeapAssets<T>` of the app lives in it.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{TidyHeap, TidyheapPlugin};
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default());
/// let heap = app.world().resource::<TidyHeap>().heap().clone();
/// assert_eq!(heap.stats().live_bytes(), 0);
/// ```
#[derive(Resource, Debug)]
pub struct TidyHeap {
    heap: Arc<Heap>,
    passes: Arc<PassLog>,
}

impl TidyHeap {
    /// The heap.
    pub fn heap(&self) -> &Arc<Heap> {
        &self.heap
    }
}

/// The checked configuration, for systems and `init_heap_assets`.
#[derive(Resource)]
pub(super) struct Settings {
    pub(super) config: TidyheapConfig,
}

/// Passes that ended since the last report, summed (filled by the heap's observer, on
/// whichever thread ran the pass).
#[derive(Debug, Default)]
struct PassLog(Mutex<FrameCompaction>);

impl CompactionObserver for PassLog {
    fn on_pass(&self, report: &CompactionReport) {
        self.0.lock().add(report);
    }
}

/// What the compaction passes that ended in one frame did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct FrameCompaction {
    /// Passes that ended.
    pub passes: u64,
    /// Blocks moved.
    pub moves: u64,
    /// Bytes moved.
    pub bytes_moved: u64,
    /// Blocks skipped because a guard was held on them.
    pub skipped_busy: u64,
    /// Bytes handed back to the OS.
    pub bytes_released: u64,
    /// Wall time of the passes, summed.
    pub pass_time: Duration,
    /// The longest single pass.
    pub max_pass_time: Duration,
}

impl FrameCompaction {
    fn add(&mut self, r: &CompactionReport) {
        self.passes += 1;
        self.moves += r.blocks_moved;
        self.bytes_moved += r.bytes_moved;
        self.skipped_busy += r.skipped_busy;
        self.bytes_released += r.bytes_released;
        self.pass_time += r.elapsed;
        self.max_pass_time = self.max_pass_time.max(r.elapsed);
    }
}

/// What the plugin measured, updated by the `Compact` and `Report` sets every frame.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::{TidyheapPlugin, TidyheapStats};
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default());
/// app.update();
/// let stats = app.world().resource::<TidyheapStats>();
/// assert_eq!((stats.frames, stats.reports), (1, 1));
/// assert_eq!(stats.below_threshold, 1); // an empty heap is not fragmented
/// ```
#[derive(Resource, Clone, Debug, Default)]
#[non_exhaustive]
pub struct TidyheapStats {
    /// Frames in which the `Compact` system ran.
    pub frames: u64,
    /// Frames in which the `Report` system ran.
    pub reports: u64,
    /// Frames in which fragmentation was below the threshold, so no pass was started.
    pub below_threshold: u64,
    /// Passes started (run in the schedule, or signalled to the background thread).
    pub passes_started: u64,
    /// Pool fragmentation, `1 − live / committed`, when `Compact` last measured it.
    pub fragmentation: f64,
    /// Live bytes of the heap (fixed, movable and large blocks) at the last report.
    pub live_bytes: u64,
    /// Committed pool bytes of the heap at the last report.
    pub committed_bytes: usize,
    /// The passes that ended since the previous report.
    pub frame: FrameCompaction,
    /// The scratch arena's counters at the last report (see [`FrameMemory::stats`]).
    pub scratch: FrameStats,
    /// Passes ended, ever.
    pub total_passes: u64,
    /// Blocks moved, ever.
    pub total_moves: u64,
    /// Bytes moved, ever.
    pub total_bytes_moved: u64,
    /// NUMA: bytes of spans that started serving on their arena's node, ever (all of
    /// them on a one-node machine; see [`NumaStats`](crate::NumaStats)).
    pub numa_local_span_bytes: u64,
    /// NUMA: bytes of spans that started serving for a thread on another node, ever.
    pub numa_remote_span_bytes: u64,
    /// NUMA: pages moved by `Heap::migrate_to_node`, ever.
    pub numa_migrated_pages: u64,
    /// NUMA: bytes of handle blocks the compactor moved to the node that reads them,
    /// ever (0 on a one-node machine).
    pub numa_compactor_migrated_bytes: u64,
    /// NUMA: times a thread the scheduler moved to another node switched to an arena of
    /// its new node, ever (0 on a one-node machine).
    pub numa_thread_moves: u64,
}

/// Pool fragmentation of `heap` from its counters (no span walk): `1 − live /
/// committed`, 0 when nothing is committed.
pub(super) fn pool_fragmentation(heap: &Heap) -> (f64, u64, usize) {
    fragmentation_of(&heap.stats())
}

fn fragmentation_of(s: &crate::HeapStats) -> (f64, u64, usize) {
    let pool_live = s.fixed.live_bytes() + s.movable.live_bytes();
    let ratio = if s.committed_bytes == 0 {
        0.0
    } else {
        (1.0 - pool_live as f64 / s.committed_bytes as f64).max(0.0)
    };
    (ratio, s.live_bytes(), s.committed_bytes)
}

fn compact(
    heap: Res<TidyHeap>,
    settings: Res<Settings>,
    background: Option<Res<BackgroundPass>>,
    mut stats: ResMut<TidyheapStats>,
) {
    let config = &settings.config;
    let (fragmentation, _, _) = pool_fragmentation(&heap.heap);
    stats.frames += 1;
    stats.fragmentation = fragmentation;
    if fragmentation < config.fragmentation_threshold() || config.fragmentation_threshold() >= 1.0 {
        stats.below_threshold += 1;
        return;
    }
    stats.passes_started += 1;
    match background {
        Some(bg) => bg.request(),
        None => {
            // The report reaches `TidyheapStats` through the observer.
            heap.heap.compact(config.budget());
        }
    }
}

pub(super) fn report(
    heap: Res<TidyHeap>,
    memory: Res<FrameMemory>,
    mut stats: ResMut<TidyheapStats>,
) {
    let frame = core::mem::take(&mut *heap.passes.0.lock());
    let heap_stats = heap.heap.stats();
    let (_, live, committed) = fragmentation_of(&heap_stats);
    let numa = &heap_stats.numa;
    stats.numa_local_span_bytes = numa.nodes.iter().map(|n| n.local_span_bytes).sum();
    stats.numa_remote_span_bytes = numa.nodes.iter().map(|n| n.remote_span_bytes).sum();
    stats.numa_migrated_pages = numa.migrated_pages;
    stats.numa_compactor_migrated_bytes = numa.compactor_migrated_bytes;
    stats.numa_thread_moves = numa.thread_moves;
    stats.reports += 1;
    stats.frame = frame;
    stats.total_passes += frame.passes;
    stats.total_moves += frame.moves;
    stats.total_bytes_moved += frame.bytes_moved;
    stats.live_bytes = live;
    stats.committed_bytes = committed;
    stats.scratch = memory.stats();
    // With Tracy on, the frame's heap and scratch figures go to its plots too (the
    // per-pass plots come from the heap's own event sink).
    #[cfg(feature = "tracy")]
    {
        crate::tracy::plot_heap(&heap.heap);
        crate::tracy::plot_scratch(&stats.scratch);
    }
}

/// The plugin's own heap: with the `tracy` feature, one that reports its pools, moves
/// and passes to Tracy (as `bevy`); otherwise a plain one.
fn new_heap() -> Result<Heap, crate::AllocError> {
    #[cfg(feature = "tracy")]
    {
        crate::tracy::try_heap_with_config("bevy", crate::HeapConfig::DEFAULT)
    }
    #[cfg(not(feature = "tracy"))]
    {
        Heap::try_new()
    }
}

impl TidyheapPlugin {
    /// What `build()` does, returning the error instead of panicking. Everything that
    /// can fail happens before the app is touched, so on error the app is unchanged.
    ///
    /// # Errors
    ///
    /// [`TidyheapError::Heap`] if the OS refuses the heap's bookkeeping memory,
    /// [`TidyheapError::Thread`] if the background thread cannot be spawned.
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::App;
    /// use tidyheap::bevy::{FrameMemory, TidyheapPlugin};
    /// let mut app = App::new();
    /// TidyheapPlugin::default().try_build(&mut app)?;
    /// assert!(app.world().contains_resource::<FrameMemory>());
    /// # Ok::<(), tidyheap::bevy::TidyheapError>(())
    /// ```
    pub fn try_build(&self, app: &mut App) -> Result<(), TidyheapError> {
        let config = self.config.clone();
        let heap = match config.heap() {
            Some(h) => h.clone(),
            None => Arc::new(new_heap().map_err(|e| TidyheapError::Heap(e.into()))?),
        };
        let arena = FrameArena::with_config(config.frame_config())
            .map_err(|e| TidyheapError::Config(super::ConfigError::Frames(e)))?;
        let background = match config.mode() {
            CompactionMode::EveryFrame => None,
            CompactionMode::Background => Some(
                BackgroundPass::start(heap.clone(), config.budget())
                    .map_err(TidyheapError::Thread)?,
            ),
        };
        let passes = Arc::new(PassLog::default());
        heap.subscribe(passes.clone());

        let schedule = config.schedule();
        if let Some(bg) = background {
            app.insert_resource(bg);
        }
        app.insert_resource(TidyHeap { heap, passes })
            .insert_resource(FrameMemory::new(arena))
            .init_resource::<TidyheapStats>()
            .insert_resource(Settings { config })
            .configure_sets(First, TidyheapSystems::BeginFrame)
            .configure_sets(
                schedule,
                (
                    TidyheapSystems::Upkeep,
                    TidyheapSystems::Compact,
                    TidyheapSystems::Report,
                )
                    .chain(),
            )
            .add_systems(
                First,
                scratch::begin_scratch_frame.in_set(TidyheapSystems::BeginFrame),
            )
            .add_systems(schedule, compact.in_set(TidyheapSystems::Compact))
            .add_systems(schedule, report.in_set(TidyheapSystems::Report));
        if app.world().contains_resource::<DiagnosticsRequested>() {
            diagnostics::add_system(app, schedule);
        }
        Ok(())
    }
}

impl Plugin for TidyheapPlugin {
    /// Sets everything up (see [`TidyheapPlugin::try_build`]); nothing is left for
    /// `finish()`.
    ///
    /// # Panics
    ///
    /// If the OS refuses the heap's bookkeeping memory or the background thread.
    fn build(&self, app: &mut App) {
        if let Err(e) = self.try_build(app) {
            panic!("tidyheap: TidyheapPlugin cannot start: {e}");
        }
    }
}
