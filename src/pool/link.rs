//! The links stored inside free blocks: word 0 of every block on a thread list, a
//! remote list, an outgoing chain or a central batch holds the next
//! block of its chain (and word 1 of a central batch's first two blocks holds the
//! batch's bookkeeping). Every read and write of such a word goes through here.
//!
//! Without the `hardened` feature these are plain loads and stores. With it, a link is
//! stored XOR-ed with a per-process random key and (a rotation of) the address of the
//! word that holds it, like glibc's safe-linking and mimalloc's secure mode, and every
//! decoded word-0 link that is not null must be the start of a block of a span of the
//! same class and kind as the block it was read from; otherwise the process aborts with
//! `tidyheap: free list corrupted at <block>`. A use-after-free write into a free
//! block's first word, or a forged link, is so caught when the list reaches the block,
//! instead of handing out an address the attacker chose.

use core::ptr::NonNull;

#[cfg(feature = "hardened")]
use super::hardened;

/// The next block of `block`'s chain (null at the end).
///
/// # Safety
///
/// `block` is a free pool block (at least 16 bytes, 16-aligned) that the caller owns,
/// whose word 0 was last written by [`write`].
#[inline(always)]
pub(crate) unsafe fn read(block: NonNull<u8>) -> *mut u8 {
    // SAFETY: word 0 lies in the owned block and is pointer-aligned (caller).
    let stored = unsafe { block.cast::<*mut u8>().read() };
    #[cfg(feature = "hardened")]
    let stored = hardened::decode_link(block, stored);
    stored
}

/// Makes `next` the block after `block` in its chain.
///
/// # Safety
///
/// `block` is a free pool block (at least 16 bytes, 16-aligned) that the caller owns.
#[inline(always)]
pub(crate) unsafe fn write(block: NonNull<u8>, next: *mut u8) {
    #[cfg(feature = "hardened")]
    let next = encode_ptr(block.as_ptr(), next);
    // SAFETY: word 0 lies in the owned block and is pointer-aligned (caller).
    unsafe { block.cast::<*mut u8>().write(next) }
}

/// What `word`, stored at `slot` (inside a free block the caller owns), is stored as:
/// XOR-ed with the key and the slot under `hardened`, unchanged otherwise; the same
/// call decodes it. For the words that are not plain block links (a central batch's
/// packed word 1 and tail), which are encoded but not checked.
#[inline(always)]
pub(crate) fn encode_word(slot: *const u8, word: usize) -> usize {
    #[cfg(feature = "hardened")]
    let word = word ^ hardened::link_mask(slot);
    #[cfg(not(feature = "hardened"))]
    let _ = slot;
    word
}

/// [`encode_word`] for a pointer word (keeping its provenance).
#[inline(always)]
pub(crate) fn encode_ptr(slot: *const u8, word: *mut u8) -> *mut u8 {
    word.map_addr(|a| encode_word(slot, a))
}
