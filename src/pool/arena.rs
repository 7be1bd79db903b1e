//! Arenas: independent span pools, each behind its own lock (a never-parking
//! `lock_api` mutex: see `pool::lock` for why a parking lock cannot be used here).
//!
//! A heap has several arenas (default: the available parallelism); each thread cache is
//! assigned one round-robin, so threads rarely contend for an arena lock. An arena owns
//! the spans it carved, for their whole life: a block freed by any thread goes home to
//! its span (found through the page map) under *that span's* arena lock.
//!
//! Lock order: arena lock → span source lock. Nothing takes an arena lock while holding
//! the span source lock, and no code holds two arena locks at once.
//!
//! Spans come from the heap's [`SpanSource`]: 64 MiB chunks of address space reserved
//! from the OS, cut into span regions that keep their length for the heap's life (a
//! region is reused only for classes with the same span length). Region records live
//! in a span table reserved up front, so `&Span` is stable.
//!
//! NUMA (see `crate::numa::placement`): each arena serves one node; the source keeps one
//! chunk cursor per node, so a chunk holds spans of one node only and is bound to it
//! once. The three NUMA call sites are marked `NUMA:`.

mod purge;

use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::lock::{Mutex, MutexGuard};
use super::pagemap;
use super::poison;
use super::span::{ListId, Span, SpanKind, SpanList, table_bytes};
use super::thread_cache::ThreadCache;
use crate::AllocError;
use crate::numa::placement::NodePlacement;
use crate::numa::{MAX_NODES, Topology};
use crate::os;
use crate::size_class::{self, MAX_SPAN, NUM_CLASSES, SPAN_UNIT};

/// Span lengths are 1..=16 units.
const SPAN_LENGTHS: usize = MAX_SPAN / SPAN_UNIT;
/// Address space of span regions per chunk.
const CHUNK_BYTES: usize = 64 << 20;
/// Address space reserved per chunk: its span regions, then their side tables (see
/// `span::table`; the region at offset `o` has its table at `CHUNK_BYTES + o · 3/8`).
const CHUNK_RESERVE: usize = CHUNK_BYTES + table_bytes(CHUNK_BYTES);
/// Most chunks a heap can reserve (4 TiB of address space).
const MAX_CHUNKS: usize = 1 << 16;
/// Most span records a heap can hold.
pub(crate) const MAX_SPANS: usize = 1 << 22;
/// Bytes of empty spans an arena always keeps committed for quick reuse, whatever its
/// recent demand.
pub(crate) const MIN_RETAIN_BYTES: usize = 1 << 20;
/// The retention high-water mark closes `1 / HIGH_WATER_DECAY` of its gap to the
/// current demand at every purge (every compaction pass): about 16 passes for two
/// thirds of the gap, so a gradual fall keeps little beyond what serves.
const HIGH_WATER_DECAY: usize = 16;
/// A pass that finds the serving bytes fallen by more than `1 / DROP_SHARE` of the
/// high-water mark since the previous one saw a sudden drop: what it released goes to
/// the reserve.
const DROP_SHARE: usize = 8;
/// The reserve (bytes released by sudden drops) loses `1 / RESERVE_DECAY` of itself
/// each pass: about 1000 passes (17 s at 60 frames a second) for two thirds of it.
const RESERVE_DECAY: usize = 1024;
/// Partial spans a fixed refill looks at for one it may take (see
/// [`Arena::fixed_span_for`]) before it starts a new span.
const OWNER_WALK: usize = 16;

/// Adds `n` to a counter that is only written under an arena lock (the caller holds
/// it): a plain load and store, not a locked read-modify-write, so readers elsewhere see
/// every update once the lock is released.
#[inline(always)]
fn bump_locked(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// Where span regions and records come from. One per heap, behind its own lock.
#[derive(Debug)]
pub(crate) struct SpanSource {
    state: Mutex<SourceState>,
    /// The span table's address once reserved (null before and after the heap's life),
    /// readable without the lock for ownership checks.
    table: std::sync::atomic::AtomicPtr<Span>,
    /// Node placement of arenas and chunks, and the node counters.
    pub(crate) numa: NodePlacement,
}

#[derive(Debug)]
struct SourceState {
    /// Unused tail of the newest chunk of each node (by dense node index; index 0 only
    /// with one node).
    cur: [usize; MAX_NODES],
    end: [usize; MAX_NODES],
    /// Chunk table (base addresses; every chunk is `CHUNK_BYTES` long), reserved lazily.
    chunks: *mut usize,
    nchunks: usize,
    /// Span record table, reserved lazily; `nspans` records are initialised.
    spans: *mut Span,
    nspans: usize,
}

// SAFETY: the raw pointers are owned tables only touched under the mutex.
unsafe impl Send for SourceState {}

impl SpanSource {
    pub(crate) const fn new(topology: Option<&'static Topology>) -> Self {
        Self {
            state: Mutex::new(SourceState {
                cur: [0; MAX_NODES],
                end: [0; MAX_NODES],
                chunks: core::ptr::null_mut(),
                nchunks: 0,
                spans: core::ptr::null_mut(),
                nspans: 0,
            }),
            table: std::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
            numa: NodePlacement::new(topology),
        }
    }

    /// Whether `span` is a record of this source's table.
    #[inline]
    pub(crate) fn owns(&self, span: &Span) -> bool {
        let start = self.table.load(Ordering::Acquire) as usize;
        let p = span as *const Span as usize;
        start != 0 && p >= start && p < start + MAX_SPANS * size_of::<Span>()
    }

    /// NUMA: the index of `span` in the span table (below [`MAX_SPANS`]): a stable key of
    /// the region for the heap's life (`crate::numa::readers` keys block samples by it).
    #[inline]
    pub(crate) fn span_index(&self, span: &Span) -> usize {
        debug_assert!(self.owns(span));
        let start = self.table.load(Ordering::Relaxed) as usize;
        (span as *const Span as usize - start) / size_of::<Span>()
    }

    /// A fresh span region of `bytes` for `arena`, registered in the page map, its pages
    /// counted in `arena`'s committed bytes.
    fn new_span(&self, bytes: usize, arena: &Arena) -> Result<&Span, AllocError> {
        let mut st = self.state.lock();
        if st.spans.is_null() {
            st.spans = os::reserve(MAX_SPANS * size_of::<Span>(), os::PAGE_SIZE)?
                .cast()
                .as_ptr();
            self.table.store(st.spans, Ordering::Release);
            st.chunks = os::reserve(MAX_CHUNKS * size_of::<usize>(), os::PAGE_SIZE)?
                .cast()
                .as_ptr();
        }
        if st.nspans == MAX_SPANS {
            return Err(AllocError::OutOfMemory {
                size: bytes,
                errno: libc::ENOMEM,
            });
        }
        // NUMA: spans of `arena` come from its node's chunk (always 0 with one node).
        let node = self.numa.arena_node(arena.index);
        if st.end[node] - st.cur[node] < bytes {
            if st.nchunks == MAX_CHUNKS {
                return Err(AllocError::OutOfMemory {
                    size: bytes,
                    errno: libc::ENOMEM,
                });
            }
            let base = os::reserve(CHUNK_RESERVE, SPAN_UNIT)?.as_ptr() as usize;
            let n = st.nchunks;
            // SAFETY: the chunk table holds MAX_CHUNKS entries and `n < MAX_CHUNKS`.
            unsafe { st.chunks.add(n).write(base) };
            st.nchunks += 1;
            // NUMA: bind the untouched chunk to its node (a no-op with one node).
            self.numa.bind_chunk(base, CHUNK_BYTES, node);
            st.cur[node] = base;
            st.end[node] = base + CHUNK_BYTES;
        }
        let base = st.cur[node];
        st.cur[node] += bytes;
        let chunk = st.end[node] - CHUNK_BYTES;
        let table = st.end[node] + table_bytes(base - chunk);
        let idx = st.nspans;
        // SAFETY:
        // - the span table holds MAX_SPANS records and `idx < MAX_SPANS`; the slot is
        //   uninitialised and becomes initialised here, before `nspans` covers it;
        // - the region and its table area (`table_bytes(bytes)` from `table`, inside the
        //   chunk's reservation behind its regions) are mapped read-write, page-aligned,
        //   and handed to no other span; the arena (its counter) outlives its spans.
        let span = unsafe {
            let p = st.spans.add(idx);
            p.write(Span::new(
                base,
                bytes,
                table,
                arena.index,
                &arena.counters.committed,
                &arena.counters.movable,
            ));
            &*p
        };
        st.nspans += 1;
        pagemap::set(base, bytes, span as *const Span as *mut Span)?;
        Ok(span)
    }

    /// Clears the page map for every span and unmaps all chunks and tables.
    ///
    /// # Safety
    ///
    /// Nothing uses any block, span or record of this source afterwards.
    pub(crate) unsafe fn release_all(&self) {
        let mut st = self.state.lock();
        for span in {
            if st.spans.is_null() {
                &[][..]
            } else {
                // SAFETY: the first `nspans` records are initialised.
                unsafe { core::slice::from_raw_parts(st.spans, st.nspans) }
            }
        } {
            // Clearing cannot fail: the leaves were mapped when the entries were set.
            let _ = pagemap::set(span.base, span.bytes, core::ptr::null_mut());
        }
        for i in 0..st.nchunks {
            // SAFETY: entry `i < nchunks` was written when the chunk was reserved; the
            // caller guarantees no block of it is used again.
            unsafe {
                let base = st.chunks.add(i).read();
                // ASan: whatever maps these addresses next starts addressable.
                poison::unpoison(base, CHUNK_BYTES);
                os::release(NonNull::new_unchecked(base as *mut u8), CHUNK_RESERVE);
            }
        }
        // SAFETY: the tables were reserved with these sizes and are dead now.
        unsafe {
            if let Some(p) = NonNull::new(st.spans) {
                os::release(p.cast(), MAX_SPANS * size_of::<Span>());
            }
            if let Some(p) = NonNull::new(st.chunks) {
                os::release(p.cast(), MAX_CHUNKS * size_of::<usize>());
            }
        }
        st.spans = core::ptr::null_mut();
        self.table.store(core::ptr::null_mut(), Ordering::Release);
        st.chunks = core::ptr::null_mut();
        st.nspans = 0;
        st.nchunks = 0;
        st.cur = [0; MAX_NODES];
        st.end = [0; MAX_NODES];
    }
}

/// Per-arena counters (relaxed; updated under the arena lock, read anywhere).
#[derive(Debug, Default)]
pub(crate) struct ArenaCounters {
    /// Spans serving a class (not on an empty list).
    pub(crate) spans: AtomicUsize,
    /// Bytes of the pages spans count as committed (serving or retained empty; see
    /// `span::Pages`).
    pub(crate) committed: AtomicUsize,
    /// Committed bytes (see `committed`) of movable spans serving a class.
    pub(crate) movable: AtomicUsize,
    /// Span regions ever created.
    pub(crate) regions: AtomicUsize,
    /// Batches carved or collected for thread caches.
    pub(crate) refills: AtomicU64,
    /// Blocks that came home to their spans.
    pub(crate) returns: AtomicU64,
    /// Emptied spans whose pages went back to the OS.
    pub(crate) decommits: AtomicU64,
    /// Purged spans whose pages were committed again for reuse.
    pub(crate) recommits: AtomicU64,
    /// Lock acquisitions (a proxy for contention).
    pub(crate) locks: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct ArenaState {
    pub(crate) partial: [[SpanList; NUM_CLASSES]; 2],
    pub(crate) full: [[SpanList; NUM_CLASSES]; 2],
    /// Compaction sources per class (movable spans only).
    pub(crate) evacuating: [SpanList; NUM_CLASSES],
    /// Empty committed spans by length in units (index = units − 1); the newest at the
    /// head, so the tail is the span empty for longest (the purge clock only grows).
    pub(crate) empty: [SpanList; SPAN_LENGTHS],
    /// Empty spans whose pages were purged, by length.
    pub(crate) purged: [SpanList; SPAN_LENGTHS],
    /// Committed bytes of the spans on the `empty` lists.
    pub(crate) empty_committed: usize,
    /// Decaying high-water mark of the bytes of committed spans serving a class: the
    /// demand the arena saw lately, which sizes how much empty memory it retains. Raised
    /// whenever a span starts serving; decayed by each pass's purge.
    pub(crate) high_water: usize,
    /// Committed bytes of serving spans at the previous pass's purge.
    pub(crate) last_in_use: usize,
    /// Bytes that sudden drops of demand released, kept committed on a slower decay
    /// (`RESERVE_DECAY`) than the high-water mark's; see `arena::purge`.
    pub(crate) reserve: usize,
}

// SAFETY: the span pointers in the lists refer to records owned by the heap; the state
// is only touched under the arena mutex.
unsafe impl Send for ArenaState {}

/// One arena. See the module docs.
#[derive(Debug)]
pub(crate) struct Arena {
    pub(crate) index: u32,
    pub(crate) lock: Mutex<ArenaState>,
    pub(crate) counters: ArenaCounters,
    /// The purge clock: advanced by every compaction pass. A span retired at tick `t`
    /// may be purged from tick `t + delay` on.
    pub(crate) tick: AtomicU64,
}

impl Arena {
    pub(crate) const fn new(index: u32) -> Self {
        Self {
            index,
            lock: Mutex::new(ArenaState {
                partial: [const { [const { SpanList::new() }; NUM_CLASSES] }; 2],
                full: [const { [const { SpanList::new() }; NUM_CLASSES] }; 2],
                evacuating: [const { SpanList::new() }; NUM_CLASSES],
                empty: [const { SpanList::new() }; SPAN_LENGTHS],
                purged: [const { SpanList::new() }; SPAN_LENGTHS],
                empty_committed: 0,
                high_water: 0,
                last_in_use: 0,
                reserve: 0,
            }),
            tick: AtomicU64::new(0),
            counters: ArenaCounters {
                spans: AtomicUsize::new(0),
                committed: AtomicUsize::new(0),
                movable: AtomicUsize::new(0),
                regions: AtomicUsize::new(0),
                refills: AtomicU64::new(0),
                returns: AtomicU64::new(0),
                decommits: AtomicU64::new(0),
                recommits: AtomicU64::new(0),
                locks: AtomicU64::new(0),
            },
        }
    }

    /// Locks the arena.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, ArenaState> {
        let guard = self.lock.lock();
        // Written only under the lock: a plain add, not a locked read-modify-write.
        bump_locked(&self.counters.locks, 1);
        guard
    }

    /// A span of `class`/`kind` with room, made or reused if none is partial. The span
    /// is on the partial list on return.
    pub(crate) fn span_with_room<'a>(
        &self,
        st: &mut ArenaState,
        source: &'a SpanSource,
        class: usize,
        kind: SpanKind,
    ) -> Result<&'a Span, AllocError> {
        if let Some(s) = NonNull::new(st.partial[kind as usize][class].head) {
            // SAFETY: list members are live spans of this heap, which `source` outlives.
            return Ok(unsafe { &*s.as_ptr() });
        }
        self.fresh_span(st, source, class, kind)
    }

    /// A fixed span of `class` with room for a refill on behalf of record `owner` (null:
    /// a thread without a record): one of the first [`OWNER_WALK`] partial spans that is
    /// unowned, owned by `owner`, or owned by a parked record (adopted), else a new one.
    /// A non-null `owner` becomes the span's owner (see `pool::remote`). The span is on
    /// the partial list on return.
    fn fixed_span_for<'a>(
        &self,
        st: &mut ArenaState,
        source: &'a SpanSource,
        class: usize,
        owner: *const ThreadCache,
    ) -> Result<&'a Span, AllocError> {
        let mut cur = st.partial[SpanKind::Fixed as usize][class].head;
        let mut found = None;
        for _ in 0..OWNER_WALK {
            let Some(s) = NonNull::new(cur) else { break };
            // SAFETY: list members are live spans of this heap, which `source` outlives.
            let span: &'a Span = unsafe { &*s.as_ptr() };
            let o = span.owner.load(Ordering::Relaxed);
            // SAFETY: a non-null owner is a record in the heap's record table, which
            // lives as long as the heap (and so as `source`); its claim flag is atomic.
            // Acquire: pairs with the parking owner's `Release` unclaim, so its last
            // lock-free touch of the span's local set happens before ours
            // (`pool::owned`, O1).
            let parked = !o.is_null() && !unsafe { &*o }.claimed.load(Ordering::Acquire);
            if ptr::eq(o, owner) || o.is_null() || parked {
                found = Some(span);
                break;
            }
            // SAFETY: the arena lock is held (we have `st`); the span is on this list.
            cur = unsafe { span.state().next };
        }
        let span = match found {
            Some(s) => s,
            None => self.fresh_span(st, source, class, SpanKind::Fixed)?,
        };
        if !owner.is_null() {
            span.owner.store(owner.cast_mut(), Ordering::Relaxed);
        }
        Ok(span)
    }

    /// A span of `class`/`kind` made or reused from the empty lists, initialised and
    /// pushed on the partial list.
    fn fresh_span<'a>(
        &self,
        st: &mut ArenaState,
        source: &'a SpanSource,
        class: usize,
        kind: SpanKind,
    ) -> Result<&'a Span, AllocError> {
        let k = kind as usize;
        let bytes = size_class::span_bytes(class);
        let units = bytes / SPAN_UNIT;
        // Committed empty spans first (no page faults), then purged ones, then new.
        let span: &'a Span = if let Some(s) = NonNull::new(st.empty[units - 1].head) {
            // SAFETY: list members are live spans of this heap, which `source` outlives.
            let span = unsafe { &*s.as_ptr() };
            // SAFETY: the arena lock is held (we have `st`); the span is on this list.
            unsafe { st.empty[units - 1].remove(span) };
            st.empty_committed -= span.committed_bytes();
            span
        } else if let Some(s) = NonNull::new(st.purged[units - 1].head) {
            // SAFETY: as above.
            let span = unsafe { &*s.as_ptr() };
            // SAFETY: as above; its pages count again as carving and entries touch
            // them.
            unsafe {
                st.purged[units - 1].remove(span);
                let state = span.state();
                state.committed = true;
                state.lazily_purged = false;
            }
            self.counters.recommits.fetch_add(1, Ordering::Relaxed);
            span
        } else {
            let span = source.new_span(bytes, self)?;
            self.counters.regions.fetch_add(1, Ordering::Relaxed);
            span
        };
        // SAFETY: lock held; the span is empty (fresh, or taken from an empty list).
        unsafe {
            span.init(class, kind);
            st.partial[k][class].push(span, ListId::Partial);
        }
        self.counters.spans.fetch_add(1, Ordering::Relaxed);
        let in_use = self.counters.committed.load(Ordering::Relaxed) - st.empty_committed;
        st.high_water = st.high_water.max(in_use);
        // NUMA: local/remote accounting, per span (see `crate::numa::placement`).
        source.numa.span_started(self.index, bytes);
        if kind == SpanKind::Movable {
            self.counters
                .movable
                .fetch_add(span.committed_bytes(), Ordering::Relaxed);
        }
        Ok(span)
    }

    /// Takes up to `want` blocks of `class`/`kind` for a thread without a record,
    /// calling `sink` with each; returns how many were taken (0 only with an error).
    /// Fixed blocks come from spans no live record owns.
    pub(crate) fn take_blocks(
        &self,
        source: &SpanSource,
        class: usize,
        kind: SpanKind,
        want: usize,
        sink: impl FnMut(NonNull<u8>),
    ) -> Result<usize, AllocError> {
        self.take_blocks_for(source, class, kind, ptr::null(), want, want, sink)
    }

    /// [`Arena::take_blocks`] for the refill of record `owner` (null: no record): fixed
    /// blocks come from spans `owner` owns or now adopts (see [`Arena::fixed_span_for`]).
    /// Home blocks are taken up to `want`, freshly carved ones only up to `fresh` of
    /// them (carving faults pages in; home blocks cost a bit each); at least one block
    /// unless there is an error.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn take_blocks_for(
        &self,
        source: &SpanSource,
        class: usize,
        kind: SpanKind,
        owner: *const ThreadCache,
        want: usize,
        fresh: usize,
        mut sink: impl FnMut(NonNull<u8>),
    ) -> Result<usize, AllocError> {
        debug_assert!(want >= 1 && fresh >= 1);
        let mut st = self.lock();
        let mut got = 0;
        let mut fresh_left = fresh;
        // A span is looked for only while carving is allowed: a fresh span taken with
        // no carving left would stay on the partial list empty, never retired.
        while got < want && fresh_left > 0 {
            let span = match kind {
                SpanKind::Fixed => self.fixed_span_for(&mut st, source, class, owner),
                SpanKind::Movable => self.span_with_room(&mut st, source, class, kind),
            };
            let span = match span {
                Ok(s) => s,
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            };
            // SAFETY: the arena lock is held for the whole loop.
            unsafe {
                let (home, carved) = span.take_many(want - got, fresh_left, &mut sink);
                got += home + carved;
                fresh_left -= carved;
                // A span left with room stopped at `want` or at `fresh`: the loop ends.
                if !span.has_room() {
                    st.partial[kind as usize][class].remove(span);
                    st.full[kind as usize][class].push(span, ListId::Full);
                }
            }
        }
        bump_locked(&self.counters.refills, 1);
        Ok(got)
    }

    /// Brings `block` home to `span`, moving the span between lists as it fills up or
    /// empties. An emptied span stays committed on the empty list: freeing never calls
    /// the OS; a later purge (`purge`, `trim`) decides when its pages go back.
    /// An emptied compaction source that a pass is scanning stays on the evacuating list:
    /// the pass retires it when it stops scanning (`stop_scanning`).
    ///
    /// # Safety
    ///
    /// * `st` is this arena's locked state and `span` belongs to this arena;
    /// * `block` is an out block of `span` that nobody uses any more.
    pub(crate) unsafe fn put_block(&self, st: &mut ArenaState, span: &Span, block: NonNull<u8>) {
        // SAFETY: forwarded from the caller.
        unsafe {
            span.put(block);
            self.came_home(st, span, 1);
        }
    }

    /// After `n` blocks of `span` came home (`Span::put`, `Span::put_indices`): counts
    /// them, and moves the span as [`Arena::put_block`] does (a full span to the
    /// partial list; one with no block out is retired unless a pass is scanning it).
    ///
    /// # Safety
    ///
    /// `st` is this arena's locked state and `span` belongs to this arena.
    pub(crate) unsafe fn came_home(&self, st: &mut ArenaState, span: &Span, n: u64) {
        // Under the arena lock (which `st` proves held).
        bump_locked(&self.counters.returns, n);
        let (k, class) = (span.kind() as usize, span.class());
        // SAFETY: forwarded from the caller.
        unsafe {
            let list = span.state().list;
            if list == ListId::Full {
                st.full[k][class].remove(span);
                st.partial[k][class].push(span, ListId::Partial);
            }
            if span.out() == 0 {
                match span.state().list {
                    ListId::Partial => st.partial[k][class].remove(span),
                    ListId::Evacuating if !span.state().scanning => {
                        st.evacuating[class].remove(span)
                    }
                    _ => return,
                }
                self.retire_empty(st, span);
            }
        }
    }

    /// Moves an emptied span to the head of the empty list, stamped with the purge
    /// clock. Its pages stay committed until a purge.
    ///
    /// # Safety
    ///
    /// Lock held (`st`), `span` belongs to this arena, is on no list, is committed and
    /// has no block out.
    pub(crate) unsafe fn retire_empty(&self, st: &mut ArenaState, span: &Span) {
        let units = span.bytes / SPAN_UNIT;
        self.counters.spans.fetch_sub(1, Ordering::Relaxed);
        if span.kind() == SpanKind::Movable {
            self.counters
                .movable
                .fetch_sub(span.committed_bytes(), Ordering::Relaxed);
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            debug_assert!(span.state().committed);
            span.state().emptied_at = self.tick.load(Ordering::Relaxed);
            st.empty_committed += span.committed_bytes();
            st.empty[units - 1].push(span, ListId::Empty);
        }
    }
}
