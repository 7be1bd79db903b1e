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
