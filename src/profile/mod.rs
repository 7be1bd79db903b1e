//! Memory profiling (feature `profiling`): leaks with their allocation sites, the
//! hottest sites, an at-exit report.
//!
//! With the feature on, every [`Heap`](crate::Heap) and [`Global`](crate::Global)
//! records its allocations — raw pointers (fixed and large blocks, also through
//! `allocator-api2`) and movable blocks (handles, [`Store`](crate::Store) values) —
//! each with the stack that made it:
//!
//! ```
//! use std::alloc::Layout;
//! let heap = tidyheap::Heap::new();
//! let (a, b) = (Layout::new::<[u8; 128]>(), Layout::new::<[u8; 64]>());
//! let kept = heap.alloc(a).unwrap();
//! let freed = heap.alloc(b).unwrap();
//! // SAFETY: `freed` came from `heap` with `b`.
//! unsafe { heap.dealloc(freed, b) };
//! let leaks = heap.leaks();
//! assert_eq!(leaks.len(), 1);
//! assert_eq!((leaks[0].address, leaks[0].size), (Some(kept.as_ptr().addr()), 128));
//! println!("{}", heap.profile_report(10)); // live blocks by site, then the top sites
//! # unsafe { heap.dealloc(kept, a) };
//! ```
//!
//! # How it works
//!
//! * **Capture, not resolve.** An allocation that is sampled walks its stack with the
//!   `backtrace` crate's unwinder into a buffer on the stack (return addresses only, no
//!   allocation) and records it under the profiler's lock: the block's key, size and
//!   site (a distinct stack; equal stacks share one site and its counters). Symbols,
//!   files and lines are looked up only when a report is built. Sites live as long as
//!   the heap (their counters count since its creation), so the profiler's memory grows
//!   with the number of distinct allocating stacks, not with the allocations.
//! * **Keys.** Raw-pointer blocks are keyed by address; a free takes the record out
//!   before the block can be reused, and a realloc moves the record to the new address
//!   with the new size (keeping the original site; a block that was not recorded stays
//!   unrecorded). Movable blocks are keyed by their
//!   handle, so compaction moves them without touching the profiler; a report asks the
//!   handle table for their current address.
//! * **Sampling** ([`Sampling`]): every allocation (the default, so a leak report is
//!   exact), every Nth, or every N bytes like tcmalloc. A free first checks a counting
//!   filter (a hash and one load); only a block that may be recorded takes the lock, so
//!   frees of sampled-out blocks stay cheap.
//! * **Reentrancy.** The profiler allocates (its tables, a report's strings), and under
//!   `Global` that is the allocator it is profiling. Its tables come from the system
//!   allocator (never the Rust global allocator), so no code under its lock re-enters
//!   it; a thread-local flag marks the thread while it captures or reports, and
//!   allocations made then are not recorded.
//! * **At exit.** With [`ProfilingConfig::report_at_exit`] (or the environment variable
//!   `TIDYHEAP_PROFILE_REPORT=1`), a heap prints its [`ProfileReport`] to stderr when it
//!   is dropped or, for heaps still alive then (a `static` `Global`), when the process
//!   exits. Up to 64 heaps at once can be reported at exit.
//!
//! # Cost
//!
//! With the feature off, nothing: the hooks are `#[cfg]`-ed statements, and the heap
//! types have no profiler field (`benches/README.md` has the callgrind counts). With
//! it on, every recorded allocation pays a stack walk (microseconds) and a lock; see
//! the same file for the measured figures.
//!
//! Not recorded: frame arenas (they have their own reset-based lifetime) and blocks of
//! a heap's internal bookkeeping.

mod api;
mod config;
mod exit;
mod report;
mod table;
mod tracker;

pub use config::{MAX_FRAMES, ProfilingConfig, Represented, Sampling};
pub use report::{AllocationSite, Frame, Leak, ProfileReport, SiteStats, Symbol, TopSites};
pub(crate) use tracker::Profiler;

pub(crate) use table::Key;
