//! Where blocks a thread lets go of end up: fixed blocks home to their spans (into the
//! spans' home sets, under each owning arena's lock), movable ones to the central lists.

use core::ptr::NonNull;

use super::{CENTRAL_BYTES_PER_CLASS, HeapInner};
use crate::pool::arena::ArenaState;
use crate::pool::central::Batch;
use crate::pool::link;
use crate::pool::lock::MutexGuard;
use crate::pool::span::Span;
use crate::pool::span::SpanKind;
use crate::size_class;

impl HeapInner {
    /// Gives blocks a thread's list lets go of back: fixed ones home to their spans (the
    /// thread owns those spans), movable ones to the central list.
    pub(super) fn give_back(&self, batch: Batch, class: usize, kind: SpanKind) {
        match kind {
            // SAFETY: the batch's blocks are free and ours.
            SpanKind::Fixed => unsafe { self.return_home(batch) },
            SpanKind::Movable => self.give_central(batch, class, kind),
        }
    }

    pub(super) fn give_central(&self, batch: Batch, class: usize, kind: SpanKind) {
        let central = &self.central[kind as usize][class];
        let bytes = self.batch(class) * size_class::size(class);
        let cap = (CENTRAL_BYTES_PER_CLASS / bytes).max(4);
        let batch = if central.batches() < cap {
            match central.push(batch) {
                Ok(()) => return,
                Err(b) => b,
            }
        } else {
            batch
        };
        // SAFETY: the batch's blocks are free and ours.
        unsafe { self.return_home(batch) };
    }

    /// Returns every block of `batch` to its span, locking each owning arena once per
    /// run of blocks that share it.
    ///
    /// # Safety
    ///
    /// The batch's blocks are free blocks of this heap that nobody uses.
    pub(crate) unsafe fn return_home(&self, batch: Batch) {
        let (head, _tail, _count) = batch.into_raw_parts();
        // SAFETY: forwarded from the caller; a batch's chain ends in null (B1).
        unsafe { self.return_chain_home(head.as_ptr()) }
    }

    /// Returns every block of the null-terminated chain (through word 0) from `chain`
    /// to its span, like [`HeapInner::return_home`].
    ///
    /// # Safety
    ///
    /// The chain's blocks are free blocks of this heap that nobody else uses.
    pub(crate) unsafe fn return_chain_home(&self, chain: *mut u8) {
        let mut cur = chain;
        // SAFETY: forwarded from the caller.
        unsafe {
            self.return_blocks_home(|| {
                let block = NonNull::new(cur)?;
                // The block is free and ours; read its link before it goes home.
                cur = link::read(block);
                Some(block)
            })
        }
    }

    /// Returns every block `next` yields (until `None`) to its span, locking each
    /// owning arena once per run of blocks that share it, and counting and relisting
    /// each span once per run of blocks that share it (`Arena::came_home`).
    ///
    /// # Safety
    ///
    /// The blocks are free blocks of this heap that nobody else uses, and `next` is done
    /// with each block it yielded (it reads nothing of it afterwards).
    pub(crate) unsafe fn return_blocks_home(&self, mut next: impl FnMut() -> Option<NonNull<u8>>) {
        let mut locked: Option<(u32, MutexGuard<'_, ArenaState>)> = None;
        // The span the last blocks went home to, and how many went since it was last
        // counted and relisted; its arena's lock is held while this is `Some`.
        let mut last: Option<(&Span, u64)> = None;
        while let Some(block) = next() {
            // Blocks of one batch mostly share a span: the last one's region (fixed for
            // its record's life; regions do not overlap) saves the page-map lookup.
            let addr = block.as_ptr().addr();
            let span = match last {
                Some((s, _)) if addr.wrapping_sub(s.base) < s.bytes => s,
                _ => {
                    let span = self.span_of(block).expect("a pool block maps to its span");
                    if let Some((prev, n)) = last.take() {
                        let (_, st) = locked.as_mut().expect("held for the last span");
                        // SAFETY: we hold `prev`'s arena lock (taken for its blocks),
                        // and `n` of its blocks came home since it was last relisted.
                        unsafe { self.arenas[prev.arena as usize].came_home(st, prev, n) };
                    }
                    span
                }
            };
            let arena = &self.arenas[span.arena as usize];
            if locked.as_ref().is_none_or(|(a, _)| *a != span.arena) {
                // Never hold two arena locks: release the previous one first.
                drop(locked.take());
                locked = Some((span.arena, arena.lock()));
            }
            // SAFETY: we hold the span's arena lock.
            if unsafe { span.out() } == 0 {
                // No block of the span is out, so this one was freed before: a double
                // free that its free stamp did not show (the emptied span's pages may
                // have been purged since).
                crate::misuse::fatal!("double free of {block:p} ({} B class)", span.block_size())
            }
            // SAFETY: we hold the span's arena lock and the block is a dead out block;
            // the span is counted and relisted below, before the lock is released.
            unsafe { span.put(block) };
            last = Some((span, last.map_or(0, |(_, n)| n) + 1));
        }
        if let Some((prev, n)) = last {
            let (_, st) = locked.as_mut().expect("held for the last span");
            // SAFETY: as above.
            unsafe { self.arenas[prev.arena as usize].came_home(st, prev, n) };
        }
    }
}
