//! Owner-local sets: how a thread lets go of, and takes back, blocks of the fixed spans
//! its record owns without the arena lock (mimalloc's page-local free list, as a bitmap).
//!
//! A thread's fixed list (`thread_cache::FreeList`) is short. When it overflows, or a
//! remote collection brings more than it holds, the blocks used to go home to their
//! spans under the arena lock, and the next refill took them back under it again: two
//! lock round trips per list's worth of frees (issue 12: random frees and the database
//! workload). Now a block of a span the record owns goes into that span's *local set*
//! instead: a second bitmap beside the home set, in the span record (`Span::local`),
//! that only the owner's thread touches. A refill takes from the local sets first, lowest
//! address first, and locks the arena only when they are empty.
//!
//! # Who touches what
//!
//! | state | who may touch it | when |
//! |---|---|---|
//! | `SpanState::home` | anyone holding the span's arena lock | always |
//! | `Span::local` (set, count, links) | the thread of the claimed record in `Span::owner` | while it owns the span |
//! | `Local::owned` (per-class list of spans with local blocks) | the record's owner thread | while claimed |
//!
//! A block in a local set counts as *out* of its span, like a block in a thread list
//! (see `pool::span`'s accounting), so the span's lock-protected state does not change
//! when a block enters or leaves a local set, and a span with local blocks is never
//! empty: it is never retired, purged, re-initialised, or given a new owner by
//! `Span::put` (which clears the owner only when every carved block is home).
//!
//! Invariant O1: a span's local set is non-empty only while its `owner` is a claimed
//! record, and then the span is on that record's `owned` list of its class (and on no
//! other). The owner of a span with local blocks cannot change: adoption
//! (`Arena::fixed_span_for`) takes only spans whose owner is unclaimed or null, and a
//! record empties every local set (*merges* it into the home set, under the lock)
//! before it is unclaimed (`HeapInner::release_cache`). The claim flag's `Release`
//! store there and the adopter's `Acquire` load of it order the parked owner's last
//! lock-free touch of a local set (a refill may empty one without the lock) before the
//! adopter's first.
//!
//! Merges happen:
//! * when a span's local set holds every block it ever carved (`Span::carved_hint`,
//!   which only the owner changes, through its own refills): the span is wholly free
//!   and goes home at once, so it is retired, unless the class's spans with local
//!   blocks span at most half the thread cache's byte budget (`HeapConfig::
//!   thread_cache_bytes`): those are kept warm for the next refills, like mimalloc's
//!   retired pages (a retired span costs a lock and a re-carve per batch to reuse);
//! * when the record parks (thread exit or TLS eviction), for every class;
//! * on `trim` and whenever a record's fixed blocks are flushed (`flush_classes`).
//!
//! Statistics read the spans' home sets under the lock (`Heap::walk`): local blocks are
//! out there, like cached ones, until a merge. After `trim` on a quiet heap (no thread
//! holding a record) every local set is empty, so the counts are exact.
//!
//! Double frees stay exact in every build: a block freed twice either carries the free
//! stamp (`HeapInner::stamp_free`), or its bit is already set in the local set it goes
//! to, or in the home set it is merged into (`HomeSet::absorb`).

use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::arena::{Arena, ArenaState};
use super::heap::HeapInner;
use super::link;
use super::pagemap;
use super::poison;
use super::span::home::HomeSet;
use super::span::{ListId, Span, SpanKind};
use super::thread_cache::{FreeList, Local, ThreadCache};
use crate::size_class::{self, NUM_CLASSES};

/// A span's owner-only local set (see the module docs), with its links in the owner's
/// per-class list. All zero bits with `count == 0` and null links is empty.
///
/// The count and links come first, so they share the span record's first cache line
/// with the fields a free reads (see `Span`'s layout); the bitmap follows.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct LocalSet {
    prev: *mut Span,
    next: *mut Span,
    /// Blocks in `set`.
    count: u32,
    set: HomeSet,
}

impl LocalSet {
    /// Bytes before the bitmap: the links and the count.
    pub(crate) const HEADER_BYTES: usize = core::mem::offset_of!(LocalSet, set);

    /// The empty set, on no list.
    pub(crate) const fn new() -> Self {
        Self {
            prev: ptr::null_mut(),
            next: ptr::null_mut(),
            count: 0,
            set: HomeSet::new(),
        }
    }
}

/// A record's spans of one class with blocks in their local sets, oldest first (see
/// O1). All zero is empty.
#[derive(Debug)]
pub(crate) struct OwnedSpans {
    head: *mut Span,
    tail: *mut Span,
    /// Spans on the list.
    len: u32,
}

impl OwnedSpans {
    /// Appends `span` (on no list).
    fn push_back(&mut self, span: &Span, set: &mut LocalSet) {
        let p = ptr::from_ref(span).cast_mut();
        set.prev = self.tail;
        set.next = ptr::null_mut();
        if self.tail.is_null() {
            self.head = p;
        } else {
            // SAFETY: list members are spans the caller's record owns (O1): the caller,
            // their owner's thread, may touch their local sets, and `tail != span`.
            unsafe { (*(*self.tail).local.get()).next = p };
        }
        self.tail = p;
        self.len += 1;
    }

    /// Unlinks `span` (on this list).
    fn remove(&mut self, set: &mut LocalSet) {
        match NonNull::new(set.prev) {
            // SAFETY: the neighbours are list members, spans the caller's record owns
            // (O1), other than the one whose `set` the caller holds.
            Some(p) => unsafe { (*p.as_ref().local.get()).next = set.next },
            None => self.head = set.next,
        }
        match NonNull::new(set.next) {
            // SAFETY: as above.
            Some(n) => unsafe { (*n.as_ref().local.get()).prev = set.prev },
            None => self.tail = set.prev,
        }
        (set.prev, set.next) = (ptr::null_mut(), ptr::null_mut());
        self.len -= 1;
    }
}

impl Span {
    /// The span's local set.
    ///
    /// # Safety
    ///
    /// The caller is the thread of the claimed record in `owner` (see the module docs),
    /// and holds no other reference to the set.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    unsafe fn local_set(&self) -> &mut LocalSet {
        // SAFETY: forwarded from the caller: exclusive owner access.
        unsafe { &mut *self.local.get() }
    }
}

impl Arena {
    /// Moves the local set `set` of `span` (`n` blocks) into its home set, moving the
    /// span between lists as [`Arena::put_block`] does (retiring it if it is now
    /// empty). Aborts on a block in both sets (a double free).
    ///
    /// # Safety
    ///
    /// `st` is this arena's locked state; `span` is a fixed span of this arena; `set`'s
    /// blocks are out blocks of `span` that nobody uses.
    unsafe fn put_local(&self, st: &mut ArenaState, span: &Span, set: &mut HomeSet, n: u32) {
        let c = &self.counters.returns;
        c.store(c.load(Ordering::Relaxed) + u64::from(n), Ordering::Relaxed);
        let class = span.class();
        let k = SpanKind::Fixed as usize;
        // SAFETY: forwarded from the caller: lock held.
        let s = unsafe { span.state() };
        if let Err(i) = s.home.absorb(set) {
            crate::misuse::fatal!(
                "double free of {:p} ({} B class)",
                span.block(i),
                span.block_size()
            )
        }
        s.free_count += n;
        if s.free_count == s.carved {
            // As in `Span::put`: no block is out, so no free routes on the owner.
            span.owner.store(ptr::null_mut(), Ordering::Relaxed);
        }
        // SAFETY: lock held; the span is on the list its state names.
        unsafe {
            if s.list == ListId::Full {
                st.full[k][class].remove(span);
                st.partial[k][class].push(span, ListId::Partial);
            }
            if span.out() == 0 && s.list == ListId::Partial {
                st.partial[k][class].remove(span);
                self.retire_empty(st, span);
            }
        }
    }
}

impl HeapInner {
    /// Lets go of fixed blocks of one class that record `tc` (this thread's) holds,
    /// as `next` yields them: a block of a span `tc` owns goes into the span's local
    /// set (no lock), any other home to its span (under its arena's lock).
    ///
    /// # Safety
    ///
    /// The caller is `tc`'s thread; `spans` is `tc`'s `owned` list of the blocks' class;
    /// the blocks are free fixed blocks of this heap that nobody else uses, and `next` is
    /// done with each block it yielded.
    pub(crate) unsafe fn let_go_fixed(
        &self,
        tc: &ThreadCache,
        spans: &mut OwnedSpans,
        mut next: impl FnMut() -> Option<NonNull<u8>>,
    ) {
        let mut foreign: *mut u8 = ptr::null_mut();
        while let Some(b) = next() {
            // A block of this heap (caller) maps to its span; owned by `tc`, the span
            // is this heap's, so the fast lookup needs no heap check (`span_of`).
            let span = pagemap::lookup_fast(b.as_ptr().addr());
            // SAFETY: page-map entries point at live span records.
            let span = span.map(|s| unsafe { s.as_ref() });
            // Exact for this thread: only its own refills make `tc` an owner, and only
            // an empty span (not this one: `b` is out) or a parked record loses one.
            if let Some(span) = span
                && ptr::eq(span.owner.load(Ordering::Relaxed), tc)
            {
                // SAFETY: `tc`'s thread (the caller) owns the span; the block is ours.
                unsafe { self.put_local(spans, span, b) };
            } else {
                // SAFETY: the block is free and ours; chain it through word 0.
                unsafe { link::write(b, foreign) };
                foreign = b.as_ptr();
            }
        }
        // SAFETY: the chain's blocks are free blocks of this heap, ours.
        unsafe { self.return_chain_home(foreign) };
    }

    /// Puts `block` into its span's local set; merges the set home if that makes the
    /// span wholly free and the class's spans with local blocks span more than half the
    /// thread cache's byte budget (so a thread keeps that much of wholly free spans
    /// warm for its next refills, like mimalloc's retired pages, and no more).
    ///
    /// # Safety
    ///
    /// The caller is the thread of the claimed record that owns `span`, `spans` is that
    /// record's `owned` list of the span's class, and `block` is a free out block of
    /// `span` nobody else uses.
    #[inline(always)]
    unsafe fn put_local(&self, spans: &mut OwnedSpans, span: &Span, block: NonNull<u8>) {
        let i = size_class::div_size(block.as_ptr().addr() - span.base, span.class());
        // SAFETY: forwarded from the caller: owner access.
        let set = unsafe { span.local_set() };
        if !set.set.insert(i) {
            crate::misuse::fatal!("double free of {block:p} ({} B class)", span.block_size())
        }
        poison::free_block(block, span.block_size());
        set.count += 1;
        if set.count == 1 {
            spans.push_back(span, set);
        }
        if set.count == span.carved_hint.load(Ordering::Relaxed)
            && spans.len as usize * span.bytes > self.config.thread_cache_bytes / 2
        {
            // SAFETY: forwarded from the caller.
            unsafe { self.merge_span(spans, span) };
        }
    }

    /// Takes up to `want` blocks from the local sets of `spans` (oldest span first,
    /// lowest address first in each), calling `sink` with each; returns how many.
    ///
    /// # Safety
    ///
    /// The caller is the thread of the claimed record whose `owned` list `spans` is.
    pub(crate) unsafe fn take_local(
        spans: &mut OwnedSpans,
        want: usize,
        mut sink: impl FnMut(NonNull<u8>),
    ) -> usize {
        let mut got = 0;
        while got < want
            && let Some(s) = NonNull::new(spans.head)
        {
            // SAFETY: list members are live span records the caller's record owns (O1).
            let span = unsafe { s.as_ref() };
            // SAFETY: as above: owner access.
            let set = unsafe { span.local_set() };
            let n = set.set.take_lowest(want - got, |i| sink(span.block(i)));
            set.count -= n as u32;
            got += n;
            if set.count == 0 {
                spans.remove(set);
            }
        }
        got
    }

    /// A refill of the (empty) fixed list `list` of `class` from the record's local
    /// sets `spans`: up to a quarter of the list's room (`hardened`: a batch, shuffled
    /// with `rng` like every refill), lowest address first; pops and returns the first
    /// block, or `None` when the local sets of `class` are empty.
    ///
    /// # Safety
    ///
    /// The caller is the thread of the claimed record whose list of `class` `list` is
    /// and whose `owned` list of `class` `spans` is.
    pub(crate) unsafe fn refill_local(
        &self,
        list: &mut FreeList,
        spans: &mut OwnedSpans,
        class: usize,
        #[cfg(feature = "hardened")] rng: &mut u64,
    ) -> Option<NonNull<u8>> {
        if spans.head.is_null() {
            return None;
        }
        debug_assert_eq!(list.len(), 0);
        let want = (usize::from(self.list_limit(SpanKind::Fixed, class)) / 4).max(1);
        #[cfg(not(feature = "hardened"))]
        {
            let sink = |b| {
                // SAFETY: the block is free and ours; `want` is below the list's limit,
                // so the list never fills here.
                let full = unsafe { list.push(b) };
                debug_assert!(!full);
            };
            // SAFETY: forwarded from the caller: we own the record.
            unsafe { Self::take_local(spans, want, sink) };
        }
        #[cfg(feature = "hardened")]
        {
            let mut got = [NonNull::<u8>::dangling(); super::heap::DEFAULT_BATCH];
            let mut n = 0;
            let want = want.min(got.len());
            let sink = |b| {
                got[n] = b;
                n += 1;
            };
            // SAFETY: forwarded from the caller: we own the record.
            unsafe { Self::take_local(spans, want, sink) };
            super::hardened::shuffle(rng, &mut got[..n]);
            for &b in &got[..n] {
                // SAFETY: the block is free and ours; a batch is below the list's limit.
                let full = unsafe { list.push(b) };
                debug_assert!(!full);
            }
        }
        list.pop()
    }

    /// Merges `span`'s local set into its home set under the arena lock and takes the
    /// span off `spans`.
    ///
    /// # Safety
    ///
    /// As [`HeapInner::put_local`]; the span is on `spans`; no arena lock is held.
    #[cold]
    #[inline(never)]
    unsafe fn merge_span(&self, spans: &mut OwnedSpans, span: &Span) {
        // SAFETY: forwarded from the caller: owner access.
        let set = unsafe { span.local_set() };
        spans.remove(set);
        let n = core::mem::take(&mut set.count);
        let arena = &self.arenas[span.arena as usize];
        let mut st = arena.lock();
        // SAFETY: lock held; the set's blocks are free out blocks of the fixed `span`.
        unsafe { arena.put_local(&mut st, span, &mut set.set, n) };
    }

    /// Merges the local sets of every span of the classes whose bit is set in
    /// `classes` home (see the module docs).
    ///
    /// # Safety
    ///
    /// The caller owns the record whose owner-only part `local` is (its thread, or one
    /// that claimed it), and holds no arena lock.
    pub(crate) unsafe fn merge_local(&self, local: &mut Local, classes: u128) {
        for (class, spans) in local.owned.iter_mut().enumerate() {
            if classes & (1 << class) == 0 {
                continue;
            }
            while let Some(s) = NonNull::new(spans.head) {
                // SAFETY: list members are live spans the record owns (O1); forwarded.
                unsafe { self.merge_span(spans, s.as_ref()) };
            }
        }
    }
}

const _: () = assert!(NUM_CLASSES <= 128, "class masks are u128");

#[cfg(all(test, tidyheap_loom))]
mod loom_tests;
