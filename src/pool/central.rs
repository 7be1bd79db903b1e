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
//!   list, a [`Batch`] / [`BatchChain`] / [`BatchIter`](batch::BatchIter) value, or the user.
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

use core::ptr::{self, NonNull};

use super::link;
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

/// Word 0 of `block`: the next block of its chain (null at the tail). Encoded like
/// every link (`pool::link`), but not checked here: the list's unit tests use blocks
/// outside any span, and a thread list checks each link it pops anyway.
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
    let stored = unsafe { ptr::read(block.as_ptr().cast::<*mut u8>()) };
    link::encode_ptr(block.as_ptr(), stored)
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
    unsafe {
        ptr::write(
            block.as_ptr().cast::<*mut u8>(),
            link::encode_ptr(block.as_ptr(), next),
        )
    }
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
    unsafe { link::encode_word(word1(block).cast(), ptr::read(word1(block))) }
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
    unsafe { ptr::write(word1(block), link::encode_word(word1(block).cast(), word)) }
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
    unsafe {
        link::encode_ptr(
            word1(block).cast(),
            ptr::read(word1(block).cast::<*mut u8>()),
        )
    }
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
    unsafe {
        ptr::write(
            word1(block).cast::<*mut u8>(),
            link::encode_ptr(word1(block).cast(), tail),
        )
    }
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

mod batch;
pub(crate) use batch::{Batch, BatchChain};

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
mod test_support;

#[cfg(all(test, not(tidyheap_loom)))]
mod tests;

#[cfg(all(test, tidyheap_loom))]
mod loom_tests;
