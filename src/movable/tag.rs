//! Store tags: the 20-bit owner tag carried in the unused bits of a slot's pointer (see
//! "Store tags" in the [module docs](super)).

use core::ptr::NonNull;
use std::sync::atomic::Ordering;

use crate::HandleError;
use crate::size_class;

/// Address bits above this one carry the tag's high 16 bits.
const HIGH_SHIFT: u32 = 48;
/// Bits below this one carry the tag's low 4 bits (movable blocks are 16-byte aligned).
const LOW_BITS: u32 = 4;
const LOW_MASK: usize = (1 << LOW_BITS) - 1;
/// The bits of a slot pointer that hold the block address.
const ADDR_MASK: usize = ((1 << HIGH_SHIFT) - 1) & !LOW_MASK;

const _: () = assert!(size_class::MIN_SIZE >= 1 << LOW_BITS);
const _: () = assert!(crate::os::PAGE_SIZE >= 1 << LOW_BITS);

/// A store tag: 20 bits (see the module docs). 0 is the raw handles' tag.
pub(crate) type Tag = u32;

/// The largest tag, which is also the most stores one process can ever create.
pub(crate) const MAX_TAG: Tag = (1 << (64 - HIGH_SHIFT + LOW_BITS)) - 1;

/// The tag of raw handles made by [`Heap::alloc_handle`].
pub(crate) const RAW_TAG: Tag = 0;

/// The next store tag to hand out, process-wide; `MAX_TAG + 1` once all are taken.
static NEXT_TAG: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(RAW_TAG + 1);

/// Takes the next tag from `counter`, or `None` once `MAX_TAG` has been handed out.
/// The counter never moves past `MAX_TAG + 1`, so exhaustion is permanent and no tag is
/// ever handed out twice; a refused call changes nothing.
pub(super) fn take_tag(counter: &std::sync::atomic::AtomicU32) -> Option<Tag> {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            (t <= MAX_TAG).then(|| t + 1)
        })
        .ok()
}

/// A fresh store tag, unique in the process.
///
/// # Errors
///
/// [`HandleError::StoresExhausted`] once [`MAX_TAG`] stores have been created.
pub(crate) fn new_store_tag() -> Result<Tag, HandleError> {
    take_tag(&NEXT_TAG).ok_or(HandleError::StoresExhausted)
}

/// Moves the process-wide tag counter forward to `next` (never back): the tags below
/// are never handed out. Lets tests reach exhaustion without creating a million stores;
/// it cannot make a tag repeat.
pub(crate) fn skip_store_tags_to(next: u32) {
    NEXT_TAG.fetch_max(next.min(MAX_TAG + 1), Ordering::Relaxed);
}

/// `block` carrying `tag`.
///
/// # Panics
///
/// If `block` is above 2^48 or not 16-byte aligned (no movable block is), or `tag` is
/// above [`MAX_TAG`].
#[inline(always)]
pub(crate) fn tag_ptr(block: NonNull<u8>, tag: Tag) -> NonNull<u8> {
    assert!(
        block.as_ptr().addr() & !ADDR_MASK == 0 && tag <= MAX_TAG,
        "tidyheap: block {block:p} cannot carry store tag {tag}"
    );
    let tag = tag as usize;
    // OR-ing bits into a non-zero address keeps it non-zero.
    block.map_addr(|a| a | ((tag >> LOW_BITS) << HIGH_SHIFT) | (tag & LOW_MASK))
}

/// The tag bits of a slot pointer.
#[inline(always)]
fn tag_of(addr: usize) -> Tag {
    (((addr >> HIGH_SHIFT) << LOW_BITS) | (addr & LOW_MASK)) as Tag
}

/// The bits tag `tag` sets in a slot pointer (see [`tag_ptr`]).
#[inline(always)]
pub(crate) const fn tag_bits(tag: Tag) -> usize {
    let tag = tag as usize;
    ((tag >> LOW_BITS) << HIGH_SHIFT) | (tag & LOW_MASK)
}

/// The block address of slot pointer `p` if it carries the tag whose bits are `bits`
/// ([`tag_bits`]): one mask and compare (the same answer as comparing [`untag`]'s tag),
/// then one xor. For a live block's pointer only: `p` came from [`tag_ptr`] (an occupied
/// slot's pointer read under a guard or inside a read scope, never a racy peek), so its
/// address bits are a block's and never zero.
///
/// # Safety
///
/// * `p` is a pointer [`tag_ptr`] made from a (non-null) block address.
#[inline(always)]
pub(crate) unsafe fn untag_live_if(p: NonNull<u8>, bits: usize) -> Option<NonNull<u8>> {
    let a = p.as_ptr().addr();
    if a & !ADDR_MASK != bits {
        return None;
    }
    // SAFETY: `a & !ADDR_MASK == bits`, so `a ^ bits` is `a`'s address bits: the block
    // address `tag_ptr` was given, which is not null (the caller's precondition).
    Some(unsafe { NonNull::new_unchecked(p.as_ptr().with_addr(a ^ bits)) })
}

/// Splits a slot pointer into the block address and its tag.
///
/// For a pointer that [`tag_ptr`] made, this is exact. Anything else (a racy peek at a
/// vacant slot's free-list link) gives a tag and an address that match no live block's,
/// never a panic.
#[inline(always)]
pub(crate) fn untag(p: NonNull<u8>) -> (NonNull<u8>, Tag) {
    let tag = tag_of(p.as_ptr().addr());
    (
        p.map_addr(|a| core::num::NonZeroUsize::new(a.get() & ADDR_MASK).unwrap_or(a)),
        tag,
    )
}

/// The tag of slot pointer `p` read without a guard (see "Store tags" in the module
/// docs): `None` for a null pointer.
#[inline(always)]
pub(crate) fn peek_tag(p: *mut u8) -> Option<Tag> {
    (!p.is_null()).then(|| tag_of(p.addr()))
}
