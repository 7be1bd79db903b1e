//! The full-walk invariant check and the crash-test hooks of the TLSF heap.

use std::sync::atomic::Ordering;

use super::{
    FL_COUNT, HEADER, Heap, MIN_BLOCK, OP_ALLOC, OP_FREE, R, SL_COUNT, USED, corrupt,
    mapping_insert, used,
};
use crate::shm::ShmError;

impl Heap<'_> {
    /// Checks every invariant in the module docs against a full walk. Lock held.
    pub(in crate::shm) fn verify(&self) -> Result<(), ShmError> {
        let c = self.c();
        let (mut live_blocks, mut live_bytes, mut used_bytes) = (0u64, 0u64, 0u64);
        let (mut free_blocks, mut free_bytes) = (0u64, 0u64);
        let mut off = self.start;
        let mut prev = 0u32;
        let mut prev_free = false;
        let mut starts = vec![0u64; self.bitmap.len()];
        while off < self.end {
            let b = self.blk(off)?;
            let meta = b.meta.load(R);
            let size = self.size_at(off, meta)?;
            if b.prev.load(R) != prev {
                return Err(corrupt("prev link wrong", off));
            }
            let (w, m) = self.bit(off);
            starts[w] |= m;
            if used(meta) {
                live_blocks += 1;
                live_bytes += meta >> 32;
                used_bytes += u64::from(size);
                if (meta >> 32) > u64::from(size - HEADER) {
                    return Err(corrupt("requested size exceeds the block", off));
                }
                prev_free = false;
            } else {
                if prev_free {
                    return Err(corrupt("two adjacent free blocks", off));
                }
                let (fl, sl) = mapping_insert(size);
                let mut cur = c.heads[fl][sl].load(R);
                let mut found = false;
                while cur != 0 {
                    if cur == off {
                        found = true;
                        break;
                    }
                    cur = self.blk(cur)?.next_free.load(R);
                }
                if !found {
                    return Err(corrupt("free block missing from its list", off));
                }
                free_blocks += 1;
                free_bytes += u64::from(size);
                prev_free = true;
            }
            prev = off;
            off += size;
        }
        if off != self.end {
            return Err(corrupt("blocks overrun the heap end", off));
        }
        for (w, want) in starts.iter().enumerate() {
            if self.bitmap[w].load(R) != *want {
                return Err(corrupt(
                    "block-start bitmap disagrees with the walk",
                    w as u32,
                ));
            }
        }
        let mut listed = 0u64;
        for fl in 0..FL_COUNT {
            for sl in 0..SL_COUNT {
                let mut cur = c.heads[fl][sl].load(R);
                let bit = c.sl_bitmap[fl].load(R) & (1 << sl) != 0;
                if bit != (cur != 0) {
                    return Err(corrupt("second-level bitmap disagrees with a list", cur));
                }
                while cur != 0 {
                    listed += 1;
                    if listed > free_blocks {
                        return Err(corrupt("free lists hold more blocks than the heap", cur));
                    }
                    cur = self.blk(cur)?.next_free.load(R);
                }
            }
            let fbit = c.fl_bitmap.load(R) & (1 << fl) != 0;
            if fbit != (c.sl_bitmap[fl].load(R) != 0) {
                return Err(corrupt("first-level bitmap disagrees", 0));
            }
        }
        let n = self.n();
        let counted = [
            n.live_blocks.load(R) == live_blocks,
            n.live_bytes.load(R) == live_bytes,
            n.used_bytes.load(R) == used_bytes,
            n.free_blocks.load(R) == free_blocks,
            n.free_bytes.load(R) == free_bytes,
            used_bytes + free_bytes == self.heap_bytes(),
        ];
        if counted.contains(&false) {
            return Err(corrupt("counters disagree with the walk", 0));
        }
        Ok(())
    }

    /// Test hook: an allocation cut off after its last store to the chain (remainder header
    /// written, block shrunk and marked used) but before the free lists, counters and journal
    /// were updated, as a crash there would leave it. Lock held. Returns false if no block fits.
    pub(in crate::shm) fn half_alloc(&self, size: u32) -> Result<bool, ShmError> {
        let need = (size.saturating_add(HEADER + 15) & !15).max(MIN_BLOCK);
        let c = self.c();
        let fl_map = c.fl_bitmap.load(R);
        if fl_map == 0 {
            return Ok(false);
        }
        let fl = (31 - fl_map.leading_zeros()) as usize;
        if fl >= FL_COUNT {
            return Ok(false);
        }
        let sl_map = c.sl_bitmap[fl].load(R);
        if sl_map == 0 {
            return Ok(false);
        }
        let off = c.heads[fl][(31 - sl_map.leading_zeros()) as usize].load(R);
        let b = self.blk(off)?;
        let bsize = self.size_at(off, b.meta.load(R))?;
        if bsize < need + MIN_BLOCK {
            return Ok(false);
        }
        self.remove_free(off, bsize)?;
        let j = &self.h.journal;
        j.off.store(off, R);
        j.op.store(OP_ALLOC, R);
        self.write_free_header(off + need, bsize - need, off)?;
        b.meta
            .store(u64::from(need) | USED | (u64::from(size) << 32), R);
        Ok(true)
    }

    /// Test hook: a free cut off after its first store (generation bumped, block still marked
    /// used), as a crash there would leave it. Lock held.
    pub(in crate::shm) fn half_free(&self, payload: u32, gen_: u32) -> Result<(), ShmError> {
        let (off, _) = self.resolve(payload, gen_)?;
        let j = &self.h.journal;
        j.off.store(off, R);
        j.gen_.store(gen_, R);
        j.op.store(OP_FREE, R);
        self.bump_gen(self.blk(off)?, gen_, Ordering::Release);
        Ok(())
    }
}
