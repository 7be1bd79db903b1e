//! Code shared by `benches/workloads.rs`, `benches/mimalloc_bench.rs` and
//! `examples/report/` (each includes this directory with `#[path]`).
//!
//! * [`peers`]: the allocators measured side by side, behind one [`peers::Peer`] trait
//!   (tidyheap's `Heap`, glibc through `std::alloc::System`, mimalloc through
//!   `mimalloc::MiMalloc`; all called directly, so all run in one process);
//! * [`database`], [`web`], [`game`], [`ml`]: the workloads of issue 6, each a kernel
//!   that returns an [`Outcome`] (time of the measured part, operations, RSS figures);
//! * [`measure`]: RSS, thread CPU time and Mesh's pattern (also used by
//!   `benches/compaction.rs` and `examples/defrag.rs`);
//! * [`mbench`]: ports of mimalloc-bench patterns (larson, xmalloc, cache-scratch,
//!   mstress), run with 1 or 2 threads;
//! * [`churn`]: issue 11's realloc churn and 4 KiB burst (used by `benches/alloc.rs`).
//!
//! Every kernel is driven by seeded RNGs, so every peer sees the same sequence of
//! requests, and every run the same structure.

pub mod churn;
pub mod database;
pub mod game;
pub mod mbench;
pub mod measure;
pub mod ml;
pub mod peers;
pub mod web;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `cargo test --benches`: every benchmark runs once, on tiny sizes.
    Test,
    /// `cargo run --release --example report`: the same sizes as `Bench` (one run is
    /// short), measured with fewer runs than criterion takes.
    Report,
    /// `cargo bench`: full sizes.
    Bench,
}

impl Mode {
    /// `Bench` when criterion was started by `cargo bench` (which passes `--bench`),
    /// `Test` otherwise (`cargo test --benches` runs each benchmark once).
    pub fn from_args() -> Self {
        if std::env::args().any(|a| a == "--bench") {
            Mode::Bench
        } else {
            Mode::Test
        }
    }
}

/// A workload: a scripted request sequence, replayed on each of its peers.
pub trait Workload {
    /// The criterion group and table name.
    fn name(&self) -> &'static str;
    /// The peers it runs on, tidyheap's variants first.
    fn peers(&self) -> &'static [&'static str];
    /// The size label of a run (the last part of its criterion name).
    fn size(&self) -> String;
    /// Operations per run (the unit is the workload's; see its docs).
    fn ops(&self) -> u64;
    /// One run on `peer`; with `probe`, RSS is sampled as it goes (slower: do not time
    /// a probed run), after the peers' retained memory went back to the OS (tidyheap:
    /// a fresh heap; timed runs reuse one heap per workload).
    fn run(&self, peer: &str, probe: bool) -> Outcome;
}

/// Every workload, sized for `mode`.
pub fn workloads(mode: Mode) -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(database::Database::new(mode)),
        Box::new(web::Web::new(mode)),
        Box::new(game::Game::new(mode)),
        Box::new(ml::Ml::new(mode)),
    ]
}

/// What one run of a workload kernel measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Wall time of the measured part (setup of the driver's own vectors excluded).
    pub elapsed: Duration,
    /// Operations done in that time (the unit is the workload's; see its docs).
    pub ops: u64,
    /// Largest RSS rise over the baseline seen during the run (0 unless probed).
    pub peak_rss: usize,
    /// RSS rise over the baseline at the workload's end point (0 unless probed).
    pub end_rss: usize,
    /// Of that rise, pages given back with `MADV_FREE` that the kernel has not taken
    /// yet (`LazyFree` in `/proc/self/smaps_rollup`): resident, but the kernel reclaims
    /// them without a write-back the moment it needs memory (0 unless probed).
    pub end_lazy_free: usize,
    /// Requested bytes live at the end point.
    pub end_live: usize,
    /// The allocator's own fragmentation figure at the end point, where it has one
    /// (tidyheap: `1 - live / committed` of its pools, from `Heap::stats` or
    /// `Heap::fragmentation`).
    pub own_frag: Option<f64>,
    /// What compaction cost and gave back, for workloads where some peers compact
    /// (`game_engine`: zero for the peers that do not); `None` elsewhere.
    pub compaction: Option<CompactionCost>,
}

/// Compaction's share of a run (issue 11's honest game metric): its time beside the
/// frame rate, and what it reclaimed for that time.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactionCost {
    /// Wall time inside compaction calls, summed over the run.
    pub time: Duration,
    /// Thread CPU time inside compaction calls, summed over the run.
    pub cpu: Duration,
    /// Bytes compaction handed back to the OS (`CompactReport::bytes_released`).
    pub reclaimed: u64,
}

impl CompactionCost {
    /// Mean wall time of compaction per operation (frame), in µs.
    pub fn us_per_op(&self, ops: u64) -> f64 {
        self.time.as_secs_f64() * 1e6 / ops.max(1) as f64
    }

    /// Thread CPU time of compaction per MiB reclaimed, in ms; `None` when nothing was
    /// reclaimed (an allocator that never compacts reclaims nothing).
    pub fn cpu_ms_per_mib(&self) -> Option<f64> {
        (self.reclaimed > 0)
            .then(|| self.cpu.as_secs_f64() * 1e3 / (self.reclaimed as f64 / f64::from(1 << 20)))
    }

    /// `compaction 12.3 µs/frame, CPU 4.5 ms per MiB released (6.7 MiB)`, or `nothing
    /// released` in place of the CPU figure. Released is gross: memory handed back,
    /// reused and handed back again counts each time.
    pub fn describe(&self, ops: u64) -> String {
        let per_mib = self.cpu_ms_per_mib().map_or_else(
            || "nothing released".to_string(),
            |ms| {
                format!(
                    "CPU {ms:.2} ms per MiB released ({:.1} MiB)",
                    self.reclaimed as f64 / f64::from(1 << 20)
                )
            },
        );
        format!("compaction {:.1} µs/frame, {per_mib}", self.us_per_op(ops))
    }
}

impl Outcome {
    /// `1 - live / RSS rise` at the end point: the share of the memory the run added to
    /// the process that holds no live data. `None` when not probed or nothing is live.
    pub fn rss_frag(&self) -> Option<f64> {
        (self.end_rss > 0 && self.end_live > 0)
            .then(|| 1.0 - self.end_live as f64 / self.end_rss as f64)
    }

    /// RSS rise at the end point less the lazily freed pages in it.
    pub fn held_rss(&self) -> usize {
        self.end_rss.saturating_sub(self.end_lazy_free)
    }

    /// `1 - live / held_rss`: fragmentation counting only the memory the kernel cannot
    /// take back without asking. `None` when not probed or nothing is live.
    pub fn held_frag(&self) -> Option<f64> {
        (self.held_rss() > 0 && self.end_live > 0)
            .then(|| 1.0 - self.end_live as f64 / self.held_rss() as f64)
    }

    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// One line for a probe run: RSS figures and fragmentation.
    pub fn describe(&self) -> String {
        let mib = |b: usize| b as f64 / f64::from(1 << 20);
        let frag = |f: Option<f64>| f.map_or_else(|| "-".to_string(), |f| format!("{f:.3}"));
        format!(
            "{:>12.3e} ops/s  peak RSS +{:>8.1} MiB  end RSS +{:>8.1} MiB  (lazily freed \
             {:>5.1} MiB)  live {:>8.1} MiB  frag (RSS) {:>6}  frag (RSS − lazy) {:>6}  \
             frag (own) {:>6}",
            self.ops_per_sec(),
            mib(self.peak_rss),
            mib(self.end_rss),
            mib(self.end_lazy_free),
            mib(self.end_live),
            frag(self.rss_frag()),
            frag(self.held_frag()),
            frag(self.own_frag),
        ) + &self
            .compaction
            .map_or_else(String::new, |c| format!("  {}", c.describe(self.ops)))
    }
}

/// Resident-set sampling from `/proc/self/statm`, as a rise over a baseline taken when
/// the probe starts. RSS is process-wide, so a probe only means something while nothing
/// else runs; the drivers probe in a separate, untimed run of each kernel.
pub struct Probe {
    /// The open `statm` file (read with `pread`, so no allocation per sample); `None`
    /// for a disabled probe.
    statm: Option<File>,
    base: usize,
    peak: usize,
    /// `LazyFree` when the probe started.
    lazy_base: usize,
}

impl Probe {
    /// A probe that does nothing (for timed runs).
    pub fn off() -> Self {
        Self {
            statm: None,
            base: 0,
            peak: 0,
            lazy_base: 0,
        }
    }

    /// Returns retained free memory of the system allocator and mimalloc to the OS, then
    /// takes the baseline.
    pub fn start() -> Self {
        peers::settle();
        let statm = File::open("/proc/self/statm").expect("/proc/self/statm");
        let mut p = Self {
            statm: Some(statm),
            base: 0,
            peak: 0,
            lazy_base: lazy_free(),
        };
        p.base = p.resident();
        p
    }

    /// Starts a probe if `on`, else returns a disabled one.
    pub fn new(on: bool) -> Self {
        if on { Self::start() } else { Self::off() }
    }

    fn resident(&self) -> usize {
        let Some(f) = &self.statm else { return 0 };
        let mut buf = [0u8; 128];
        let n = f.read_at(&mut buf, 0).expect("read /proc/self/statm");
        let text = std::str::from_utf8(&buf[..n]).expect("statm is ASCII");
        let pages: usize = text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .expect("statm resident field");
        pages * tidyheap::os::PAGE_SIZE
    }

    /// RSS rise now; also updates the peak. 0 for a disabled probe.
    pub fn sample(&mut self) -> usize {
        if self.statm.is_none() {
            return 0;
        }
        let d = self.resident().saturating_sub(self.base);
        self.peak = self.peak.max(d);
        d
    }

    /// The rise of lazily freed pages (`MADV_FREE`d, not yet taken by the kernel) since
    /// the probe started; 0 for a disabled probe. Reads `/proc/self/smaps_rollup`
    /// (slow, and it allocates): call it once, at the end point.
    pub fn lazy_free_rise(&self) -> usize {
        if self.statm.is_none() {
            return 0;
        }
        lazy_free().saturating_sub(self.lazy_base)
    }

    /// Whether this probe samples at all.
    pub fn is_on(&self) -> bool {
        self.statm.is_some()
    }

    /// The largest rise sampled so far.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

/// `LazyFree` of this process in bytes, from `/proc/self/smaps_rollup` (0 where the
/// kernel does not report it).
fn lazy_free() -> usize {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("LazyFree:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The median of `v` (sorted in place); `v` must not be empty.
pub fn median<T: Copy + PartialOrd>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[v.len() / 2]
}
