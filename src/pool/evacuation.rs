//! The arena's side of compaction: making spans sources and scanning them
//! (`start_evacuation` … `end_evacuation`), and handing a pass the destinations it
//! moves blocks into (`take_from`, `reserve_for_moves`). The rules they keep are in the
//! `compact` module docs ("A plan never outlives its spans", DESIGN invariant 7).
//!
//! A pass reserves a target's destinations in bulk rather than one block per move:
//!
//! ```text
//! reserve_for_moves(target, life)   under the arena lock, once per run of destinations:
//!     still the planned life, movable, on its partial or full list?  else: drop it
//!     every home block → the pass (found in the home bitmap, `Span::detach_home`: no
//!       free-list link is read), or else up to `want` uncarved blocks
//!     the span → full list if it has no room left
//! the pass uses them in address order, without the lock   (they are out blocks of
//!     the target: it cannot empty, retire or change life while the pass holds any)
//! unused ones go home with `put_block` when the plan ends
//! ```
//!
//! The old copies of a batch of moved blocks go home to their source at once
//! (`put_indices`: one home-bitmap update per word, one list update).

use core::ptr::NonNull;

use super::arena::{Arena, ArenaState};
use super::poison;
use super::span::{ListId, Span, SpanKind};

/// What [`Arena::reserve_for_moves`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// This many blocks were pushed (0: the target is full).
    Blocks(usize),
    /// The span is no longer the planned target: drop it.
    Changed,
    /// The buffer needs spare room for this many indices: grow it without the lock
    /// and ask again.
    NeedRoom(usize),
}

impl Arena {
    /// Makes `span` a compaction source: off the partial/full lists, so no refill takes
    /// blocks from it. Returns false, and leaves the span alone, if it is no longer the
    /// movable span of the life `incarnation` that was planned (it emptied and was
    /// retired, or was re-initialised, since the plan looked at it).
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena.
    pub(crate) unsafe fn start_evacuation(
        &self,
        st: &mut ArenaState,
        span: &Span,
        incarnation: u32,
    ) -> bool {
        if span.incarnation() != incarnation || span.kind() != SpanKind::Movable {
            return false;
        }
        let class = span.class();
        let k = SpanKind::Movable as usize;
        // SAFETY: forwarded from the caller; the list checked is the one the span is on.
        unsafe {
            match span.state().list {
                ListId::Partial => st.partial[k][class].remove(span),
                ListId::Full => st.full[k][class].remove(span),
                _ => return false,
            }
            st.evacuating[class].push(span, ListId::Evacuating);
        }
        true
    }

    /// Starts a pass's scan of source `span`: returns how many blocks it carved, or
    /// `None` if it is no longer the evacuating span of life `incarnation` (it emptied
    /// and was retired meanwhile, and maybe re-initialised: the pass must not touch it).
    /// While scanning, the span is not retired if it empties (see [`SpanState`]), so its
    /// side table stays its own until [`Arena::stop_scanning`].
    ///
    /// # Safety
    ///
    /// Lock held (`st`, which proves it); `span` belongs to this arena.
    ///
    /// [`SpanState`]: super::span::SpanState
    pub(crate) unsafe fn start_scanning(
        &self,
        _st: &mut ArenaState,
        span: &Span,
        incarnation: u32,
    ) -> Option<usize> {
        // SAFETY: forwarded from the caller.
        let state = unsafe { span.state() };
        if span.incarnation() != incarnation || state.list != ListId::Evacuating {
            return None;
        }
        debug_assert!(!state.scanning, "one pass scans a span at a time");
        state.scanning = true;
        Some(state.carved as usize)
    }

    /// Ends a scan started by [`Arena::start_scanning`]. If `finished`, the span's
    /// evacuation ends too: it goes back on the partial or full list, or is retired if
    /// it is empty; otherwise it stays a source (a later pass resumes it) unless it is
    /// empty, in which case it is retired. Returns whether it was retired.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena and is being scanned.
    pub(crate) unsafe fn stop_scanning(
        &self,
        st: &mut ArenaState,
        span: &Span,
        finished: bool,
    ) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe {
            debug_assert!(span.state().scanning && span.state().list == ListId::Evacuating);
            span.state().scanning = false;
            if finished || span.out() == 0 {
                self.end_evacuation(st, span)
            } else {
                false
            }
        }
    }

    /// Ends `span`'s evacuation: back on the partial or full list, or retired if it has
    /// no block out. Returns whether it
    /// was retired. A span that is no longer evacuating (it emptied while nobody scanned
    /// it, and was retired) is left alone.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena and is not being scanned.
    pub(crate) unsafe fn end_evacuation(&self, st: &mut ArenaState, span: &Span) -> bool {
        let class = span.class();
        let k = SpanKind::Movable as usize;
        // SAFETY: forwarded from the caller.
        unsafe {
            if span.state().list != ListId::Evacuating {
                return false;
            }
            st.evacuating[class].remove(span);
            if span.out() == 0 {
                self.retire_empty(st, span);
                return true;
            }
            if span.has_room() {
                st.partial[k][class].push(span, ListId::Partial);
            } else {
                st.full[k][class].push(span, ListId::Full);
            }
        }
        false
    }

    /// Takes one block from `span` for a compaction move, or `None` if it is full or no
    /// longer the movable span of life `incarnation` that the plan chose as a target,
    /// keeping the lists right.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena.
    pub(crate) unsafe fn take_from(
        &self,
        st: &mut ArenaState,
        span: &Span,
        incarnation: u32,
    ) -> Option<NonNull<u8>> {
        if span.incarnation() != incarnation || span.kind() != SpanKind::Movable {
            return None;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            if span.state().list != ListId::Partial {
                return None;
            }
            let b = span.take()?;
            poison::live_block(b, span.block_size());
            if !span.has_room() {
                let c = span.class();
                st.partial[SpanKind::Movable as usize][c].remove(span);
                st.full[SpanKind::Movable as usize][c].push(span, ListId::Full);
            }
            Some(b)
        }
    }

    /// Gives back the free tail of compaction target `span` when its plan ends
    /// (`Span::uncarve_tail`: lazily with `MADV_FREE` if `lazy`), if it is still the
    /// movable span of life `incarnation` on its partial or full list; a full span
    /// that now has room moves to the partial list.
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena.
    pub(crate) unsafe fn trim_target(
        &self,
        st: &mut ArenaState,
        span: &Span,
        incarnation: u32,
        lazy: bool,
    ) {
        if span.incarnation() != incarnation || span.kind() != SpanKind::Movable {
            return;
        }
        let (c, k) = (span.class(), SpanKind::Movable as usize);
        // SAFETY: forwarded from the caller: lock held, a movable span of the planned
        // (initialised) life.
        unsafe {
            let list = span.state().list;
            if !matches!(list, ListId::Partial | ListId::Full) || !span.uncarve_tail(lazy) {
                return;
            }
            if list == ListId::Full {
                st.full[k][c].remove(span);
                st.partial[k][c].push(span, ListId::Partial);
            }
        }
    }

    /// Reserves destinations in compaction target `span` for the caller: every home
    /// block (`Span::detach_home`, in address order, no free-list link read) or, if
    /// there is none, up to `want` uncarved blocks; their indices go onto `out`,
    /// lowest address last. Returns [`Reserved::Changed`], taking nothing, if the span
    /// is no longer the movable span of life `incarnation` on its partial or full
    /// list. The reserved blocks are out blocks of `span` (it keeps its life while
    /// any is held), still poisoned as free; unused ones go back with
    /// [`Arena::put_block`].
    ///
    /// # Safety
    ///
    /// Lock held (`st`); `span` belongs to this arena.
    pub(crate) unsafe fn reserve_for_moves(
        &self,
        st: &mut ArenaState,
        span: &Span,
        incarnation: u32,
        want: usize,
        out: &mut Vec<u32>,
    ) -> Reserved {
        if span.incarnation() != incarnation || span.kind() != SpanKind::Movable {
            return Reserved::Changed;
        }
        let c = span.class();
        let k = SpanKind::Movable as usize;
        // SAFETY: forwarded from the caller: lock held, a movable span of the planned
        // (initialised) life.
        unsafe {
            match span.state().list {
                ListId::Partial => {}
                ListId::Full => return Reserved::Blocks(0),
                _ => return Reserved::Changed,
            }
            let Some(mut got) = span.detach_home(out) else {
                return Reserved::NeedRoom(span.state().free_count as usize);
            };
            if got == 0 {
                let start = out.len();
                while got < want && out.len() < out.capacity() {
                    let Some(b) = span.take() else { break };
                    poison::free_block(b, span.block_size());
                    let i = span
                        .block_index(b.as_ptr().addr())
                        .expect("take returns a block of the span");
                    out.push(i as u32);
                    got += 1;
                }
                out[start..].reverse();
            }
            if !span.has_room() {
                st.partial[k][c].remove(span);
                st.full[k][c].push(span, ListId::Full);
            }
            Reserved::Blocks(got)
        }
    }

    /// Brings the old copies of a batch of blocks moved out of `span` home at once:
    /// blocks `indices` (strictly ascending), with one home-bitmap update per word and
    /// one list update, as [`Arena::put_block`] does for one block.
    ///
    /// # Safety
    ///
    /// * `st` is this arena's locked state and `span` belongs to this arena;
    /// * `indices` are out blocks of `span` that were live in its current life and that
    ///   nobody uses any more ([`Span::put_indices`]).
    pub(crate) unsafe fn put_indices(&self, st: &mut ArenaState, span: &Span, indices: &[u32]) {
        if indices.is_empty() {
            return;
        }
        // SAFETY: forwarded from the caller.
        unsafe {
            span.put_indices(indices);
            self.came_home(st, span, indices.len() as u64);
        }
    }
}
