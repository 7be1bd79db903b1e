//! Size classes: the table, and O(1) size → class.
//!
//! # The table
//!
//! * 16 B to 128 B in steps of 16 (classes 0–7);
//! * above 128 B, every power-of-two band `(2^k, 2^(k+1)]` is cut into 8 equal steps of
//!   `2^(k-3)` bytes, up to [`MAX_SMALL`] = 256 KiB (classes 8–95).
//!
//! A request of `n` bytes in band `k` lands in a class at most one step above it, so the
//! rounding waste is below `2^(k-3) / 2^k = 12.5 %`; every power of two is itself a class
//! boundary and wastes nothing.
//!
//! # Lookup
//!
//! [`class_of`] is bit arithmetic: one `leading_zeros`, shifts and adds, no table and no
//! loop.
//!
//! # Alignment by construction
//!
//! Spans start on a 64 KiB boundary and a span of class `c` holds blocks at
//! `base + i * size(c)`, so a block is aligned to the largest power of two dividing
//! `size(c)` (capped by the span alignment). [`class_for`] serves `(size, align)` as the
//! class of `s = round_up(size, align)`:
//!
//! * in band `k`, every class is a multiple of the step `2^(k-3)`;
//! * if `align <= 2^(k-3)`, the chosen class is a multiple of the step, hence of `align`;
//! * if `align > 2^(k-3)`, `s` is a multiple of `align`, hence of the step, so `s` sits on
//!   a class boundary and the class *is* `s`: again a multiple of `align`.
//!
//! The small band (step 16) follows the same argument. So every class chosen for `align`
//! is a multiple of `align`, and every block of it is `align`-aligned — no luck involved.
//! `size_by_alignment_sweep` in the tests checks it exhaustively.

/// Smallest block, and the minimum alignment of every pool block.
pub const MIN_SIZE: usize = 16;
/// Largest size served by the pools; larger requests are mapped directly.
pub const MAX_SMALL: usize = 256 * 1024;
/// Largest alignment the pools serve by construction; larger goes to direct mappings.
pub const MAX_POOL_ALIGN: usize = 4096;
/// Number of classes.
pub const NUM_CLASSES: usize = 8 + 8 * 11;
/// Spans are runs of this many bytes (and are aligned to it).
pub const SPAN_UNIT: usize = 64 * 1024;
/// The largest span, in bytes.
pub const MAX_SPAN: usize = 16 * SPAN_UNIT;

const SMALL_CLASSES: usize = 8;

/// Size of class `c` (const, for building tables).
const fn compute_size(c: usize) -> usize {
    if c < SMALL_CLASSES {
        (c + 1) * 16
    } else {
        let band = (c - SMALL_CLASSES) / 8;
        let sub = (c - SMALL_CLASSES) % 8 + 1;
        let k = 7 + band;
        (1 << k) + sub * (1 << (k - 3))
    }
}

/// Blocks of `size` bytes a movable span of `bytes` holds: blocks fill the region, and
/// their side table (6 bytes a block) lies outside it (`pool::span::capacity_of`
/// computes the same).
pub(crate) const fn movable_capacity(size: usize, bytes: usize) -> usize {
    bytes / size
}

/// Span length for class `c`: the fewest whole [`SPAN_UNIT`]s holding at least 8 blocks
/// (4 from 8 KiB up, 2 for the largest classes) that waste at most 1/8 of the span on
/// the tail and on aligning the first movable block past its side table, or else, among a few candidate lengths, the one
/// wasting the smallest share.
///
/// Small spans for big blocks matter to compaction: each class keeps one partly empty
/// span however well it is packed, so the span length bounds that per-class slack.
const fn compute_span(c: usize) -> usize {
    let size = compute_size(c);
    let min_blocks = if size > MAX_SPAN / 8 {
        2
    } else if size >= 8 * 1024 {
        4
    } else {
        8
    };
    let mut units = (size * min_blocks).div_ceil(SPAN_UNIT);
    if units == 0 {
        units = 1;
    }
    let mut best = units;
    let mut best_waste_ppm = usize::MAX;
    let mut u = units;
    while u <= units + 4 && u * SPAN_UNIT <= MAX_SPAN {
        let bytes = u * SPAN_UNIT;
        // The side table (6 bytes a block, outside the region) is the same at any
        // length; what the length decides is the tail.
        let cap = movable_capacity(size, bytes);
        let waste_ppm = (bytes - cap * size) * 1_000_000 / bytes;
        if waste_ppm <= 1_000_000 / 8 {
            return bytes;
        }
        if waste_ppm < best_waste_ppm {
            best_waste_ppm = waste_ppm;
            best = u;
        }
        u += 1;
    }
    best * SPAN_UNIT
}

const fn build_sizes() -> [u32; NUM_CLASSES] {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = compute_size(c) as u32;
        c += 1;
    }
    t
}

const fn build_spans() -> [u32; NUM_CLASSES] {
    let mut t = [0u32; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = compute_span(c) as u32;
        c += 1;
    }
    t
}

/// `⌊2^40 / size⌋ + 1` per class: `(off · m) >> 40 == off / size` for every
/// `off < 2^20` (all offsets inside a span), because the error term `off · ε / 2^40`
/// stays below `2^-20 < 1 / size` for every class size ≤ 256 KiB.
const fn build_magic() -> [u64; NUM_CLASSES] {
    let mut t = [0u64; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        t[c] = (1u64 << 40) / compute_size(c) as u64 + 1;
        c += 1;
    }
    t
}

static SIZES: [u32; NUM_CLASSES] = build_sizes();
static MAGIC: [u64; NUM_CLASSES] = build_magic();
const _: () = assert!(MAX_SPAN <= 1 << 20, "div_size is exact only below 2^20");
static SPANS: [u32; NUM_CLASSES] = build_spans();

const _: () = assert!(compute_size(NUM_CLASSES - 1) == MAX_SMALL);
const _: () = assert!(NUM_CLASSES >= 32, "the issue asks for at least 32 classes");

/// The block size of class `c`.
///
/// # Panics
///
/// If `c >= NUM_CLASSES` (an internal bug).
#[inline(always)]
pub fn size(c: usize) -> usize {
    SIZES[c] as usize
}

/// The block size of class `c`, usable in const context.
pub(crate) const fn size_const(c: usize) -> usize {
    compute_size(c)
}

/// The span length of class `c`, usable in const context.
pub(crate) const fn span_bytes_const(c: usize) -> usize {
    compute_span(c)
}

/// The span length (bytes, a multiple of [`SPAN_UNIT`]) used for class `c`.
#[inline]
pub fn span_bytes(c: usize) -> usize {
    SPANS[c] as usize
}

/// `off / size(c)` for `off < 2^20` (any offset inside a span), without a division.
#[inline(always)]
pub(crate) fn div_size(off: usize, c: usize) -> usize {
    debug_assert!(off < 1 << 20);
    ((off as u64 * MAGIC[c]) >> 40) as usize
}

/// Blocks of class `c` per span.
#[inline]
pub fn blocks_per_span(c: usize) -> usize {
    span_bytes(c) / size(c)
}

/// Requests up to this size find their class in [`BY_16`].
const TABLE_MAX: usize = 8192;

/// The class of every request of `16 * (i - 1) + 1 ..= 16 * i` bytes at index `i`
/// (every class size is a multiple of 16, so the whole range shares one class).
static BY_16: [u8; TABLE_MAX / 16 + 1] = {
    let mut t = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 1;
    while i < t.len() {
        let mut c = 0;
        while compute_size(c) < 16 * i {
            c += 1;
        }
        t[i] = c as u8;
        i += 1;
    }
    t
};

/// The class serving `n` bytes with the minimum alignment, or `None` above [`MAX_SMALL`].
/// Zero is served by the smallest class.
#[inline(always)]
pub fn class_of(n: usize) -> Option<usize> {
    if n <= TABLE_MAX {
        // One load: 0..=16 → 0, 17..=32 → 1, ..., 8177..=8192 → the 8 KiB class.
        Some(usize::from(BY_16[n.div_ceil(16)]))
    } else if n <= MAX_SMALL {
        // n in (2^k, 2^(k+1)]: k = floor(log2(n - 1)).
        let k = (usize::BITS - 1 - (n - 1).leading_zeros()) as usize;
        let shift = k - 3;
        // ceil((n - 2^k) / 2^(k-3)) in 1..=8
        let sub = (n - (1 << k) + (1 << shift) - 1) >> shift;
        Some(SMALL_CLASSES + (k - 7) * 8 + sub - 1)
    } else {
        None
    }
}

/// [`class_for`] for the requests that need nothing but one table load (up to 8 KiB, at
/// most 16-byte alignment); `None` for every other request (which may still have a
/// class). Lets `Global`'s hit path stay small.
#[inline(always)]
pub(crate) fn class_for_small(size: usize, align: usize) -> Option<usize> {
    if align <= MIN_SIZE && size <= TABLE_MAX {
        Some(usize::from(BY_16[size.div_ceil(16)]))
    } else {
        None
    }
}

/// The class serving `size` bytes at alignment `align` (a power of two), or `None` when
/// the request belongs to the direct-mapping path (too large, or `align` above
/// [`MAX_POOL_ALIGN`]). See the module docs for why the result is always aligned.
#[inline(always)]
pub fn class_for(size: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    if align <= MIN_SIZE {
        return class_of(size);
    }
    if align > MAX_POOL_ALIGN {
        return None;
    }
    let s = size.max(1).checked_add(align - 1)? & !(align - 1);
    class_of(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shape() {
        assert_eq!(size(0), 16);
        assert_eq!(size(NUM_CLASSES - 1), MAX_SMALL);
        for c in 1..NUM_CLASSES {
            assert!(size(c) > size(c - 1), "sizes strictly increase");
            assert_eq!(size(c) % 16, 0, "every class keeps 16-byte alignment");
        }
        for c in 0..NUM_CLASSES {
            assert_eq!(span_bytes(c) % SPAN_UNIT, 0);
            assert!(span_bytes(c) <= MAX_SPAN);
            assert!(
                blocks_per_span(c) >= 2,
                "class {c} has {} blocks",
                blocks_per_span(c)
            );
        }
    }

    #[test]
    fn spans_waste_little_on_tails_and_side_tables() {
        for c in 0..NUM_CLASSES {
            let bytes = span_bytes(c);
            let cap = movable_capacity(size(c), bytes);
            let waste = bytes - cap * size(c);
            assert!(
                waste * 8 <= bytes,
                "class {c} ({} B): {cap} movable blocks waste {waste} of {bytes} B",
                size(c)
            );
        }
    }

    #[test]
    fn reciprocal_division_is_exact_inside_spans() {
        for c in 0..NUM_CLASSES {
            let size = size(c);
            let mut i = 0;
            while i * size < 1 << 20 {
                for off in [
                    i * size,
                    (i * size).saturating_sub(1),
                    i * size + 1,
                    i * size + size - 1,
                ] {
                    if off < 1 << 20 {
                        assert_eq!(div_size(off, c), off / size, "class {c} off {off}");
                    }
                }
                i += 1;
            }
        }
    }

    #[test]
    fn lookup_is_smallest_fitting_class() {
        for n in 0..=MAX_SMALL {
            let c = class_of(n).unwrap();
            assert!(size(c) >= n, "{n} → {c}");
            if c > 0 {
                assert!(size(c - 1) < n.max(1), "{n} not in the smallest class");
            }
        }
        assert_eq!(class_of(MAX_SMALL + 1), None);
    }

    #[test]
    fn small_lookup_agrees_with_the_full_one() {
        for align in [1, 2, 4, 8, 16, 32, 4096] {
            for n in 0..=2 * TABLE_MAX {
                let small = class_for_small(n, align);
                if align <= MIN_SIZE && n <= TABLE_MAX {
                    assert_eq!(small, class_for(n, align), "size {n} align {align}");
                } else {
                    assert_eq!(small, None);
                }
            }
        }
    }

    #[test]
    fn rounding_waste_is_bounded() {
        for n in 129..=MAX_SMALL {
            let s = size(class_of(n).unwrap());
            assert!((s - n) * 8 <= n, "{n} rounds to {s}: more than 12.5 %");
        }
        let mut p = 16;
        while p <= MAX_SMALL {
            assert_eq!(size(class_of(p).unwrap()), p, "powers of two waste nothing");
            p *= 2;
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        let mut align = 1;
        while align <= MAX_POOL_ALIGN {
            for n in 0..=MAX_SMALL {
                if let Some(c) = class_for(n, align) {
                    assert!(size(c) >= n);
                    assert_eq!(size(c) % align.max(16), 0, "size {n} align {align}");
                }
            }
            align *= 2;
        }
        assert_eq!(class_for(16, 8192), None);
        assert_eq!(class_for(usize::MAX, 32), None);
    }
}
