//! Handing an empty span's pages back to the OS (purges by `Arena::purge_locked` and
//! `Arena::trim`) and the extents a batched purge covers.

use super::{Area, Span, table, table_bytes};

impl Span {
    /// The pages of `area` a purge hands back: `(start address, pages)`. Lazily (`lazy`,
    /// `MADV_FREE`) only the counted ones; otherwise (`MADV_DONTNEED`) the whole area,
    /// whose pages past the counted ones may still be resident, handed back lazily
    /// before (`uncarve_tail`): an untouched range costs the kernel only a table walk.
    #[inline]
    pub(crate) fn purge_extent(&self, area: Area, lazy: bool) -> (usize, usize) {
        let page = crate::os::PAGE_SIZE;
        let (start, whole) = match area {
            Area::Blocks => (self.base, self.bytes / page),
            Area::Table => (self.table, table_bytes(self.bytes) / page),
        };
        (start, if lazy { self.pages.get(area) } else { whole })
    }

    /// Stops counting `area`'s pages, handed back by the caller.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * the span is not serving (not in the movable counter), and its
    ///   [`Span::purge_extent`] of `area` was handed back.
    pub(crate) unsafe fn forget_pages(&self, area: Area) {
        self.pages.lower(area, 0, self.committed(), None);
    }

    /// Hands the span's pages back to the OS ([`Span::purge_extent`]: lazily with
    /// `MADV_FREE` if `lazy`) and stops counting them; returns whether every `madvise`
    /// succeeded (if not, the areas not handed back stay counted).
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * no block of the span is out, and no pass scans it.
    pub(crate) unsafe fn decommit(&self, lazy: bool) -> bool {
        let mut ok = true;
        for area in [Area::Blocks, Area::Table] {
            let (start, n) = self.purge_extent(area, lazy);
            // SAFETY: the extent lies in the span's region or table area (`Span::new`),
            // which hold nothing live: no block is out and no pass reads the table
            // (caller).
            if unsafe { table::purge_pages(start, n, lazy) }.is_ok() {
                // SAFETY: lock held (caller); empty, so not serving; just handed back.
                unsafe { self.forget_pages(area) };
            } else {
                ok = false;
            }
        }
        ok
    }

    /// Hands the whole region and side-table area of a span purged lazily before
    /// ([`Span::decommit`] with `lazy`, which counts nothing any more) back at once with
    /// `MADV_DONTNEED`; returns whether both `madvise` calls succeeded.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * the span is purged: no block is out and nothing counts as committed.
    pub(crate) unsafe fn decommit_lazy_again(&self) -> bool {
        debug_assert_eq!(self.pages.total(), 0);
        let page = crate::os::PAGE_SIZE;
        // SAFETY: the region and table area are this span's (`Span::new`), page-aligned
        // and whole pages long, and hold nothing live (caller).
        unsafe {
            table::purge_pages(self.base, self.bytes / page, false).is_ok()
                && table::purge_pages(self.table, table_bytes(self.bytes) / page, false).is_ok()
        }
    }
}
