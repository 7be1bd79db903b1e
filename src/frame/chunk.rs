//! Chunks: the OS mappings frame memory is bumped out of, and the lists that hold them.
//!
//! A chunk is one mapping from [`os::reserve`]. Its first [`HEADER_SIZE`] bytes are a
//! [`ChunkHeader`]; the rest is bump space. Headers link chunks into intrusive lists, so
//! moving chunks between the free pool, a lane and an in-flight slot allocates nothing:
//! the frame arena never touches the Rust global allocator once it is built.

use core::mem::size_of;
use core::ptr::{self, NonNull};

use crate::AllocError;
use crate::os::{self, PAGE_SIZE};
use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The header at the start of every chunk mapping.
///
/// Invariants:
/// * `size` is the length of the mapping that starts at the header, a multiple of
///   [`PAGE_SIZE`];
/// * every chunk the arena holds is in exactly one place: the free stack, one lane's
///   `used` list, or one in-flight slot's list; `next` links it there;
/// * a `dedicated` chunk holds one oversize allocation and never enters the free stack;
/// * `freed_at` is meaningful only while the chunk is in the free stack: the frame whose
///   start put it there.
#[repr(C)]
pub(super) struct ChunkHeader {
    /// Next chunk in the list holding this one. Atomic because a stale popper of the free
    /// stack may read it while the thread that won the pop relinks the chunk.
    next: AtomicPtr<ChunkHeader>,
    size: usize,
    freed_at: u64,
    dedicated: bool,
}

/// Bytes reserved for the header at the start of a chunk (a cache line, or more under
/// loom, whose atomics are larger).
pub(super) const HEADER_SIZE: usize = match os::round_up(size_of::<ChunkHeader>(), 64) {
    Some(n) => n,
    None => panic!("chunk header size overflows"),
};

// The header fits its slot, the bump space after it starts cache-line aligned (hence
// aligned to the lanes' minimum alignment), and a one-page chunk has bump space.
const _: () = assert!(
    size_of::<ChunkHeader>() <= HEADER_SIZE
        && HEADER_SIZE.is_multiple_of(64)
        && HEADER_SIZE < PAGE_SIZE
);

/// Counters shared by every thread of a frame; updated on the slow path only.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Chunks mapped from the OS, ever.
    pub(super) maps: AtomicU64,
    /// Chunks released to the OS, ever.
    pub(super) releases: AtomicU64,
    /// Chunks mapped and not yet released.
    pub(super) chunks_held: AtomicUsize,
    /// Total mapping length of those chunks.
    pub(super) bytes_held: AtomicUsize,
    /// The largest `bytes_held` ever reached.
    pub(super) peak_bytes_held: AtomicUsize,
}

/// Maps a chunk of at least `size` bytes (header included) aligned to `align`
/// (a power of two, at least [`PAGE_SIZE`]).
///
/// # Errors
///
/// [`AllocError::OutOfMemory`] when the OS refuses, [`AllocError::TooLarge`] when the
/// page rounding overflows.
pub(super) fn map(
    size: usize,
    align: usize,
    dedicated: bool,
    counters: &Counters,
) -> Result<NonNull<ChunkHeader>, AllocError> {
    let size = os::round_up(size, PAGE_SIZE).ok_or(AllocError::TooLarge { size })?;
    let base = os::reserve(size, align)?.cast::<ChunkHeader>();
    // `base` starts a fresh read-write, page-aligned mapping of at least one page.
    // SAFETY: * a header (< PAGE_SIZE bytes) fits there and is aligned;
    // * nothing else refers to the mapping yet.
    unsafe {
        base.write(ChunkHeader {
            next: AtomicPtr::new(ptr::null_mut()),
            size,
            freed_at: 0,
            dedicated,
        });
    }
    counters.maps.fetch_add(1, Ordering::Relaxed);
    counters.chunks_held.fetch_add(1, Ordering::Relaxed);
    let held = counters.bytes_held.fetch_add(size, Ordering::Relaxed) + size;
    counters.peak_bytes_held.fetch_max(held, Ordering::Relaxed);
    Ok(base)
}

/// Unmaps `chunk`.
///
/// # Safety
///
/// * `chunk` came from [`map`] and is in no list any more;
/// * nothing reads or writes its memory afterwards.
pub(super) unsafe fn release(chunk: NonNull<ChunkHeader>, counters: &Counters) {
    // SAFETY: the caller guarantees the chunk is a live mapping made by `map`.
    let size = unsafe { size_of_chunk(chunk) };
    // SAFETY:
    // * the header was written by `map` and is dropped exactly once, here;
    // * the mapping `[chunk, chunk + size)` is ours and dead (caller's guarantee).
    unsafe {
        ptr::drop_in_place(chunk.as_ptr());
        os::release(chunk.cast(), size);
    }
    counters.releases.fetch_add(1, Ordering::Relaxed);
    counters.chunks_held.fetch_sub(1, Ordering::Relaxed);
    counters.bytes_held.fetch_sub(size, Ordering::Relaxed);
}

/// The mapping length of `chunk`.
///
/// # Safety
///
/// `chunk` is a live chunk from [`map`].
#[inline]
pub(super) unsafe fn size_of_chunk(chunk: NonNull<ChunkHeader>) -> usize {
    // SAFETY: the header is live (caller's guarantee); `size` is written only by `map`,
    // before the chunk is shared, so this plain read races with nothing.
    unsafe { (*chunk.as_ptr()).size }
}

/// Whether `chunk` holds a single oversize allocation.
///
/// # Safety
///
/// `chunk` is a live chunk from [`map`].
#[inline]
pub(super) unsafe fn is_dedicated(chunk: NonNull<ChunkHeader>) -> bool {
    // SAFETY: as in `size_of_chunk`: written once by `map` before sharing.
    unsafe { (*chunk.as_ptr()).dedicated }
}

/// Reads `chunk`'s link.
///
/// # Safety
///
/// `chunk` is a live chunk from [`map`].
#[inline]
unsafe fn next_of(chunk: NonNull<ChunkHeader>) -> *mut ChunkHeader {
    // SAFETY: the header is live; only a reference to the atomic field is made, so a
    // concurrent plain write to another field (by a list owner) does not conflict.
    unsafe { (*chunk.as_ptr()).next.load(Ordering::Relaxed) }
}

/// Writes `chunk`'s link.
///
/// # Safety
///
/// `chunk` is a live chunk from [`map`] that the caller exclusively owns (it is in no
/// list other than the caller's).
#[inline]
unsafe fn set_next(chunk: NonNull<ChunkHeader>, next: *mut ChunkHeader) {
    // SAFETY: the header is live; a stale popper may still load this atomic, which is why
    // it is one.
    unsafe { (*chunk.as_ptr()).next.store(next, Ordering::Relaxed) }
}

/// A singly linked list of chunks owned by one holder (a lane, an in-flight slot).
///
/// Invariant: the list is acyclic and each chunk in it is in no other list.
#[derive(Debug)]
pub(super) struct ChunkList {
    head: *mut ChunkHeader,
}

// SAFETY:
// * a `ChunkList` owns its chunks the way a `Box` owns its contents: every access to them
//   goes through `&mut ChunkList` (or its owner's exclusive access), so moving the list to
//   another thread or sharing `&ChunkList` (which exposes nothing) is sound;
// * chunk memory is process-wide mmap'd memory with no thread affinity.
unsafe impl Send for ChunkList {}
// SAFETY: `&ChunkList` exposes only `is_empty` and `iter`, which read links that are not
// written while a shared reference exists.
unsafe impl Sync for ChunkList {}

impl ChunkList {
    /// An empty list.
    pub(super) const fn new() -> Self {
        Self {
            head: ptr::null_mut(),
        }
    }

    /// True if the list holds no chunk.
    pub(super) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Puts `chunk` at the front.
    ///
    /// # Safety
    ///
    /// `chunk` is a live chunk from [`map`] that is in no list.
    pub(super) unsafe fn push(&mut self, chunk: NonNull<ChunkHeader>) {
        // SAFETY: the caller hands us exclusive ownership of the live chunk.
        unsafe { set_next(chunk, self.head) };
        self.head = chunk.as_ptr();
    }

    /// Takes the front chunk, if any.
    pub(super) fn pop(&mut self) -> Option<NonNull<ChunkHeader>> {
        let head = NonNull::new(self.head)?;
        // SAFETY: chunks in the list are live and owned by it.
        self.head = unsafe { next_of(head) };
        // SAFETY: `head` just left the list, so we own it exclusively.
        unsafe { set_next(head, ptr::null_mut()) };
        Some(head)
    }

    /// Moves every chunk of `other` to the front of `self`, keeping their order.
    /// Costs O(len(other)).
    pub(super) fn prepend(&mut self, other: ChunkList) {
        let Some(mut tail) = NonNull::new(other.head) else {
            return;
        };
        // SAFETY: chunks of `other` are live and owned by it, now by us.
        while let Some(next) = NonNull::new(unsafe { next_of(tail) }) {
            tail = next;
        }
        // SAFETY: `tail` is the last chunk of `other`, owned by us.
        unsafe { set_next(tail, self.head) };
        self.head = other.head;
    }

    /// Keeps the chunks for which `keep` returns true, in order. A chunk for which it
    /// returns false is unlinked *after* the call; `keep` may take ownership of it (for
    /// example release it) before returning false.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(NonNull<ChunkHeader>) -> bool) {
        let mut prev: Option<NonNull<ChunkHeader>> = None;
        let mut cur = NonNull::new(self.head);
        while let Some(chunk) = cur {
            // SAFETY: `chunk` is in the list, hence live; read its link before `keep` may
            // release it.
            let next = unsafe { next_of(chunk) };
            if keep(chunk) {
                prev = Some(chunk);
            } else {
                match prev {
                    // SAFETY: `p` is a kept chunk of this list, owned by us.
                    Some(p) => unsafe { set_next(p, next) },
                    None => self.head = next,
                }
            }
            cur = NonNull::new(next);
        }
    }

    /// Iterates over the chunks, front first.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = NonNull<ChunkHeader>> + '_ {
        let mut cur = NonNull::new(self.head);
        core::iter::from_fn(move || {
            let chunk = cur?;
            // SAFETY: chunks in the list are live; `&self` keeps the list unchanged.
            cur = NonNull::new(unsafe { next_of(chunk) });
            Some(chunk)
        })
    }
}

/// The arena's pool of chunks ready for reuse: a stack that many threads pop at once
/// during a frame, and that only the frame boundary (holding `&mut FrameArena`) pushes to.
///
/// # Why popping needs no ABA protection
///
/// A Treiber-stack pop reads `head`, reads `head.next`, and CASes `head` from `head` to
/// `next`. ABA strikes when, between the read and the CAS, the chunk is popped and pushed
/// back, so the CAS succeeds with a stale `next`. Here pushes happen only under
/// `&mut self` ([`FreeStack::with_list`]), which cannot coexist with a pop (`&self`). So
/// during a frame `head` only moves down the list, a chunk once popped never becomes
/// `head` again, and a stale CAS always fails. Chunks are never unmapped during a frame,
/// so reading a stale head's `next` is a read of live memory; `next` is atomic because
/// the winner relinks it while a loser may still be reading it.
#[derive(Debug)]
pub(super) struct FreeStack {
    head: AtomicPtr<ChunkHeader>,
}

impl FreeStack {
    /// An empty stack.
    pub(super) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pops a chunk; lock-free, callable from many threads at once.
    pub(super) fn pop(&self) -> Option<NonNull<ChunkHeader>> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let chunk = NonNull::new(head)?;
            // SAFETY: every chunk that was ever `head` during this frame is still mapped
            // (chunks are released only under `&mut self`), so reading its atomic link is
            // sound even if another thread popped it meanwhile.
            let next = unsafe { next_of(chunk) };
            match self
                .head
                .compare_exchange_weak(head, next, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(chunk),
                Err(current) => head = current,
            }
        }
    }

    /// Gives `f` the stack as a plain list, exclusively (pushes, trims, teardown).
    pub(super) fn with_list<R>(&mut self, f: impl FnOnce(&mut ChunkList) -> R) -> R {
        let mut list = ChunkList {
            head: self.head.load(Ordering::Relaxed),
        };
        let result = f(&mut list);
        self.head.store(list.head, Ordering::Release);
        result
    }
}

/// Records that `chunk` enters the free stack at the start of frame `frame`.
///
/// # Safety
///
/// `chunk` is a live, non-dedicated chunk from [`map`] that the caller owns exclusively.
pub(super) unsafe fn set_freed_at(chunk: NonNull<ChunkHeader>, frame: u64) {
    debug_assert!(
        // SAFETY: the caller guarantees the chunk is live.
        !unsafe { is_dedicated(chunk) },
        "dedicated chunks never enter the free stack"
    );
    // SAFETY: live header, owned exclusively by the caller, and no pop reads `freed_at`.
    unsafe { (*chunk.as_ptr()).freed_at = frame };
}

/// The frame that put `chunk` into the free stack.
///
/// # Safety
///
/// `chunk` is a live chunk in the free stack, and the caller has exclusive access to the
/// stack.
pub(super) unsafe fn freed_at(chunk: NonNull<ChunkHeader>) -> u64 {
    // SAFETY: live header; exclusive access means no concurrent writer.
    unsafe { (*chunk.as_ptr()).freed_at }
}

#[cfg(all(test, not(tidyheap_loom)))]
mod tests {
    use super::*;

    fn list_of(chunks: &[NonNull<ChunkHeader>]) -> ChunkList {
        let mut list = ChunkList::new();
        for &c in chunks.iter().rev() {
            // SAFETY: test chunks are live and each pushed once.
            unsafe { list.push(c) };
        }
        list
    }

    #[test]
    fn list_operations_keep_order_and_membership() {
        let counters = Counters::default();
        let chunks: Vec<_> = (0..5)
            .map(|_| map(PAGE_SIZE, PAGE_SIZE, false, &counters).unwrap())
            .collect();
        assert_eq!(counters.chunks_held.load(Ordering::Relaxed), 5);
        assert_eq!(counters.bytes_held.load(Ordering::Relaxed), 5 * PAGE_SIZE);

        let mut a = list_of(&chunks[..2]);
        let b = list_of(&chunks[2..]);
        a.prepend(b);
        let order: Vec<_> = a.iter().collect();
        assert_eq!(order, [2, 3, 4, 0, 1].map(|i| chunks[i]));

        // Drop the odd positions, releasing them inside `keep`.
        let mut i = 0;
        a.retain(|c| {
            i += 1;
            if i % 2 == 0 {
                // SAFETY: the chunk is unlinked right after and never touched again.
                unsafe { release(c, &counters) };
                false
            } else {
                true
            }
        });
        let order: Vec<_> = a.iter().collect();
        assert_eq!(order, [2, 4, 1].map(|i| chunks[i]));
        assert_eq!(counters.chunks_held.load(Ordering::Relaxed), 3);
        assert_eq!(counters.releases.load(Ordering::Relaxed), 2);

        while let Some(c) = a.pop() {
            // SAFETY: popped, so in no list.
            unsafe { release(c, &counters) };
        }
        assert!(a.is_empty());
        assert_eq!(counters.chunks_held.load(Ordering::Relaxed), 0);
        assert_eq!(counters.bytes_held.load(Ordering::Relaxed), 0);
        assert_eq!(
            counters.peak_bytes_held.load(Ordering::Relaxed),
            5 * PAGE_SIZE
        );
    }

    #[test]
    fn free_stack_is_lifo_and_keeps_stamps() {
        let counters = Counters::default();
        let mut stack = FreeStack::new();
        let c1 = map(PAGE_SIZE, PAGE_SIZE, false, &counters).unwrap();
        let c2 = map(PAGE_SIZE, PAGE_SIZE, false, &counters).unwrap();
        // SAFETY: fresh, live, non-dedicated chunks in no list, owned by this test.
        stack.with_list(|list| unsafe {
            set_freed_at(c1, 7);
            list.push(c1);
            set_freed_at(c2, 9);
            list.push(c2);
        });
        assert_eq!(stack.pop(), Some(c2));
        // SAFETY: c1 is in the stack and we hold it exclusively.
        assert_eq!(unsafe { freed_at(c1) }, 7);
        assert_eq!(stack.pop(), Some(c1));
        assert_eq!(stack.pop(), None);
        for c in [c1, c2] {
            // SAFETY: popped chunks are in no list.
            unsafe { release(c, &counters) };
        }
    }
}
