//! The heap's NUMA methods: topology, placing a block on a node, migrating pages.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::sys::{self, Migration};
use super::{NumaError, NumaMigration, Topology};
use crate::handle::RawHandle;
use crate::movable::untag;
use crate::pool::span::SpanKind;
use crate::size_class;
use crate::{HandleError, Heap};

impl Heap {
    /// The topology this heap places its arenas by: the injected
    /// [`HeapConfig::topology`](crate::HeapConfig::topology), or [`Topology::system`].
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// assert_eq!(heap.topology(), tidyheap::numa::Topology::system());
    /// ```
    pub fn topology(&self) -> &'static Topology {
        self.inner().source.numa.topology()
    }

    /// The node id arena `arena` serves (see [`crate::numa`]), or `None` past
    /// [`Heap::arena_count`].
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// assert!(heap.arena_node(0).is_some());
    /// assert_eq!(heap.arena_node(heap.arena_count()), None);
    /// ```
    pub fn arena_node(&self, arena: usize) -> Option<u32> {
        let numa = &self.inner().source.numa;
        (arena < self.arena_count())
            .then(|| numa.topology().node_id(numa.arena_node(arena as u32)))
            .flatten()
    }

    /// Allocates a fixed block for `layout` on node `node`.
    ///
    /// Pool-sized layouts get a block from one of the node's arenas (whose span memory
    /// prefers that node); larger ones a mapping of their own with
    /// [`LargeAllocator::alloc_on_node`](crate::LargeAllocator::alloc_on_node). Free the
    /// block with [`Heap::dealloc`] as any other. This path skips the thread cache: use
    /// it for long-lived data, not in a hot loop.
    ///
    /// # Errors
    ///
    /// * [`NumaError::NodeOutOfRange`] / [`NumaError::NodeUnavailable`] when the node id
    ///   is impossible or the kernel has no such node (for a pool-sized block: the node is
    ///   not in [`Topology::system`]);
    /// * [`NumaError::UnknownNode`] for a pool-sized block when the node is not in this
    ///   heap's [`Heap::topology`];
    /// * [`NumaError::Alloc`] when the memory itself cannot be had.
    ///
    /// Nothing is allocated on error.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// use tidyheap::{Heap, numa::NumaError};
    /// let heap = Heap::new();
    /// let l = Layout::new::<[u64; 8]>();
    /// let p = heap.alloc_on_node(l, 0)?;
    /// // SAFETY: `p` came from `heap` with `l`.
    /// unsafe { heap.dealloc(p, l) };
    /// assert!(matches!(heap.alloc_on_node(l, 999), Err(NumaError::UnknownNode { node: 999 })));
    /// # Ok::<(), NumaError>(())
    /// ```
    pub fn alloc_on_node(&self, layout: Layout, node: u32) -> Result<NonNull<u8>, NumaError> {
        let p = self.place_on_node(layout, node)?;
        // Profiler hook: recorded before the pointer is returned.
        #[cfg(feature = "profiling")]
        self.profiler.on_alloc_ptr(p.as_ptr(), layout.size());
        Ok(p)
    }

    /// The allocation of [`Heap::alloc_on_node`].
    fn place_on_node(&self, layout: Layout, node: u32) -> Result<NonNull<u8>, NumaError> {
        if node >= super::MAX_NODE_ID {
            return Err(NumaError::NodeOutOfRange { node });
        }
        let inner = self.inner();
        let Some(class) = size_class::class_for(layout.size(), layout.align()) else {
            return inner.large.alloc_on_node(layout, node);
        };
        let numa = &inner.source.numa;
        let index = numa
            .topology()
            .index_of(node)
            .ok_or(NumaError::UnknownNode { node })?;
        if Topology::system().index_of(node).is_none() {
            return Err(NumaError::NodeUnavailable {
                node,
                op: "topology",
                errno: libc::ENODEV,
            });
        }
        let arena = &inner.arenas[numa.arena_in_node(index, self.arena_count())];
        let mut out = None;
        arena.take_blocks(&inner.source, class, SpanKind::Fixed, 1, |b| out = Some(b))?;
        let block = out.expect("take_blocks returned one block");
        // Like every allocation: the heap's key set (it may be this heap's first block),
        // the free stamp cleared (else its free would read as a double free), ASan's
        // view and the `hardened` canary set for `layout.size()`.
        inner.ensure_key();
        inner.hand_out(block, class, layout.size(), SpanKind::Fixed);
        let c = &inner.shared[SpanKind::Fixed as usize];
        c.allocs.fetch_add(1, Ordering::Relaxed);
        c.alloc_bytes
            .fetch_add(layout.size() as u64, Ordering::Relaxed);
        c.misses.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    /// Moves the physical pages under `[ptr, ptr + len)` to node `node`, keeping every
    /// address and byte: for fixed blocks and large blocks (and any other memory of
    /// this process). Counted in [`NumaStats`](crate::NumaStats).
    ///
    /// Whole pages move, so pool blocks sharing a page with the range move too (they
    /// keep their contents). The memory's policy is unchanged: a pool span's pages that
    /// are decommitted and touched again return to its arena's node, a large block's
    /// untouched pages go where its mapping's policy says (see
    /// [`LargeAllocator::alloc_on_node`](crate::LargeAllocator::alloc_on_node) and
    /// [`numa::bind`](super::bind) to change it).
    ///
    /// Handle-addressed blocks move between nodes through the compactor instead (see
    /// [`Heap::set_numa_migration`]); migrating their pages here is harmless but is
    /// undone by the next compaction that copies them.
    ///
    /// # Errors
    ///
    /// As [`numa::migrate_to_node`](super::migrate_to_node): a node the kernel lacks is
    /// [`NumaError::NodeUnavailable`]; nothing moves then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::Layout;
    /// let heap = tidyheap::Heap::new();
    /// let l = Layout::array::<u32>(1000).unwrap();
    /// let p = heap.alloc(l).unwrap().cast::<u32>();
    /// // SAFETY: `p` holds 1000 u32s.
    /// unsafe { (0..1000).for_each(|i| p.as_ptr().add(i).write(i as u32)) };
    /// let m = heap.migrate_to_node(p.as_ptr().cast(), 4000, 0)?;
    /// assert!(m.complete());
    /// // SAFETY: as above; the block came from `heap` with `l`.
    /// unsafe {
    ///     assert!((0..1000).all(|i| p.as_ptr().add(i).read() == i as u32));
    ///     heap.dealloc(p.cast(), l);
    /// }
    /// assert_eq!(heap.stats().numa.migrations, 1);
    /// # Ok::<(), tidyheap::numa::NumaError>(())
    /// ```
    pub fn migrate_to_node(
        &self,
        ptr: *const u8,
        len: usize,
        node: u32,
    ) -> Result<Migration, NumaError> {
        let m = sys::migrate_to_node(ptr, len, node)?;
        self.inner().source.numa.migrated(&m);
        Ok(m)
    }

    /// Sets how compaction passes move handle blocks to the node of the thread that
    /// reads them most (see [`NumaMigration`] and [`crate::numa`]). Takes effect from
    /// the next read and the next pass. With one node the setting is kept but changes
    /// nothing: reads are never sampled.
    ///
    /// # Errors
    ///
    /// [`NumaError::InvalidMigration`] if a parameter is out of range; the previous
    /// setting stays.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{Heap, numa::NumaMigration};
    /// let heap = Heap::new();
    /// heap.set_numa_migration(NumaMigration { sample_period: 8, ..NumaMigration::DEFAULT })?;
    /// assert_eq!(heap.numa_migration().sample_period, 8);
    /// assert!(heap.set_numa_migration(NumaMigration { sample_period: 0, ..NumaMigration::OFF }).is_err());
    /// # Ok::<(), tidyheap::numa::NumaError>(())
    /// ```
    pub fn set_numa_migration(&self, migration: NumaMigration) -> Result<(), NumaError> {
        self.compactor().numa.set(migration)
    }

    /// The current migration setting: [`NumaMigration::DEFAULT`] for a new heap with
    /// more than one node, [`NumaMigration::OFF`] with one.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::{Heap, numa::NumaMigration};
    /// let heap = Heap::new();
    /// if heap.topology().node_count() == 1 {
    ///     assert_eq!(heap.numa_migration(), NumaMigration::OFF);
    /// }
    /// ```
    pub fn numa_migration(&self) -> NumaMigration {
        self.compactor().numa.settings()
    }

    /// The node id of the arena whose span holds the block of `h` (a raw handle, or a
    /// store's handle as [`Handle::raw`](crate::Handle::raw)), or `None` for a block
    /// outside the pools (a large block: ask [`numa::node_of_address`](super::node_of_address)
    /// for its pages). Where the span's pages actually are is the kernel's business (its
    /// chunk is bound to that node with a preferred policy).
    ///
    /// # Errors
    ///
    /// [`HandleError::Stale`] if `h` is not live in this heap; [`HandleError::Busy`] if a
    /// writer (or the compactor) holds it right now.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.alloc_handle(64, 8)?;
    /// assert_eq!(heap.node_of_handle(h)?, Some(0));
    /// heap.free_handle(h)?;
    /// assert!(heap.node_of_handle(h).is_err());
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn node_of_handle(&self, h: RawHandle) -> Result<Option<u32>, HandleError> {
        let guard = self.handles().try_read(h)?;
        let (block, _) = untag(guard.ptr());
        let inner = self.inner();
        let numa = &inner.source.numa;
        Ok(inner
            .span_of(block)
            .and_then(|s| numa.topology().node_id(numa.arena_node(s.arena))))
    }
}
