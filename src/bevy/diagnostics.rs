//! [`TidyheapDiagnosticsPlugin`]: the plugin's numbers in Bevy's diagnostics.

use bevy_app::{App, Plugin};
use bevy_diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
use bevy_ecs::prelude::{Res, Resource};
use bevy_ecs::schedule::{InternedScheduleLabel, IntoScheduleConfigs};

use super::plugin::{Settings, TidyheapStats, TidyheapSystems};

/// Records the plugin's [`TidyheapStats`] as Bevy diagnostics every frame, in the
/// [`TidyheapSystems::Report`] set. Works with `LogDiagnosticsPlugin` and anything else
/// that reads the `DiagnosticsStore`. Add it before or after
/// [`TidyheapPlugin`](super::TidyheapPlugin).
///
/// | path | value |
/// |---|---|
/// | `tidyheap/live_bytes` | live bytes of the heap |
/// | `tidyheap/committed_bytes` | committed pool bytes |
/// | `tidyheap/fragmentation` | `1 − live / committed` of the pools, 0 ..= 1 |
/// | `tidyheap/bytes_moved` | bytes moved by the frame's passes |
/// | `tidyheap/moves` | blocks moved by the frame's passes |
/// | `tidyheap/pass_us` | wall time of the frame's passes, µs |
/// | `tidyheap/skipped_busy` | blocks the frame's passes skipped because they were in use |
/// | `tidyheap/scratch_bytes` | scratch bytes used by the previous frame |
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use bevy_diagnostic::DiagnosticsStore;
/// use tidyheap::bevy::{TidyheapDiagnosticsPlugin, TidyheapPlugin};
///
/// let mut app = App::new();
/// app.add_plugins((TidyheapPlugin::default(), TidyheapDiagnosticsPlugin));
/// app.update();
/// let store = app.world().resource::<DiagnosticsStore>();
/// let frag = store.get(&TidyheapDiagnosticsPlugin::FRAGMENTATION).unwrap();
/// assert_eq!(frag.value(), Some(0.0));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TidyheapDiagnosticsPlugin;

impl TidyheapDiagnosticsPlugin {
    /// `tidyheap/live_bytes`.
    pub const LIVE_BYTES: DiagnosticPath = DiagnosticPath::const_new("tidyheap/live_bytes");
    /// `tidyheap/committed_bytes`.
    pub const COMMITTED_BYTES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/committed_bytes");
    /// `tidyheap/fragmentation`.
    pub const FRAGMENTATION: DiagnosticPath = DiagnosticPath::const_new("tidyheap/fragmentation");
    /// `tidyheap/bytes_moved`.
    pub const BYTES_MOVED: DiagnosticPath = DiagnosticPath::const_new("tidyheap/bytes_moved");
    /// `tidyheap/moves`.
    pub const MOVES: DiagnosticPath = DiagnosticPath::const_new("tidyheap/moves");
    /// `tidyheap/pass_us`.
    pub const PASS_US: DiagnosticPath = DiagnosticPath::const_new("tidyheap/pass_us");
    /// `tidyheap/skipped_busy`.
    pub const SKIPPED_BUSY: DiagnosticPath = DiagnosticPath::const_new("tidyheap/skipped_busy");
    /// `tidyheap/scratch_bytes`.
    pub const SCRATCH_BYTES: DiagnosticPath = DiagnosticPath::const_new("tidyheap/scratch_bytes");
    /// `tidyheap/numa_local_span_bytes`: bytes of spans that started serving on their
    /// arena's node, ever.
    pub const NUMA_LOCAL_SPAN_BYTES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/numa_local_span_bytes");
    /// `tidyheap/numa_remote_span_bytes`: bytes of spans that started serving for a
    /// thread on another node, ever.
    pub const NUMA_REMOTE_SPAN_BYTES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/numa_remote_span_bytes");
    /// `tidyheap/numa_migrated_pages`: pages moved between nodes, ever.
    pub const NUMA_MIGRATED_PAGES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/numa_migrated_pages");
    /// `tidyheap/numa_compactor_migrated_bytes`: bytes of handle blocks the compactor
    /// moved to the node that reads them, ever.
    pub const NUMA_COMPACTOR_MIGRATED_BYTES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/numa_compactor_migrated_bytes");
    /// `tidyheap/numa_thread_moves`: times a thread moved by the scheduler switched to
    /// an arena of its new node, ever.
    pub const NUMA_THREAD_MOVES: DiagnosticPath =
        DiagnosticPath::const_new("tidyheap/numa_thread_moves");

    /// Every path with its suffix.
    pub const PATHS: [(DiagnosticPath, &'static str); 13] = [
        (Self::LIVE_BYTES, "B"),
        (Self::COMMITTED_BYTES, "B"),
        (Self::FRAGMENTATION, ""),
        (Self::BYTES_MOVED, "B"),
        (Self::MOVES, ""),
        (Self::PASS_US, "us"),
        (Self::SKIPPED_BUSY, ""),
        (Self::SCRATCH_BYTES, "B"),
        (Self::NUMA_LOCAL_SPAN_BYTES, "B"),
        (Self::NUMA_REMOTE_SPAN_BYTES, "B"),
        (Self::NUMA_MIGRATED_PAGES, ""),
        (Self::NUMA_COMPACTOR_MIGRATED_BYTES, "B"),
        (Self::NUMA_THREAD_MOVES, ""),
    ];
}

/// Left by the diagnostics plugin when it is built before `TidyheapPlugin`, which then
/// adds the system (it alone knows the schedule).
#[derive(Resource)]
pub(super) struct DiagnosticsRequested;

impl Plugin for TidyheapDiagnosticsPlugin {
    fn build(&self, app: &mut App) {
        for (path, suffix) in Self::PATHS {
            app.register_diagnostic(Diagnostic::new(path).with_suffix(suffix));
        }
        match app.world().get_resource::<Settings>() {
            Some(settings) => {
                let schedule = settings.config.schedule();
                add_system(app, schedule);
            }
            None => {
                app.insert_resource(DiagnosticsRequested);
            }
        }
    }
}

/// Adds the measuring system to `schedule`.
pub(super) fn add_system(app: &mut App, schedule: InternedScheduleLabel) {
    app.add_systems(
        schedule,
        measure
            .in_set(TidyheapSystems::Report)
            .after(super::plugin::report),
    );
}

fn measure(mut diagnostics: Diagnostics, stats: Res<TidyheapStats>) {
    let f = &stats.frame;
    let values = [
        stats.live_bytes as f64,
        stats.committed_bytes as f64,
        stats.fragmentation,
        f.bytes_moved as f64,
        f.moves as f64,
        f.pass_time.as_secs_f64() * 1e6,
        f.skipped_busy as f64,
        stats.scratch.frame_bytes as f64,
        stats.numa_local_span_bytes as f64,
        stats.numa_remote_span_bytes as f64,
        stats.numa_migrated_pages as f64,
        stats.numa_compactor_migrated_bytes as f64,
        stats.numa_thread_moves as f64,
    ];
    for ((path, _), value) in TidyheapDiagnosticsPlugin::PATHS.iter().zip(values) {
        diagnostics.add_measurement(path, || value);
    }
}
