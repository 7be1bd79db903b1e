//! Moving blocks in batches.
//!
//! A pass moves the live blocks of one source span in batches of up to
//! [`MAX_BATCH`] blocks and [`MAX_BATCH_BYTES`] bytes, so the arena locks and counter
//! updates are paid per batch rather than per block:
//!
//! ```text
//! reserve   one destination per candidate from the target's run (`Targets::run`,
//!           no lock); an empty run is refilled under the target's arena lock with
//!           all its home blocks at once (`Arena::reserve_for_moves`)
//! per block owner check → try_lock_move (never waits) → no read scope open on the
//!           block's store (else skip: `handle::scope`) → owner re-check under the lock
//!           → copy → new side-table entry → slot ← new → old entry cleared → unlock
//! return    destinations left unused go back on the run; the old copies go home to
//!           the source under one lock, with one home-bitmap update per 64 blocks
//!           (`Arena::put_indices`); the source's live count changes once
//! ```
//!
//! Destinations are taken in address order from the target's home bitmap
//! (`Span::detach_home`) rather than chasing links from block to block: a linked home
//! list read each free block's link before the next could be found, a dependent cache
//! miss per move that was 40–48 % of a pass. While the next block is copied, the one
//! after it (source and destination) is prefetched. Each move still re-validates its
//! block under the slot's move lock (`move_block`: the slot still addresses it, the
//! source's life, no read scope, the side table's owner), and the deadline is checked
//! once per batch (at most [`MAX_BATCH_BYTES`] copied between two checks).
//!
//! What a move costs is counted by `examples/move_instructions.rs` (callgrind; figures
//! in `benches/README.md`).
//!
//! Observers hear of the moves only after the old copies are home (see the module docs
//! of `compact`), so a panicking observer strands nothing. A run is refilled only after
//! the target's incarnation is re-checked under its arena lock, and the blocks of a run
//! are out blocks of the target, so it keeps its incarnation while they are held:
//! DESIGN invariant 7.

use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::plan::Targets;
use super::{MoveEvent, Planned};
#[cfg(feature = "events")]
use crate::events::Pool;
use crate::handle::scope::scopes_of;
use crate::handle::{HandleTable, MoveSkip};
use crate::heap::Heap;
use crate::movable::{RAW_TAG, tag_ptr, untag};
use crate::pool::evacuation::Reserved;
use crate::pool::poison;
use crate::pool::span::Span;
use crate::size_class;

/// Most blocks in one batch.
pub(super) const MAX_BATCH: usize = 16;
/// A batch stops growing once it holds this many bytes, so a time budget is overrun by
/// at most one batch's copying (about 10 µs at memory speed).
pub(super) const MAX_BATCH_BYTES: usize = 64 << 10;

/// Live blocks of one source span chosen to move together.
pub(super) struct Batch {
    /// `(block index, owner slot index, requested length)`.
    blocks: [(usize, u32, usize); MAX_BATCH],
    len: usize,
    bytes: usize,
}

impl Batch {
    pub(super) fn new() -> Self {
        Self {
            blocks: [(0, 0, 0); MAX_BATCH],
            len: 0,
            bytes: 0,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == MAX_BATCH || self.bytes >= MAX_BATCH_BYTES
    }

    /// Blocks and bytes the batch would hold with one more block of `len` bytes.
    pub(super) fn would_move(&self, len: usize) -> (u64, u64) {
        ((self.len + 1) as u64, (self.bytes + len) as u64)
    }

    pub(super) fn push(&mut self, index: usize, owner: u32, len: usize) {
        self.blocks[self.len] = (index, owner, len);
        self.len += 1;
        self.bytes += len;
    }

    fn blocks(&self) -> &[(usize, u32, usize)] {
        &self.blocks[..self.len]
    }
}

/// What a batch did.
pub(super) struct BatchDone {
    /// One event per block moved, in the order they moved (the first `moved`).
    events: [Option<MoveEvent>; MAX_BATCH],
    moved: usize,
    pub(super) busy: u64,
    pub(super) pinned: u64,
    /// The targets ran out of room: the rest of the source cannot move in this plan.
    pub(super) no_room: bool,
}

impl BatchDone {
    /// The moves, in the order they happened.
    pub(super) fn events(&self) -> impl Iterator<Item = &MoveEvent> {
        self.events[..self.moved].iter().flatten()
    }

    /// Blocks moved.
    pub(super) fn moved(&self) -> usize {
        self.moved
    }
}

impl Heap {
    /// Moves the blocks of `batch`, live blocks of `source` (a span this pass scans),
    /// into the targets of its plan group (the last one first; exhausted or changed
    /// ones are dropped).
    pub(super) fn move_batch(
        &self,
        table: &HandleTable,
        source: &Span,
        batch: &Batch,
        targets: &mut Targets,
    ) -> BatchDone {
        let mut done = BatchDone {
            events: [None; MAX_BATCH],
            moved: 0,
            busy: 0,
            pinned: 0,
            no_room: false,
        };
        if batch.len == 0 {
            return done;
        }
        let inner = self.inner();
        // Touch every owner slot first: independent loads, so their cache misses
        // overlap each other and the reservations below, instead of each move waiting
        // for its own.
        for &(_, index, _) in batch.blocks() {
            if let Some(slot) = table.slot(index) {
                core::hint::black_box(slot.ptr());
            }
        }
        // Reserve a destination per candidate: (target, block index).
        let mut dest: [(Planned, u32); MAX_BATCH] = [(Planned::dangling(), 0); MAX_BATCH];
        let mut reserved = 0;
        while reserved < batch.len {
            let Some(&t) = targets.spans.last() else {
                done.no_room = true;
                break;
            };
            if let Some(i) = targets.run.pop() {
                dest[reserved] = (t, i);
                reserved += 1;
            } else if !self.refill_run(t, &mut targets.run) {
                // Full, or no longer the span that was planned.
                targets.spans.pop();
            }
        }
        // The targets' live counts rise once per batch, before the moves publish any
        // block (so a moved block freed at once never takes a count below zero), and
        // fall back for destinations left unused.
        add_live(&dest[..reserved], true);
        // Move.
        let mut old_blocks = [0u32; MAX_BATCH];
        let mut used = 0;
        // We scan `source`: its incarnation cannot change under this pass.
        let life = source.incarnation();
        let blocks = batch.blocks();
        for (k, &(i, index, _)) in blocks.iter().enumerate() {
            if used == reserved {
                break;
            }
            let (target, ni) = dest[used];
            let target = target.span();
            // SAFETY: `ni` indexes a reserved (out) block of `target`, which keeps
            // its geometry while the block is out.
            let new = target.block(ni as usize);
            // The next move's blocks start coming in while this one copies.
            if let (Some(&(ni2, _, len2)), Some(&(t2, i2))) =
                (blocks.get(k + 1), dest[..reserved].get(used + 1))
            {
                prefetch(source.block(ni2), len2, false);
                prefetch(t2.span().block(i2 as usize), len2, true);
            }
            poison::live_block(new, target.block_size());
            match self.move_block(table, source, life, i, index, target, ni as usize, false) {
                Ok(ev) => {
                    // NUMA: the block's reader vote goes with it (no-op with one node).
                    self.carry_vote(source, i, target, new);
                    old_blocks[done.moved] = i as u32;
                    done.events[done.moved] = Some(ev);
                    done.moved += 1;
                    used += 1;
                }
                Err(e) => {
                    poison::free_block(new, target.block_size());
                    match e {
                        MoveSkip::Busy => done.busy += 1,
                        MoveSkip::Pinned => done.pinned += 1,
                        _ => {}
                    }
                }
            }
        }
        let moved = done.moved;
        // The source is scanned, so its life is `life` until the pass stops scanning.
        let counted = source.live.add(life, (moved as u32).wrapping_neg());
        debug_assert!(counted, "a scanned source keeps its life");
        add_live(&dest[used..reserved], false);
        // Unused destinations go back on the run they came from (highest address first,
        // so the lowest is reused first), or home if their target was dropped.
        for &(t, ni) in dest[used..reserved].iter().rev() {
            if targets.spans.last() == Some(&t) {
                targets.run.push(ni);
            } else {
                let target = t.span();
                let arena = &inner.arenas[target.arena as usize];
                let mut st = arena.lock();
                // SAFETY: lock held; block `ni` is a reserved (out) block of `target`
                // that nobody references.
                unsafe { arena.put_block(&mut st, target, target.block(ni as usize)) };
            }
        }
        if moved > 0 {
            let arena = &inner.arenas[source.arena as usize];
            let mut st = arena.lock();
            // SAFETY: lock held; the old blocks are out blocks of `source`, in address
            // order (the batch is), that nobody references any more (their slots point
            // at the new copies).
            unsafe { arena.put_indices(&mut st, source, &old_blocks[..moved]) };
        }
        done
    }

    /// Refills the empty `run` with destinations of target `t` under its arena lock;
    /// returns false if `t` is full or no longer the planned span.
    fn refill_run(&self, t: Planned, run: &mut Vec<u32>) -> bool {
        debug_assert!(run.is_empty());
        let target = t.span();
        let arena = &self.inner().arenas[target.arena as usize];
        // Room for every block of the span, reserved without the lock (growing may
        // allocate); the capacity read may be stale, in which case we are told.
        let mut room = target.capacity().max(MAX_BATCH);
        loop {
            run.reserve(room);
            let mut st = arena.lock();
            // SAFETY: lock held; the span belongs to this arena (fixed for the record's
            // life); `reserve_for_moves` checks it is still the planned target.
            match unsafe { arena.reserve_for_moves(&mut st, target, t.incarnation, MAX_BATCH, run) }
            {
                Reserved::Blocks(n) => return n > 0,
                Reserved::Changed => return false,
                Reserved::NeedRoom(n) => room = n,
            }
        }
    }

    /// Puts the destinations left in `targets.run` back home to their target.
    pub(super) fn return_run(&self, targets: &mut Targets) {
        if targets.run.is_empty() {
            return;
        }
        let t = *targets
            .spans
            .last()
            .expect("a run belongs to the last target");
        let target = t.span();
        let arena = &self.inner().arenas[target.arena as usize];
        let mut st = arena.lock();
        for ni in targets.run.drain(..) {
            // SAFETY: lock held; block `ni` is a reserved (out) block of `target` (so
            // it kept its life) that nobody references.
            unsafe { arena.put_block(&mut st, target, target.block(ni as usize)) };
        }
    }

    /// Moves block `i` of `source`, owned by slot `index`, into `new`, a reserved block
    /// of `target`, if `source` is still in its life `life` (the incarnation the caller
    /// planned with) once the block's slot is locked.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn move_one(
        &self,
        table: &HandleTable,
        source: &Span,
        life: u32,
        i: usize,
        index: u32,
        target: &Span,
        new: NonNull<u8>,
    ) -> Result<MoveEvent, MoveSkip> {
        let ni = target
            .block_index(new.as_ptr().addr())
            .expect("take_from returns a block of the target");
        self.move_block(table, source, life, i, index, target, ni, true)
    }

    /// [`Heap::move_one`] into block `ni` of `target`; `target`'s live count counts the moved
    /// block only if `count_live` (else the caller counted it before the move).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn move_block(
        &self,
        table: &HandleTable,
        source: &Span,
        life: u32,
        i: usize,
        index: u32,
        target: &Span,
        ni: usize,
        count_live: bool,
    ) -> Result<MoveEvent, MoveSkip> {
        let old = source.block(i);
        let new = target.block(ni);
        let slot = table.slot(index).ok_or(MoveSkip::Gone)?;
        let tagged = NonNull::new(slot.ptr()).ok_or(MoveSkip::Gone)?;
        let (addr, tag) = untag(tagged);
        if addr != old {
            return Err(MoveSkip::Gone);
        }
        let mut mv = table.try_lock_move(index, tagged)?;
        // The slot still addresses `old`, so `old` is a live block of `source` until we
        // unlock and the span cannot be re-initialised meanwhile; it is the planned life
        // only if the incarnation still matches (DESIGN invariant 7): else `i` and the
        // side table may describe another geometry.
        if source.incarnation() != life {
            return Err(MoveSkip::Gone);
        }
        // A store's block is not moved while a read scope of the store is open: checked
        // after taking the move lock (module `handle::scope`); dropping `mv` unlocks.
        if tag != RAW_TAG && !scopes_of(tag).admits_writer() {
            return Err(MoveSkip::Busy);
        }
        // SAFETY: movable span (we scan it), valid index.
        let meta = unsafe { source.meta(i) };
        // An allocation publishes its owner last: until then the block is not ours to move.
        if meta.owner(Ordering::Acquire) != index + 1 {
            return Err(MoveSkip::Gone);
        }
        let len = meta.len();
        // SAFETY: `old` is a live block of `len` bytes that nobody can access (we hold
        // the move lock); `new` is a reserved block of the same class in another span.
        unsafe { core::ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), len) };
        // SAFETY: `target` is a movable span (checked when the block was reserved) with
        // a block out, so it keeps its geometry; `ni` is one of its blocks.
        let new_meta = unsafe { target.meta(ni) };
        new_meta.set_len(len);
        if count_live {
            // `new` is a reserved (out) block of `target`, which keeps its life.
            let counted = target.live.add(target.incarnation(), 1);
            debug_assert!(counted, "a target with a block out keeps its life");
        }
        new_meta.set_owner(index + 1, Ordering::Release);
        // SAFETY: we hold the move lock, and `new` holds a complete copy.
        unsafe { mv.set_ptr(tag_ptr(new, tag)) };
        // Event hook (move lock held): free(old), alloc(new) before either address can
        // be reused or freed by anyone else.
        emit!(
            self,
            on_move(Pool::Movable, old.as_ptr().addr(), new.as_ptr().addr(), len)
        );
        meta.clear_owner(Ordering::Release);
        Ok(MoveEvent {
            handle: mv.handle(),
            from: old.as_ptr().addr(),
            to: new.as_ptr().addr(),
            size: len,
            class_size: size_class::size(source.class()),
        })
    }
}

/// Adds (or, if not `up`, takes) one block per destination to its target's live count:
/// one atomic per run of destinations in the same target. The destinations are reserved
/// (out) blocks of their targets, which so keep the life they were planned in.
fn add_live(dest: &[(Planned, u32)], up: bool) {
    for run in dest.chunk_by(|a, b| a.0 == b.0) {
        let n = run.len() as u32;
        let t = run[0].0;
        let counted = t
            .span()
            .live
            .add(t.incarnation, if up { n } else { n.wrapping_neg() });
        debug_assert!(counted, "a target with blocks out keeps its life");
    }
}

/// Asks for the first bytes of `block` (up to 1 KiB: the hardware prefetcher follows
/// on) to be brought into the cache, for writing if `write`. A hint only.
#[inline]
fn prefetch(block: NonNull<u8>, len: usize, write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_ET0, _MM_HINT_T0, _mm_prefetch};
        let p = block.as_ptr().cast_const().cast::<i8>();
        let end = len.min(1024);
        let mut off = 0;
        while off < end {
            let a = p.wrapping_add(off);
            off += 64;
            // SAFETY:
            // - `sse` is part of the x86_64 baseline, so the instruction exists;
            // - a prefetch never faults and changes no memory, whatever the address.
            unsafe {
                if write {
                    _mm_prefetch::<_MM_HINT_ET0>(a);
                } else {
                    _mm_prefetch::<_MM_HINT_T0>(a);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (block, len, write);
}
