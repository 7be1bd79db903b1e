//! How a large block is mapped: its [`Geometry`] (a pure function of the layout and the
//! config) and the OS work of mapping, resizing, moving and copying mappings.

use core::alloc::Layout;
use core::ptr::{self, NonNull};
use std::sync::atomic::Ordering;

use super::stats::Counters;
use super::{HUGE_PAGE_SIZE, HugePages, LargeAllocator, LargeConfig, placement};
use crate::AllocError;
use crate::os::{self, OsError, PAGE_SIZE, round_up};

/// The mapping a block of a given layout gets: a pure function of `(size, align, config)`.
///
/// Invariants (what lets `dealloc` work from the layout alone):
/// * the block's mapping is exactly `[ptr, ptr + total)`; `[ptr, ptr + len)` is
///   read-write and `[ptr + len, ptr + total)` is the guard page, if any;
/// * `len` and `total` are the same for every size `s'` in `[s, len(s)]`: a block freed
///   with any size between the requested one and its usable size is unmapped whole.
///   (`huge` and `map_align` may differ at one point: `2 MiB - 1` is not huge, yet its
///   usable size 2 MiB is. They only steer placement and advice.);
/// * `total + map_align <= isize::MAX` (the worst case of an aligned over-mapping);
/// * a `MAP_HUGETLB` block is always `huge` (its `len` a whole number of huge pages):
///   only huge blocks get hugetlb pages, and `realloc` never shrinks one that may be
///   hugetlb below [`HUGE_PAGE_SIZE`] in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geometry {
    /// Usable bytes: the size (at least 1) rounded up to 4 KiB, or to 2 MiB when `huge`.
    pub(super) len: usize,
    /// `len` plus the guard page, if configured.
    pub(super) total: usize,
    /// Alignment of `ptr`: the layout's, at least a page, at least 2 MiB when `huge`.
    pub(super) map_align: usize,
    /// The size is at least [`HUGE_PAGE_SIZE`] and the config allows huge pages.
    pub(super) huge: bool,
}

impl Geometry {
    pub(super) fn of(size: usize, align: usize, config: &LargeConfig) -> Result<Self, AllocError> {
        let too_large = AllocError::TooLarge { size };
        if !align.is_power_of_two() {
            return Err(AllocError::InvalidAlignment { align });
        }
        let huge = config.huge_pages != HugePages::Never && size >= HUGE_PAGE_SIZE;
        let unit = if huge { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        let len = round_up(size.max(1), unit).ok_or(too_large)?;
        let guard = if config.guard_page { PAGE_SIZE } else { 0 };
        let total = len.checked_add(guard).ok_or(too_large)?;
        let map_align = align.max(unit);
        match total.checked_add(map_align) {
            Some(worst) if worst <= isize::MAX as usize => Ok(Self {
                len,
                total,
                map_align,
                huge,
            }),
            _ => Err(too_large),
        }
    }
}

impl LargeAllocator {
    /// Maps the pages of a new block of geometry `g`, guard page and advice included.
    pub(super) fn map_block(&self, g: &Geometry) -> Result<NonNull<u8>, OsError> {
        if g.huge {
            if self.config.huge_pages == HugePages::Try
                && !self.config.guard_page
                && let Some(p) = self.map_hugetlb(g)
            {
                self.hugetlb_mapped.store(true, Ordering::Relaxed);
                Counters::bump(&self.counters.huge_tlb);
                return Ok(p);
            }
            Counters::bump(&self.counters.huge_fallbacks);
        }
        let base = self.reserve(g)?;
        if self.config.guard_page {
            // SAFETY: `[base, base + g.total)` was just mapped for this block alone and
            // its last page (the guard) holds nothing.
            if let Err(e) = unsafe { os::protect_none(base.byte_add(g.len), PAGE_SIZE) } {
                // SAFETY: the fresh mapping is unused and unpublished.
                unsafe { os::release(base, g.total) };
                return Err(e);
            }
        }
        self.advise_huge(base, g);
        Ok(base)
    }

    /// Tries `MAP_HUGETLB` with 2 MiB pages for a block without guard page.
    pub(super) fn map_hugetlb(&self, g: &Geometry) -> Option<NonNull<u8>> {
        let flags = libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        let hint = self.hint(g);
        let p = os::map_at_hint(hint, g.len, flags).ok()?;
        if (p.as_ptr() as usize).is_multiple_of(g.map_align) {
            Some(p)
        } else {
            // SAFETY: the fresh hugetlb mapping of `g.len` (a 2 MiB multiple) is unused.
            unsafe { os::release(p, g.len) };
            None
        }
    }

    /// A slot hint for geometry `g`, or 0 (no preference) without growth room.
    pub(super) fn hint(&self, g: &Geometry) -> usize {
        if self.config.growth_room {
            placement::claim(g.total, g.map_align).unwrap_or(0)
        } else {
            0
        }
    }

    /// Maps `g.total` fresh read-write bytes aligned to `g.map_align`, in a growth slot
    /// when configured.
    pub(super) fn reserve(&self, g: &Geometry) -> Result<NonNull<u8>, OsError> {
        let hint = self.hint(g);
        if hint != 0
            && let Ok(p) = os::map_at_hint(hint, g.total, 0)
        {
            if (p.as_ptr() as usize).is_multiple_of(g.map_align) {
                return Ok(p);
            }
            // SAFETY: the fresh mapping is unused; it is just misaligned.
            unsafe { os::release(p, g.total) };
        }
        os::reserve(g.total, g.map_align)
    }

    /// Asks for transparent huge pages on a huge block's usable range (a hint: failure,
    /// e.g. a kernel without THP, changes nothing but speed).
    pub(super) fn advise_huge(&self, p: NonNull<u8>, g: &Geometry) {
        if g.huge {
            // SAFETY: `[p, p + g.len)` is a block's page-aligned usable range and
            // MADV_HUGEPAGE discards nothing.
            let _hint_only = unsafe { os::advise(p, g.len, libc::MADV_HUGEPAGE) };
        }
    }

    /// Resizes the mapping of geometry `og` at `ptr` to geometry `ng` without copying:
    /// nothing when the lengths match, the tail unmapped when shrinking, and when growing
    /// an in-place `mremap`, else its pages moved to a fresh aligned reservation.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + og.total)` is a whole block mapping of geometry `og` (read-write up
    /// to `og.len`, guard page after it when configured); on success it lives at the
    /// result only, and the bytes beyond `ng.len` are dead.
    ///
    /// # Errors
    ///
    /// The kernel's, when it can do neither; the mapping is then unchanged.
    pub(super) unsafe fn resize_mapping(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<NonNull<u8>, OsError> {
        if ng.len == og.len {
            Ok(ptr)
        } else if ng.len < og.len {
            // SAFETY: forwarded from the caller: a live mapping of geometry `og`.
            unsafe { self.shrink_in_place(ptr, og, ng) }.map(|()| ptr)
        } else if self.config.guard_page {
            // SAFETY: as above; the block is only accessed through the result afterwards.
            unsafe { self.move_pages(ptr, og, ng) }
        } else {
            // SAFETY: as above. Without a guard page the mapping is the single VMA
            // `[ptr, ptr + og.total)` that `remap` requires.
            match unsafe { os::remap(ptr, og.total, ng.total, 0, ptr::null_mut()) } {
                Ok(p) => {
                    self.advise_huge(p, ng);
                    Ok(p)
                }
                // SAFETY: as above; the failed remap left the block unchanged.
                Err(_) => unsafe { self.move_pages(ptr, og, ng) },
            }
        }
    }

    /// Unmaps a block's tail so it has geometry `ng` (smaller than `og`).
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of geometry `og`; the bytes beyond `ng.len` are dead.
    pub(super) unsafe fn shrink_in_place(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<(), OsError> {
        if self.config.guard_page {
            // SAFETY: `ptr + ng.len` is page-aligned and its page lies inside the block's
            // usable range (`ng.len < og.len`), whose contents there are dead.
            unsafe { os::protect_none(ptr.byte_add(ng.len), PAGE_SIZE) }?;
            // SAFETY: `[ptr + ng.total, ptr + og.total)` is the dead rest of the block plus
            // its old guard page: whole VMAs at the end of our mapping, unused.
            unsafe { os::release(ptr.byte_add(ng.total), og.total - ng.total) };
        } else {
            // SAFETY: without a guard page the block is the single VMA `[ptr, ptr +
            // og.total)`; shrinking in place keeps `ptr`, so no pointer is invalidated
            // beyond the dead tail.
            unsafe { os::remap(ptr, og.total, ng.total, 0, ptr::null_mut()) }?;
        }
        Ok(())
    }

    /// Moves a block's pages to a fresh reservation of geometry `ng` (as large as `og` or
    /// larger), without copying; the old range is unmapped.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of geometry `og`; on success it lives at the result only.
    pub(super) unsafe fn move_pages(
        &self,
        ptr: NonNull<u8>,
        og: &Geometry,
        ng: &Geometry,
    ) -> Result<NonNull<u8>, OsError> {
        let dest = self.reserve(ng)?;
        if self.config.guard_page {
            // SAFETY: `dest` is our fresh reservation of `ng.total` bytes; its last page
            // becomes the guard and holds nothing.
            if let Err(e) = unsafe { os::protect_none(dest.byte_add(ng.len), PAGE_SIZE) } {
                // SAFETY: the fresh reservation is unused.
                unsafe { os::release(dest, ng.total) };
                return Err(e);
            }
        }
        // SAFETY:
        // - `[ptr, ptr + og.len)` is the block's read-write range, a single VMA (the guard
        //   page, if any, is a separate one and is not part of the move);
        // - `[dest, dest + ng.len)` is our fresh, unused reservation, replaced by the move;
        // - the caller uses only the result afterwards.
        let moved = match unsafe {
            os::remap(
                ptr,
                og.len,
                ng.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dest.as_ptr(),
            )
        } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the failed remap left the reservation unused and the block intact.
                unsafe { os::release(dest, ng.total) };
                return Err(e);
            }
        };
        debug_assert_eq!(moved, dest);
        if self.config.guard_page {
            // SAFETY: the old guard page `[ptr + og.len, +PAGE_SIZE)` is its own VMA,
            // left behind by the move and used by nothing.
            unsafe { os::release(ptr.byte_add(og.len), PAGE_SIZE) };
        }
        self.advise_huge(moved, ng);
        Ok(moved)
    }

    /// The last resort of `realloc` and `relocate`: a new block for `new`, the common
    /// prefix copied, the old block freed.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `old` (conditions of [`dealloc`](Self::dealloc)); on
    /// success it is freed.
    pub(super) unsafe fn copy_move(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<u8>, AllocError> {
        let fresh = self.alloc(new)?;
        // Keep what remapping would keep: every byte both blocks can hold.
        let keep = self.usable_size(old).min(self.usable_size(new));
        // SAFETY:
        // - both blocks are live, distinct mappings with at least `keep` usable bytes;
        // - then the old block is freed under the caller's guarantees.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), fresh.as_ptr(), keep);
            self.dealloc(ptr, old);
        }
        Counters::bump(&self.counters.copy_fallbacks);
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn geometry_rounds_to_pages_and_huge_pages() {
        let cfg = LargeConfig::DEFAULT;
        let g = Geometry::of(300_000, 8, &cfg).unwrap();
        assert_eq!(
            (g.len, g.total, g.map_align, g.huge),
            (303_104, 303_104, PAGE_SIZE, false)
        );
        let g = Geometry::of(3 * MIB, 8, &cfg).unwrap();
        assert_eq!((g.len, g.map_align, g.huge), (4 * MIB, 2 * MIB, true));
        let never = LargeConfig {
            huge_pages: HugePages::Never,
            ..cfg
        };
        let g = Geometry::of(3 * MIB, 8, &never).unwrap();
        assert_eq!((g.len, g.map_align, g.huge), (3 * MIB, PAGE_SIZE, false));
        let guarded = LargeConfig {
            guard_page: true,
            ..cfg
        };
        let g = Geometry::of(0, 1 << 22, &guarded).unwrap();
        assert_eq!(
            (g.len, g.total, g.map_align),
            (PAGE_SIZE, 2 * PAGE_SIZE, 1 << 22)
        );
    }

    /// The `Geometry` invariant that lets `dealloc` take any size up to the usable one.
    #[test]
    fn geometry_is_stable_across_the_usable_range() {
        for cfg in [
            LargeConfig::DEFAULT,
            LargeConfig {
                huge_pages: HugePages::Never,
                guard_page: true,
                growth_room: false,
                ..LargeConfig::UNCACHED
            },
        ] {
            for size in [0, 1, 4095, 4097, 300_000, 2 * MIB - 1, 2 * MIB, 5 * MIB + 3] {
                let g = Geometry::of(size, 16, &cfg).unwrap();
                for s in [size, (size + g.len) / 2, g.len] {
                    let h = Geometry::of(s, 16, &cfg).unwrap();
                    assert_eq!((h.len, h.total), (g.len, g.total), "size {size} vs {s}");
                }
            }
        }
    }

    #[test]
    fn geometry_rejects_impossible_sizes() {
        let guarded = LargeConfig {
            guard_page: true,
            ..LargeConfig::DEFAULT
        };
        let max = isize::MAX as usize;
        for (size, align, cfg) in [
            (usize::MAX, 1, LargeConfig::DEFAULT),
            (max - PAGE_SIZE + 2, 1, LargeConfig::DEFAULT),
            (max - 3 * PAGE_SIZE, 1, LargeConfig::DEFAULT),
            (max / 2, 1 << 62, LargeConfig::DEFAULT),
            (max - 2 * PAGE_SIZE, 1, guarded),
        ] {
            assert_eq!(
                Geometry::of(size, align, &cfg),
                Err(AllocError::TooLarge { size })
            );
        }
        assert_eq!(
            Geometry::of(4096, 3, &LargeConfig::DEFAULT),
            Err(AllocError::InvalidAlignment { align: 3 })
        );
    }
}
