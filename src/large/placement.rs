//! Where large blocks go in the address space, so they can grow in place.
//!
//! # Why placement matters
//!
//! `mremap` grows a mapping in place only when the pages right after it are unmapped.
//! Left to itself, Linux places anonymous mappings top-down, each new one directly
//! *below* the last: the pages after a fresh block belong to the mapping made before it,
//! and in-place growth almost never succeeds.
//!
//! # The hint window
//!
//! Like mimalloc's aligned-hint area, large blocks are instead placed by address *hint*
//! in a window of address space the kernel's top-down search never reaches in practice
//! (`[4 TiB, 36 TiB)`, far below where it starts, near 128 TiB). A global cursor hands
//! out disjoint *slots* of [`GROWTH_ROOM`] times the mapping's size; the block is mapped
//! at the start of its slot and the rest of the slot stays unmapped, so the block can
//! grow in place several doublings before it has to move. Unmapped address space costs
//! nothing.
//!
//! A hint is only a preference: `mmap` without `MAP_FIXED` never replaces a mapping, and
//! when the hinted range is taken the kernel picks another place. So every cursor value
//! is *safe*; the cursor only makes the good outcome likely. That is why it is a plain
//! relaxed atomic and needs no model: no interleaving can make a placement unsound, only
//! less roomy. When the window is used up the cursor wraps to its start, where freed
//! slots are free again (ranges still mapped are simply not granted by the kernel).
//!
//! The cursor starts at a random offset within the first TiB of the window, so block
//! addresses differ from run to run (address-space randomisation is kept).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::os::round_up;

/// Start of the hint window (4 TiB).
const WINDOW_START: usize = 4 << 40;
/// End of the hint window (36 TiB).
const WINDOW_END: usize = 36 << 40;
/// The random start offset is below this (1 TiB).
const RANDOM_SPAN: usize = 1 << 40;
/// Slot starts are aligned to at least this (2 MiB), so every block can take huge pages.
const SLOT_ALIGN: usize = 2 << 20;
/// A slot is this many times its mapping's size: three doublings fit in place.
pub(crate) const GROWTH_ROOM: usize = 8;
/// Mappings above this (256 GiB) get no slot: the window is for blocks, not arenas.
const MAX_SLOT: usize = 256 << 30;

/// The next free address in the window; 0 until first use.
///
/// Invariant: 0, or in `[WINDOW_START, WINDOW_END]`. Any value is sound (see the module
/// docs): it only steers hints.
static CURSOR: AtomicUsize = AtomicUsize::new(0);

/// A random 2 MiB-aligned start in `[WINDOW_START, WINDOW_START + RANDOM_SPAN)`.
///
/// Entropy comes from the address-space layout (a stack address and this function's
/// address, both randomised by ASLR) and the clock; it allocates nothing.
fn random_start() -> usize {
    let stack_probe = 0u8;
    let here = random_start as fn() -> usize as usize;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as usize);
    // splitmix64 finaliser over the mixed inputs.
    let mut z = (&raw const stack_probe as usize) ^ here.rotate_left(17) ^ nanos.rotate_left(31);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    WINDOW_START + (z % (RANDOM_SPAN / SLOT_ALIGN)) * SLOT_ALIGN
}

/// The slot size for a mapping of `len` bytes, or `None` if it gets no slot.
pub(crate) fn slot_len(len: usize) -> Option<usize> {
    len.checked_mul(GROWTH_ROOM).filter(|&s| s <= MAX_SLOT)
}

/// Claims a slot for a mapping of `len` bytes aligned to `align` and returns the address
/// to hint, or `None` when the mapping is too large for a slot or `align` too large for
/// the window.
///
/// The returned address is `align`-aligned (and 2 MiB-aligned), and no other call
/// returns an address inside `[addr, addr + slot_len(len))` until the cursor wraps.
pub(crate) fn claim(len: usize, align: usize) -> Option<usize> {
    let slot = slot_len(len)?;
    let align = align.max(SLOT_ALIGN);
    if slot > (WINDOW_END - WINDOW_START) / 2 || align > (WINDOW_END - WINDOW_START) / 4 {
        return None;
    }
    let mut current = CURSOR.load(Ordering::Relaxed);
    loop {
        let from = if current == 0 {
            random_start()
        } else {
            current
        };
        let mut start = round_up(from, align)?;
        if start + slot > WINDOW_END {
            start = round_up(WINDOW_START, align)?;
        }
        let next = start + slot;
        match CURSOR.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(start),
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_aligned_disjoint_and_in_the_window() {
        let mut claimed = Vec::new();
        for (len, align) in [(1 << 20, 4096), (3 << 20, 1 << 21), (4096, 1 << 24)] {
            let start = claim(len, align).unwrap();
            assert_eq!(start % align.max(SLOT_ALIGN), 0);
            assert!(start >= WINDOW_START && start + slot_len(len).unwrap() <= WINDOW_END);
            claimed.push((start, start + slot_len(len).unwrap()));
        }
        // Other tests claim concurrently, but never inside our slots.
        for (i, a) in claimed.iter().enumerate() {
            for b in &claimed[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn oversized_requests_get_no_slot() {
        assert_eq!(slot_len(MAX_SLOT), None);
        assert_eq!(slot_len(usize::MAX / 2), None);
        assert_eq!(claim(MAX_SLOT, 4096), None);
        assert_eq!(claim(4096, 1 << 60), None);
    }

    #[test]
    fn random_start_is_in_range_and_aligned() {
        let s = random_start();
        assert_eq!(s % SLOT_ALIGN, 0);
        assert!((WINDOW_START..WINDOW_START + RANDOM_SPAN).contains(&s));
    }
}
