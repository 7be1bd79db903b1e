//! Copies between process memory and shared memory with relaxed atomics, so a process
//! writing the same bytes concurrently is never a data race.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Copies `dst.len()` bytes from shared memory at `src` with relaxed atomic loads.
///
/// # Safety
///
/// `src .. src + dst.len()` must be inside a live mapping.
pub(super) unsafe fn copy_out(src: *const u8, dst: &mut [u8]) {
    let mut i = 0;
    let len = dst.len();
    while i < len && !(src as usize + i).is_multiple_of(8) {
        // SAFETY: `src + i` is in range (caller), any address is aligned for AtomicU8, and
        // atomics may alias memory other processes write.
        dst[i] = unsafe { (*(src.add(i) as *const AtomicU8)).load(Ordering::Relaxed) };
        i += 1;
    }
    while i + 8 <= len {
        // SAFETY: `src + i` is 8-aligned (loop above) and `src + i + 8 <= src + len` is in range.
        let w = unsafe { (*(src.add(i) as *const AtomicU64)).load(Ordering::Relaxed) };
        dst[i..i + 8].copy_from_slice(&w.to_ne_bytes());
        i += 8;
    }
    while i < len {
        // SAFETY: as in the first loop.
        dst[i] = unsafe { (*(src.add(i) as *const AtomicU8)).load(Ordering::Relaxed) };
        i += 1;
    }
}

/// Copies `src` into shared memory at `dst` with relaxed atomic stores.
///
/// # Safety
///
/// `dst .. dst + src.len()` must be inside a live mapping.
pub(super) unsafe fn copy_in(src: &[u8], dst: *mut u8) {
    let mut i = 0;
    let len = src.len();
    while i < len && !(dst as usize + i).is_multiple_of(8) {
        // SAFETY: `dst + i` is in range (caller); atomics may alias other processes' accesses.
        unsafe { (*(dst.add(i) as *const AtomicU8)).store(src[i], Ordering::Relaxed) };
        i += 1;
    }
    while i + 8 <= len {
        let mut w = [0u8; 8];
        w.copy_from_slice(&src[i..i + 8]);
        // SAFETY: `dst + i` is 8-aligned and `dst + i + 8` is in range.
        unsafe {
            (*(dst.add(i) as *const AtomicU64)).store(u64::from_ne_bytes(w), Ordering::Relaxed)
        };
        i += 8;
    }
    while i < len {
        // SAFETY: as in the first loop.
        unsafe { (*(dst.add(i) as *const AtomicU8)).store(src[i], Ordering::Relaxed) };
        i += 1;
    }
}
