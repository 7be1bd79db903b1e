//! The central free list of one size class: a lock-free stack of *batches* of free blocks.
//!
//! # Where it sits
//!
//! ```text
//!   thread cache (per thread, per class) ──push(batch of ~32)──▶ CentralFreeList (per class)
//!                                        ◀──pop()─────────────
//!   trimming / the compactor ──take_all()──▶ hand every block back to its span
//! ```
//!
//! A thread cache that overflows moves one [`Batch`] here with one atomic operation; a
//! thread cache that runs dry takes one back with one or two. The list never allocates:
//! all its metadata lives inside the free blocks themselves, so it can sit under a
//! `#[global_allocator]`.
//!
//! # Representation
//!
//! Every pool block is at least 16 bytes and 16-byte aligned, so a free block has two
//! machine words we may use. A batch of `len` blocks `b0 → b1 → … → b(len-1)` and the
//! stack of batches look like this:
//!
//! ```text
//!   head: AtomicUsize = [ n: batches owned by the list (16 bits) | top: address of a b0 (48 bits) ]
//!
//!   every block     b_i.w0 = b_(i+1), null at the tail          (also while in a Batch value)
//!   first block     b0.w1  = [ len (16 bits) | next batch's b0 (48 bits) ]   (only on the stack)
//!   second block    b1.w1  = tail = b_(len-1)   when len ≥ 2                  (only on the stack)
//! ```
//!
//! Packing an address into 48 bits is sound because [`CentralFreeList::push`] checks, in
//! release builds too, that the batch's first block lies below 2^48 (Linux hands out
//! user addresses below 2^47 on x86-64 and below 2^48 on aarch64 unless a mapping hint
//! asks for more, and tidyheap's mappings never pass a hint); a batch that does not fit
//! is simply rejected, like a batch arriving at a full list, and its owner gives its
//! blocks back to their spans. The tail pointer is stored unpacked.
//!
//! # The algorithm: Treiber push, whole-list pop
//!
//! ```text
//!   push(X):   loop { cur = head.load
//!                     if n(cur) == capacity { reject X }
//!                     X.b0.w1 = [len(X) | top(cur)]                 // X is still ours
//!                     CAS head: cur → [n(cur)+1 | X.b0] }           // publish
//!
//!   pop():     loop { cur = head.load
//!                     if top(cur) == null { miss }
//!                     CAS head: cur → [n(cur)-1 | null] }           // take the WHOLE stack
//!              first = top(cur); rest = first.b0.w1.next             // read only after owning
//!              if rest != null { put_back(rest) }
//!              return first
//!
//!   put_back(rest):
//!              loop { cur = head.load
//!                     if top(cur) == null { CAS head: cur → [n(cur) | rest]; done on success }
//!                     else { newcomers = head.fetch_and(clear top)  // batches pushed meanwhile
//!                            link last batch of newcomers → rest; rest = newcomers } }
//!
//!   take_all(): taken = head.fetch_and(clear top); walk taken to count c; head.fetch_sub(c << 48)
//! ```
//!
//! The count `n` counts every batch the list *owns*, including the rest a pop is
//! still putting back, so `push` can enforce the capacity exactly and `n` never exceeds it.
//! `pop` decrements it in the same CAS that takes the stack; the put-back and the merge
//! leave it alone (they only move owned batches back to where they are visible);
//! `take_all` subtracts what it took once it has counted it.
//!
//! # Why ABA cannot hurt (and why not a tagged head)
//!
//! The textbook Treiber pop reads `next = top.next` and then `CAS(top → next)`. The ABA
//! interleaving it suffers, with the stack `A → B → C`:
//!
//! ```text
//!   T1: reads top = A, reads A.next = B … preempted
//!   T2: pops A, pops B (B is now user memory), pushes A back (A.next = C)
//!   T1: CAS(A → B) succeeds: head = B — B is handed out twice and C is lost
//! ```
//!
//! A tagged head (pointer + counter in one word) makes T1's CAS fail, but T1 has already
//! *read* `A.next` while T2 owned A and may have been writing user data into it: a data
//! race on plain memory (undefined behaviour in Rust's model, a torn pointer in
//! practice) that is only harmless because the CAS throws the value away — and if A's
//! span had meanwhile been returned to the OS, the read itself faults.
//!
//! Here **no thread ever reads a word of a block it does not own**:
//!
//! * `push` writes only into its own batch, and only before the CAS that publishes it. If
//!   the head went `A → … → A` in between, linking the new batch above `A` is still right:
//!   the CAS compares the whole head word, so on success `A` *is* the top with `n` batches
//!   under it at that instant. (The count is part of the word, so a success also proves
//!   the capacity check still holds.)
//! * `pop` compares only the head word, and takes *everything* reachable from it. In the
//!   interleaving above T1's CAS either fails (the head word changed) or — if the head
//!   word is again exactly `[n | A]` — takes the stack under `A` as it is *now*. Only
//!   then does T1 read `A.w1`, which it owns, and which holds the link T2 wrote when it
//!   pushed A back. Nothing T1 read before the CAS was a block word.
//! * `put_back` installs the rest only over a head whose top is null; an ABA on null
//!   is harmless because a null top stands for "nothing visible" however it came
//!   about. If the top is not null, it *takes* those newcomers (after which it owns them)
//!   before reading or writing their words.
//! * `take_all` takes first and walks after.
//!
//! The count in our head word is *not* what makes this safe. It happens to change in
//! the interleaving above (`[3 | A]` becomes `[2 | A]`), but T2 pushing one more batch D
//! before A restores the word exactly: `[3 | A] : A → D → C`. `loom_aba_pop_interleaving`
//! models precisely that; a pop that read `A.next` before its CAS fails it (B handed out
//! twice, C and D lost), this one passes.
//!
//! The price of whole-list swaps: between a pop's take and its put-back (a few
//! instructions) other poppers see an empty list and miss, and `take_all` misses the
//! batches in transit. Neither loses anything: a miss sends the thread cache to its arena,
//! and the batches in transit reappear a moment later. At quiescence `take_all` takes
//! everything.
//!
//! # Memory ordering
//!
//! Every successful read-modify-write of `head` is `AcqRel`; the plain loads are
//! `Relaxed` because their value is only used as a CAS expectation or a miss hint.
//! Block words are plain memory, accessed with `ptr::read` / `ptr::write`. A block's words
//! are written by its owner *before* a releasing RMW makes them visible (push, put-back,
//! merge) and read by a new owner only *after* the acquiring RMW that made it the owner
//! (pop, merge, take_all). Ownership moves only along those RMWs on one atomic, so every
//! pair of accesses to a block word is ordered by happens-before: no data race. Under loom
//! the block accesses are not tracked (loom cannot see raw memory); loom checks the
//! protocol on `head`, and the ownership argument above is what makes the block accesses
//! race-free. The loom models scribble over blocks they own, as user code would, so a
//! stale read would at least corrupt the results they check. Miri's data-race detector
//! does see the block accesses: the unit tests, including the 4-thread one, pass under
//! `MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test --lib pool::central`
//! (and it reports a race if, say, push's CAS is weakened to `Relaxed`).
//!
//! # Invariants (algebra)
//!
//! Write `R` for the batches reachable from `top(head)`, `T` for the batches in transit
//! (the rest a `pop` holds between its take and the end of its put-back, with any
//! newcomers it took to merge; or what a `take_all` holds between its `fetch_and` and
//! its `fetch_sub`), and `len(X)` for the blocks of batch `X`.
//!
//! * **C1** `n(head) == |R| + |T|`, hence `n(head) >= |R|`; at quiescence `n(head) == |R|`.
//! * **C2** `n(head) <= capacity <= MAX_BATCHES`.
//! * **C3** for every `X ∈ R`: `1 <= len(X) == (X.b0.w1 >> 48) <= MAX_BATCH_LEN`, the
//!   `w0` chain from `X.b0` has exactly `len(X)` blocks and ends in null, and
//!   `X.b1.w1 == tail(X)` when `len(X) >= 2`.
//! * **C4** blocks owned by the list `== Σ_{X ∈ R ∪ T} len(X)`; each block is owned by exactly one of: a
//!   list, a [`Batch`] / [`BatchChain`] / [`BatchIter`] value, or the user.
//! * **C5** (stats, at quiescence) `n(head) == pushes - pops - taken`.
//!
//! [`CentralFreeList::audit`] checks C1–C3 (it needs `&mut self`, i.e. quiescence); the
//! tests check C4 by counting every block and C5 from [`CentralStats`].
//!
//! # Cost of the hot paths (x86-64)
//!
//! `push`: one load, one or two stores into the batch, one `lock cmpxchg`, one relaxed
//! `lock xadd` (stats). `pop`: one load, one `lock cmpxchg`, a second `lock cmpxchg`
//! when other batches remain (the usual case), one relaxed `lock xadd`. A miss is one
//! load and one relaxed `lock xadd`.

use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::sync::const_fn_unless_loom;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// Address bits kept in a packed word; the count sits above them.
const ADDR_BITS: u32 = 48;
/// Mask of the address part of a packed word.
const ADDR_MASK: usize = (1 << ADDR_BITS) - 1;
/// Mask of the count part of a packed word.
const COUNT_MASK: usize = !ADDR_MASK;
/// One unit of the count part of a packed word.
const COUNT_ONE: usize = 1 << ADDR_BITS;

/// The most blocks one batch on a central list may hold (its length is packed into 16 bits).
pub(crate) const MAX_BATCH_LEN: u32 = u16::MAX as u32;
/// The most batches a central list may hold (their number is packed into 16 bits).
pub(crate) const MAX_BATCHES: usize = u16::MAX as usize;

// The packed words assume 64-bit addresses.
const _: () = assert!(
    usize::BITS == 64,
    "the central free list packs 48-bit addresses"
);

/// `[count | addr]`, exposing `addr`'s provenance so [`addr_of`] can rebuild the pointer.
#[inline(always)]
fn pack(addr: *mut u8, count: usize) -> usize {
    debug_assert!(
        addr.addr() <= ADDR_MASK,
        "address above 2^48 in a packed word"
    );
    debug_assert!(
        count <= u16::MAX as usize,
        "count above 16 bits in a packed word"
    );
    (count << ADDR_BITS) | addr.expose_provenance()
}

/// The address part of a packed word (null when it is zero).
#[inline(always)]
fn addr_of(word: usize) -> *mut u8 {
    ptr::with_exposed_provenance_mut(word & ADDR_MASK)
}

/// The count part of a packed word.
#[inline(always)]
fn count_of(word: usize) -> usize {
    word >> ADDR_BITS
}

/// Word 0 of `block`: the next block of its chain (null at the tail).
///
/// # Safety
///
/// * `block` points to a pool block (at least 16 bytes, 16-byte aligned);
/// * the calling thread owns `block`: no other thread accesses it concurrently.
#[inline(always)]
unsafe fn next_block(block: NonNull<u8>) -> *mut u8 {
    // SAFETY:
    // * word 0 lies inside the block and is aligned for a pointer (caller);
    // * no concurrent access (caller owns the block).
    unsafe { ptr::read(block.as_ptr().cast::<*mut u8>()) }
}

/// Sets word 0 of `block` to `next`.
///
/// # Safety
///
/// As [`next_block`].
#[inline(always)]
unsafe fn set_next_block(block: NonNull<u8>, next: *mut u8) {
    // SAFETY:
    // * word 0 lies inside the block and is aligned for a pointer (caller);
    // * no concurrent access (caller owns the block).
    unsafe { ptr::write(block.as_ptr().cast::<*mut u8>(), next) }
}

/// Pointer to word 1 of `block`.
///
/// # Safety
///
/// `block` points to a pool block (at least 16 bytes).
#[inline(always)]
unsafe fn word1(block: NonNull<u8>) -> *mut usize {
    // SAFETY: the block is at least 16 bytes, so word 1 is inside the same allocation.
    unsafe { block.as_ptr().cast::<usize>().add(1) }
}

/// Word 1 of a batch's first block on the stack: `[len | next batch's first block]`.
///
/// # Safety
///
/// As [`next_block`].
#[inline(always)]
unsafe fn link_word(block: NonNull<u8>) -> usize {
    // SAFETY:
    // * `block` is a pool block (caller), so `word1` is in bounds and 8-byte aligned;
    // * no concurrent access (caller owns the block).
    unsafe { ptr::read(word1(block)) }
}

/// Sets word 1 of a batch's first block.
///
/// # Safety
///
/// As [`next_block`].
#[inline(always)]
unsafe fn set_link_word(block: NonNull<u8>, word: usize) {
    // SAFETY:
    // * `block` is a pool block (caller), so `word1` is in bounds and 8-byte aligned;
    // * no concurrent access (caller owns the block).
    unsafe { ptr::write(word1(block), word) }
}

/// Word 1 of a batch's second block on the stack: the batch's tail.
///
/// # Safety
///
/// As [`next_block`].
#[inline(always)]
unsafe fn tail_word(block: NonNull<u8>) -> *mut u8 {
    // SAFETY:
    // * `block` is a pool block (caller), so `word1` is in bounds and pointer-aligned;
    // * no concurrent access (caller owns the block).
    unsafe { ptr::read(word1(block).cast::<*mut u8>()) }
}

/// Sets word 1 of a batch's second block.
///
/// # Safety
///
/// As [`next_block`].
#[inline(always)]
unsafe fn set_tail_word(block: NonNull<u8>, tail: *mut u8) {
    // SAFETY:
    // * `block` is a pool block (caller), so `word1` is in bounds and pointer-aligned;
    // * no concurrent access (caller owns the block).
    unsafe { ptr::write(word1(block).cast::<*mut u8>(), tail) }
}

/// Reads a stacked batch's first block back into a [`Batch`], and returns the next
/// batch's first block (null at the bottom).
///
/// # Safety
///
/// * the calling thread owns `first` and every block of its batch;
/// * the batch was written by [`CentralFreeList::push`] (invariant C3 holds for it).
#[inline(always)]
unsafe fn unstack(first: NonNull<u8>) -> (Batch, *mut u8) {
    // SAFETY: `first` is an owned pool block (caller).
    let link = unsafe { link_word(first) };
    let len = count_of(link) as u32;
    let tail = if len >= 2 {
        // SAFETY:
        // * `len >= 2`, so word 0 of `first` is the second block, non-null (C3);
        // * the second block is owned by the caller like the whole batch.
        unsafe {
            let second = NonNull::new_unchecked(next_block(first));
            NonNull::new_unchecked(tail_word(second))
        }
    } else {
        first
    };
    // SAFETY: C3 for this batch: the chain from `first` has `len` blocks ending in
    // `tail`, all owned by the caller, which hands that ownership to the `Batch`.
    let batch = unsafe { Batch::from_raw_parts(first, tail, len) };
    (batch, addr_of(link))
}

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
    head: NonNull<u8>,
    /// Last block; word 0 is null.
    tail: NonNull<u8>,
    /// Number of blocks in the chain (B1).
    count: u32,
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
    first: *mut u8,
    /// Batches not yet yielded.
    len: usize,
    /// Blocks in the batches not yet yielded.
    blocks: usize,
}

// SAFETY: the chain owns its batches exclusively (type invariant) and holds nothing tied
// to a thread.
unsafe impl Send for BatchChain {}

impl BatchChain {
    /// A chain of no batches.
    const fn empty() -> BatchChain {
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

/// Counters of one central list. Relaxed: each is exact at quiescence, and a snapshot
/// taken during activity may mix moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CentralStats {
    /// Batches accepted by `push`.
    pub(crate) pushes: u64,
    /// Batches returned by `pop`.
    pub(crate) pops: u64,
    /// `pop` calls that found no visible batch.
    pub(crate) pop_misses: u64,
    /// Batches rejected by `push`: the list was full, or the batch cannot be packed
    /// (more than [`MAX_BATCH_LEN`] blocks, or an address at or above 2^48).
    pub(crate) full_rejections: u64,
    /// Batches removed by `take_all`.
    pub(crate) taken: u64,
}

/// What [`CentralFreeList::audit`] counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg(test)]
pub(crate) struct CentralAudit {
    /// Batches on the list.
    pub(crate) batches: usize,
    /// Blocks in those batches.
    pub(crate) blocks: usize,
}

/// The central free list of one size class: a lock-free, ABA-safe stack of [`Batch`]es.
/// See the [module documentation](self) for the algorithm and its invariants C1–C5.
///
/// Aligned to a cache line so the lists of neighbouring classes in a static array do not
/// share one.
#[repr(align(64))]
#[derive(Debug)]
pub(crate) struct CentralFreeList {
    /// `[n: batches owned (16 bits) | top: first block of the top batch (48 bits)]` (C1, C2).
    head: AtomicUsize,
    /// Most batches the list accepts; `<= MAX_BATCHES` (C2).
    capacity: usize,
    /// Batches accepted by `push`.
    pushes: AtomicU64,
    /// Batches returned by `pop`.
    pops: AtomicU64,
    /// `pop` calls that found nothing visible.
    pop_misses: AtomicU64,
    /// Batches rejected by `push`.
    full_rejections: AtomicU64,
    /// Batches removed by `take_all`.
    taken: AtomicU64,
}

impl CentralFreeList {
    const_fn_unless_loom! {
        /// An empty list that holds at most `max_batches` batches, clamped to
        /// [`MAX_BATCHES`] (the count is packed into 16 bits). `const`, so lists can live
        /// in statics (except under loom, whose atomics cannot be built in `const`).
        pub(crate) fn new(max_batches: usize) -> Self {
            CentralFreeList {
                head: AtomicUsize::new(0),
                capacity: if max_batches < MAX_BATCHES { max_batches } else { MAX_BATCHES },
                pushes: AtomicU64::new(0),
                pops: AtomicU64::new(0),
                pop_misses: AtomicU64::new(0),
                full_rejections: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            }
        }
    }

    /// Most batches the list accepts.
    #[inline]
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pushes `batch` on top.
    ///
    /// # Errors
    ///
    /// Gives the batch back untouched (as far as a [`Batch`] is concerned) when the list
    /// already owns `capacity` batches, or when the batch cannot be packed: more than
    /// [`MAX_BATCH_LEN`] blocks, or a first block at or above 2^48. The caller then returns
    /// the blocks to their spans.
    #[inline]
    pub(crate) fn push(&self, batch: Batch) -> Result<(), Batch> {
        if batch.head.as_ptr().addr() > ADDR_MASK || batch.count > MAX_BATCH_LEN {
            self.full_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(batch);
        }
        let (first, tail, len) = batch.into_raw_parts();
        if len >= 2 {
            // SAFETY:
            // * we own the chain (B2), and `len >= 2` makes word 0 of `first` the second
            //   block, non-null (B1);
            // * both are pool blocks (B3) that nobody else accesses.
            unsafe {
                let second = NonNull::new_unchecked(next_block(first));
                set_tail_word(second, tail.as_ptr());
            }
        }
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            let n = count_of(cur);
            if n >= self.capacity {
                self.full_rejections.fetch_add(1, Ordering::Relaxed);
                // SAFETY: we only wrote word 1 of our own blocks, which a `Batch` does not
                // use: the chain still has B1–B3, and we hand its ownership back.
                return Err(unsafe { Batch::from_raw_parts(first, tail, len) });
            }
            // SAFETY: `first` is still ours: it becomes visible only when the CAS succeeds.
            unsafe { set_link_word(first, pack(addr_of(cur), len as usize)) };
            match self.head.compare_exchange_weak(
                cur,
                pack(first.as_ptr(), n + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.pushes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Pops the top batch, or `None` when no batch is visible.
    ///
    /// `None` can be transient: while another `pop` is between taking the stack and
    /// putting its rest back, the list looks empty. Callers treat a miss as "go to the
    /// arena", which is always correct.
    #[inline]
    pub(crate) fn pop(&self) -> Option<Batch> {
        let mut cur = self.head.load(Ordering::Relaxed);
        let first = loop {
            let Some(first) = NonNull::new(addr_of(cur)) else {
                self.pop_misses.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            let n = count_of(cur);
            debug_assert!(n >= 1, "C1: a visible batch is counted");
            // Take the whole stack and uncount the batch we keep; the rest stays counted (C1).
            match self.head.compare_exchange_weak(
                cur,
                pack(ptr::null_mut(), n - 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break first,
                Err(actual) => cur = actual,
            }
        };
        // SAFETY:
        // * the successful CAS made us the only owner of every batch reachable from
        //   `first`, and acquired the pushes that wrote them;
        // * they were stacked by `push`, so C3 holds for each.
        let (batch, rest) = unsafe { unstack(first) };
        if let Some(rest) = NonNull::new(rest) {
            // SAFETY: we own the batches from `rest` on, stacked by `push` (C3), and they
            // are still counted in `n(head)`.
            unsafe { self.put_back(rest) };
        }
        self.pops.fetch_add(1, Ordering::Relaxed);
        Some(batch)
    }

    /// Makes the owned, counted batches from `rest` visible again.
    ///
    /// # Safety
    ///
    /// * the caller owns every batch reachable from `rest`, each satisfying C3;
    /// * they are counted in `n(head)` (C1) and hence must not be counted again.
    #[inline]
    unsafe fn put_back(&self, mut rest: NonNull<u8>) {
        let mut cur = self.head.load(Ordering::Relaxed);
        loop {
            if addr_of(cur).is_null() {
                match self.head.compare_exchange_weak(
                    cur,
                    pack(rest.as_ptr(), count_of(cur)),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return,
                    Err(actual) => cur = actual,
                }
            } else {
                // Batches were pushed since we took the stack: take them too (they stay
                // counted) and stack them on top of ours.
                let taken = self.head.fetch_and(COUNT_MASK, Ordering::AcqRel);
                if let Some(newcomers) = NonNull::new(addr_of(taken)) {
                    // SAFETY:
                    // * the `fetch_and` made us the only owner of every batch reachable
                    //   from `newcomers` and acquired the pushes that wrote them (C3);
                    // * we own `rest` (caller) and it is disjoint from them (C4).
                    unsafe { link_above(newcomers, rest) };
                    rest = newcomers;
                }
                cur = taken & COUNT_MASK;
            }
        }
    }

    /// Takes every visible batch off the list (trimming, the compactor's drain).
    ///
    /// Batches a concurrent `pop` is putting back are not visible and are not taken; at
    /// quiescence this takes everything.
    pub(crate) fn take_all(&self) -> BatchChain {
        if addr_of(self.head.load(Ordering::Relaxed)).is_null() {
            return BatchChain::empty();
        }
        let taken = self.head.fetch_and(COUNT_MASK, Ordering::AcqRel);
        let Some(first) = NonNull::new(addr_of(taken)) else {
            return BatchChain::empty();
        };
        let (mut len, mut blocks) = (0, 0);
        let mut batch = first.as_ptr();
        while let Some(b) = NonNull::new(batch) {
            // SAFETY: the `fetch_and` made us the only owner of every batch reachable from
            // `first`, and acquired the pushes that wrote their links (C3).
            let link = unsafe { link_word(b) };
            len += 1;
            blocks += count_of(link);
            batch = addr_of(link);
        }
        // They were counted (C1) and are ours now: uncount them.
        self.head.fetch_sub(len * COUNT_ONE, Ordering::AcqRel);
        self.taken.fetch_add(len as u64, Ordering::Relaxed);
        BatchChain {
            first: first.as_ptr(),
            len,
            blocks,
        }
    }

    /// Batches the list owns: exact at quiescence. During concurrent operations it also
    /// counts batches a `pop` is putting back or a `take_all` has not yet uncounted, so it
    /// is never below the number of visible batches (C1).
    #[inline]
    pub(crate) fn batches(&self) -> usize {
        count_of(self.head.load(Ordering::Relaxed))
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> CentralStats {
        CentralStats {
            pushes: self.pushes.load(Ordering::Relaxed),
            pops: self.pops.load(Ordering::Relaxed),
            pop_misses: self.pop_misses.load(Ordering::Relaxed),
            full_rejections: self.full_rejections.load(Ordering::Relaxed),
            taken: self.taken.load(Ordering::Relaxed),
        }
    }

    /// Walks the whole list and checks invariants C1–C3; returns what it counted.
    /// `&mut self` guarantees quiescence, so every block can be read.
    ///
    /// # Panics
    ///
    /// If an invariant is broken (a bug in tidyheap, or a block written while free).
    #[cfg(test)]
    pub(crate) fn audit(&mut self) -> CentralAudit {
        let head = self.head.load(Ordering::Relaxed);
        let (mut batches, mut blocks) = (0, 0);
        let mut batch = addr_of(head);
        while let Some(first) = NonNull::new(batch) {
            // SAFETY: `&mut self` excludes every other list operation, so the list's
            // blocks are not accessed concurrently; `first` is the first block of a
            // stacked batch, a pool block.
            let link = unsafe { link_word(first) };
            let len = count_of(link);
            assert!(len >= 1, "C3: a stacked batch has at least one block");
            let mut tail = first;
            for _ in 1..len {
                // SAFETY: as above; `tail` is one of the batch's first `len` blocks.
                let next = unsafe { next_block(tail) };
                tail = NonNull::new(next).expect("C3: batch chain shorter than its length");
            }
            // SAFETY: as above; `tail` is the batch's `len`-th block.
            let after = unsafe { next_block(tail) };
            assert!(after.is_null(), "C3: batch chain longer than its length");
            if len >= 2 {
                // SAFETY: as above; word 0 of `first` is the batch's second block.
                let stored_tail = unsafe { tail_word(NonNull::new_unchecked(next_block(first))) };
                assert_eq!(
                    stored_tail,
                    tail.as_ptr(),
                    "C3: stored tail is not the chain's end"
                );
            }
            batches += 1;
            blocks += len;
            batch = addr_of(link);
        }
        assert_eq!(
            count_of(head),
            batches,
            "C1: the count is the number of batches"
        );
        assert!(
            batches <= self.capacity,
            "C2: the list holds at most its capacity"
        );
        CentralAudit { batches, blocks }
    }
}

/// Links the last batch reachable from `top` to `below`.
///
/// # Safety
///
/// * the caller owns every batch reachable from `top` (each satisfying C3), and `below`;
/// * `below` is not reachable from `top`.
#[inline]
unsafe fn link_above(top: NonNull<u8>, below: NonNull<u8>) {
    let mut last = top;
    loop {
        // SAFETY: `last` is the first block of an owned stacked batch (caller).
        let link = unsafe { link_word(last) };
        match NonNull::new(addr_of(link)) {
            Some(next) => last = next,
            None => {
                // SAFETY: as above; keep `last`'s length, point it at `below`.
                unsafe { set_link_word(last, pack(below.as_ptr(), count_of(link))) };
                return;
            }
        }
    }
}

#[cfg(test)]
mod test_support {
    //! Real blocks for the tests: a 16-byte-aligned buffer carved into equal blocks.

    use super::*;

    /// One 16-byte, 16-aligned unit of the buffer.
    #[repr(C, align(16))]
    #[derive(Clone, Copy)]
    struct Unit([u8; 16]);

    /// `n` blocks of `size` bytes (a multiple of 16) in one buffer.
    pub(super) struct Slab {
        /// Keeps the memory alive; accessed only through `base`.
        _mem: Vec<Unit>,
        base: *mut u8,
        size: usize,
        n: usize,
    }

    // SAFETY: a `Slab` only computes block addresses; the blocks themselves are accessed
    // by whoever owns them (a batch, a list, or the test), as the module's protocol says.
    unsafe impl Sync for Slab {}

    impl Slab {
        pub(super) fn new(size: usize, n: usize) -> Slab {
            assert!(size >= 16 && size.is_multiple_of(16));
            let mut mem = vec![Unit([0; 16]); size / 16 * n];
            let base = mem.as_mut_ptr().cast::<u8>();
            Slab {
                _mem: mem,
                base,
                size,
                n,
            }
        }

        pub(super) fn len(&self) -> usize {
            self.n
        }

        pub(super) fn block(&self, i: usize) -> NonNull<u8> {
            assert!(i < self.n);
            // SAFETY: `i < n`, so the offset stays inside the buffer.
            unsafe { NonNull::new_unchecked(self.base.add(i * self.size)) }
        }

        /// Index of a block of this slab; panics on a foreign or misaligned pointer.
        pub(super) fn index(&self, block: NonNull<u8>) -> usize {
            let off = block.as_ptr().addr().wrapping_sub(self.base.addr());
            assert!(
                off.is_multiple_of(self.size) && off / self.size < self.n,
                "foreign block"
            );
            off / self.size
        }

        /// A batch of blocks `range`, in ascending order from head to tail.
        pub(super) fn batch(&self, range: core::ops::Range<usize>) -> Batch {
            let mut idx = range.rev();
            let last = idx.next().expect("non-empty range");
            // SAFETY: a block of this slab, handed over once by the test.
            let mut b = unsafe { Batch::from_block(self.block(last)) };
            for i in idx {
                // SAFETY: as above, and not yet in the batch.
                unsafe { b.push(self.block(i)) };
            }
            b
        }

        /// Consumes `batch`, returning its block indices head first.
        pub(super) fn indices(&self, batch: Batch) -> Vec<usize> {
            batch.into_iter().map(|b| self.index(b)).collect()
        }

        /// Overwrites both words of every block of `batch` (as user code would) and
        /// rebuilds it in the same order.
        pub(super) fn scribble(&self, batch: Batch) -> Batch {
            let idx = self.indices(batch);
            for &i in &idx {
                let p = self.block(i).as_ptr().cast::<usize>();
                // SAFETY: the test owns the block (it just left a Batch); two words fit.
                unsafe {
                    p.write(0xDEAD_BEEF_DEAD_BEEF);
                    p.add(1).write(0xBAD0_BAD0_BAD0_BAD0);
                }
            }
            let mut b = None::<Batch>;
            for &i in idx.iter().rev() {
                match &mut b {
                    // SAFETY: an owned block of this slab, not yet in the batch.
                    Some(b) => unsafe { b.push(self.block(i)) },
                    // SAFETY: as above.
                    None => b = Some(unsafe { Batch::from_block(self.block(i)) }),
                }
            }
            b.expect("a batch has at least one block")
        }

        /// Consumes everything `list` holds, returning block indices.
        pub(super) fn drain(&self, list: &CentralFreeList) -> Vec<usize> {
            list.take_all().flat_map(|b| self.indices(b)).collect()
        }

        /// Asserts `indices` is a permutation of `0..n`: no block lost, none duplicated.
        pub(super) fn assert_exactly_once(&self, mut indices: Vec<usize>) {
            indices.sort_unstable();
            let expected: Vec<usize> = (0..self.n).collect();
            assert_eq!(indices, expected, "every block exactly once");
        }
    }
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::test_support::Slab;
    use super::*;

    #[test]
    fn batch_links_blocks_lifo_and_iterates_head_first() {
        let slab = Slab::new(16, 5);
        // SAFETY: blocks of the slab, each handed over once.
        let mut b = unsafe { Batch::from_block(slab.block(4)) };
        assert_eq!(
            (b.len(), b.head(), b.tail()),
            (1, slab.block(4), slab.block(4))
        );
        for i in (0..4).rev() {
            // SAFETY: as above.
            unsafe { b.push(slab.block(i)) };
        }
        assert_eq!(
            (b.len(), b.head(), b.tail()),
            (5, slab.block(0), slab.block(4))
        );
        let it = b.into_iter();
        assert_eq!(it.len(), 5);
        let got: Vec<usize> = it.map(|p| slab.index(p)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn split_first_and_raw_parts_round_trip() {
        let slab = Slab::new(64, 3);
        let b = slab.batch(0..3);
        let (first, rest) = b.split_first();
        assert_eq!(slab.index(first), 0);
        let rest = rest.expect("two blocks left");
        assert_eq!(
            (rest.len(), rest.head(), rest.tail()),
            (2, slab.block(1), slab.block(2))
        );
        let (h, t, c) = rest.into_raw_parts();
        // SAFETY: the parts come from a valid batch we just gave up.
        let rest = unsafe { Batch::from_raw_parts(h, t, c) };
        let (second, rest) = rest.split_first();
        let (third, none) = rest.expect("one left").split_first();
        assert!(none.is_none());
        assert_eq!([slab.index(second), slab.index(third)], [1, 2]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "they leak")]
    fn dropping_a_batch_is_caught_in_debug() {
        let slab = Slab::new(16, 2);
        drop(slab.batch(0..2));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "does not end at its tail")]
    fn from_raw_parts_checks_the_chain_in_debug() {
        let slab = Slab::new(16, 3);
        let (h, _, _) = slab.batch(0..3).into_raw_parts();
        // SAFETY: deliberately wrong tail; the debug walk only reads the three owned blocks.
        let _ = unsafe { Batch::from_raw_parts(h, slab.block(1), 3) };
    }

    #[test]
    fn push_pop_round_trip_keeps_every_block_once() {
        for size in [16, 64] {
            let lens = [1, 2, 3, 32, 5, 1, 17];
            let total: usize = lens.iter().sum();
            let slab = Slab::new(size, total);
            let mut list = CentralFreeList::new(16);
            let mut start = 0;
            let mut pushed = Vec::new();
            for len in lens {
                let b = slab.batch(start..start + len);
                list.push(b).expect("room");
                pushed.push((start..start + len).collect::<Vec<_>>());
                start += len;
                assert_eq!(list.batches(), pushed.len());
            }
            let audit = list.audit();
            assert_eq!(
                audit,
                CentralAudit {
                    batches: lens.len(),
                    blocks: total
                }
            );
            // LIFO, each batch intact (order, head, tail, length).
            let mut all = Vec::new();
            while let Some(b) = list.pop() {
                let expect = pushed.pop().expect("popped no more than pushed");
                assert_eq!(b.len() as usize, expect.len());
                assert_eq!(slab.index(b.head()), expect[0]);
                assert_eq!(slab.index(b.tail()), *expect.last().expect("non-empty"));
                let got = slab.indices(b);
                assert_eq!(got, expect);
                all.extend(got);
                let audit = list.audit();
                assert_eq!(audit.batches, pushed.len());
            }
            assert!(pushed.is_empty());
            slab.assert_exactly_once(all);
            let s = list.stats();
            assert_eq!((s.pushes, s.pops, s.pop_misses), (7, 7, 1));
            // C5 at quiescence.
            assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken);
        }
    }

    #[test]
    fn full_list_rejects_the_batch_intact() {
        let slab = Slab::new(16, 6);
        let list = CentralFreeList::new(2);
        list.push(slab.batch(0..2)).expect("room");
        list.push(slab.batch(2..4)).expect("room");
        let back = list.push(slab.batch(4..6)).expect_err("full");
        assert_eq!(slab.indices(back), [4, 5]);
        assert_eq!(list.batches(), 2);
        assert_eq!(list.stats().full_rejections, 1);
        let popped = list.pop().expect("non-empty");
        list.push(slab.batch(4..6)).expect("room after a pop");
        let mut all = slab.indices(popped);
        all.extend(slab.drain(&list));
        slab.assert_exactly_once(all);
    }

    #[test]
    fn capacity_is_clamped_and_zero_rejects_everything() {
        assert_eq!(CentralFreeList::new(usize::MAX).capacity(), MAX_BATCHES);
        assert_eq!(CentralFreeList::new(7).capacity(), 7);
        let slab = Slab::new(16, 1);
        let list = CentralFreeList::new(0);
        let back = list.push(slab.batch(0..1)).expect_err("capacity 0");
        slab.assert_exactly_once(slab.indices(back));
    }

    #[test]
    #[cfg_attr(miri, ignore = "65 536 blocks: too slow under Miri")]
    fn batch_too_long_to_pack_is_rejected() {
        let n = MAX_BATCH_LEN as usize + 1;
        let slab = Slab::new(16, n);
        let list = CentralFreeList::new(4);
        let back = list
            .push(slab.batch(0..n))
            .expect_err("length does not fit 16 bits");
        assert_eq!(back.len() as usize, n);
        assert_eq!(list.stats().full_rejections, 1);
        let (first, rest) = back.split_first();
        let rest = rest.expect("more than one block");
        assert_eq!(rest.len(), MAX_BATCH_LEN);
        list.push(rest).expect("MAX_BATCH_LEN blocks fit");
        let mut all = vec![slab.index(first)];
        all.extend(slab.drain(&list));
        slab.assert_exactly_once(all);
    }

    #[test]
    fn take_all_empties_the_list_and_uncounts() {
        let slab = Slab::new(64, 10);
        let mut list = CentralFreeList::new(8);
        let chain = list.take_all();
        assert!(chain.is_empty());
        assert_eq!((chain.len(), chain.blocks()), (0, 0));
        drop(chain);
        for (a, b) in [(0, 1), (1, 4), (4, 10)] {
            list.push(slab.batch(a..b)).expect("room");
        }
        let chain = list.take_all();
        assert_eq!((chain.len(), chain.blocks()), (3, 10));
        assert_eq!(list.batches(), 0);
        assert_eq!(
            list.audit(),
            CentralAudit {
                batches: 0,
                blocks: 0
            }
        );
        assert!(list.pop().is_none());
        let batches: Vec<Vec<usize>> = chain.map(|b| slab.indices(b)).collect();
        assert_eq!(batches, [vec![4, 5, 6, 7, 8, 9], vec![1, 2, 3], vec![0]]);
        let s = list.stats();
        assert_eq!((s.pushes, s.taken), (3, 3));
        assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken);
        // The list works after being drained.
        list.push(slab.batch(0..10)).expect("room");
        slab.assert_exactly_once(slab.drain(&list));
    }

    #[test]
    #[should_panic(expected = "C3")]
    fn audit_catches_a_corrupted_length() {
        let slab = Slab::new(16, 4);
        let mut list = CentralFreeList::new(4);
        list.push(slab.batch(0..4)).expect("room");
        // SAFETY: simulates a bug: the test still owns the slab memory and no operation
        // is running on the list.
        unsafe { set_link_word(slab.block(0), pack(ptr::null_mut(), 3)) };
        let _ = list.audit();
    }

    /// 4 threads push and pop batches of mixed lengths, scribbling over the blocks they
    /// hold as users would, one of them also draining with `take_all`; afterwards every
    /// block is found exactly once and the counters agree.
    #[test]
    fn concurrent_push_pop_take_all_keep_every_block_once() {
        const THREADS: usize = 4;
        // Miri (whose data-race detector checks the block-word accesses loom cannot see)
        // runs a shorter version.
        const PER_THREAD: usize = if cfg!(miri) { 64 } else { 512 };
        const ROUNDS: usize = if cfg!(miri) { 400 } else { 20_000 };
        let slab = Slab::new(16, THREADS * PER_THREAD);
        let mut list = CentralFreeList::new(if cfg!(miri) { 6 } else { 24 });
        let list_ref = &list;
        let slab_ref = &slab;
        let start = &std::sync::Barrier::new(THREADS);
        let mut held: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    s.spawn(move || {
                        // This thread's blocks, in batches of 1..=32.
                        let mut mine: Vec<Batch> = Vec::new();
                        let (mut at, end) = (t * PER_THREAD, (t + 1) * PER_THREAD);
                        let mut len = 1 + t;
                        while at < end {
                            let to = (at + len).min(end);
                            mine.push(slab_ref.batch(at..to));
                            at = to;
                            len = len % 32 + 1;
                        }
                        start.wait();
                        // xorshift64: pop or push at random, so the list's length
                        // random-walks between empty and full.
                        let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (t as u64 + 1);
                        for round in 0..ROUNDS {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            if rng.is_multiple_of(2) || mine.is_empty() {
                                if let Some(b) = list_ref.pop() {
                                    mine.push(slab_ref.scribble(b));
                                }
                            } else if let Some(b) = mine.pop()
                                && let Err(b) = list_ref.push(b)
                            {
                                mine.insert(0, b);
                            }
                            if t == 0 && round % (ROUNDS / 10) == ROUNDS / 10 - 1 {
                                mine.extend(list_ref.take_all());
                            }
                        }
                        mine.into_iter()
                            .flat_map(|b| slab_ref.indices(b))
                            .collect::<Vec<usize>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker panicked"))
                .collect()
        });
        let audit = list.audit();
        let s = list.stats();
        assert_eq!(audit.batches as u64, s.pushes - s.pops - s.taken, "C5");
        assert!(s.pushes > 0 && s.pops > 0 && s.taken > 0);
        let drained = slab.drain(&list);
        assert_eq!(drained.len(), audit.blocks);
        held.extend(drained);
        assert_eq!(held.len(), slab.len());
        slab.assert_exactly_once(held);
    }
}

#[cfg(all(test, tidyheap_loom))]
mod loom_tests {
    //! Loom models of the protocol on `head`. Blocks are real memory; loom does not track
    //! their plain reads and writes (see the module docs), but every model scribbles over
    //! the blocks it holds, so a stale read would corrupt what it checks.

    use super::test_support::Slab;
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Block indices of `batch`, consumed; `None` → empty.
    fn idx(slab: &Slab, batch: Option<Batch>) -> Vec<usize> {
        batch.map(|b| slab.indices(b)).unwrap_or_default()
    }

    /// Three threads: two pop (one also pushes) while the main thread pushes and pops.
    #[test]
    fn loom_push_pop_three_threads() {
        loom::model(|| {
            let slab = Slab::new(16, 6);
            let list = Arc::new(CentralFreeList::new(4));
            list.push(slab.batch(0..2)).expect("room");
            let (b, c) = (slab.batch(2..4), slab.batch(4..6));
            let l1 = list.clone();
            let t1 = thread::spawn(move || {
                l1.push(b).expect("room");
                l1.pop()
            });
            let l2 = list.clone();
            let t2 = thread::spawn(move || l2.pop());
            list.push(c).expect("room");
            let mine = list.pop();
            let mut all = idx(&slab, mine);
            all.extend(idx(&slab, t1.join().expect("t1")));
            all.extend(idx(&slab, t2.join().expect("t2")));
            let s = list.stats();
            assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken, "C5");
            all.extend(slab.drain(&list));
            slab.assert_exactly_once(all);
        });
    }

    /// A pop whose put-back races a push: the put-back must merge the newcomer.
    #[test]
    fn loom_pop_put_back_merges_a_concurrent_push() {
        loom::model(|| {
            let slab = Slab::new(16, 6);
            let list = Arc::new(CentralFreeList::new(4));
            list.push(slab.batch(0..2)).expect("room");
            list.push(slab.batch(2..4)).expect("room");
            let c = slab.batch(4..6);
            let l1 = list.clone();
            let t1 = thread::spawn(move || l1.pop());
            list.push(c).expect("room: capacity 4");
            let popped = t1
                .join()
                .expect("t1")
                .expect("a batch was always visible to t1");
            assert_eq!(list.batches(), 2, "C1 at quiescence");
            let mut all = slab.indices(popped);
            let rest = list.take_all();
            assert_eq!((rest.len(), rest.blocks()), (2, 4));
            all.extend(rest.flat_map(|b| slab.indices(b)));
            slab.assert_exactly_once(all);
        });
    }

    /// Pushes racing `take_all`: every batch is either taken or left, never both, and
    /// the count ends exact.
    #[test]
    fn loom_push_races_take_all() {
        loom::model(|| {
            let slab = Slab::new(16, 5);
            let list = Arc::new(CentralFreeList::new(4));
            list.push(slab.batch(0..1)).expect("room");
            let (b, c) = (slab.batch(1..3), slab.batch(3..5));
            let l1 = list.clone();
            let t1 = thread::spawn(move || {
                l1.push(b).expect("room");
                l1.push(c).expect("room");
            });
            let taken = list.take_all();
            let taken_len = taken.len();
            let mut all: Vec<usize> = taken.flat_map(|b| slab.indices(b)).collect();
            t1.join().expect("t1");
            let s = list.stats();
            assert_eq!(s.taken, taken_len as u64);
            assert_eq!(list.batches() as u64, 3 - s.taken, "C1/C5");
            all.extend(slab.drain(&list));
            assert_eq!(list.batches(), 0);
            slab.assert_exactly_once(all);
        });
    }

    /// The ABA interleaving, with the head word itself coming back: T1 starts a pop on
    /// `[3 | A] : A → B → C`; T2 pops A, pops B, pushes D, writes over A as a user would
    /// and pushes A back, so the head is `[3 | A] : A → D → C` again; T1 resumes. A pop
    /// that read `A.next = B` before its CAS would now hand out B twice and lose C and D.
    /// Nothing may be lost or duplicated, and every popped batch must be an original,
    /// intact.
    #[test]
    fn loom_aba_pop_interleaving() {
        loom::model(|| {
            let slab = Slab::new(16, 8);
            let list = Arc::new(CentralFreeList::new(4));
            list.push(slab.batch(4..6)).expect("room"); // C
            list.push(slab.batch(2..4)).expect("room"); // B
            list.push(slab.batch(0..2)).expect("room"); // A (top)
            let d = slab.batch(6..8);
            let l1 = list.clone();
            let t1 = thread::spawn(move || l1.pop());
            let a = list.pop();
            let b_idx = idx(&slab, list.pop());
            list.push(d).expect("room: at most 4 batches");
            if let Some(a) = a {
                list.push(slab.scribble(a))
                    .expect("room: at most 4 batches");
            }
            let t1_idx = idx(&slab, t1.join().expect("t1"));
            for got in [&b_idx, &t1_idx] {
                assert!(
                    got.is_empty() || [[0, 1], [2, 3], [4, 5], [6, 7]].iter().any(|x| got == x),
                    "a popped batch is an original batch, intact: {got:?}"
                );
            }
            let mut all = b_idx;
            all.extend(t1_idx);
            let s = list.stats();
            assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken, "C5");
            all.extend(slab.drain(&list));
            slab.assert_exactly_once(all);
        });
    }
}
