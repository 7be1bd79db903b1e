//! The hot free path's pointer check: is an address the start of a block of a fixed
//! span of a given class? One multiply, one rotate and one compare, no division.
//!
//! A fixed span of class `c` holds `cap = (span_bytes(c) − GUARD_BYTES) / size(c)`
//! blocks from its base (see `span::capacity_of`), so `off = addr − base` is a block start exactly when `size | off`
//! and `off / size < cap`. With `size = 2^t · d` (`d` odd) and `inv` the inverse of `d`
//! modulo 2^64, `x = rotr(off · inv, t)` is `off / size` when `size | off`, and
//! otherwise larger than `(2^64 − 1) / size`, which is at least `cap` (Granlund and
//! Montgomery's divisibility test, as in Lemire et al., "Faster remainder by direct
//! computation", 2019). So one compare, `x < cap`, rejects interior pointers, pointers
//! into the tail after the last block, and offsets past the span (a wrapped `off` of a
//! pointer below `base` is huge and rejected too).

use super::span::GUARD_BYTES;
use crate::size_class::{NUM_CLASSES, size_const, span_bytes_const};

/// The divisibility test's constants for one class (16 bytes, one index with the
/// thread cache's per-class list, which is 16 bytes too).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
struct BlockCheck {
    /// The inverse of the class size's odd part, modulo 2^64.
    inv: u64,
    /// Blocks per fixed span of the class.
    cap: u32,
    /// Trailing zero bits of the class size.
    shift: u32,
}

/// The inverse of odd `d` modulo 2^64 (Newton's iteration doubles the correct low bits
/// each step: 3 bits from `d` itself, then 6, 12, 24, 48, 96).
const fn inverse(d: u64) -> u64 {
    let mut x = d;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(d.wrapping_mul(x)));
        i += 1;
    }
    x
}

const fn build() -> [BlockCheck; NUM_CLASSES] {
    let mut t = [BlockCheck {
        inv: 0,
        cap: 0,
        shift: 0,
    }; NUM_CLASSES];
    let mut c = 0;
    while c < NUM_CLASSES {
        let size = size_const(c) as u64;
        let shift = size.trailing_zeros();
        t[c] = BlockCheck {
            inv: inverse(size >> shift),
            cap: ((span_bytes_const(c) - GUARD_BYTES) as u64 / size) as u32,
            shift,
        };
        c += 1;
    }
    t
}

static CHECKS: [BlockCheck; NUM_CLASSES] = build();

/// Whether offset `off` from the base of a fixed span of `class` is the start of one of
/// its blocks (see the module docs).
#[inline(always)]
pub(crate) fn fixed_block_start(off: usize, class: usize) -> bool {
    debug_assert!(class < NUM_CLASSES);
    // SAFETY: every caller's `class` is a class (from `class_for`, equal to a span's).
    let k = unsafe { CHECKS.get_unchecked(class) };
    (off as u64).wrapping_mul(k.inv).rotate_right(k.shift) < u64::from(k.cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::span::{SpanKind, capacity_of};
    use crate::size_class::{size, span_bytes};

    /// Every offset of every class's span (and a margin past it, and below it) against
    /// the division it replaces.
    #[test]
    fn matches_division_everywhere() {
        for c in 0..NUM_CLASSES {
            let (s, bytes) = (size(c), span_bytes(c));
            let cap = capacity_of(c, SpanKind::Fixed);
            let step = if s >= 4096 { 16 } else { 1 };
            for off in (0..bytes + 2 * s).step_by(step) {
                let want = off % s == 0 && off / s < cap;
                assert_eq!(fixed_block_start(off, c), want, "class {c} off {off}");
            }
            for below in 1..64 {
                assert!(!fixed_block_start(0usize.wrapping_sub(below * 16), c));
            }
            assert!(!fixed_block_start(usize::MAX, c));
        }
    }
}
