//! The OS layer: reserve, commit, decommit and release pages.
//!
//! Everything tidyheap holds comes from anonymous private mappings made here. The model:
//!
//! * [`reserve`] maps address space read-write with `MAP_NORESERVE`: physical pages are
//!   committed lazily by the kernel on first touch.
//! * [`decommit`] hands the physical pages back (`MADV_DONTNEED`) while keeping the
//!   address range; the next touch reads zeros. This is how emptied spans give memory
//!   back without unmapping.
//! * [`release`] unmaps.
//! * [`protect_none`] turns pages into guard pages that fault on any access.
//!
//! Every failure comes back as an [`OsError`] carrying `errno`; nothing here aborts.
//! These functions allocate nothing on the Rust heap, so they are safe to call from
//! inside the global allocator.

use core::ptr::NonNull;

use crate::AllocError;

/// The granularity of every mapping tidyheap makes (the x86-64 and aarch64 base page).
pub const PAGE_SIZE: usize = 4096;

/// A failed OS memory call: which call, how many bytes, and the `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsError {
    /// The libc call that failed (`"mmap"`, `"madvise"`, ...).
    pub op: &'static str,
    /// The size in bytes the call was made with.
    pub size: usize,
    /// The OS error number.
    pub errno: i32,
}

impl From<OsError> for AllocError {
    fn from(e: OsError) -> Self {
        AllocError::OutOfMemory {
            size: e.size,
            errno: e.errno,
        }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Rounds `n` up to a multiple of the power of two `align`, or `None` on overflow.
#[inline]
pub const fn round_up(n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Maps `size` bytes of fresh zeroed read-write memory aligned to `align`.
///
/// `size` is rounded up to whole pages. Alignments above a page are produced by mapping
/// `size + align` and unmapping the unaligned head and tail.
///
/// # Errors
///
/// `EINVAL`-style [`OsError`] when `size` is zero or the rounding overflows, `ENOMEM`
/// when the kernel refuses.
pub fn reserve(size: usize, align: usize) -> Result<NonNull<u8>, OsError> {
    reserve_with_flags(size, align, 0)
}

/// Like [`reserve`], with extra `mmap` flags (for example `MAP_HUGETLB`, `MAP_POPULATE`).
///
/// # Errors
///
/// As [`reserve`].
pub fn reserve_with_flags(
    size: usize,
    align: usize,
    extra_flags: i32,
) -> Result<NonNull<u8>, OsError> {
    let einval = OsError {
        op: "mmap",
        size,
        errno: libc::EINVAL,
    };
    if size == 0 || !align.is_power_of_two() {
        return Err(einval);
    }
    let align = align.max(PAGE_SIZE);
    let size = round_up(size, PAGE_SIZE).ok_or(einval)?;
    let map_len = if align == PAGE_SIZE {
        size
    } else {
        size.checked_add(align).ok_or(einval)?
    };
    if map_len > isize::MAX as usize {
        return Err(OsError {
            errno: libc::ENOMEM,
            ..einval
        });
    }
    // SAFETY: an anonymous private mapping with a null hint has no preconditions; the
    // kernel picks the address and the result is checked against MAP_FAILED.
    let raw = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra_flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(OsError {
            op: "mmap",
            size: map_len,
            errno: last_errno(),
        });
    }
    let base = raw as usize;
    let aligned = (base + align - 1) & !(align - 1);
    let head = aligned - base;
    let tail = map_len - head - size;
    // SAFETY: `[base, base + head)` and `[aligned + size, base + map_len)` lie inside the
    // mapping just made, are page-aligned (base, align and size are page multiples), and
    // nothing else refers to them yet.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
    }
    // SAFETY: mmap never returns null on success, and `aligned >= base`.
    Ok(unsafe { NonNull::new_unchecked(aligned as *mut u8) })
}

/// Maps `size` bytes of fresh zeroed read-write memory, at `hint` if that range is free.
///
/// The kernel treats `hint` as a preference: when `[hint, hint + size)` is unmapped the
/// mapping lands exactly there, otherwise wherever the kernel chooses (it never replaces
/// an existing mapping). Callers compare the result with `hint`. `size` must be a
/// multiple of the page size (of the huge page size with `MAP_HUGETLB` in `extra_flags`).
/// Like [`reserve`], it maps with `MAP_NORESERVE`, except for `MAP_HUGETLB` mappings,
/// whose huge pages are reserved at map time so the call fails (rather than a later
/// touch faulting) when none are available.
///
/// # Errors
///
/// `EINVAL` when `size` is zero, not page-aligned or above `isize::MAX`; otherwise the
/// `errno` of the failed `mmap` (`ENOMEM` when no huge pages are reserved, for example).
pub fn map_at_hint(hint: usize, size: usize, extra_flags: i32) -> Result<NonNull<u8>, OsError> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size > isize::MAX as usize {
        return Err(OsError {
            op: "mmap",
            size,
            errno: libc::EINVAL,
        });
    }
    // A hugetlb mapping must reserve its pages up front: with MAP_NORESERVE it would
    // succeed even with no huge pages available and then SIGBUS on first touch.
    let noreserve = if extra_flags & libc::MAP_HUGETLB != 0 {
        0
    } else {
        libc::MAP_NORESERVE
    };
    // SAFETY: a private anonymous mapping without MAP_FIXED never replaces an existing
    // mapping: the hint is only a preference, so any hint value is sound. The result is
    // checked against MAP_FAILED.
    let raw = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | noreserve | extra_flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(OsError {
            op: "mmap",
            size,
            errno: last_errno(),
        });
    }
    NonNull::new(raw.cast()).ok_or(OsError {
        op: "mmap",
        size,
        errno: libc::EINVAL,
    })
}

/// Resizes and/or moves the mapping `[old, old + old_size)` with `mremap(2)`, carrying its
/// physical pages along: nothing is copied.
///
/// `flags` is `0` (resize in place, failing when the pages after the range are taken),
/// `MREMAP_MAYMOVE`, or `MREMAP_MAYMOVE | MREMAP_FIXED` with `new_addr` the destination
/// (any mapping at `[new_addr, new_addr + new_size)` is replaced). Growth adds zeroed pages.
///
/// # Safety
///
/// * `[old, old + old_size)` is one mapping of this process (a single VMA: one
///   protection, one set of advice), page-aligned, and every pointer into it is
///   re-derived from the result afterwards;
/// * with `MREMAP_FIXED`, `[new_addr, new_addr + new_size)` belongs to the caller and
///   holds nothing still needed (it is unmapped first).
///
/// # Errors
///
/// The [`OsError`] of a failed `mremap`; the old mapping is then unchanged.
pub unsafe fn remap(
    old: NonNull<u8>,
    old_size: usize,
    new_size: usize,
    flags: i32,
    new_addr: *mut u8,
) -> Result<NonNull<u8>, OsError> {
    // SAFETY: the caller guarantees the old range is one of our single-VMA mappings and,
    // with MREMAP_FIXED, that the destination is theirs to replace.
    let raw = unsafe {
        libc::mremap(
            old.as_ptr().cast(),
            old_size,
            new_size,
            flags,
            new_addr.cast::<libc::c_void>(),
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(OsError {
            op: "mremap",
            size: new_size,
            errno: last_errno(),
        });
    }
    NonNull::new(raw.cast()).ok_or(OsError {
        op: "mremap",
        size: new_size,
        errno: libc::EINVAL,
    })
}

/// Unmaps `[ptr, ptr + size)`.
///
/// # Safety
///
/// * the range was returned by [`reserve`] (or lies inside such a range), page-aligned;
/// * nothing reads or writes it afterwards.
pub unsafe fn release(ptr: NonNull<u8>, size: usize) {
    let Some(len) = round_up(size, PAGE_SIZE) else {
        return;
    };
    // SAFETY: the caller guarantees the range is one of our page-aligned mappings that is
    // no longer used. munmap of such a range cannot fail except for EINVAL on bad input,
    // which the preconditions exclude.
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    debug_assert_eq!(rc, 0, "munmap of a tidyheap mapping failed");
}

/// Gives the physical pages of `[ptr, ptr + size)` back to the OS, keeping the range
/// mapped; the next access reads zeros.
///
/// # Safety
///
/// * the range lies inside a mapping made by [`reserve`] and is page-aligned;
/// * its contents are no longer needed.
///
/// # Errors
///
/// The [`OsError`] of a failed `madvise`; the memory is then still committed and intact.
pub unsafe fn decommit(ptr: NonNull<u8>, size: usize) -> Result<(), OsError> {
    // SAFETY: forwarded from the caller: the range is ours, page-aligned and dead.
    unsafe { advise(ptr, size, libc::MADV_DONTNEED) }
}

/// Gives the physical pages of `[ptr, ptr + size)` back to the OS lazily
/// (`MADV_FREE`): the kernel takes them only under memory pressure, and until then a
/// write reuses them without a page fault. Reads may return the old contents or zeros.
/// Falls back to [`decommit`] where the kernel lacks `MADV_FREE` (before Linux 4.5).
///
/// # Safety
///
/// * the range lies inside a mapping made by [`reserve`] and is page-aligned;
/// * its contents are no longer needed.
///
/// # Errors
///
/// The [`OsError`] of a failed `madvise`; the memory is then still committed and intact.
pub unsafe fn purge_lazily(ptr: NonNull<u8>, size: usize) -> Result<(), OsError> {
    // SAFETY: forwarded from the caller: the range is ours, page-aligned and dead.
    match unsafe { advise(ptr, size, libc::MADV_FREE) } {
        Err(e) if e.errno == libc::EINVAL => {
            // SAFETY: as above.
            unsafe { decommit(ptr, size) }
        }
        r => r,
    }
}

/// Applies `madvise(advice)` to `[ptr, ptr + size)`.
///
/// # Safety
///
/// * the range lies inside a mapping made by this process and is page-aligned;
/// * if `advice` discards contents (`MADV_DONTNEED`, `MADV_FREE`), they are dead.
///
/// # Errors
///
/// The [`OsError`] of a failed `madvise`.
pub unsafe fn advise(ptr: NonNull<u8>, size: usize, advice: i32) -> Result<(), OsError> {
    // SAFETY: the caller guarantees the range is one of ours and that discarding advice
    // applies only to dead contents.
    let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), size, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(OsError {
            op: "madvise",
            size,
            errno: last_errno(),
        })
    }
}

/// Makes `[ptr, ptr + size)` inaccessible, so any access faults (a guard page).
///
/// # Safety
///
/// * the range lies inside a mapping made by [`reserve`] and is page-aligned;
/// * nothing is stored there that is still needed.
///
/// # Errors
///
/// The [`OsError`] of a failed `mprotect`.
pub unsafe fn protect_none(ptr: NonNull<u8>, size: usize) -> Result<(), OsError> {
    // SAFETY: the caller guarantees the page-aligned range is ours and unused.
    let rc = unsafe { libc::mprotect(ptr.as_ptr().cast(), size, libc::PROT_NONE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(OsError {
            op: "mprotect",
            size,
            errno: last_errno(),
        })
    }
}

/// Makes `[ptr, ptr + size)` readable and writable again (undoes [`protect_none`]).
///
/// # Safety
///
/// The range lies inside a mapping made by [`reserve`] and is page-aligned.
///
/// # Errors
///
/// The [`OsError`] of a failed `mprotect`.
pub unsafe fn protect_read_write(ptr: NonNull<u8>, size: usize) -> Result<(), OsError> {
    // SAFETY: the caller guarantees the page-aligned range is ours.
    let rc = unsafe {
        libc::mprotect(
            ptr.as_ptr().cast(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(OsError {
            op: "mprotect",
            size,
            errno: last_errno(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_aligned_zeroed_and_writable() {
        for align in [PAGE_SIZE, 64 * 1024, 1 << 21] {
            let p = reserve(3 * PAGE_SIZE + 1, align).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: the mapping is 4 pages long, read-write and ours alone.
            unsafe {
                assert_eq!(*p.as_ptr().add(3 * PAGE_SIZE), 0);
                p.as_ptr().add(3 * PAGE_SIZE).write(7);
                release(p, 4 * PAGE_SIZE);
            }
        }
    }

    #[test]
    fn decommit_zeroes_and_keeps_mapping() {
        let p = reserve(PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: one page, read-write, ours; its contents are dead before decommit.
        unsafe {
            p.as_ptr().write(42);
            decommit(p, PAGE_SIZE).unwrap();
            assert_eq!(p.as_ptr().read(), 0);
            release(p, PAGE_SIZE);
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        assert_eq!(reserve(0, PAGE_SIZE).unwrap_err().errno, libc::EINVAL);
        assert_eq!(reserve(4096, 3).unwrap_err().errno, libc::EINVAL);
        assert!(reserve(usize::MAX - 10, PAGE_SIZE).is_err());
        assert_eq!(reserve(1 << 62, PAGE_SIZE).unwrap_err().errno, libc::ENOMEM);
    }
}
