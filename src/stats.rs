//! Statistics: relaxed counters cheap enough to leave on, summed on demand.
//!
//! Definitions (`docs/design.md`): *live bytes* are the requested sizes of live blocks;
//! *committed bytes* are the bytes of spans currently held from the OS (decommitted
//! spans do not count). Every figure is exact at quiescence (no allocation or free in
//! flight on any thread); while threads run, each counter is individually up to date
//! but a snapshot is not atomic as a whole.

use core::ops::AddAssign;

use crate::large::LargeStats;

/// Allocation counters of one kind of pool block (fixed or movable), summed over
/// threads, or for one thread's cache.
///
/// # Examples
///
/// ```
/// use tidyheap::Heap;
/// let heap = Heap::new();
/// let layout = std::alloc::Layout::new::<[u8; 64]>();
/// let p = heap.alloc(layout).unwrap();
/// let s = heap.stats().fixed;
/// assert_eq!((s.allocations, s.live_bytes()), (1, 64));
/// // SAFETY: `p` came from this heap with this layout.
/// unsafe { heap.dealloc(p, layout) };
/// assert_eq!(heap.stats().fixed.live_bytes(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    /// Blocks allocated.
    pub allocations: u64,
    /// Requested bytes allocated (resizes in place charge the difference).
    pub allocated_bytes: u64,
    /// Blocks freed.
    pub frees: u64,
    /// Requested bytes freed.
    pub freed_bytes: u64,
    /// Allocations the thread cache could not serve from its list.
    pub misses: u64,
    /// Batches a thread cache took from a central list.
    pub batches_in: u64,
    /// Batches a thread cache gave back (to a central list, or home when it was full).
    pub batches_out: u64,
}

impl PoolCounters {
    /// Allocations served straight from a thread cache list.
    pub fn hits(&self) -> u64 {
        self.allocations.saturating_sub(self.misses)
    }

    /// `hits / allocations` (1.0 when nothing was allocated).
    pub fn hit_rate(&self) -> f64 {
        if self.allocations == 0 {
            1.0
        } else {
            self.hits() as f64 / self.allocations as f64
        }
    }

    /// Requested bytes of live blocks.
    pub fn live_bytes(&self) -> u64 {
        self.allocated_bytes.wrapping_sub(self.freed_bytes)
    }

    /// Live blocks.
    pub fn live_blocks(&self) -> u64 {
        self.allocations.wrapping_sub(self.frees)
    }
}

impl AddAssign for PoolCounters {
    fn add_assign(&mut self, o: Self) {
        self.allocations = self.allocations.wrapping_add(o.allocations);
        self.allocated_bytes = self.allocated_bytes.wrapping_add(o.allocated_bytes);
        self.frees = self.frees.wrapping_add(o.frees);
        self.freed_bytes = self.freed_bytes.wrapping_add(o.freed_bytes);
        self.misses = self.misses.wrapping_add(o.misses);
        self.batches_in = self.batches_in.wrapping_add(o.batches_in);
        self.batches_out = self.batches_out.wrapping_add(o.batches_out);
    }
}

/// Counters of one arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Spans serving a size class.
    pub spans: usize,
    /// Committed bytes of spans (serving, or empty and retained): the pages each span
    /// counts, its region up to the furthest block carved and its side-table pages
    /// written.
    pub committed_bytes: usize,
    /// Batches carved from spans for thread caches.
    pub refills: u64,
    /// Blocks that came home to their spans.
    pub returns: u64,
    /// Emptied spans whose pages went back to the OS.
    pub decommits: u64,
    /// Purged spans committed again for reuse (each one page-faults back in).
    pub recommits: u64,
    /// Times the arena lock was taken.
    pub lock_acquisitions: u64,
    /// Thread caches assigned to this arena so far.
    pub threads: usize,
}

/// Traffic through the lock-free central lists, summed over size classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CentralCounters {
    /// Batches thread caches handed to the central lists.
    pub pushes: u64,
    /// Batches thread caches took from them.
    pub pops: u64,
    /// Refills that found the class's central list empty (and went to an arena).
    pub pop_misses: u64,
    /// Batches sent home to their spans because the central list was full.
    pub rejections: u64,
    /// Batches held right now.
    pub batches_held: usize,
}

/// A snapshot of a heap's totals.
///
/// # Examples
///
/// ```
/// let heap = tidyheap::Heap::new();
/// let s = heap.stats();
/// assert_eq!(s.live_bytes(), 0);
/// assert_eq!(s.committed_bytes, 0);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeapStats {
    /// Raw-pointer pool blocks.
    pub fixed: PoolCounters,
    /// Handle-addressed (movable) pool blocks.
    pub movable: PoolCounters,
    /// Directly mapped large blocks: live ones, and freed mappings cached for reuse
    /// (counted apart, see [`LargeStats`]). Blocks a `realloc` grew out of the pools
    /// (see `Heap::realloc`) are counted here, at their requested size.
    pub large: LargeStats,
    /// Committed bytes of pool spans (large blocks are in `large`): the pages each span
    /// counts, its region up to the furthest block carved and its side-table pages
    /// written; released and purged spans count nothing.
    pub committed_bytes: usize,
    /// Spans serving a size class.
    pub spans: usize,
    /// Per-arena counters, for the arenas in use.
    pub arenas: Vec<ArenaStats>,
    /// Central-list traffic.
    pub central: CentralCounters,
    /// Nodes, local/remote spans and migrations (see [`crate::numa`]).
    pub numa: NumaStats,
}

impl HeapStats {
    /// Requested bytes of every live block: fixed, movable and large.
    pub fn live_bytes(&self) -> u64 {
        self.fixed.live_bytes() + self.movable.live_bytes() + self.large.live_bytes as u64
    }

    /// Cache counters of both kinds together.
    pub fn cache(&self) -> PoolCounters {
        let mut c = self.fixed;
        c += self.movable;
        c
    }
}

/// Pool counters of one memory node: its arenas and the spans they started.
///
/// See [`crate::numa`] for how arenas map to nodes and why local/remote is counted per
/// span, not per block.
///
/// # Examples
///
/// ```
/// let n = tidyheap::NodeStats { local_spans: 3, remote_spans: 1, ..Default::default() };
/// assert_eq!(n.local_share(), 0.75);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The node's kernel id.
    pub node: u32,
    /// Arenas serving the node.
    pub arenas: usize,
    /// Thread caches assigned to those arenas so far.
    pub threads: usize,
    /// Committed pool bytes of those arenas: the pool memory placed on this node (its
    /// pages are where the node's binding put them; see `bind_failures`).
    pub committed_bytes: usize,
    /// Spans that started serving a class for a thread running on this node.
    pub local_spans: u64,
    /// Spans that started serving a class for a thread running on another node (the
    /// thread was moved by the scheduler after it got its arena, or used the uncached
    /// path).
    pub remote_spans: u64,
    /// Region bytes of the local spans (whole regions, however many of their pages
    /// are committed).
    pub local_span_bytes: u64,
    /// Region bytes of the remote spans.
    pub remote_span_bytes: u64,
}

impl NodeStats {
    /// `local_spans / (local_spans + remote_spans)` (1.0 with no spans).
    pub fn local_share(&self) -> f64 {
        let all = self.local_spans + self.remote_spans;
        if all == 0 {
            1.0
        } else {
            self.local_spans as f64 / all as f64
        }
    }
}

/// A heap's NUMA counters: per node, and for binding and migration.
///
/// # Examples
///
/// ```
/// let heap = tidyheap::Heap::new();
/// let l = std::alloc::Layout::new::<[u8; 64]>();
/// let p = heap.alloc(l).unwrap();
/// let numa = heap.stats().numa;
/// assert_eq!(numa.nodes.len(), tidyheap::numa::Topology::system().node_count());
/// assert_eq!(numa.local_spans() + numa.remote_spans(), 1);
/// // SAFETY: `p` came from `heap` with `l`.
/// unsafe { heap.dealloc(p, l) };
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaStats {
    /// One entry per node of the heap's topology, in ascending id order.
    pub nodes: Vec<NodeStats>,
    /// Chunks of span memory the kernel refused to bind to their node (they are used
    /// anyway, placed by the kernel's default policy).
    pub bind_failures: u64,
    /// Threads that the scheduler had moved to another node and that were switched to
    /// an arena of that node for their new spans (on a refill: see [`crate::numa`]).
    pub thread_moves: u64,
    /// Calls of [`Heap::migrate_to_node`](crate::Heap::migrate_to_node).
    pub migrations: u64,
    /// Pages those calls left on their target node (moved, or there already).
    pub migrated_pages: u64,
    /// Pages those calls could not move.
    pub migration_failures: u64,
    /// Reads of handle blocks sampled for compactor migration, guarded and scoped
    /// (always 0 with one node: see [`NumaMigration`](crate::numa::NumaMigration)).
    pub read_samples: u64,
    /// Handle blocks the compactor moved to the node of their most frequent reader:
    /// pool blocks copied into a span of that node, and large blocks whose pages moved
    /// there (`move_pages`, also counted in `migrations`).
    pub compactor_migrated_blocks: u64,
    /// Requested bytes of those blocks.
    pub compactor_migrated_bytes: u64,
    /// Large handle blocks the kernel would not move to their reader's node (a node it
    /// lacks, or a sandbox forbidding `move_pages`).
    pub compactor_migration_failures: u64,
}

impl NumaStats {
    /// Local spans over all nodes.
    pub fn local_spans(&self) -> u64 {
        self.nodes.iter().map(|n| n.local_spans).sum()
    }

    /// Remote spans over all nodes.
    pub fn remote_spans(&self) -> u64 {
        self.nodes.iter().map(|n| n.remote_spans).sum()
    }
}

/// What a full walk of a heap's spans finds; compare it with [`HeapStats`] at quiescence
/// (DESIGN invariant 5: accounting is exact when no operation is in flight).
///
/// Blocks cached by thread caches or central lists count as *out* of their spans; call
/// [`Heap::trim`](crate::Heap::trim) from the only thread left using the heap first to
/// bring them home.
///
/// # Examples
///
/// ```
/// let heap = tidyheap::Heap::new();
/// let h = heap.alloc_handle(100, 16).unwrap();
/// heap.trim();
/// let (walk, stats) = (heap.walk(), heap.stats());
/// assert_eq!(walk.committed_bytes, stats.committed_bytes);
/// assert_eq!(walk.movable_live_bytes as u64, stats.movable.live_bytes());
/// assert_eq!(walk.out_blocks[1] as u64, stats.movable.live_blocks());
/// # let _ = h;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapWalk {
    /// Spans serving a class.
    pub spans: usize,
    /// Committed bytes of spans (serving, or empty and retained), summed from each
    /// span's counted pages.
    pub committed_bytes: usize,
    /// Blocks out of their spans (live or cached), per kind: `[fixed, movable]`.
    pub out_blocks: [usize; 2],
    /// Movable blocks with an owner in their span's side table.
    pub movable_live_blocks: usize,
    /// Requested bytes of those blocks.
    pub movable_live_bytes: usize,
    /// Large movable blocks (above the pool limits), found through the handle table.
    pub large_movable_blocks: usize,
    /// Requested bytes of those blocks (their headers excluded). Large *fixed* blocks
    /// are in no list a walk can see; with none live this equals
    /// [`LargeStats::live_bytes`](crate::LargeStats::live_bytes) at quiescence.
    pub large_movable_live_bytes: usize,
}

impl crate::Heap {
    /// Walks every span of the heap under its arena's lock, then the handle table for
    /// large movable blocks (taking a pin on each, never waiting); see [`HeapWalk`].
    pub fn walk(&self) -> HeapWalk {
        use crate::pool::span::SpanKind;
        use crate::size_class::NUM_CLASSES;
        let inner = self.inner();
        let mut w = HeapWalk::default();
        for arena in &inner.arenas[..inner.arena_count()] {
            let st = arena.lock();
            let mut serving = |s: &crate::pool::span::Span| {
                w.spans += 1;
                w.committed_bytes += s.committed_bytes();
                // SAFETY: the arena lock is held.
                w.out_blocks[s.kind() as usize] += unsafe { s.out() };
                if s.kind() == SpanKind::Movable {
                    // SAFETY: the arena lock is held.
                    let carved = unsafe { s.state().carved } as usize;
                    for i in 0..carved {
                        // SAFETY: movable span, `i < carved <= capacity`.
                        let m = unsafe { s.meta(i) };
                        if m.owner(std::sync::atomic::Ordering::Relaxed) != 0 {
                            w.movable_live_blocks += 1;
                            w.movable_live_bytes += m.len();
                        }
                    }
                }
            };
            // SAFETY: the arena lock is held for every list iteration below.
            unsafe {
                for k in 0..2 {
                    for c in 0..NUM_CLASSES {
                        st.partial[k][c].iter().for_each(&mut serving);
                        st.full[k][c].iter().for_each(&mut serving);
                    }
                }
                for c in 0..NUM_CLASSES {
                    st.evacuating[c].iter().for_each(&mut serving);
                }
                for list in &st.empty {
                    for s in list.iter() {
                        debug_assert!(s.state().committed);
                        w.committed_bytes += s.committed_bytes();
                    }
                }
            }
        }
        (w.large_movable_blocks, w.large_movable_live_bytes) = self.walk_large_movable();
        w
    }
}
