//! The heap event hook: every block a heap hands out or takes back, every move, and the
//! phases of every compaction pass, reported to one sink per heap (feature `events`).
//!
//! This is the way profilers (the Tracy integration, `src/tracy.rs`) and tools see the
//! heap at block granularity; [`CompactionObserver`](crate::CompactionObserver) only
//! sees moves and pass reports, and after the moved block is unlocked.
//!
//! # Cost
//!
//! With the feature off, every call site expands to nothing. With it on, a heap built
//! without a sink pays one load and a not-taken branch per operation.
//!
//! # The emission rules, and why they hold
//!
//! A memory profiler replays the events per pool and rejects two things: an address
//! allocated twice without a free between, and a free of an address it does not know.
//! Events reach a sink in the order of its calls (a sink serialises them, as Tracy does
//! with its serial lock), so the heap keeps this discipline at every call site:
//!
//! * **alloc is emitted before the address can reach anyone who could free or move
//!   it**: before a handle-addressed block's owner is published to the compactor (and
//!   before the handle is returned), before a raw pointer is returned;
//! * **free is emitted before the address can be reused**: once the block is the
//!   caller's alone (a handle's slot is vacated first, so no move can race) and before
//!   it goes back to a free list or its mapping is unmapped;
//! * **a move is emitted as free(old) then alloc(new) while the mover holds the
//!   slot's move lock**: no guard, free or other move of that handle can run, `old` is
//!   still out of its span (not reusable), and `new` is not reachable by anyone else;
//! * **a resize or remap that may fail emits free(old) first and, on failure,
//!   alloc(old) again**: the old address is never released in between.
//!
//! So every address alternates alloc, free, alloc, … in the sink's order, whatever the
//! threads do. Blocks cached by thread caches or central lists are *free* for the sink;
//! a thread exiting and flushing its cache emits nothing. When a heap is dropped its
//! sink gets [`HeapEvents::on_heap_drop`] (blocks still allocated die with the heap), so
//! a sink can forget the heap's addresses before another heap maps them again.
//!
//! A sink must be installed when the heap is built ([`Heap::with_events`]), so it sees
//! every block from its birth.
//!
//! Not reported: blocks of [`Global`](crate::Global) (wrap it in a profiling allocator
//! instead) and frame arenas (see [`FrameStats`](crate::FrameStats)).

#[cfg(feature = "events")]
use std::sync::Arc;

#[cfg(feature = "events")]
use crate::{AllocError, Heap, HeapConfig};

/// Emits `$method(args)` to `$heap`'s sink, if the feature is on and a sink is set.
/// Arguments are evaluated only then.
#[cfg(feature = "events")]
macro_rules! emit {
    ($heap:expr, $method:ident($($arg:expr),* $(,)?)) => {
        if let Some(sink) = $heap.events.as_deref() {
            sink.$method($($arg),*);
        }
    };
}

/// Without the `events` feature, emission compiles to nothing.
#[cfg(not(feature = "events"))]
macro_rules! emit {
    ($heap:expr, $method:ident($($arg:expr),* $(,)?)) => {};
}

/// Which kind of memory an event is about: one profiler pool each.
#[cfg(feature = "events")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// Handle-addressed blocks in the size-class pools (the compactor moves them).
    Movable,
    /// Raw-pointer blocks in the size-class pools (they never move).
    Fixed,
    /// Directly mapped blocks (raw-pointer and handle-addressed ones above the pool
    /// limits).
    Large,
}

#[cfg(feature = "events")]
impl Pool {
    /// Every pool, in index order.
    pub const ALL: [Pool; 3] = [Pool::Movable, Pool::Fixed, Pool::Large];

    /// A dense index: `Pool::ALL[p.index()] == p`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::events::Pool;
    /// assert!(Pool::ALL.iter().enumerate().all(|(i, p)| p.index() == i));
    /// ```
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A phase of a compaction pass, in the order a pass goes through them.
#[cfg(feature = "events")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PassPhase {
    /// The pass starts (it holds the compactor; `ran` will be true).
    Begin,
    /// A new plan is built: caches flushed, sources and targets chosen. Skipped when the
    /// pass continues an earlier plan.
    Plan,
    /// Blocks are moved.
    Moves,
    /// Emptied spans are handed back to the OS.
    Purge,
    /// The pass is over (before the observers get its report).
    End,
}

/// Receives a heap's block events; see the [module docs](self) for the ordering
/// guarantees. Called on the thread doing the operation, sometimes with a slot's move
/// lock held: keep it short, never call back into the heap, never panic.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicI64, Ordering}};
/// use tidyheap::events::{HeapEvents, Pool};
/// use tidyheap::{Heap, HeapConfig};
///
/// #[derive(Default)]
/// struct Live(AtomicI64);
/// impl HeapEvents for Live {
///     fn on_alloc(&self, _: Pool, _: usize, size: usize) {
///         self.0.fetch_add(size as i64, Ordering::Relaxed);
///     }
///     fn on_free(&self, _: Pool, _: usize, size: usize) {
///         self.0.fetch_sub(size as i64, Ordering::Relaxed);
///     }
/// }
/// let live = Arc::new(Live::default());
/// let heap = Heap::with_events(HeapConfig::DEFAULT, live.clone());
/// let h = heap.alloc_handle(100, 16)?;
/// assert_eq!(live.0.load(Ordering::Relaxed), 100);
/// heap.free_handle(h)?;
/// assert_eq!(live.0.load(Ordering::Relaxed), 0);
/// # Ok::<(), tidyheap::HandleError>(())
/// ```
#[cfg(feature = "events")]
pub trait HeapEvents: Send + Sync {
    /// `size` requested bytes at `addr` were allocated in `pool`.
    fn on_alloc(&self, pool: Pool, addr: usize, size: usize);

    /// The block at `addr` (allocated with `size` requested bytes) was freed.
    fn on_free(&self, pool: Pool, addr: usize, size: usize);

    /// A live block moved from `from` to `to`; called with the slot's move lock held.
    /// The default reports it as `on_free(from)` then `on_alloc(to)`.
    fn on_move(&self, pool: Pool, from: usize, to: usize, size: usize) {
        self.on_free(pool, from, size);
        self.on_alloc(pool, to, size);
    }

    /// A compaction pass reached `phase`.
    fn on_pass_phase(&self, phase: PassPhase) {
        let _ = phase;
    }

    /// The heap is being dropped: every block still allocated dies with it.
    fn on_heap_drop(&self) {}
}

#[cfg(feature = "events")]
impl Heap {
    /// A heap with `config` that reports every block event to `sink`.
    ///
    /// # Panics
    ///
    /// If the OS refuses the bookkeeping; see [`Heap::try_with_events`].
    ///
    /// # Examples
    ///
    /// See [`HeapEvents`].
    pub fn with_events(config: HeapConfig, sink: Arc<dyn HeapEvents>) -> Self {
        match Self::try_with_events(config, sink) {
            Ok(h) => h,
            Err(e) => panic!("tidyheap: cannot create a heap: {e}"),
        }
    }

    /// A heap with `config` that reports every block event to `sink`, or the OS error.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the bookkeeping cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tidyheap::events::{HeapEvents, Pool};
    /// struct Nothing;
    /// impl HeapEvents for Nothing {
    ///     fn on_alloc(&self, _: Pool, _: usize, _: usize) {}
    ///     fn on_free(&self, _: Pool, _: usize, _: usize) {}
    /// }
    /// let heap = tidyheap::Heap::try_with_events(Default::default(), Arc::new(Nothing))?;
    /// assert!(heap.has_events());
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn try_with_events(
        config: HeapConfig,
        sink: Arc<dyn HeapEvents>,
    ) -> Result<Self, AllocError> {
        let mut heap = Self::try_with_config(config)?;
        heap.events = Some(sink);
        Ok(heap)
    }

    /// Whether this heap reports to an event sink.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!tidyheap::Heap::new().has_events());
    /// ```
    pub fn has_events(&self) -> bool {
        self.events.is_some()
    }

    /// The pool of the raw-pointer block at `p`: a span block or a direct mapping.
    pub(crate) fn raw_pool(&self, p: core::ptr::NonNull<u8>) -> Pool {
        if self.inner().span_of(p).is_some() {
            Pool::Fixed
        } else {
            Pool::Large
        }
    }
}
