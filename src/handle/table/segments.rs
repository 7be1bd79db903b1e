//! Segments: where slots live. `locate` maps an index to its segment and offset; the
//! segments are reserved lazily, installed once and never move (see "Segments" on
//! [`HandleTable`]).

use core::ptr::{self, NonNull};

use super::{HandleTable, TABLE_FULL};
use crate::handle::slot::Slot;
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};
use crate::{AllocError, HandleError};

/// `log2` of the first segment's slot count. Loom models use tiny segments so that
/// growth is explored and few loom atomics are created.
#[cfg(not(tidyheap_loom))]
pub(super) const FIRST_SHIFT: u32 = 8;
#[cfg(tidyheap_loom)]
pub(super) const FIRST_SHIFT: u32 = 1;

/// Number of segment pointers: enough for index `u32::MAX - 1`.
pub(crate) const SEGMENTS: usize = (33 - FIRST_SHIFT) as usize;

/// The most slots a table can hold: indexes run from 0 to `u32::MAX - 1`, because
/// `u32::MAX` is the index of [`RawHandle::NULL`](crate::handle::RawHandle::NULL).
pub const MAX_SLOTS: u32 = u32::MAX;

/// `(segment, offset)` of `index`; see "Segments" on [`HandleTable`].
#[inline(always)]
pub(crate) fn locate(index: u32) -> (usize, usize) {
    let v = index as u64 + (1 << FIRST_SHIFT);
    let bit = floor_log2(v);
    ((bit - FIRST_SHIFT) as usize, (v - (1 << bit)) as usize)
}

/// `floor(log2 v)` for `v != 0`, with no dependency on earlier work.
///
/// Without `lzcnt` (the x86-64 baseline), `63 - v.leading_zeros()` on a `v` known to be
/// non-zero compiles to a bare `bsr`, and `bsr` also *reads* its destination register
/// (it leaves it unchanged for a zero source). Whatever last wrote that register, often
/// the previous lookup's value load, then gates this lookup: a loop of handle
/// resolutions runs one cache miss after another instead of overlapping them (measured:
/// scoped random gets at 100k live 6–7× slower). Zeroing the register first (a
/// renaming idiom, no execution cost) cuts the dependency.
#[inline(always)]
fn floor_log2(v: u64) -> u32 {
    #[cfg(all(target_arch = "x86_64", not(target_feature = "lzcnt"), not(miri)))]
    {
        let bit: u64;
        // SAFETY: the two instructions touch only the output register and the flags: no
        // memory, no stack; `v != 0` (every caller adds `1 << FIRST_SHIFT` to a `u32`),
        // so `bsr` defines the output (the `xor` only cuts the false dependency).
        unsafe {
            core::arch::asm!(
                "xor {bit:e}, {bit:e}",
                "bsr {bit}, {v}",
                bit = out(reg) bit,
                v = in(reg) v,
                options(pure, nomem, nostack),
            );
        }
        bit as u32
    }
    #[cfg(not(all(target_arch = "x86_64", not(target_feature = "lzcnt"), not(miri))))]
    {
        63 - v.leading_zeros()
    }
}

/// First index of segment `seg`.
pub(super) const fn segment_start(seg: usize) -> u64 {
    (1 << (seg as u32 + FIRST_SHIFT)) - (1 << FIRST_SHIFT)
}

/// Number of slots in segment `seg` (the last one is cut at [`MAX_SLOTS`]).
pub(crate) const fn segment_len(seg: usize) -> usize {
    let full = 1u64 << (seg as u32 + FIRST_SHIFT);
    let left = MAX_SLOTS as u64 - segment_start(seg);
    (if full < left { full } else { left }) as usize
}

/// Reserves zeroed memory for segment `seg`: all-zero slots are vacant at generation 0.
#[cfg(not(tidyheap_loom))]
pub(super) fn alloc_segment(seg: usize) -> Result<*mut Slot, HandleError> {
    let bytes = segment_len(seg) * size_of::<Slot>();
    let base = crate::os::reserve(bytes, crate::os::PAGE_SIZE).map_err(AllocError::from)?;
    Ok(base.as_ptr().cast())
}

/// Releases a segment made by [`alloc_segment`].
///
/// # Safety
///
/// * `base` came from `alloc_segment(seg)` and was not released yet;
/// * no reference into the segment is used afterwards.
#[cfg(not(tidyheap_loom))]
pub(super) unsafe fn free_segment(seg: usize, base: *mut Slot) {
    let bytes = segment_len(seg) * size_of::<Slot>();
    // SAFETY:
    // - `base` is a live, page-aligned mapping of `bytes` bytes made by `os::reserve`
    //   (caller's precondition), and nothing uses it afterwards.
    unsafe { crate::os::release(NonNull::new_unchecked(base).cast(), bytes) };
}

/// Loom atomics must be constructed, so under loom segments are boxed slices.
#[cfg(tidyheap_loom)]
#[allow(clippy::unnecessary_wraps)] // same signature as the native twin
pub(super) fn alloc_segment(seg: usize) -> Result<*mut Slot, HandleError> {
    let slots: Box<[Slot]> = (0..segment_len(seg)).map(|_| Slot::new()).collect();
    Ok(Box::into_raw(slots).cast())
}

/// # Safety
///
/// * `base` came from `alloc_segment(seg)` and was not released yet;
/// * no reference into the segment is used afterwards.
#[cfg(tidyheap_loom)]
pub(super) unsafe fn free_segment(seg: usize, base: *mut Slot) {
    // SAFETY:
    // - `base` is the start of a `Box<[Slot]>` of `segment_len(seg)` slots leaked by
    //   `alloc_segment(seg)` (caller's precondition), freed once, here.
    drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(base, segment_len(seg))) });
}

impl HandleTable {
    /// Claims the next never-used index, installing its segment first if needed (so a
    /// failed reservation consumes no index).
    pub(super) fn issue_fresh(&self) -> Result<(u32, &Slot), HandleError> {
        let mut n = self.counters.issued.load(Relaxed);
        loop {
            if n >= self.max_slots {
                return Err(TABLE_FULL);
            }
            let slot = self.install_slot(n)?;
            match self
                .counters
                .issued
                .compare_exchange_weak(n, n + 1, Release, Relaxed)
            {
                Ok(_) => return Ok((n, slot)),
                Err(now) => n = now,
            }
        }
    }

    /// The slot at `index`, installing its segment if it is missing.
    pub(super) fn install_slot(&self, index: u32) -> Result<&Slot, HandleError> {
        if let Some(slot) = self.slot(index) {
            return Ok(slot);
        }
        let (seg, offset) = locate(index);
        let fresh = alloc_segment(seg)?;
        let base =
            match self.segments[seg].compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
                Ok(_) => fresh,
                Err(winner) => {
                    // SAFETY:
                    // - `fresh` came from `alloc_segment(seg)` just above and was never
                    //   published, so nothing refers to it.
                    unsafe { free_segment(seg, fresh) };
                    winner
                }
            };
        // SAFETY:
        // - `base` is the installed segment `seg`, whose slots live as long as the table;
        // - `offset < segment_len(seg)` since `index < max_slots <= MAX_SLOTS`.
        Ok(unsafe { &*base.add(offset) })
    }
}
