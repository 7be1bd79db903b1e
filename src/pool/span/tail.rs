//! Giving back a span's free tail: the home blocks above its last out block are
//! uncarved again, and the whole pages past the last block still carved are handed back
//! to the OS and stop counting as committed (module `table`, [`Pages`]).
//!
//! A compaction target fills its holes in address order, so when a plan ends, the
//! target a class's live blocks ran out in has its free blocks at its top: uncarving
//! them leaves the class charged for the pages its blocks use, not for the whole span.
//!
//! [`Pages`]: super::Pages

use super::{Area, Span, SpanKind, pages_for, table};
use crate::os::PAGE_SIZE;

impl Span {
    /// Movable spans: uncarves the home blocks above the last block that is not home
    /// (found from the side table's home marks, dropped from the home set), and hands back the region's whole pages past the last block still
    /// carved (lazily with `MADV_FREE` if `lazy`). Does nothing, and returns false, if
    /// that would give back no page. A block that is out (live, cached, or reserved by a
    /// pass) is never uncarved: only home blocks are, and nobody holds those.
    ///
    /// # Safety
    ///
    /// * the caller holds the owning arena's lock;
    /// * the span is movable and initialised.
    pub(crate) unsafe fn uncarve_tail(&self, lazy: bool) -> bool {
        debug_assert_eq!(self.kind(), SpanKind::Movable);
        // SAFETY: forwarded: arena lock held.
        let st = unsafe { self.state() };
        let carved = st.carved as usize;
        let mut top = carved;
        while top > 0
            // SAFETY: movable and initialised (caller), `top - 1 < carved <= capacity`.
            && unsafe { self.meta(top - 1) }.is_home()
        {
            top -= 1;
        }
        let keep = pages_for(top * self.block_size());
        let counted = self.pages.get(Area::Blocks);
        if top == carved || keep >= counted {
            return false;
        }
        // Every block in `top..carved` is home (the scan above), and no block at or past
        // `carved` is in the home set: dropping the set's indices from `top` on removes
        // exactly those.
        st.home.truncate(top);
        st.free_count -= (carved - top) as u32;
        st.carved = top as u32;
        let start = self.base + keep * PAGE_SIZE;
        // SAFETY: pages `keep..counted` of the region hold only uncarved blocks now
        // (every block overlapping them starts at or past block `top`), which nobody
        // holds; the range lies in the span's region.
        if unsafe { table::purge_pages(start, counted - keep, lazy) }.is_ok() {
            // A serving movable span: in the movable counter too.
            let movable = Some(self.movable_counter());
            self.pages
                .lower(Area::Blocks, keep, self.committed(), movable);
        }
        true
    }
}
