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

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::lock::{Mutex, MutexGuard};
use super::pagemap;
use super::poison;
use super::span::{ListId, Span, SpanKind, SpanList};
use crate::AllocError;
use crate::os;
use crate::size_class::{self, MAX_SPAN, NUM_CLASSES, SPAN_UNIT};

/// Span lengths are 1..=16 units.
const SPAN_LENGTHS: usize = MAX_SPAN / SPAN_UNIT;
/// Address space reserved per chunk.
const CHUNK_BYTES: usize = 64 << 20;
/// Most chunks a heap can reserve (4 TiB of address space).
const MAX_CHUNKS: usize = 1 << 16;
/// Most span records a heap can hold.
const MAX_SPANS: usize = 1 << 22;
/// Bytes of emptied spans an arena keeps committed for quick reuse before it starts
/// handing emptied spans' pages back to the OS.
pub(crate) const RETAIN_EMPTY_BYTES: usize = 1 << 20;

/// Where span regions and records come from. One per heap, behind its own lock.
#[derive(Debug)]
pub(crate) struct SpanSource {
    state: Mutex<SourceState>,
    /// The span table's address once reserved (null before and after the heap's life),
    /// readable without the lock for ownership checks.
    table: std::sync::atomic::AtomicPtr<Span>,
}

#[derive(Debug)]
struct SourceState {
    /// Unused tail of the newest chunk.
    cur: usize,
    end: usize,
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
    pub(crate) const fn new() -> Self {
        Self {
            state: Mutex::new(SourceState {
                cur: 0,
                end: 0,
                chunks: core::ptr::null_mut(),
                nchunks: 0,
                spans: core::ptr::null_mut(),
                nspans: 0,
            }),
            table: std::sync::atomic::AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Whether `span` is a record of this source's table.
    #[inline]
    pub(crate) fn owns(&self, span: &Span) -> bool {
        let start = self.table.load(Ordering::Acquire) as usize;
        let p = span as *const Span as usize;
        start != 0 && p >= start && p < start + MAX_SPANS * size_of::<Span>()
    }

    /// A fresh span region of `bytes` for `arena`, registered in the page map.
    fn new_span(&self, bytes: usize, arena: u32) -> Result<&Span, AllocError> {
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
        if st.end - st.cur < bytes {
            if st.nchunks == MAX_CHUNKS {
                return Err(AllocError::OutOfMemory {
                    size: bytes,
                    errno: libc::ENOMEM,
                });
            }
            let base = os::reserve(CHUNK_BYTES, SPAN_UNIT)?.as_ptr() as usize;
            let n = st.nchunks;
            // SAFETY: the chunk table holds MAX_CHUNKS entries and `n < MAX_CHUNKS`.
            unsafe { st.chunks.add(n).write(base) };
            st.nchunks += 1;
            st.cur = base;
            st.end = base + CHUNK_BYTES;
        }
        let base = st.cur;
        st.cur += bytes;
        let idx = st.nspans;
        // SAFETY: the span table holds MAX_SPANS records and `idx < MAX_SPANS`; the slot
        // is uninitialised and becomes initialised here, before `nspans` covers it.
        let span = unsafe {
            let p = st.spans.add(idx);
            p.write(Span::new(base, bytes, arena));
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
                os::release(NonNull::new_unchecked(base as *mut u8), CHUNK_BYTES);
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
        st.cur = 0;
        st.end = 0;
    }
}

/// Per-arena counters (relaxed; updated under the arena lock, read anywhere).
#[derive(Debug, Default)]
pub(crate) struct ArenaCounters {
    /// Spans serving a class (not on an empty list).
    pub(crate) spans: AtomicUsize,
    /// Bytes of spans whose pages are committed (serving or retained empty).
    pub(crate) committed: AtomicUsize,
    /// Bytes of movable spans serving a class.
    pub(crate) movable: AtomicUsize,
    /// Span regions ever created.
    pub(crate) regions: AtomicUsize,
    /// Batches carved or collected for thread caches.
    pub(crate) refills: AtomicU64,
    /// Blocks that came home to their spans.
    pub(crate) returns: AtomicU64,
    /// Emptied spans whose pages went back to the OS.
    pub(crate) decommits: AtomicU64,
    /// Lock acquisitions (a proxy for contention).
    pub(crate) locks: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct ArenaState {
    pub(crate) partial: [[SpanList; NUM_CLASSES]; 2],
    pub(crate) full: [[SpanList; NUM_CLASSES]; 2],
    /// Compaction sources per class (movable spans only).
    pub(crate) evacuating: [SpanList; NUM_CLASSES],
    /// Empty spans by length in units (index = units − 1).
    pub(crate) empty: [SpanList; SPAN_LENGTHS],
    /// Bytes of committed spans on the empty lists.
    pub(crate) empty_committed: usize,
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
                empty_committed: 0,
            }),
            counters: ArenaCounters {
                spans: AtomicUsize::new(0),
                committed: AtomicUsize::new(0),
                movable: AtomicUsize::new(0),
                regions: AtomicUsize::new(0),
                refills: AtomicU64::new(0),
                returns: AtomicU64::new(0),
                decommits: AtomicU64::new(0),
                locks: AtomicU64::new(0),
            },
        }
    }

    /// Locks the arena.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, ArenaState> {
        self.counters.locks.fetch_add(1, Ordering::Relaxed);
        self.lock.lock()
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
        let k = kind as usize;
        if let Some(s) = NonNull::new(st.partial[k][class].head) {
            // SAFETY: list members are live spans of this heap, which `source` outlives.
            return Ok(unsafe { &*s.as_ptr() });
        }
        let bytes = size_class::span_bytes(class);
        let units = bytes / SPAN_UNIT;
        let span: &'a Span = match NonNull::new(st.empty[units - 1].head) {
            Some(s) => {
                // SAFETY: as above.
                let span = unsafe { &*s.as_ptr() };
                // SAFETY: the arena lock is held (we have `st`); the span is on this list.
                unsafe { st.empty[units - 1].remove(span) };
                // SAFETY: lock held.
                let committed = unsafe { span.state().committed };
                if committed {
                    st.empty_committed -= bytes;
                } else {
                    // Touching decommitted pages commits them again.
                    // SAFETY: lock held.
                    unsafe { span.state().committed = true };
                    self.counters.committed.fetch_add(bytes, Ordering::Relaxed);
                }
                span
            }
            None => {
                let span = source.new_span(bytes, self.index)?;
                self.counters.regions.fetch_add(1, Ordering::Relaxed);
                self.counters.committed.fetch_add(bytes, Ordering::Relaxed);
                span
            }
        };
        // SAFETY: lock held; the span is empty (fresh, or taken from an empty list).
        unsafe {
            span.init(class, kind);
            st.partial[k][class].push(span, ListId::Partial);
        }
        self.counters.spans.fetch_add(1, Ordering::Relaxed);
        if kind == SpanKind::Movable {
            self.counters
                .movable
                .fetch_add(span.bytes, Ordering::Relaxed);
        }
        Ok(span)
    }

    /// Takes up to `want` blocks of `class`/`kind`, calling `sink` with each; returns how
    /// many were taken (0 only with an error).
    pub(crate) fn take_blocks(
        &self,
        source: &SpanSource,
        class: usize,
        kind: SpanKind,
        want: usize,
        mut sink: impl FnMut(NonNull<u8>),
    ) -> Result<usize, AllocError> {
        let mut st = self.lock();
        let mut got = 0;
        while got < want {
            let span = match self.span_with_room(&mut st, source, class, kind) {
                Ok(s) => s,
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            };
            // SAFETY: the arena lock is held for the whole loop.
            unsafe {
                while got < want {
                    match span.take() {
                        Some(b) => {
                            sink(b);
                            got += 1;
                        }
                        None => break,
                    }
                }
                if !span.has_room() {
                    st.partial[kind as usize][class].remove(span);
                    st.full[kind as usize][class].push(span, ListId::Full);
                }
            }
        }
        self.counters.refills.fetch_add(1, Ordering::Relaxed);
        Ok(got)
    }

    /// Brings `block` home to `span`, moving the span between lists as it fills up or
    /// empties. An emptied span's pages go back to the OS past the retention limit if
    /// `decommit`; otherwise it stays committed until a `trim_to` (the compactor defers
    /// the `madvise` calls to the end of its pass, where its time budget governs them).
    ///
    /// # Safety
    ///
    /// * `st` is this arena's locked state and `span` belongs to this arena;
    /// * `block` is an out block of `span` that nobody uses any more.
    pub(crate) unsafe fn put_block(
        &self,
        st: &mut ArenaState,
        span: &Span,
        block: NonNull<u8>,
        decommit: bool,
    ) {
        self.counters.returns.fetch_add(1, Ordering::Relaxed);
        let (k, class) = (span.kind() as usize, span.class());
        // SAFETY: forwarded from the caller.
        unsafe {
            let list = span.state().list;
            span.put(block);
            if list == ListId::Full {
                st.full[k][class].remove(span);
                st.partial[k][class].push(span, ListId::Partial);
            }
            if span.out() == 0 {
                match span.state().list {
                    ListId::Partial => st.partial[k][class].remove(span),
                    ListId::Evacuating => st.evacuating[class].remove(span),
                    _ => return,
                }
                self.retire_empty(st, span, decommit);
            }
        }
    }

    /// Makes `span` a compaction source: off the partial/full lists, so no refill takes
    /// blocks from it.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` is a movable span of this arena serving a class.
    pub(crate) unsafe fn start_evacuation(&self, st: &mut ArenaState, span: &Span) {
        let class = span.class();
        let k = SpanKind::Movable as usize;
        // SAFETY: forwarded from the caller.
        unsafe {
            match span.state().list {
                ListId::Partial => st.partial[k][class].remove(span),
                ListId::Full => st.full[k][class].remove(span),
                _ => return,
            }
            span.state().evacuating = true;
            st.evacuating[class].push(span, ListId::Evacuating);
        }
    }

    /// Ends `span`'s evacuation: back on the partial or full list (an emptied span left
    /// the evacuating list already, in `put_block`).
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena.
    pub(crate) unsafe fn end_evacuation(&self, st: &mut ArenaState, span: &Span) {
        let class = span.class();
        let k = SpanKind::Movable as usize;
        // SAFETY: forwarded from the caller.
        unsafe {
            if span.state().list != ListId::Evacuating {
                return;
            }
            st.evacuating[class].remove(span);
            span.state().evacuating = false;
            if span.has_room() {
                st.partial[k][class].push(span, ListId::Partial);
            } else {
                st.full[k][class].push(span, ListId::Full);
            }
        }
    }

    /// Takes one block from `span` for a compaction move, or `None` if it is full,
    /// keeping the lists right.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` is a movable span of this arena on its partial list.
    pub(crate) unsafe fn take_from(&self, st: &mut ArenaState, span: &Span) -> Option<NonNull<u8>> {
        // SAFETY: forwarded from the caller.
        unsafe {
            if span.state().list != ListId::Partial {
                return None;
            }
            let b = span.take()?;
            poison::live_block(b, span.block_size());
            if !span.has_room() {
                let (k, c) = (span.kind() as usize, span.class());
                st.partial[k][c].remove(span);
                st.full[k][c].push(span, ListId::Full);
            }
            Some(b)
        }
    }

    /// Moves an emptied span to the empty list, decommitting it past the retention
    /// limit.
    ///
    /// # Safety
    ///
    /// Lock held (`st`), `span` belongs to this arena, is on no list and has no block out.
    pub(crate) unsafe fn retire_empty(&self, st: &mut ArenaState, span: &Span, decommit: bool) {
        let units = span.bytes / SPAN_UNIT;
        self.counters.spans.fetch_sub(1, Ordering::Relaxed);
        if span.kind() == SpanKind::Movable {
            self.counters
                .movable
                .fetch_sub(span.bytes, Ordering::Relaxed);
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            if decommit && st.empty_committed + span.bytes > RETAIN_EMPTY_BYTES {
                self.decommit_span(span);
            } else {
                st.empty_committed += span.bytes;
            }
            st.empty[units - 1].push(span, ListId::Empty);
        }
    }

    /// Hands `span`'s pages back to the OS.
    ///
    /// # Safety
    ///
    /// Lock held; `span` belongs to this arena, is committed and has no block out.
    unsafe fn decommit_span(&self, span: &Span) {
        // SAFETY: the span's region is one of our page-aligned mappings and holds no
        // live block (caller contract).
        let ok = unsafe {
            os::decommit(NonNull::new_unchecked(span.base as *mut u8), span.bytes).is_ok()
        };
        if ok {
            // SAFETY: lock held.
            unsafe { span.state().committed = false };
            self.counters
                .committed
                .fetch_sub(span.bytes, Ordering::Relaxed);
            self.counters.decommits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands empty spans' pages back to the OS until at most `retain` bytes of empty
    /// spans stay committed, or `deadline` passes (checked before each `madvise`);
    /// returns the bytes freed.
    pub(crate) fn trim_to(&self, retain: usize, deadline: Option<std::time::Instant>) -> usize {
        let mut st = self.lock();
        let mut freed = 0;
        let mut committed = st.empty_committed;
        'lists: for list in &st.empty {
            // SAFETY: the lock is held for the iteration; decommitting does not unlink.
            for span in unsafe { list.iter() } {
                if committed <= retain || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    break 'lists;
                }
                // SAFETY: lock held; empty-list spans have no block out.
                unsafe {
                    if span.state().committed {
                        self.decommit_span(span);
                        if !span.state().committed {
                            freed += span.bytes;
                            committed -= span.bytes;
                        }
                    }
                }
            }
        }
        st.empty_committed = committed;
        freed
    }
}
