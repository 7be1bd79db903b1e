//! Remote-free lists: how a fixed block freed by another thread goes home to the thread
//! whose span it came from.
//!
//! # Ownership of fixed spans
//!
//! A fixed span has an *owner*: the thread-cache record whose refill took blocks from it
//! (`Span::owner`, set under the arena lock by `Arena::take_blocks`, cleared when the span
//! is initialised again). Only the owner's refills take blocks from a span it owns, so
//! every block of an owned span was handed out by that record's thread, and two threads'
//! live blocks never share a span (nor, spans being 64 KiB-aligned, a cache line).
//!
//! ```text
//! free(b) by record T:  span = pagemap(b)
//!                       span.owner == T     → T's local list            (the hot path)
//!                       span.owner == R ≠ T → R.remote[class].push(b)    (lock-free, one CAS)
//!                       span.owner == none  → home to the span            (arena lock)
//! R's refill of class:  R.remote[class].take() (one swap) → R's local list (the surplus
//!                       into the spans' local sets, `pool::owned`); then the local sets;
//!                       then the arena
//! ```
//!
//! One list per (owner record, class), not per span: the owner collects everything
//! freed to it for a class with one swap on a miss, without walking its spans, and the
//! hot paths never touch it. The freeing side batches too (snmalloc's remote cache, in
//! small): a thread collects the blocks it frees for one owner and class in its record's
//! *outgoing* chain (`thread_cache::Outgoing`) and pushes the chain with one CAS when it
//! holds a batch, when a block for another owner comes, or when the thread flushes
//! (exit, `trim`). So a producer/consumer pair pays one CAS per batch, not per block.
//!
//! # Owners that go away
//!
//! An owner is a record, not a thread. A thread that exits parks its record (see
//! `thread_cache`) after bringing the record's remote lists home; frees that arrive later
//! still land on the parked record's lists, which the next thread to claim the record
//! collects on its first misses, or `trim` (`flush_parked`) brings home. A span owned by
//! a parked record is *adopted* by the next refill that finds it on its arena's partial
//! list (`Arena::take_blocks` re-points `owner`). Neither loses or duplicates a block:
//! `owner` only routes frees. Every block is, at each moment, in exactly one place — a
//! user's hands, one thread's list, one remote list, or its span's home set — and it
//! moves between them only through this list's atomic head, a record's claim flag, or the
//! arena lock. (An outgoing chain is part of its thread's record: the thread's list of
//! blocks on their way.) Blocks on a remote list are *out* of their span (like cached ones), so a
//! span with pending remote frees is never empty, retired or purged.
//!
//! # The list
//!
//! A Treiber stack linked through word 0 of the blocks, with a whole-list take:
//!
//! ```text
//! push(b…t): loop { h = head.load; t.w0 = h; CAS head: h → b }     // the chain is the pusher's until the CAS
//! take():    if head.load == null { return null }; head.swap(null)  // the taker owns the chain
//! ```
//!
//! No thread reads a word of a block it does not own: `push_chain` writes only its own
//! chain's tail before publishing it (if the head went `A → … → A` meanwhile, `A` is still the top at
//! the CAS, so the link is right: no ABA), and `take` walks the chain only after the swap
//! that made it the owner. Orderings: the CAS is `Release` (the link write happens before
//! the block is visible), the swap `Acquire`; every push's CAS is a read-modify-write of
//! the same atomic, so the swap synchronises with all of them (a release sequence). Word 1
//! (the free stamp, see `HeapInner::stamp_free`) is left alone.
//!
//! Invariant: the blocks reachable from `head` are free fixed blocks of spans whose owner
//! was this list's record when they were pushed, each exactly once; the chain ends in null.

use core::ptr::{self, NonNull};

use super::link;
use crate::sync::{AtomicPtr, Ordering};

/// One remote-free list (see the module docs).
#[derive(Debug)]
pub(crate) struct RemoteList {
    /// Top of the stack; null when empty. Zero bytes are an empty list.
    head: AtomicPtr<u8>,
}

impl RemoteList {
    /// An empty list.
    #[cfg(all(test, tidyheap_loom))]
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `block`.
    ///
    /// # Safety
    ///
    /// `block` is a free pool block (at least 16 bytes, 16-aligned) that the caller owns
    /// and hands over: nobody else uses it from now on.
    #[cfg(all(test, tidyheap_loom))]
    pub(crate) unsafe fn push(&self, block: NonNull<u8>) {
        // SAFETY: forwarded from the caller: a chain of one block.
        unsafe { self.push_chain(block, block) }
    }

    /// Pushes the chain `head → … → tail` (linked through word 0; `tail`'s word 0 is
    /// overwritten) with one CAS.
    ///
    /// # Safety
    ///
    /// The chain's blocks are free pool blocks (at least 16 bytes, 16-aligned) that the
    /// caller owns and hands over, and `tail` is reachable from `head`.
    #[inline]
    pub(crate) unsafe fn push_chain(&self, head: NonNull<u8>, tail: NonNull<u8>) {
        let mut h = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the chain is the caller's until the CAS below publishes it; word 0
            // of `tail` is inside it and pointer-aligned.
            unsafe { link::write(tail, h) };
            match self.head.compare_exchange_weak(
                h,
                head.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// Takes every block on the list: the head of a null-terminated chain through word 0,
    /// which the caller now owns (null when the list was empty). An empty list costs one
    /// load and no read-modify-write.
    #[inline]
    #[must_use = "the taken blocks leak unless the caller puts them somewhere"]
    pub(crate) fn take(&self) -> *mut u8 {
        if self.head.load(Ordering::Relaxed).is_null() {
            return ptr::null_mut();
        }
        self.head.swap(ptr::null_mut(), Ordering::Acquire)
    }
}

/// The remote lists of one record, one per class, on cache lines of their own so remote
/// pushes do not invalidate the owner's hot lines.
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct RemoteLists(pub(crate) [RemoteList; crate::size_class::NUM_CLASSES]);

#[cfg(all(test, tidyheap_loom))]
mod loom_tests;
