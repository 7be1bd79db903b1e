//! What a profiler records: [`ProfilingConfig`] and its [`Sampling`] rule.

/// Which allocations a profiler records (with their stack trace).
///
/// Allocations made while the profiler itself runs (its own tables come from the
/// system allocator; a report's strings may come from the heap being profiled) are
/// never recorded, though they count towards the sampling period (which keeps the
/// sampled-out path free of thread-local accesses).
///
/// # Examples
///
/// ```
/// use tidyheap::profile::{ProfilingConfig, Sampling};
/// // Like tcmalloc's heap profiler: one sample every 512 KiB allocated.
/// let config = ProfilingConfig::new().with_sampling(Sampling::EveryBytes(512 << 10));
/// assert_eq!(config.sampling, Sampling::EveryBytes(524_288));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    /// Every allocation: leak reports are exact. The default.
    EveryAllocation,
    /// The 1st, (n+1)th, (2n+1)th, … allocation of the heap (counted over all threads).
    /// `EveryNth(0)` and `EveryNth(1)` record every allocation.
    EveryNth(u64),
    /// Every allocation during which the heap's running total of allocated bytes
    /// passes a multiple of `n` (so every allocation of at least `n` bytes, and about
    /// one in `n / size` of the smaller ones). `EveryBytes(0)` and `EveryBytes(1)`
    /// record every allocation of at least one byte.
    EveryBytes(u64),
}

/// What one recorded allocation stands for under a [`Sampling`] rule: how many
/// allocations and how many bytes of the program's. The profiler's estimates
/// ([`SiteStats`](super::SiteStats)'s `estimated_*` fields,
/// [`ProfileReport::estimated_live_bytes`](super::ProfileReport::estimated_live_bytes))
/// are sums of these over the recorded allocations.
///
/// # Examples
///
/// ```
/// use tidyheap::profile::{Represented, Sampling};
/// // One in ten allocations is recorded: each stands for ten.
/// assert_eq!(
///     Sampling::EveryNth(10).represented(64),
///     Represented { allocations: 10, bytes: 640 }
/// );
/// // One sample per 4 KiB allocated: a 64 B sample stands for 4 KiB of 64 B blocks.
/// assert_eq!(
///     Sampling::EveryBytes(4096).represented(64),
///     Represented { allocations: 64, bytes: 4096 }
/// );
/// // Blocks of at least the period are always recorded and stand for themselves.
/// assert_eq!(
///     Sampling::EveryBytes(4096).represented(10_000),
///     Represented { allocations: 1, bytes: 10_000 }
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Represented {
    /// Allocations.
    pub allocations: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Sampling {
    /// What one recorded allocation of `size` bytes stands for.
    ///
    /// * every allocation: itself;
    /// * [`Sampling::EveryNth`]`(n)`: `n` allocations of `size` bytes;
    /// * [`Sampling::EveryBytes`]`(n)`: an allocation of `size < n` bytes is recorded when
    ///   the running total passes a multiple of `n`, which for a block at a random
    ///   offset happens with probability `size / n`; so it stands for `n` bytes, that is
    ///   `n / size` allocations (rounded). Blocks of `n` bytes or more are always
    ///   recorded and stand for themselves. Weight × probability is 1, so the estimates
    ///   are unbiased (tcmalloc's heap profiler estimates the same way, with the
    ///   weights of its random sampling).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::{Represented, Sampling};
    /// assert_eq!(
    ///     Sampling::EveryAllocation.represented(48),
    ///     Represented { allocations: 1, bytes: 48 }
    /// );
    /// ```
    pub fn represented(self, size: usize) -> Represented {
        let size = size as u64;
        match self {
            Sampling::EveryNth(n) if n > 1 => Represented {
                allocations: n,
                bytes: size.saturating_mul(n),
            },
            Sampling::EveryBytes(n) if n > 1 && (1..n).contains(&size) => Represented {
                allocations: (n + size / 2) / size,
                bytes: n,
            },
            _ => Represented {
                allocations: 1,
                bytes: size,
            },
        }
    }

    /// Whether every allocation is recorded (the estimates are then the recorded
    /// figures).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::Sampling;
    /// assert!(Sampling::EveryNth(1).records_everything());
    /// assert!(!Sampling::EveryBytes(4096).records_everything());
    /// ```
    pub fn records_everything(self) -> bool {
        matches!(
            self,
            Sampling::EveryAllocation | Sampling::EveryNth(0 | 1) | Sampling::EveryBytes(0 | 1)
        )
    }
}

/// How a heap profiles its allocations (feature `profiling`).
///
/// # Examples
///
/// ```
/// use tidyheap::profile::{ProfilingConfig, Sampling};
/// use tidyheap::{Heap, HeapConfig};
///
/// let config = ProfilingConfig::new()
///     .with_sampling(Sampling::EveryNth(100))
///     .with_max_frames(16)
///     .with_report_at_exit(true);
/// let heap = Heap::with_profiling(HeapConfig::DEFAULT, config);
/// assert_eq!(heap.profiling_config().sampling, Sampling::EveryNth(100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfilingConfig {
    /// Which allocations are recorded; default [`Sampling::EveryAllocation`].
    pub sampling: Sampling,
    /// The most stack frames kept per allocation (at most [`MAX_FRAMES`]; 0 keeps
    /// none). Default 32. The frames of the profiler itself count too.
    pub max_frames: usize,
    /// Print a report of the blocks still live to stderr when the process exits, or
    /// when the heap is dropped if that comes first. Default off; the environment
    /// variable `TIDYHEAP_PROFILE_REPORT` (set to anything but `0`) turns it on for
    /// every profiled heap.
    pub report_at_exit: bool,
    /// How many sites the at-exit report lists in each of its top-N tables. Default 10.
    pub report_sites: usize,
}

/// The most stack frames a profiler keeps per allocation.
pub const MAX_FRAMES: usize = 64;

impl ProfilingConfig {
    /// The default: every allocation recorded with up to 32 frames, no at-exit report
    /// (unless `TIDYHEAP_PROFILE_REPORT` is set), 10 sites per top-N table.
    pub const DEFAULT: Self = Self {
        sampling: Sampling::EveryAllocation,
        max_frames: 32,
        report_at_exit: false,
        report_sites: 10,
    };

    /// [`ProfilingConfig::DEFAULT`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// assert_eq!(ProfilingConfig::new(), ProfilingConfig::default());
    /// ```
    pub const fn new() -> Self {
        Self::DEFAULT
    }

    /// With `sampling`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::{ProfilingConfig, Sampling};
    /// let c = ProfilingConfig::new().with_sampling(Sampling::EveryNth(10));
    /// assert_eq!(c.sampling, Sampling::EveryNth(10));
    /// ```
    pub const fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// With at most `frames` stack frames per allocation (capped at [`MAX_FRAMES`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::{MAX_FRAMES, ProfilingConfig};
    /// assert_eq!(ProfilingConfig::new().with_max_frames(1000).max_frames, MAX_FRAMES);
    /// ```
    pub const fn with_max_frames(mut self, frames: usize) -> Self {
        self.max_frames = if frames < MAX_FRAMES {
            frames
        } else {
            MAX_FRAMES
        };
        self
    }

    /// With the at-exit report on or off.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// assert!(ProfilingConfig::new().with_report_at_exit(true).report_at_exit);
    /// ```
    pub const fn with_report_at_exit(mut self, on: bool) -> Self {
        self.report_at_exit = on;
        self
    }

    /// With `sites` sites per top-N table in the at-exit report.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// assert_eq!(ProfilingConfig::new().with_report_sites(3).report_sites, 3);
    /// ```
    pub const fn with_report_sites(mut self, sites: usize) -> Self {
        self.report_sites = sites;
        self
    }
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}
