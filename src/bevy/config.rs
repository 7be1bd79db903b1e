//! The plugin's configuration, and how a malformed one is refused before `build()`.
//!
//! Bevy's `Plugin::build` cannot return an error, so the plugin only ever holds a
//! configuration that has already been checked: [`TidyheapPlugin::try_new`] validates a
//! [`TidyheapConfig`] and returns a [`ConfigError`] naming the first bad field, and
//! [`TidyheapPlugin`] has no other way in (its `Default` is the valid default
//! configuration). A bad value is therefore an error where the app is put together,
//! never a panic in the middle of a game.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use bevy_app::Last;
use bevy_ecs::schedule::{InternedScheduleLabel, ScheduleLabel};

use crate::frame::{FrameArena, FrameConfig, FrameConfigError};
use crate::{Budget, Heap};

/// Where the compaction pass runs.
///
/// # Examples
///
/// ```
/// use tidyheap::bevy::{CompactionMode, TidyheapConfig};
/// let config = TidyheapConfig::new().with_mode(CompactionMode::Background);
/// assert_eq!(config.mode(), CompactionMode::Background);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompactionMode {
    /// One budgeted pass per frame, inside the schedule, in
    /// [`TidyheapSystems::Compact`](super::TidyheapSystems::Compact).
    #[default]
    EveryFrame,
    /// One budgeted pass per frame on a dedicated thread: the `Compact` system only
    /// signals it, so the pass overlaps the next frame's systems (the compactor never
    /// blocks readers longer than one block copy, and skips what they hold). Its report
    /// reaches [`TidyheapStats`](super::TidyheapStats) in the frame in which the pass
    /// ends. A pass still running when the next signal comes absorbs it.
    Background,
}

/// The configuration of a [`TidyheapPlugin`]: compaction budget, schedule, threshold,
/// mode, scratch frames in flight. Check it with [`TidyheapPlugin::try_new`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use bevy_app::PostUpdate;
/// use tidyheap::Budget;
/// use tidyheap::bevy::{TidyheapConfig, TidyheapPlugin};
///
/// let plugin = TidyheapPlugin::try_new(
///     TidyheapConfig::new()
///         .with_budget(Budget::time(Duration::from_micros(300)).with_bytes(1 << 20))
///         .with_schedule(PostUpdate)
///         .with_fragmentation_threshold(0.2)
///         .with_frames_in_flight(3),
/// )?;
/// assert_eq!(plugin.config().frames_in_flight(), 3);
/// # Ok::<(), tidyheap::bevy::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct TidyheapConfig {
    budget: Budget,
    schedule: InternedScheduleLabel,
    threshold: f64,
    mode: CompactionMode,
    frame: FrameConfig,
    heap: Option<Arc<Heap>>,
}

impl TidyheapConfig {
    /// Default per-frame budget: 500 µs and 4 MiB, whichever comes first.
    pub const DEFAULT_BUDGET: Budget = Budget::time(Duration::from_micros(500)).with_bytes(4 << 20);
    /// Default [`fragmentation_threshold`](Self::fragmentation_threshold): no pass runs
    /// while less than 10 % of the committed pool memory is waste.
    pub const DEFAULT_THRESHOLD: f64 = 0.10;

    /// The defaults: [`DEFAULT_BUDGET`](Self::DEFAULT_BUDGET) in `Last`, threshold
    /// 0.10, [`CompactionMode::EveryFrame`], 2 scratch frames in flight, a heap of its
    /// own.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::bevy::TidyheapConfig;
    /// assert_eq!(TidyheapConfig::new().frames_in_flight(), 2);
    /// ```
    pub fn new() -> Self {
        Self {
            budget: Self::DEFAULT_BUDGET,
            schedule: Last.intern(),
            threshold: Self::DEFAULT_THRESHOLD,
            mode: CompactionMode::EveryFrame,
            frame: FrameConfig::new(),
            heap: None,
        }
    }

    /// Sets the budget of each pass. Every limit that is set must be non-zero, and at
    /// least one must be set (see [`ConfigError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{Budget, bevy::TidyheapConfig};
    /// let c = TidyheapConfig::new().with_budget(Budget::blocks(64));
    /// assert_eq!(c.budget().blocks, Some(64));
    /// ```
    #[must_use]
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the schedule of the upkeep, compact and report sets (default `Last`). Scratch
    /// memory always turns over in `First`.
    ///
    /// # Examples
    ///
    /// ```
    /// use bevy_app::PostUpdate;
    /// use bevy_ecs::schedule::ScheduleLabel;
    /// use tidyheap::bevy::TidyheapConfig;
    /// let c = TidyheapConfig::new().with_schedule(PostUpdate);
    /// assert_eq!(c.schedule(), PostUpdate.intern());
    /// ```
    #[must_use]
    pub fn with_schedule(mut self, schedule: impl ScheduleLabel) -> Self {
        self.schedule = schedule.intern();
        self
    }

    /// Sets the fragmentation (`1 − live / committed` of the heap's pools) below which
    /// no pass runs, in `0.0 ..= 1.0` (1.0: never compact).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::bevy::TidyheapConfig;
    /// let c = TidyheapConfig::new().with_fragmentation_threshold(0.25);
    /// assert_eq!(c.fragmentation_threshold(), 0.25);
    /// ```
    #[must_use]
    pub fn with_fragmentation_threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold;
        self
    }

    /// Sets where passes run.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::bevy::{CompactionMode, TidyheapConfig};
    /// let c = TidyheapConfig::new().with_mode(CompactionMode::Background);
    /// assert_eq!(c.mode(), CompactionMode::Background);
    /// ```
    #[must_use]
    pub fn with_mode(mut self, mode: CompactionMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets `N`, the scratch frames in flight: memory from the raw scratch API in frame
    /// `k` stays valid until frame `k + N` begins (1 ..=
    /// [`FrameConfig::MAX_FRAMES_IN_FLIGHT`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::bevy::TidyheapConfig;
    /// assert_eq!(TidyheapConfig::new().with_frames_in_flight(3).frames_in_flight(), 3);
    /// ```
    #[must_use]
    pub fn with_frames_in_flight(mut self, frames: usize) -> Self {
        self.frame = self.frame.with_frames_in_flight(frames);
        self
    }

    /// Sets the whole scratch arena configuration (chunk size, trimming, lanes, frames
    /// in flight).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{bevy::TidyheapConfig, frame::FrameConfig};
    /// let c = TidyheapConfig::new().with_frame_config(FrameConfig::new().with_lanes(16));
    /// assert_eq!(c.frame_config().lanes(), 16);
    /// ```
    #[must_use]
    pub fn with_frame_config(mut self, frame: FrameConfig) -> Self {
        self.frame = frame;
        self
    }

    /// Uses `heap` (shared with code outside the app) instead of a heap of the plugin's
    /// own. The plugin subscribes a [`CompactionObserver`](crate::CompactionObserver) to
    /// it to count passes, so [`TidyheapStats`](super::TidyheapStats) also counts passes
    /// run on it from outside the app.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tidyheap::{Heap, bevy::TidyheapConfig};
    /// let heap = Arc::new(Heap::new());
    /// let c = TidyheapConfig::new().with_heap(heap.clone());
    /// assert!(Arc::ptr_eq(c.heap().unwrap(), &heap));
    /// ```
    #[must_use]
    pub fn with_heap(mut self, heap: Arc<Heap>) -> Self {
        self.heap = Some(heap);
        self
    }

    /// The per-pass budget.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The schedule of the upkeep, compact and report sets.
    pub fn schedule(&self) -> InternedScheduleLabel {
        self.schedule
    }

    /// The fragmentation below which no pass runs.
    pub fn fragmentation_threshold(&self) -> f64 {
        self.threshold
    }

    /// Where passes run.
    pub fn mode(&self) -> CompactionMode {
        self.mode
    }

    /// Scratch frames in flight.
    pub fn frames_in_flight(&self) -> usize {
        self.frame.frames_in_flight()
    }

    /// The scratch arena configuration.
    pub fn frame_config(&self) -> FrameConfig {
        self.frame
    }

    /// The heap given with [`with_heap`](Self::with_heap), if any.
    pub fn heap(&self) -> Option<&Arc<Heap>> {
        self.heap.as_ref()
    }

    /// Checks every field; see [`ConfigError`].
    fn validate(&self) -> Result<(), ConfigError> {
        let b = self.budget;
        if b.bytes.is_none() && b.blocks.is_none() && b.time.is_none() {
            return Err(ConfigError::UnboundedBudget);
        }
        if b.bytes == Some(0) {
            return Err(ConfigError::EmptyBudget(BudgetLimit::Bytes));
        }
        if b.blocks == Some(0) {
            return Err(ConfigError::EmptyBudget(BudgetLimit::Moves));
        }
        if b.time == Some(Duration::ZERO) {
            return Err(ConfigError::EmptyBudget(BudgetLimit::Time));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ConfigError::Threshold(self.threshold));
        }
        // The arena constructor is the one place that knows the frame ranges; building
        // one maps nothing (chunks are mapped on first allocation).
        FrameArena::with_config(self.frame).map_err(ConfigError::Frames)?;
        Ok(())
    }
}

impl Default for TidyheapConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Which limit of a [`Budget`] is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetLimit {
    /// [`Budget::bytes`].
    Bytes,
    /// [`Budget::blocks`] (moves).
    Moves,
    /// [`Budget::time`].
    Time,
}

/// A [`TidyheapConfig`] that [`TidyheapPlugin::try_new`] refuses.
///
/// # Examples
///
/// ```
/// use tidyheap::Budget;
/// use tidyheap::bevy::{BudgetLimit, ConfigError, TidyheapConfig, TidyheapPlugin};
///
/// let err = TidyheapPlugin::try_new(TidyheapConfig::new().with_budget(Budget::bytes(0)))
///     .unwrap_err();
/// assert_eq!(err, ConfigError::EmptyBudget(BudgetLimit::Bytes));
/// assert!(err.to_string().contains("bytes"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The budget sets no limit: one pass could run a whole compaction plan in a frame.
    UnboundedBudget,
    /// A limit of the budget is zero: no pass could ever move a block.
    EmptyBudget(BudgetLimit),
    /// The fragmentation threshold is not in `0.0 ..= 1.0` (or is NaN).
    Threshold(f64),
    /// The scratch arena configuration is out of range (for example zero frames in
    /// flight).
    Frames(FrameConfigError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tidyheap plugin configuration: ")?;
        match self {
            Self::UnboundedBudget => f.write_str(
                "the compaction budget sets no limit; set bytes, moves or time per frame",
            ),
            Self::EmptyBudget(limit) => {
                let which = match limit {
                    BudgetLimit::Bytes => "bytes",
                    BudgetLimit::Moves => "moves",
                    BudgetLimit::Time => "time",
                };
                write!(
                    f,
                    "the compaction budget allows zero {which}, so no block could ever move"
                )
            }
            Self::Threshold(t) => {
                write!(f, "fragmentation threshold must be in 0.0..=1.0, got {t}")
            }
            Self::Frames(e) => write!(f, "scratch frames: {e}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Frames(e) => Some(e),
            _ => None,
        }
    }
}

/// The Bevy plugin: a movable heap for [`HeapAssets`](super::HeapAssets), per-frame
/// scratch memory ([`FrameAlloc`](super::FrameAlloc)) and a compaction pass every frame.
/// See the [module docs](super) for what it adds to the app.
///
/// It holds a configuration that [`try_new`](Self::try_new) has checked, so `build()`
/// never sees a malformed one (its `Default` is the default configuration, which is
/// valid). `build()` can still fail if the OS refuses the heap's
/// bookkeeping memory or the background thread; it then panics with the reason (at
/// start-up, like any plugin), and [`TidyheapPlugin::try_build`] is the form that
/// returns the error instead.
///
/// # Examples
///
/// ```
/// use bevy_app::App;
/// use tidyheap::bevy::TidyheapPlugin;
///
/// let mut app = App::new();
/// app.add_plugins(TidyheapPlugin::default());
/// app.update();
/// ```
#[derive(Clone, Debug, Default)]
pub struct TidyheapPlugin {
    pub(super) config: TidyheapConfig,
}

impl TidyheapPlugin {
    /// A plugin with `config`, if it is well-formed.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] naming the first bad field: a budget with no limit or a zero
    /// limit, a threshold outside `0.0 ..= 1.0`, scratch frames in flight outside
    /// `1 ..= 64` (or a bad chunk size or lane count).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::bevy::{ConfigError, TidyheapConfig, TidyheapPlugin};
    /// use tidyheap::frame::FrameConfigError;
    ///
    /// let zero = TidyheapConfig::new().with_frames_in_flight(0);
    /// assert_eq!(
    ///     TidyheapPlugin::try_new(zero).unwrap_err(),
    ///     ConfigError::Frames(FrameConfigError::FramesInFlight(0)),
    /// );
    /// ```
    pub fn try_new(config: TidyheapConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The (checked) configuration.
    pub fn config(&self) -> &TidyheapConfig {
        &self.config
    }
}
