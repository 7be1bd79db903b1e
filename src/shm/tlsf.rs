//! TLSF (two-level segregated fit) over the segment's heap, with crash recovery.
//!
//! Every offset is a `u32` byte offset from the segment base, a multiple of 16; 0 means none.
//!
//! ```text
//! block header (16 B, at the block start)      free block payload (first 8 B)
//!   meta: u64 = size | USED (bit 0) | requested << 32     next_free: u32
//!   gen:  u32  generation, bumped on free (never 0)       prev_free: u32
//!   prev: u32  offset of the physically previous block (0 for the first)
//! ```
//!
//! Invariants at quiescence (checked by [`Heap::verify`], restored by [`Heap::recover`]):
//! - the blocks tile `[heap_start, heap_end)`: each next block starts at `off + size`;
//! - no two physically adjacent blocks are both free (coalescing is immediate);
//! - a free block is in exactly the list `heads[fl][sl]` of `mapping_insert(size)`, whose bits
//!   are set in `sl_bitmap[fl]` and `fl_bitmap`;
//! - the block-start bitmap has exactly the bits of block starts;
//! - `used_bytes + free_bytes == heap_end - heap_start`, and the counters agree with a walk.
//!
//! Crash consistency is **guaranteed by the order of writes, then repaired**: every change of
//! the physical chain is a single 8-byte store of some block's `meta` (a split writes the new
//! remainder header first and then shrinks the block; a merge grows the surviving block in
//! one store), so after a crash at any instruction a walk from `heap_start` still tiles the
//! heap. The free lists, bitmaps, `prev` links and counters are *derived* data: the process
//! that takes the lock over from a dead holder rebuilds all of them from the walk
//! ([`Heap::recover`]), merging any adjacent free blocks. The journal (op, offset, generation,
//! written under the lock before the first store) finishes what the dead process started: an
//! unfinished `alloc` is rolled back (its handle never left the lock), an unfinished `free` is
//! completed. A walk that does not tile the heap (a writer outside this crate) poisons the
//! segment: every later operation returns [`ShmError::Corrupt`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use super::ShmError;
use super::segment::{Layout, Mapping, SegmentHeader};

mod checks;

pub(super) const HEADER: u32 = 16;
pub(super) const MIN_BLOCK: u32 = 32;
const USED: u64 = 1;
const SL_LOG: u32 = 4;
const SL_COUNT: usize = 1 << SL_LOG;
/// Sizes below `1 << FL_SHIFT` (256 B) sit in the linear first row, 16 B apart.
const FL_SHIFT: u32 = SL_LOG + 4;
/// Enough rows for any size below 2^32.
const FL_COUNT: usize = (32 - FL_SHIFT + 1) as usize;
const R: Ordering = Ordering::Relaxed;

/// The TLSF index: two bitmaps over a table of free-list heads.
#[repr(C)]
pub(super) struct Control {
    fl_bitmap: AtomicU32,
    sl_bitmap: [AtomicU32; FL_COUNT],
    heads: [[AtomicU32; SL_COUNT]; FL_COUNT],
    /// The highest generation ever given to any header (never 0). New headers take the next
    /// one, and every bump on free raises it, so a header recreated at an offset never gets a
    /// generation an older header there had (until the 32-bit space wraps).
    next_gen: AtomicU32,
}

/// Heap accounting, updated under the lock.
#[repr(C)]
pub(super) struct Counters {
    pub(super) live_blocks: AtomicU64,
    /// Sum of requested sizes of live blocks.
    pub(super) live_bytes: AtomicU64,
    /// Block bytes (headers included) of live blocks.
    pub(super) used_bytes: AtomicU64,
    pub(super) free_blocks: AtomicU64,
    pub(super) free_bytes: AtomicU64,
    pub(super) allocs: AtomicU64,
    pub(super) frees: AtomicU64,
    /// Allocations a dead process left half-done, rolled back by recovery.
    pub(super) rolled_back_allocs: AtomicU64,
    /// Frees a dead process left half-done, completed by recovery.
    pub(super) completed_frees: AtomicU64,
}

/// The intent of the operation in progress under the lock (op 0 = none).
#[repr(C)]
pub(super) struct Journal {
    op: AtomicU32,
    off: AtomicU32,
    gen_: AtomicU32,
}

const OP_NONE: u32 = 0;
const OP_ALLOC: u32 = 1;
const OP_FREE: u32 = 2;

#[repr(C)]
struct Block {
    meta: AtomicU64,
    gen_: AtomicU32,
    prev: AtomicU32,
    next_free: AtomicU32,
    prev_free: AtomicU32,
}

// Every word below is written only under the heap lock, so read-modify-writes need no
// `lock`-prefixed instruction: a relaxed load and store (two plain moves) suffice. Lock-free
// readers only ever load.
fn add(a: &AtomicU64, v: u64) {
    a.store(a.load(R).wrapping_add(v), R);
}

fn sub(a: &AtomicU64, v: u64) {
    a.store(a.load(R).wrapping_sub(v), R);
}

fn or32(a: &AtomicU32, bits: u32) {
    a.store(a.load(R) | bits, R);
}

/// Clears `bits` and returns what is left.
fn andn32(a: &AtomicU32, bits: u32) -> u32 {
    let left = a.load(R) & !bits;
    a.store(left, R);
    left
}

fn size_of_meta(meta: u64) -> u32 {
    (meta as u32) & !15
}

fn used(meta: u64) -> bool {
    meta & USED != 0
}

/// Next generation after `g`, skipping 0.
pub(super) fn bump(g: u32) -> u32 {
    g.wrapping_add(1).max(1)
}

fn mapping_insert(size: u32) -> (usize, usize) {
    if size < (1 << FL_SHIFT) {
        (0, (size / 16) as usize)
    } else {
        let log = 31 - size.leading_zeros();
        let sl = (size >> (log - SL_LOG)) ^ (1 << SL_LOG);
        ((log - FL_SHIFT + 1) as usize, sl as usize)
    }
}

/// The class whose every block is at least `size` (rounding up within the row).
fn mapping_search(size: u32) -> Option<(usize, usize)> {
    let size = if size >= (1 << FL_SHIFT) {
        let log = 31 - size.leading_zeros();
        size.checked_add((1 << (log - SL_LOG)) - 1)?
    } else {
        size
    };
    Some(mapping_insert(size))
}

/// A view of one segment's heap (valid while the mapping lives).
pub(super) struct Heap<'a> {
    base: *mut u8,
    h: &'a SegmentHeader,
    bitmap: &'a [AtomicU64],
    start: u32,
    end: u32,
}

fn corrupt(what: &'static str, offset: u32) -> ShmError {
    ShmError::Corrupt { what, offset }
}

impl<'a> Heap<'a> {
    pub(super) fn new(m: &'a Mapping, layout: Layout) -> Self {
        // SAFETY:
        // - the bitmap lies at BITMAP_OFF (8-aligned) inside the mapping: Layout::for_size puts
        //   heap_start after BITMAP_OFF + 8 * bitmap_words, and heap_start <= size <= mapping length;
        // - it holds only atomics, so sharing it with other threads and processes is sound;
        // - the slice borrows the mapping through `'a`.
        let bitmap = unsafe {
            std::slice::from_raw_parts(
                m.base().add(super::segment::BITMAP_OFF) as *const AtomicU64,
                layout.bitmap_words,
            )
        };
        Heap {
            base: m.base(),
            h: m.header(),
            bitmap,
            start: layout.heap_start,
            end: layout.heap_end,
        }
    }

    pub(super) fn heap_bytes(&self) -> u64 {
        u64::from(self.end - self.start)
    }

    fn c(&self) -> &'a Control {
        &self.h.control
    }

    fn n(&self) -> &'a Counters {
        &self.h.counters
    }

    /// The header at `off`, if `off` can hold one (aligned, inside the heap).
    fn blk(&self, off: u32) -> Result<&'a Block, ShmError> {
        if off < self.start || !off.is_multiple_of(16) || off > self.end - MIN_BLOCK {
            return Err(corrupt("block offset outside the heap", off));
        }
        // SAFETY:
        // - `off` is 16-aligned and `off + MIN_BLOCK <= end <= mapping length`, and
        //   size_of::<Block>() == 24 <= MIN_BLOCK, so the Block lies inside the mapping;
        // - Block holds only atomics: references to it may coexist with writes from other
        //   threads and processes (its last 8 bytes are user data of a used block, which this
        //   module only touches while the block is free and the lock is held).
        Ok(unsafe { &*(self.base.add(off as usize) as *const Block) })
    }

    /// Size of the block at `off`, checked to fit the heap.
    fn size_at(&self, off: u32, meta: u64) -> Result<u32, ShmError> {
        let s = size_of_meta(meta);
        if s < MIN_BLOCK || s > self.end - off {
            return Err(corrupt("block size out of range", off));
        }
        Ok(s)
    }

    fn bit(&self, off: u32) -> (usize, u64) {
        let g = ((off - self.start) / 16) as usize;
        (g / 64, 1u64 << (g % 64))
    }

    fn set_start(&self, off: u32) {
        let (w, m) = self.bit(off);
        let word = &self.bitmap[w];
        word.store(word.load(R) | m, Ordering::Release);
    }

    fn clear_start(&self, off: u32) {
        let (w, m) = self.bit(off);
        let word = &self.bitmap[w];
        word.store(word.load(R) & !m, Ordering::Release);
    }

    fn is_start(&self, off: u32) -> bool {
        let (w, m) = self.bit(off);
        self.bitmap[w].load(Ordering::Acquire) & m != 0
    }

    fn new_gen(&self) -> u32 {
        let g = bump(self.c().next_gen.load(R));
        self.c().next_gen.store(g, R);
        g
    }

    /// Stores generation `bump(from)` in `b` and raises the high-water mark to it.
    fn bump_gen(&self, b: &Block, from: u32, order: Ordering) {
        let g = bump(from);
        b.gen_.store(g, order);
        let c = self.c();
        if g > c.next_gen.load(R) {
            c.next_gen.store(g, R);
        }
    }

    /// Writes a fresh free header at `off` (not yet part of the chain until someone's size says so).
    fn write_free_header(&self, off: u32, size: u32, prev: u32) -> Result<(), ShmError> {
        let b = self.blk(off)?;
        b.gen_.store(self.new_gen(), R);
        b.prev.store(prev, R);
        b.meta.store(u64::from(size), R);
        self.set_start(off);
        Ok(())
    }

    fn insert_free(&self, off: u32, size: u32) -> Result<(), ShmError> {
        let (fl, sl) = mapping_insert(size);
        let c = self.c();
        let head = c.heads[fl][sl].load(R);
        let b = self.blk(off)?;
        b.next_free.store(head, R);
        b.prev_free.store(0, R);
        if head != 0 {
            self.blk(head)?.prev_free.store(off, R);
        }
        c.heads[fl][sl].store(off, R);
        or32(&c.sl_bitmap[fl], 1 << sl);
        or32(&c.fl_bitmap, 1 << fl);
        Ok(())
    }

    fn remove_free(&self, off: u32, size: u32) -> Result<(), ShmError> {
        let (fl, sl) = mapping_insert(size);
        let c = self.c();
        let b = self.blk(off)?;
        let next = b.next_free.load(R);
        let prev = b.prev_free.load(R);
        if prev != 0 {
            self.blk(prev)?.next_free.store(next, R);
        } else {
            if c.heads[fl][sl].load(R) != off {
                return Err(corrupt("free block not at its list head", off));
            }
            c.heads[fl][sl].store(next, R);
            if next == 0 && andn32(&c.sl_bitmap[fl], 1 << sl) == 0 {
                andn32(&c.fl_bitmap, 1 << fl);
            }
        }
        if next != 0 {
            self.blk(next)?.prev_free.store(prev, R);
        }
        Ok(())
    }

    fn set_prev_of_next(&self, off: u32, size: u32, prev: u32) -> Result<(), ShmError> {
        let next = off + size;
        if next < self.end {
            self.blk(next)?.prev.store(prev, R);
        }
        Ok(())
    }

    /// Writes the first free block over the whole heap. Called once, on a zero-filled segment.
    pub(super) fn format(&self) {
        let size = self.end - self.start;
        // The heap is at least MIN_SIZE - header space, far above MIN_BLOCK, so these succeed.
        let formatted = self
            .write_free_header(self.start, size, 0)
            .and_then(|()| self.insert_free(self.start, size));
        debug_assert!(formatted.is_ok());
        self.n().free_blocks.store(1, R);
        self.n().free_bytes.store(u64::from(size), R);
    }

    /// Allocates `size` bytes aligned to `align` (a power of two <= 4096). Lock held.
    /// Returns (payload offset, generation).
    pub(super) fn alloc(&self, size: u32, align: u32) -> Result<Option<(u32, u32)>, ShmError> {
        let Some(need) = size
            .checked_add(HEADER + 15)
            .map(|s| (s & !15).max(MIN_BLOCK))
        else {
            return Ok(None);
        };
        let search = if align <= 16 {
            need
        } else {
            match need.checked_add(align + MIN_BLOCK) {
                Some(s) => s,
                None => return Ok(None),
            }
        };
        let Some((fl, sl)) = mapping_search(search) else {
            return Ok(None);
        };
        if fl >= FL_COUNT {
            return Ok(None);
        }
        let c = self.c();
        let mut fl = fl;
        let mut sl_map = c.sl_bitmap[fl].load(R) & (!0u32 << sl);
        if sl_map == 0 {
            let fl_map = c.fl_bitmap.load(R) & (!0u32).checked_shl(fl as u32 + 1).unwrap_or(0);
            if fl_map == 0 {
                return Ok(None);
            }
            fl = fl_map.trailing_zeros() as usize;
            if fl >= FL_COUNT {
                return Err(corrupt("first-level bitmap out of range", 0));
            }
            sl_map = c.sl_bitmap[fl].load(R);
        }
        if sl_map == 0 {
            return Err(corrupt("bitmaps disagree", 0));
        }
        let off = c.heads[fl][sl_map.trailing_zeros() as usize].load(R);
        let b = self.blk(off)?;
        let meta = b.meta.load(R);
        let mut bsize = self.size_at(off, meta)?;
        if used(meta) || bsize < search {
            return Err(corrupt("free list holds a used or too small block", off));
        }
        self.remove_free(off, bsize)?;
        let j = &self.h.journal;
        j.off.store(off, R);
        j.op.store(OP_ALLOC, R);
        let n = self.n();
        sub(&n.free_blocks, 1);
        sub(&n.free_bytes, u64::from(bsize));

        let mut off = off;
        if align > 16 {
            let payload = off + HEADER;
            let mut gap = payload.next_multiple_of(align) - payload;
            if gap != 0 && gap < MIN_BLOCK {
                gap = (payload + MIN_BLOCK).next_multiple_of(align) - payload;
            }
            if gap != 0 {
                // Front piece stays free: its left neighbour is used (no adjacent free blocks).
                let new = off + gap;
                self.write_free_header(new, bsize - gap, off)?;
                self.set_prev_of_next(new, bsize - gap, new)?;
                self.blk(off)?.meta.store(u64::from(gap), R);
                j.off.store(new, R);
                self.insert_free(off, gap)?;
                add(&n.free_blocks, 1);
                add(&n.free_bytes, u64::from(gap));
                off = new;
                bsize -= gap;
            }
        }
        let b = self.blk(off)?;
        if bsize - need >= MIN_BLOCK {
            // Remainder stays free: its right neighbour is used.
            let rem = off + need;
            self.write_free_header(rem, bsize - need, off)?;
            self.set_prev_of_next(rem, bsize - need, rem)?;
            b.meta
                .store(u64::from(need) | USED | (u64::from(size) << 32), R);
            self.insert_free(rem, bsize - need)?;
            add(&n.free_blocks, 1);
            add(&n.free_bytes, u64::from(bsize - need));
            bsize = need;
        } else {
            b.meta
                .store(u64::from(bsize) | USED | (u64::from(size) << 32), R);
        }
        add(&n.live_blocks, 1);
        add(&n.live_bytes, u64::from(size));
        add(&n.used_bytes, u64::from(bsize));
        add(&n.allocs, 1);
        j.op.store(OP_NONE, R);
        Ok(Some((off + HEADER, b.gen_.load(R))))
    }

    /// The header offset and size of the live block named by (payload offset, generation).
    /// Lock-free: callers that copy data re-check with [`Heap::still_live`] afterwards.
    pub(super) fn resolve(&self, payload: u32, gen_: u32) -> Result<(u32, u32), ShmError> {
        let Some(off) = payload.checked_sub(HEADER) else {
            return Err(ShmError::Stale);
        };
        if gen_ == 0 || off < self.start || !off.is_multiple_of(16) || off > self.end - MIN_BLOCK {
            return Err(ShmError::Stale);
        }
        if !self.is_start(off) {
            return Err(ShmError::Stale);
        }
        let b = self.blk(off)?;
        if b.gen_.load(Ordering::Acquire) != gen_ {
            return Err(ShmError::Stale);
        }
        let meta = b.meta.load(Ordering::Acquire);
        if !used(meta) {
            return Err(ShmError::Stale);
        }
        Ok((off, self.size_at(off, meta)?))
    }

    /// Whether the block at header `off` is still the one of generation `gen_` (seqlock re-check).
    pub(super) fn still_live(&self, off: u32, gen_: u32) -> bool {
        fence(Ordering::Acquire);
        self.is_start(off)
            && self.blk(off).is_ok_and(|b| {
                b.gen_.load(Ordering::Relaxed) == gen_ && used(b.meta.load(Ordering::Relaxed))
            })
    }

    /// Frees the block named by (payload offset, generation). Lock held.
    pub(super) fn free(&self, payload: u32, gen_: u32) -> Result<(), ShmError> {
        let (off, size) = self.resolve(payload, gen_)?;
        let b = self.blk(off)?;
        let req = b.meta.load(R) >> 32;
        let j = &self.h.journal;
        j.off.store(off, R);
        j.gen_.store(gen_, R);
        j.op.store(OP_FREE, R);
        // Generation first: a lock-free reader that re-checks after its copy sees the change
        // before it could see any reuse of the bytes.
        self.bump_gen(b, gen_, Ordering::Release);
        fence(Ordering::Release);
        b.meta.store(u64::from(size), R);
        let n = self.n();
        sub(&n.live_blocks, 1);
        sub(&n.live_bytes, req);
        sub(&n.used_bytes, u64::from(size));
        add(&n.frees, 1);
        self.coalesce_and_insert(off, size)?;
        j.op.store(OP_NONE, R);
        Ok(())
    }

    /// Merges the free block (off, size), not in any list, with free neighbours and lists it.
    fn coalesce_and_insert(&self, off: u32, size: u32) -> Result<(), ShmError> {
        let n = self.n();
        let b = self.blk(off)?;
        let mut start = off;
        let mut total = size;
        let next = off + size;
        if next < self.end {
            let nb = self.blk(next)?;
            let nmeta = nb.meta.load(R);
            if !used(nmeta) {
                let nsize = self.size_at(next, nmeta)?;
                self.remove_free(next, nsize)?;
                b.meta.store(u64::from(size + nsize), R);
                self.clear_start(next);
                total += nsize;
                sub(&n.free_blocks, 1);
                sub(&n.free_bytes, u64::from(nsize));
            }
        }
        let prev = b.prev.load(R);
        if prev != 0 {
            let pb = self.blk(prev)?;
            let pmeta = pb.meta.load(R);
            if !used(pmeta) {
                let psize = self.size_at(prev, pmeta)?;
                if prev + psize != off {
                    return Err(corrupt("prev link does not reach this block", off));
                }
                self.remove_free(prev, psize)?;
                pb.meta.store(u64::from(psize + total), R);
                self.clear_start(off);
                start = prev;
                total += psize;
                sub(&n.free_blocks, 1);
                sub(&n.free_bytes, u64::from(psize));
            }
        }
        self.set_prev_of_next(start, total, start)?;
        self.insert_free(start, total)?;
        add(&n.free_blocks, 1);
        add(&n.free_bytes, u64::from(total));
        Ok(())
    }

    /// Largest free block: the highest non-empty class, whose list is scanned (bounded).
    pub(super) fn largest_free(&self) -> Result<u32, ShmError> {
        let c = self.c();
        let fl_map = c.fl_bitmap.load(R);
        if fl_map == 0 {
            return Ok(0);
        }
        let fl = (31 - fl_map.leading_zeros()) as usize;
        if fl >= FL_COUNT {
            return Err(corrupt("first-level bitmap out of range", 0));
        }
        let sl_map = c.sl_bitmap[fl].load(R);
        if sl_map == 0 {
            return Err(corrupt("bitmaps disagree", 0));
        }
        let mut off = c.heads[fl][(31 - sl_map.leading_zeros()) as usize].load(R);
        let mut best = 0;
        let mut steps = self.n().free_blocks.load(R);
        while off != 0 {
            if steps == 0 {
                return Err(corrupt("free list longer than the free-block count", off));
            }
            steps -= 1;
            let b = self.blk(off)?;
            best = best.max(self.size_at(off, b.meta.load(R))?);
            off = b.next_free.load(R);
        }
        Ok(best)
    }

    /// Rebuilds every derived structure from a walk of the physical chain, finishing the
    /// journalled operation. Lock held (taken over from a dead holder).
    pub(super) fn recover(&self) -> Result<(), ShmError> {
        let j = &self.h.journal;
        let (op, jo, jg) = (j.op.load(R), j.off.load(R), j.gen_.load(R));
        let c = self.c();
        c.fl_bitmap.store(0, R);
        for fl in 0..FL_COUNT {
            c.sl_bitmap[fl].store(0, R);
            for head in &c.heads[fl] {
                head.store(0, R);
            }
        }
        // Built aside and stored word by word at the end, so lock-free readers of live blocks
        // never see their start bit missing.
        let mut starts = vec![0u64; self.bitmap.len()];
        let (mut live_blocks, mut live_bytes, mut used_bytes) = (0u64, 0u64, 0u64);
        let (mut free_blocks, mut free_bytes) = (0u64, 0u64);
        let mut off = self.start;
        let mut prev = 0u32;
        // The free run being merged: (start, size).
        let mut run: Option<(u32, u32)> = None;
        while off < self.end {
            let b = self.blk(off)?;
            let mut meta = b.meta.load(R);
            let size = self.size_at(off, meta)?;
            if used(meta) && off == jo {
                let g = b.gen_.load(R);
                if op == OP_ALLOC {
                    self.bump_gen(b, g, R);
                    b.meta.store(u64::from(size), R);
                    add(&self.n().rolled_back_allocs, 1);
                } else if op == OP_FREE && (g == jg || g == bump(jg)) {
                    self.bump_gen(b, jg, R);
                    b.meta.store(u64::from(size), R);
                    add(&self.n().completed_frees, 1);
                }
                meta = b.meta.load(R);
            }
            if used(meta) {
                if let Some((rs, rsz)) = run.take() {
                    self.insert_free(rs, rsz)?;
                    free_blocks += 1;
                    free_bytes += u64::from(rsz);
                }
                b.prev.store(prev, R);
                let (w, m) = self.bit(off);
                starts[w] |= m;
                live_blocks += 1;
                live_bytes += meta >> 32;
                used_bytes += u64::from(size);
                prev = off;
            } else if let Some((rs, rsz)) = run {
                self.blk(rs)?.meta.store(u64::from(rsz + size), R);
                run = Some((rs, rsz + size));
            } else {
                b.prev.store(prev, R);
                let (w, m) = self.bit(off);
                starts[w] |= m;
                run = Some((off, size));
                prev = off;
            }
            off += size;
        }
        if off != self.end {
            return Err(corrupt("blocks overrun the heap end", off));
        }
        if let Some((rs, rsz)) = run {
            self.insert_free(rs, rsz)?;
            free_blocks += 1;
            free_bytes += u64::from(rsz);
        }
        for (w, bits) in self.bitmap.iter().zip(starts) {
            w.store(bits, Ordering::Release);
        }
        let n = self.n();
        n.live_blocks.store(live_blocks, R);
        n.live_bytes.store(live_bytes, R);
        n.used_bytes.store(used_bytes, R);
        n.free_blocks.store(free_blocks, R);
        n.free_bytes.store(free_bytes, R);
        j.op.store(OP_NONE, R);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_search_rounds_up_to_a_class_whose_blocks_all_fit() {
        for size in (16..1 << 20).step_by(16) {
            let (fl, sl) = mapping_search(size).unwrap();
            let (ifl, isl) = mapping_insert(size);
            assert!((fl, sl) >= (ifl, isl));
            // The smallest block of class (fl, sl) must be >= size.
            let mut lo = size;
            while mapping_insert(lo) < (fl, sl) {
                lo += 16;
            }
            assert!(lo >= size, "size {size}");
            let mut below = lo - 16;
            while below >= 16 && mapping_insert(below) == (fl, sl) {
                below -= 16;
            }
            assert!(below + 16 >= size, "class of {size} admits {}", below + 16);
        }
        assert!(mapping_search(u32::MAX - 15).is_none());
        assert_eq!(mapping_insert(0xFFFF_F000).0, FL_COUNT - 1);
    }
}
