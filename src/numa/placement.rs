//! The pool's NUMA glue: which node each arena serves, which arena a thread gets, chunk
//! binding, and the node counters. Owned by the heap's span source, so the pool calls
//! it at three places, each marked `NUMA:`: arena selection (`HeapInner::next_arena`,
//! and `HeapInner::arena_count`, which gives every node an arena), chunk reservation
//! (`SpanSource::new_span`) and a span starting to serve a class
//! (`Arena::span_with_room`). All three are slow paths; with one node none of them makes
//! a syscall.
//!
//! # Arena ↔ node
//!
//! With `k` nodes and `n ≥ k` arenas, arena `i` serves the node of dense index `i % k`,
//! so node `j` owns arenas `j, j + k, j + 2k, …`. A thread claiming a cache is given
//! the next of its current node's arenas, round-robin per node.
//!
//! # Threads the scheduler moves
//!
//! A thread the scheduler later moves to another node is given an arena of its new
//! node on a slow path: every [`NODE_CHECK_EVERY`]-th refill of the thread that carves
//! blocks from its arena (the first one included) looks up the CPU it runs on
//! (`sched_getcpu`, a vDSO call) and, if that CPU's node is not its arena's, switches the
//! thread's record to the next arena of the new node (round-robin, as a new thread would
//! get) before carving. Its new spans then come from the new node's chunks. Nothing
//! else moves: the fixed spans the record already owns stay its own (they are tied to
//! the record, not the arena), so its cached blocks stay valid and go home to their own
//! spans under their own arena's lock when freed or trimmed; arena and node thread
//! counts follow the record's arena. Between a move and the next check, the thread's
//! new spans come from the old arena and count as *remote*. Moves are counted in
//! [`NumaStats::thread_moves`]. With one node no check is made.
//!
//! # Chunk binding
//!
//! The span source cuts spans from 64 MiB chunks, one chunk cursor per node, so a chunk
//! only ever holds spans of one node's arenas. A fresh chunk gets `mbind(MPOL_PREFERRED)`
//! to its node before any page of it is touched (one call per 64 MiB, so the kernel keeps
//! few mapping entries). Spans keep their arena for life, so reused and re-committed
//! spans stay on their node. A chunk the kernel refuses to bind (an injected topology
//! naming a node the machine lacks, a sandbox) is still used, its pages wherever the
//! kernel puts them, and counted in [`NumaStats::bind_failures`].
//!
//! # Local and remote
//!
//! Counted per *span*, not per block: when a span starts serving a size class (fresh, or
//! reused from the arena's empty list), its bytes count as *local* if the thread that
//! needed it runs on the arena's node, *remote* otherwise. Blocks handed out from the
//! span afterwards are not looked at one by one, which keeps the alloc/free paths free
//! of any NUMA cost; a span holds many blocks of one thread's refills, so the span counts
//! are a faithful sample of where allocation happens. With one node every span is local
//! and no CPU lookup is made.

use core::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::sys::{self, NodePolicy};
use super::topology::{MAX_NODES, Topology};
use crate::stats::{ArenaStats, NodeStats, NumaStats};

/// A thread's node is checked every this many of its carving refills (see the module
/// docs).
pub(crate) const NODE_CHECK_EVERY: u32 = 4;

thread_local! {
    /// Carving refills of this thread until its next node check; 0: check at the next.
    /// (No destructor: usable inside the global allocator at any time.)
    static NODE_CHECK: Cell<u32> = const { Cell::new(0) };
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct NodePlacement {
    /// The injected topology, or `None` for [`Topology::system`].
    configured: Option<&'static Topology>,
    /// Round-robin cursor of each node's arenas.
    next: [AtomicUsize; MAX_NODES],
    /// Spans started for threads on / off the arena's node, per arena node index.
    local_spans: [AtomicU64; MAX_NODES],
    remote_spans: [AtomicU64; MAX_NODES],
    local_bytes: [AtomicU64; MAX_NODES],
    remote_bytes: [AtomicU64; MAX_NODES],
    bind_failures: AtomicU64,
    /// Threads switched to an arena of the node they run on now.
    thread_moves: AtomicU64,
    migrations: AtomicU64,
    migrated_pages: AtomicU64,
    migration_failures: AtomicU64,
    /// Reads sampled for compactor migration (`numa::migration`).
    samples: AtomicU64,
    /// Handle blocks the compactor moved to their reader's node, and their bytes.
    compactor_blocks: AtomicU64,
    compactor_bytes: AtomicU64,
    compactor_failures: AtomicU64,
}

impl NodePlacement {
    pub(crate) const fn new(configured: Option<&'static Topology>) -> Self {
        Self {
            configured,
            next: [const { AtomicUsize::new(0) }; MAX_NODES],
            local_spans: [const { AtomicU64::new(0) }; MAX_NODES],
            remote_spans: [const { AtomicU64::new(0) }; MAX_NODES],
            local_bytes: [const { AtomicU64::new(0) }; MAX_NODES],
            remote_bytes: [const { AtomicU64::new(0) }; MAX_NODES],
            bind_failures: AtomicU64::new(0),
            thread_moves: AtomicU64::new(0),
            migrations: AtomicU64::new(0),
            migrated_pages: AtomicU64::new(0),
            migration_failures: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            compactor_blocks: AtomicU64::new(0),
            compactor_bytes: AtomicU64::new(0),
            compactor_failures: AtomicU64::new(0),
        }
    }

    /// The heap's topology.
    pub(crate) fn topology(&self) -> &'static Topology {
        self.configured.unwrap_or_else(Topology::system)
    }

    /// The dense node index arena `arena` serves.
    #[inline]
    pub(crate) fn arena_node(&self, arena: u32) -> usize {
        arena as usize % self.topology().node_count()
    }

    /// The next arena (of `narenas`) of node index `node`, round-robin.
    pub(crate) fn arena_in_node(&self, node: usize, narenas: usize) -> usize {
        let k = self.topology().node_count();
        if node >= narenas.min(k) {
            // Fewer arenas than nodes cannot happen (see `min_arenas`); stay in range.
            return node % narenas;
        }
        let owned = (narenas - node).div_ceil(k);
        let rank = self.next[node].fetch_add(1, Ordering::Relaxed) % owned;
        node + rank * k
    }

    /// The arena for the calling thread (of `narenas`), or `None` with one node, where
    /// the caller's plain round-robin applies.
    pub(crate) fn pick_arena(&self, narenas: usize) -> Option<usize> {
        let t = self.topology();
        (t.node_count() > 1).then(|| self.arena_in_node(t.current_index(), narenas))
    }

    /// The arena a thread whose record carves from `arena` (of `narenas`) should carve
    /// from now: `None` to stay, or an arena of the node the thread runs on, if that is
    /// not `arena`'s and this is one of the thread's checking refills (see "Threads the
    /// scheduler moves" in the module docs). One branch with one node.
    #[inline]
    pub(crate) fn moved_arena(&self, arena: u32, narenas: usize) -> Option<usize> {
        if self.topology().node_count() == 1 {
            return None;
        }
        self.check_node(arena, narenas)
    }

    #[cold]
    #[inline(never)]
    fn check_node(&self, arena: u32, narenas: usize) -> Option<usize> {
        let c = NODE_CHECK.get();
        if c > 1 {
            NODE_CHECK.set(c - 1);
            return None;
        }
        NODE_CHECK.set(NODE_CHECK_EVERY);
        let node = self.topology().current_index();
        if node == self.arena_node(arena) {
            return None;
        }
        self.thread_moves.fetch_add(1, Ordering::Relaxed);
        Some(self.arena_in_node(node, narenas))
    }

    /// The fewest arenas a heap needs: one per node.
    pub(crate) fn min_arenas(&self) -> usize {
        self.topology().node_count()
    }

    /// Binds a fresh, untouched chunk `[base, base + len)` to node index `node`, with
    /// more than one node (one node: nothing to do). A refusal is counted, not returned:
    /// the chunk is usable wherever its pages land.
    pub(crate) fn bind_chunk(&self, base: usize, len: usize, node: usize) {
        let t = self.topology();
        if t.node_count() == 1 {
            return;
        }
        let id = t.node_id(node).unwrap_or(0);
        if sys::bind(base as *const u8, len, id, NodePolicy::Preferred, false).is_err() {
            self.bind_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a span of `bytes` starting to serve a class in arena `arena`, for the
    /// calling thread.
    pub(crate) fn span_started(&self, arena: u32, bytes: usize) {
        let t = self.topology();
        let node = self.arena_node(arena);
        let local = t.node_count() == 1 || t.current_index() == node;
        let (spans, b) = if local {
            (&self.local_spans[node], &self.local_bytes[node])
        } else {
            (&self.remote_spans[node], &self.remote_bytes[node])
        };
        spans.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts one `migrate_to_node` call.
    pub(crate) fn migrated(&self, m: &sys::Migration) {
        self.migrations.fetch_add(1, Ordering::Relaxed);
        self.migrated_pages
            .fetch_add(m.on_node as u64, Ordering::Relaxed);
        self.migration_failures
            .fetch_add(m.failed as u64, Ordering::Relaxed);
    }

    /// Counts one sampled read.
    pub(crate) fn sampled(&self) {
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one handle block of `bytes` the compactor moved to its reader's node.
    pub(crate) fn compactor_moved(&self, bytes: usize) {
        self.compactor_blocks.fetch_add(1, Ordering::Relaxed);
        self.compactor_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a large handle block the kernel would not move to its reader's node.
    pub(crate) fn compactor_failed(&self) {
        self.compactor_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The NUMA part of a heap snapshot, given the per-arena snapshot.
    pub(crate) fn stats(&self, arenas: &[ArenaStats]) -> NumaStats {
        let t = self.topology();
        let mut nodes: Vec<NodeStats> = t
            .node_ids()
            .enumerate()
            .map(|(i, node)| NodeStats {
                node,
                local_spans: self.local_spans[i].load(Ordering::Relaxed),
                remote_spans: self.remote_spans[i].load(Ordering::Relaxed),
                local_span_bytes: self.local_bytes[i].load(Ordering::Relaxed),
                remote_span_bytes: self.remote_bytes[i].load(Ordering::Relaxed),
                ..NodeStats::default()
            })
            .collect();
        for (i, a) in arenas.iter().enumerate() {
            let n = &mut nodes[self.arena_node(i as u32)];
            n.arenas += 1;
            n.threads += a.threads;
            n.committed_bytes += a.committed_bytes;
        }
        NumaStats {
            nodes,
            bind_failures: self.bind_failures.load(Ordering::Relaxed),
            thread_moves: self.thread_moves.load(Ordering::Relaxed),
            migrations: self.migrations.load(Ordering::Relaxed),
            migrated_pages: self.migrated_pages.load(Ordering::Relaxed),
            migration_failures: self.migration_failures.load(Ordering::Relaxed),
            read_samples: self.samples.load(Ordering::Relaxed),
            compactor_migrated_blocks: self.compactor_blocks.load(Ordering::Relaxed),
            compactor_migrated_bytes: self.compactor_bytes.load(Ordering::Relaxed),
            compactor_migration_failures: self.compactor_failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For every node count and arena count: a node's round-robin visits exactly the
    /// arenas serving that node, each equally often, and every arena serves one node.
    #[test]
    fn round_robin_stays_within_the_node() {
        for k in 1..=8usize {
            let nodes: Vec<(u32, &[usize])> = (0..k as u32).map(|id| (id * 3, &[][..])).collect();
            let topo: &'static Topology =
                Box::leak(Box::new(Topology::from_nodes(&nodes).unwrap()));
            for n in k..=crate::pool::heap::MAX_ARENAS {
                let p = NodePlacement::new(Some(topo));
                let mut seen = vec![0usize; n];
                for node in 0..k {
                    let owned = (0..n).filter(|&a| p.arena_node(a as u32) == node).count();
                    assert!(owned >= 1, "node {node} of {k} has no arena among {n}");
                    for _ in 0..3 * owned {
                        let a = p.arena_in_node(node, n);
                        assert!(a < n);
                        assert_eq!(p.arena_node(a as u32), node, "k {k} n {n}");
                        seen[a] += 1;
                    }
                }
                assert!(seen.iter().all(|&s| s == 3), "k {k} n {n}: {seen:?}");
            }
        }
    }
}
