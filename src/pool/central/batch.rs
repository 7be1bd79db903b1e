//! Batches: owned chains of free blocks, the unit the central lists move.

use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use super::{next_block, set_next_block, unstack};

/// Debug check that a raw chain has the shape a [`Batch`] requires (walks it).
///
/// # Safety
///
/// The caller owns the first `count` blocks of the chain from `head` (if it has them).
#[cfg(debug_assertions)]
unsafe fn debug_check_chain(head: NonNull<u8>, tail: NonNull<u8>, count: u32) {
    assert!(count >= 1, "a batch has at least one block");
    let mut block = head;
    for _ in 1..count {
        assert_eq!(
            block.as_ptr().addr() % 16,
            0,
            "pool blocks are 16-byte aligned"
        );
        // SAFETY: `block` is one of the first `count` blocks of the chain (caller owns them).
        let next = unsafe { next_block(block) };
        block = NonNull::new(next).expect("batch chain shorter than its count");
    }
    assert_eq!(block, tail, "batch chain does not end at its tail");
    // SAFETY: `tail` is the `count`-th block of the chain (caller owns it).
    let after = unsafe { next_block(tail) };
    assert!(after.is_null(), "batch tail does not end the chain");
}

/// An owned chain of free blocks of one class.
///
/// Word 0 of each block holds the next block, null at the tail; word 1 is not used while
/// a block is in a `Batch` (the central list uses it while the batch is stacked).
///
/// Invariants:
///
/// * **B1** `count >= 1`, and the word-0 chain from `head` visits exactly `count` distinct
///   blocks, the last being `tail`, whose word 0 is null.
/// * **B2** the batch owns its blocks exclusively: no list, other batch or user refers
///   to them, so moving the `Batch` to another thread moves the blocks with it.
/// * **B3** every block is a pool block: at least 16 bytes, 16-byte aligned.
///
/// Dropping a non-empty batch would leak its blocks; debug builds panic when it happens.
/// To discard one on purpose (its spans are being released wholesale), `mem::forget` it.
#[must_use = "dropping a Batch leaks its blocks"]
#[derive(Debug)]
pub(crate) struct Batch {
    /// First block; popped first.
    pub(super) head: NonNull<u8>,
    /// Last block; word 0 is null.
    tail: NonNull<u8>,
    /// Number of blocks in the chain (B1).
    pub(super) count: u32,
}

// SAFETY: a `Batch` owns its blocks exclusively (B2) and holds nothing tied to a thread;
// sending it sends that ownership.
unsafe impl Send for Batch {}

impl Batch {
    /// A batch of the single block `block`.
    ///
    /// # Safety
    ///
    /// * `block` is a pool block: at least 16 bytes, 16-byte aligned, valid for writes;
    /// * the caller owns it and hands it over: nothing else refers to it afterwards.
    #[inline]
    pub(crate) unsafe fn from_block(block: NonNull<u8>) -> Batch {
        debug_assert_eq!(
            block.as_ptr().addr() % 16,
            0,
            "pool blocks are 16-byte aligned"
        );
        // SAFETY:
        // * `block` is a pool block (caller);
        // * the caller owns it, so no one else accesses it.
        unsafe { set_next_block(block, ptr::null_mut()) };
        Batch {
            head: block,
            tail: block,
            count: 1,
        }
    }

    /// Prepends `block`: it becomes the new head.
    ///
    /// # Safety
    ///
    /// As [`Batch::from_block`]; in addition `block` is not already in this batch.
    ///
    /// # Panics
    ///
    /// If the batch already holds `u32::MAX` blocks (64 GiB of 16-byte blocks: a bug).
    #[inline]
    pub(crate) unsafe fn push(&mut self, block: NonNull<u8>) {
        debug_assert_eq!(
            block.as_ptr().addr() % 16,
            0,
            "pool blocks are 16-byte aligned"
        );
        self.count = self
            .count
            .checked_add(1)
            .expect("a batch cannot hold more than u32::MAX blocks");
        // SAFETY:
        // * `block` is a pool block (caller);
        // * the caller owns it and it is not in this batch, so linking it keeps B1 and B2.
        unsafe { set_next_block(block, self.head.as_ptr()) };
        self.head = block;
    }

    /// Rebuilds a batch from a chain the caller linked itself.
    ///
    /// # Safety
    ///
    /// * the word-0 chain from `head` has exactly `count >= 1` distinct blocks, the last
    ///   being `tail`, whose word 0 is null (B1);
    /// * the caller owns every one of those blocks and hands them over (B2);
    /// * every block is a pool block (B3).
    ///
    /// Debug builds walk the chain and panic if it is not what is claimed.
    #[inline]
    pub(crate) unsafe fn from_raw_parts(head: NonNull<u8>, tail: NonNull<u8>, count: u32) -> Batch {
        #[cfg(debug_assertions)]
        // SAFETY: the caller owns the `count` blocks of the chain from `head`.
        unsafe {
            debug_check_chain(head, tail, count);
        }
        Batch { head, tail, count }
    }

    /// Gives up the batch as `(head, tail, count)`; the caller now owns the chain.
    #[inline]
    pub(crate) fn into_raw_parts(self) -> (NonNull<u8>, NonNull<u8>, u32) {
        let this = ManuallyDrop::new(self);
        (this.head, this.tail, this.count)
    }

    /// Number of blocks.
    #[inline]
    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    /// The first block (the one [`Batch::split_first`] gives out).
    #[inline]
    #[cfg(test)]
    pub(crate) fn head(&self) -> NonNull<u8> {
        self.head
    }

    /// The last block (word 0 null).
    #[inline]
    #[cfg(test)]
    pub(crate) fn tail(&self) -> NonNull<u8> {
        self.tail
    }

    /// Takes the head block out; returns it and the rest of the batch, if any.
    ///
    /// The refill path uses this: one block for the allocation at hand, the rest for the
    /// thread cache. The returned block's words are no longer the batch's business.
    #[inline]
    pub(crate) fn split_first(self) -> (NonNull<u8>, Option<Batch>) {
        let (head, tail, count) = self.into_raw_parts();
        if count == 1 {
            return (head, None);
        }
        // SAFETY: the batch owned `head` (B2), a pool block (B3).
        let next = unsafe { next_block(head) };
        // SAFETY: `count >= 2`, so word 0 of `head` is the second block, non-null (B1).
        let next = unsafe { NonNull::new_unchecked(next) };
        // SAFETY: the chain from `next` is B1's chain minus its head: `count - 1` blocks
        // ending in `tail`, still owned (B2) and pool blocks (B3).
        let rest = unsafe { Batch::from_raw_parts(next, tail, count - 1) };
        (head, Some(rest))
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        debug_assert!(
            std::thread::panicking(),
            "a Batch of {} free blocks was dropped: they leak",
            self.count
        );
    }
}

impl IntoIterator for Batch {
    type Item = NonNull<u8>;
    type IntoIter = BatchIter;

    /// Iterates the blocks head first, handing each over as it is yielded.
    fn into_iter(self) -> BatchIter {
        let (head, _, count) = self.into_raw_parts();
        BatchIter {
            next: head.as_ptr(),
            remaining: count,
        }
    }
}

/// The blocks of a [`Batch`], head first. Each yielded block belongs to the caller: its
/// link is read before it is yielded, so the caller may overwrite it at once (for example
/// give it back to its span).
///
/// Invariant: the chain from `next` has `remaining` blocks, all owned by the iterator.
/// Dropping it before the end leaks the rest; debug builds panic when that happens.
#[must_use = "dropping a BatchIter leaks the blocks it has not yielded"]
#[derive(Debug)]
pub(crate) struct BatchIter {
    /// Next block to yield; null at the end.
    next: *mut u8,
    /// Blocks not yet yielded.
    remaining: u32,
}

// SAFETY: the iterator owns the blocks it has not yielded (as `Batch`, B2).
unsafe impl Send for BatchIter {}

impl Iterator for BatchIter {
    type Item = NonNull<u8>;

    #[inline]
    fn next(&mut self) -> Option<NonNull<u8>> {
        let block = NonNull::new(self.next)?;
        debug_assert!(self.remaining > 0, "batch chain longer than its count");
        // SAFETY: `block` is the next owned block of the chain (type invariant), a pool block.
        self.next = unsafe { next_block(block) };
        self.remaining = self.remaining.saturating_sub(1);
        Some(block)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for BatchIter {}

impl Drop for BatchIter {
    fn drop(&mut self) {
        debug_assert!(
            self.next.is_null() || std::thread::panicking(),
            "a BatchIter was dropped with {} blocks left: they leak",
            self.remaining
        );
    }
}

/// Batches taken off a central list by [`CentralFreeList::take_all`], owned, yielded top
/// first.
///
/// Invariant: the batches reachable from `first` through their stacked links are `len`
/// batches of `blocks` blocks in all, each satisfying C3, all owned by this value.
/// Dropping it before the end leaks the rest; debug builds panic when that happens.
#[must_use = "dropping a BatchChain leaks its blocks"]
#[derive(Debug)]
pub(crate) struct BatchChain {
    /// First block of the next batch to yield; null at the end.
    pub(super) first: *mut u8,
    /// Batches not yet yielded.
    pub(super) len: usize,
    /// Blocks in the batches not yet yielded.
    pub(super) blocks: usize,
}

// SAFETY: the chain owns its batches exclusively (type invariant) and holds nothing tied
// to a thread.
unsafe impl Send for BatchChain {}

impl BatchChain {
    /// A chain of no batches.
    pub(super) const fn empty() -> BatchChain {
        BatchChain {
            first: ptr::null_mut(),
            len: 0,
            blocks: 0,
        }
    }

    /// Batches left to yield.
    #[inline]
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when no batch is left.
    #[inline]
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_null()
    }

    /// Blocks in the batches left to yield.
    #[inline]
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }
}

impl Iterator for BatchChain {
    type Item = Batch;

    #[inline]
    fn next(&mut self) -> Option<Batch> {
        let first = NonNull::new(self.first)?;
        // SAFETY:
        // * the chain owns `first` and its whole batch (type invariant);
        // * the batch was stacked by `push`, so C3 holds for it.
        let (batch, next) = unsafe { unstack(first) };
        self.first = next;
        self.len -= 1;
        self.blocks -= batch.len() as usize;
        Some(batch)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl ExactSizeIterator for BatchChain {}

impl Drop for BatchChain {
    fn drop(&mut self) {
        debug_assert!(
            self.first.is_null() || std::thread::panicking(),
            "a BatchChain was dropped with {} batches left: they leak",
            self.len
        );
    }
}
