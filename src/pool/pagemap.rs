//! The page map: any address → the [`Span`] that contains it, in O(1).
//!
//! Spans are aligned to and sized in [`SPAN_UNIT`]s (64 KiB). The map is a two-level
//! radix tree over the 48-bit user address space, indexed by unit number
//! (`addr >> 16`, 32 bits): a static root of 2^16 leaf pointers, and leaves of 2^16 span
//! pointers (512 KiB each) mapped from the OS on first use and never freed. A lookup is
//! two dependent loads and no lock; a leaf is installed with one CAS.
//!
//! Invariant: an entry is non-null exactly while the unit belongs to a span of a live
//! heap (set when a span region is carved, cleared when its heap is dropped).
//!
//! The map is global (shared by every heap) and is not part of any loom model, so it
//! uses `std` atomics directly.

use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, Ordering};

use super::span::Span;
use crate::os;
use crate::size_class::SPAN_UNIT;

const UNIT_SHIFT: u32 = SPAN_UNIT.trailing_zeros();
const ADDR_BITS: u32 = 48;
const LEAF_BITS: u32 = 16;
const ROOT_BITS: u32 = ADDR_BITS - UNIT_SHIFT - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

type Leaf = [AtomicPtr<Span>; LEAF_LEN];

static ROOT: [AtomicPtr<Leaf>; ROOT_LEN] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_LEN];

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    let unit = addr >> UNIT_SHIFT;
    let root = unit >> LEAF_BITS;
    (root < ROOT_LEN).then_some((root, unit & (LEAF_LEN - 1)))
}

/// The span containing `addr`, if `addr` lies in a span of a live heap.
#[inline(always)]
pub(crate) fn lookup(addr: usize) -> Option<NonNull<Span>> {
    let (r, l) = split(addr)?;
    let leaf = ROOT[r].load(Ordering::Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: a non-null root entry points to a leaf mapped by `leaf_for` that is never
    // unmapped, and `l < LEAF_LEN`.
    let entry = unsafe { &(*leaf)[l] };
    NonNull::new(entry.load(Ordering::Acquire))
}

/// [`lookup`] for the hot free path: the top 16 bits of `addr` are ignored instead of
/// checked, which saves a compare and a branch. So the span returned for an address at
/// or above 2^48 (a pointer no mapping can hold: the CPU faults on any access through
/// it) may not contain it; the caller's span checks (`HeapInner::is_local`) then either
/// reject it (`hardened`'s block-start test: the offset from the span is at least
/// 2^48), or pass it to a list push, whose first access faults.
#[inline(always)]
pub(crate) fn lookup_fast(addr: usize) -> Option<NonNull<Span>> {
    let unit = addr >> UNIT_SHIFT;
    let r = (unit >> LEAF_BITS) & (ROOT_LEN - 1);
    let leaf = ROOT[r].load(Ordering::Acquire);
    if leaf.is_null() {
        return None;
    }
    // SAFETY: as in `lookup`: a published leaf is never unmapped, and the index is
    // masked below `LEAF_LEN`.
    let entry = unsafe { &(*leaf)[unit & (LEAF_LEN - 1)] };
    NonNull::new(entry.load(Ordering::Acquire))
}

fn leaf_for(root: usize) -> Result<&'static Leaf, os::OsError> {
    let cur = ROOT[root].load(Ordering::Acquire);
    if !cur.is_null() {
        // SAFETY: non-null root entries point to leaves that live for the program.
        return Ok(unsafe { &*cur });
    }
    let bytes = core::mem::size_of::<Leaf>();
    let fresh = os::reserve(bytes, os::PAGE_SIZE)?.cast::<Leaf>();
    match ROOT[root].compare_exchange(
        ptr::null_mut(),
        fresh.as_ptr(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: zeroed memory is a valid array of null `AtomicPtr`s; we just published
        // it and never unmap it.
        Ok(_) => Ok(unsafe { &*fresh.as_ptr() }),
        Err(winner) => {
            // SAFETY: `fresh` was mapped above with `bytes` and never shared.
            unsafe { os::release(fresh.cast(), bytes) };
            // SAFETY: the winner's leaf is published and permanent.
            Ok(unsafe { &*winner })
        }
    }
}

/// Points every unit of `[base, base + bytes)` at `span` (or clears them with null).
///
/// # Errors
///
/// When a leaf cannot be mapped; entries set so far stay set (harmless: they point at
/// the span whose region this is).
pub(crate) fn set(base: usize, bytes: usize, span: *mut Span) -> Result<(), os::OsError> {
    debug_assert_eq!(base % SPAN_UNIT, 0);
    let mut addr = base;
    while addr < base + bytes {
        let Some((r, l)) = split(addr) else {
            return Err(os::OsError {
                op: "pagemap",
                size: bytes,
                errno: libc::EFAULT,
            });
        };
        leaf_for(r)?[l].store(span, Ordering::Release);
        addr += SPAN_UNIT;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_lookup_clear() {
        let base = 0x7000_0000_0000usize - 4 * SPAN_UNIT;
        let fake = NonNull::<Span>::dangling().as_ptr();
        set(base, 2 * SPAN_UNIT, fake).unwrap();
        assert_eq!(lookup(base).map(NonNull::as_ptr), Some(fake));
        assert_eq!(
            lookup(base + 2 * SPAN_UNIT - 1).map(NonNull::as_ptr),
            Some(fake)
        );
        assert_eq!(lookup(base + 2 * SPAN_UNIT), None);
        set(base, 2 * SPAN_UNIT, ptr::null_mut()).unwrap();
        assert_eq!(lookup(base), None);
        assert_eq!(lookup(usize::MAX), None);
    }
}
