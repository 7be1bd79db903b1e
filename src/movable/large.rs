//! Large movable blocks: the header in front of each (length, alignment, NUMA reader
//! vote) and the mapping layout it implies.

use core::alloc::Layout;
use core::ptr::NonNull;
use std::sync::atomic::AtomicU16;

use crate::AllocError;

/// The header in front of a large movable block.
#[repr(C)]
pub(super) struct LargeHeader {
    pub(super) magic: u64,
    /// Requested bytes.
    pub(super) len: usize,
    /// Header bytes (also the mapping's alignment).
    pub(super) header: usize,
    /// NUMA: the block's reader vote (`numa::readers`); 0 until a read is sampled.
    pub(super) vote: AtomicU16,
}

pub(super) const LARGE_MAGIC: u64 = u64::from_le_bytes(*b"tidyLRG1");

/// Header bytes in front of a large movable block aligned to `align`.
pub(super) fn large_header(align: usize) -> usize {
    align.max(crate::os::PAGE_SIZE)
}

/// The mapping layout of a large movable block of `len` bytes with `header` in front.
pub(super) fn large_layout(len: usize, header: usize) -> Result<Layout, AllocError> {
    let total = len
        .checked_add(header)
        .ok_or(AllocError::TooLarge { size: len })?;
    Layout::from_size_align(total, header).map_err(|_| AllocError::TooLarge { size: len })
}

/// The header of large movable block `block`.
///
/// # Safety
///
/// `block` is a live large movable block of some heap, and stays live while the
/// reference is used.
unsafe fn large_header_ref<'a>(block: NonNull<u8>) -> &'a LargeHeader {
    // SAFETY: a live large movable block's header is stored in the last
    // `size_of::<LargeHeader>()` bytes of the header area right in front of it (which
    // is at least a page, so it is mapped and 8-aligned); the caller keeps it live.
    let h = unsafe {
        &*block
            .as_ptr()
            .sub(size_of::<LargeHeader>())
            .cast::<LargeHeader>()
    };
    debug_assert_eq!(h.magic, LARGE_MAGIC, "not a large movable block");
    h
}

/// Reads the header of large movable block `block`: its length and header bytes.
///
/// # Safety
///
/// `block` is a live large movable block of some heap.
pub(crate) unsafe fn large_header_of(block: NonNull<u8>) -> (usize, usize) {
    // SAFETY: forwarded from the caller.
    let h = unsafe { large_header_ref(block) };
    (h.len, h.header)
}

/// NUMA: the reader vote of large movable block `block` (see `numa::readers`).
///
/// # Safety
///
/// `block` is a live large movable block of some heap, and stays live while the
/// reference is used.
pub(crate) unsafe fn large_vote<'a>(block: NonNull<u8>) -> &'a AtomicU16 {
    // SAFETY: forwarded from the caller.
    unsafe { &large_header_ref(block).vote }
}
