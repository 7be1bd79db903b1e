//! The `hardened` feature's extra checks on pool blocks: a canary in the slack after
//! each fixed block's requested bytes, checked on free (and on an in-place realloc),
//! zero-on-free, and the encoding of the free-list links (see `pool::link`). The module exists only with the feature; its callers are
//! `#[cfg(feature = "hardened")]` too, so without it nothing is left on any path.
//!
//! The canary fills the bytes between the requested size and the class size, at most
//! [`CANARY_BYTES`] of them, with a pattern derived from the heap's key and the block's
//! address; a request that fills its class exactly (or asks for 0 bytes) has no canary.
//! So that no correct program writes there, `Heap::usable_size` is the requested size
//! under the feature. Word 1 (bytes 8..16)
//! holds the free stamp once the block is free, so a free checks the stamp (a double
//! free) before the canary.

use core::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::pagemap;

/// Most canary bytes after a block.
const CANARY_BYTES: usize = 8;

/// The canary pattern of `block` under `key`.
#[inline(always)]
fn pattern(key: u64, block: NonNull<u8>) -> [u8; CANARY_BYTES] {
    (key ^ (block.as_ptr() as u64).rotate_left(23) ^ 0xA5C3_5A3C_96E1_1E69).to_le_bytes()
}

/// The canary's place in a block of `class_size` bytes asked for as `size`.
#[inline(always)]
fn canary_len(class_size: usize, size: usize) -> usize {
    if size == 0 {
        // A zero-size block has no bytes to overrun (its usable size is 0 here), and
        // gets no canary.
        return 0;
    }
    class_size.saturating_sub(size).min(CANARY_BYTES)
}

/// Writes `block`'s canary after its `size` requested bytes.
///
/// # Safety
///
/// `block` is a live block of `class_size` bytes that the caller owns, `size <= class_size`.
#[inline(always)]
pub(crate) unsafe fn write_canary(key: u64, block: NonNull<u8>, class_size: usize, size: usize) {
    let p = pattern(key, block);
    // SAFETY: `[size, size + len)` lies inside the block (caller), which we own.
    unsafe {
        core::ptr::copy_nonoverlapping(
            p.as_ptr(),
            block.as_ptr().add(size),
            canary_len(class_size, size),
        )
    };
}

/// Checks `block`'s canary after its `size` requested bytes; aborts with a message if a
/// byte of it changed (the program wrote past the end of its block).
///
/// # Safety
///
/// As [`write_canary`].
#[inline(always)]
pub(crate) unsafe fn check_canary(key: u64, block: NonNull<u8>, class_size: usize, size: usize) {
    let p = pattern(key, block);
    let len = canary_len(class_size, size);
    // SAFETY: as in `write_canary`: the range is inside the owned block.
    let found = unsafe { core::slice::from_raw_parts(block.as_ptr().add(size), len) };
    if found != &p[..len] {
        crate::misuse::fatal!("canary corrupted at {block:p}, block of {size} B")
    }
}

/// Zeroes a block being freed, except words 0 and 1 (the free lists' link and the free
/// stamp).
///
/// # Safety
///
/// `block` is a dead block of `class_size` (>= 16) bytes that the caller owns.
#[inline(always)]
pub(crate) unsafe fn zero_on_free(block: NonNull<u8>, class_size: usize) {
    // SAFETY: `[16, class_size)` lies inside the owned block.
    unsafe { block.as_ptr().add(16).write_bytes(0, class_size - 16) };
}

/// The key free-list links are encoded with (see `pool::link`): random, set once per
/// process by the first heap to hand out a block ([`init_link_key`]), before any link
/// is written, and never changed after.
static LINK_KEY: AtomicUsize = AtomicUsize::new(0);

/// Sets the link key if it is not set yet. Every heap calls it before handing out its
/// first block (`HeapInner::ensure_key`), so no link is ever written under another key.
pub(crate) fn init_link_key() {
    if LINK_KEY.load(Ordering::Relaxed) == 0 {
        let k = crate::misuse::random_key(0x6c69_6e6b) as usize;
        let _ = LINK_KEY.compare_exchange(0, k, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What a link stored at `slot` is XOR-ed with: the key and the slot's address, so the
/// same link stored in two blocks looks unrelated, and a forged link must know both.
#[inline(always)]
pub(crate) fn link_mask(slot: *const u8) -> usize {
    LINK_KEY.load(Ordering::Relaxed) ^ slot.addr().rotate_left(29)
}

/// The link stored in word 0 of free `block`, decoded and checked: null, or the start
/// of a block of a span of the same class and kind as `block`'s; otherwise aborts with
/// `tidyheap: free list corrupted at <block>`.
#[inline(always)]
pub(crate) fn decode_link(block: NonNull<u8>, stored: *mut u8) -> *mut u8 {
    let next = super::link::encode_ptr(block.as_ptr(), stored);
    if !next.is_null() && !same_class_block(block, next) {
        crate::misuse::fatal!("free list corrupted at {block:p}")
    }
    next
}

/// Whether `next` is the start of a block of a span of the class and kind of `block`'s.
#[inline]
fn same_class_block(block: NonNull<u8>, next: *mut u8) -> bool {
    let (Some(s), Some(n)) = (
        pagemap::lookup(block.as_ptr().addr()),
        pagemap::lookup(next.addr()),
    ) else {
        return false;
    };
    // SAFETY: page-map entries point at live span records.
    let (s, n) = unsafe { (s.as_ref(), n.as_ref()) };
    n.class() == s.class() && n.kind() == s.kind() && n.block_index(next.addr()).is_some()
}

/// Shuffles `blocks` (Fisher-Yates) with the generator whose state is `*rng` (seeded
/// from `misuse::random_key` when 0): a refill's blocks go on the thread's list in a
/// random order, so two consecutive allocations are not predictably neighbours.
pub(crate) fn shuffle(rng: &mut u64, blocks: &mut [NonNull<u8>]) {
    if *rng == 0 {
        *rng = crate::misuse::random_key((&raw const *rng).addr() as u64);
    }
    for i in (1..blocks.len()).rev() {
        // xorshift64* (Vigna): `rng` never becomes 0 once non-zero.
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let r = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Multiply-shift maps the high bits to `0..=i` without a division.
        let j = ((u128::from(r >> 32) * (i as u128 + 1)) >> 32) as usize;
        blocks.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a fixed seed: a permutation, and not the identity.
    #[test]
    fn shuffle_permutes() {
        let base = 0x1000usize;
        let mut blocks: Vec<NonNull<u8>> = (0..32)
            .map(|i| NonNull::new((base + 64 * i) as *mut u8).unwrap())
            .collect();
        let mut rng = 0x9E37_79B9_7F4A_7C15;
        shuffle(&mut rng, &mut blocks);
        let mut idx: Vec<usize> = blocks
            .iter()
            .map(|b| (b.as_ptr().addr() - base) / 64)
            .collect();
        assert_ne!(idx, (0..32).collect::<Vec<_>>());
        idx.sort_unstable();
        assert_eq!(idx, (0..32).collect::<Vec<_>>());
    }
}
