//! The segment: a shared file mapping, its header, and the concurrent bootstrap.
//!
//! ```text
//! offset 0      SegmentHeader (magic, version, init word, size, lock, journal, counters, TLSF control)
//! BITMAP_OFF    block-start bitmap: one bit per 16-byte granule of the segment
//! heap_start    the heap (4096-aligned), TLSF blocks up to `size`
//! ```
//!
//! Bootstrap: only a process that *created* the file (`O_EXCL`, or a fresh memfd) formats it,
//! moving the init word `UNINIT -> FORMATTING` (CAS, recording its pid), writing the header and
//! the first free block, then storing `READY` (Release). Attachers wait (Acquire) for `READY`
//! with a time-out; a file whose first words are neither ours nor zero is rejected at once.
//! An attacher never formats: a foreign file that happens to be zero is never overwritten.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ShmError;
use super::lock::{self, LockWord};
use super::tlsf::{Control, Counters, Journal};

/// `"tidyheap"` little-endian, followed by nothing else: the first 8 bytes of every segment.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"tidyheap");
/// Layout version; bump on any change of the header or block format.
pub(super) const VERSION: u32 = 1;

pub(super) const UNINIT: u32 = 0;
pub(super) const FORMATTING: u32 = 1;
pub(super) const READY: u32 = 2;

/// Smallest and largest segment (the largest keeps every offset in a `u32`).
pub(super) const MIN_SIZE: usize = 64 * 1024;
pub(super) const MAX_SIZE: usize = 0xFFFF_F000;
const PAGE: usize = 4096;

/// The header at offset 0. Field offsets are part of the layout version: magic @0, version @8,
/// init @12, size @16, formatter pid @24.
#[repr(C)]
pub(super) struct SegmentHeader {
    pub(super) magic: AtomicU64,
    pub(super) version: AtomicU32,
    pub(super) init: AtomicU32,
    pub(super) size: AtomicU64,
    pub(super) formatter_pid: AtomicU32,
    /// Non-zero once recovery found the heap beyond repair: every operation fails.
    pub(super) poisoned: AtomicU32,
    pub(super) lock: LockWord,
    pub(super) journal: Journal,
    pub(super) counters: Counters,
    pub(super) control: Control,
}

/// Where the block-start bitmap begins.
pub(super) const BITMAP_OFF: usize = size_of::<SegmentHeader>().next_multiple_of(64);

/// The derived layout of a segment of `size` bytes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) size: usize,
    pub(super) bitmap_words: usize,
    pub(super) heap_start: u32,
    pub(super) heap_end: u32,
}

impl Layout {
    pub(super) fn for_size(size: usize) -> Result<Self, ShmError> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) || !size.is_multiple_of(PAGE) {
            return Err(ShmError::InvalidSize {
                size,
                min: MIN_SIZE,
                max: MAX_SIZE,
            });
        }
        let bitmap_words = (size / 16).div_ceil(64);
        let heap_start = (BITMAP_OFF + bitmap_words * 8).next_multiple_of(PAGE);
        Ok(Layout {
            size,
            bitmap_words,
            // Both fit: size <= MAX_SIZE < u32::MAX.
            heap_start: heap_start as u32,
            heap_end: size as u32,
        })
    }
}

/// A shared read-write mapping, unmapped on drop.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access through it goes through atomics or
// the raw copies documented on `ShmArena`, which are as valid from any thread as from another
// process.
unsafe impl Send for Mapping {}
// SAFETY: as for Send: `&Mapping` only exposes the base pointer and length.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(super) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(super) fn header(&self) -> &SegmentHeader {
        // SAFETY:
        // - every mapping is at least MIN_SIZE > size_of::<SegmentHeader>() bytes and page-aligned;
        // - the header consists only of atomics, so shared references to it may coexist with
        //   concurrent writes from other threads and processes;
        // - the reference lives no longer than `&self`, i.e. the mapping.
        unsafe { &*(self.ptr.as_ptr() as *const SegmentHeader) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from a successful mmap and are unmapped exactly once; no
        // reference into the mapping outlives `self` (they all borrow it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn cname(name: &str) -> Result<CString, ShmError> {
    let ok = name.len() >= 2
        && name.len() <= 251
        && name.starts_with('/')
        && !name[1..].contains('/')
        && !name.contains('\0');
    if !ok {
        return Err(ShmError::InvalidName);
    }
    CString::new(name).map_err(|_| ShmError::InvalidName)
}

fn owned(fd: i32, op: &'static str) -> Result<OwnedFd, ShmError> {
    if fd < 0 {
        return Err(ShmError::last_os(op));
    }
    // SAFETY: `fd` was just returned by a successful open-like call and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_len(fd: &OwnedFd, size: usize) -> Result<(), ShmError> {
    // SAFETY: ftruncate on an fd we own; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
        return Err(ShmError::last_os("ftruncate"));
    }
    Ok(())
}

pub(super) fn file_len(fd: &OwnedFd) -> Result<u64, ShmError> {
    // SAFETY: `stat` is plain old data; zero is a valid value for every field.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid, writable `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(ShmError::last_os("fstat"));
    }
    Ok(st.st_size.max(0) as u64)
}

/// Creates `/dev/shm/<name>` exclusively, sized `size`.
pub(super) fn create_named(name: &str, size: usize) -> Result<OwnedFd, ShmError> {
    let c = cname(name)?;
    // SAFETY: `c` is a valid NUL-terminated string; flags and mode are plain integers.
    let fd = unsafe {
        libc::shm_open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::mode_t,
        )
    };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
        return Err(ShmError::AlreadyExists);
    }
    let fd = owned(fd, "shm_open")?;
    if let Err(e) = set_len(&fd, size) {
        // Best effort: do not leave a zero-length file behind for attachers to wait on.
        let _ = unlink_named(name);
        return Err(e);
    }
    Ok(fd)
}

/// Opens an existing `/dev/shm/<name>`.
pub(super) fn open_named(name: &str) -> Result<OwnedFd, ShmError> {
    let c = cname(name)?;
    // SAFETY: as in `create_named`.
    let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
        return Err(ShmError::NotFound);
    }
    owned(fd, "shm_open")
}

/// Removes the name (mappings stay valid until unmapped).
pub(super) fn unlink_named(name: &str) -> Result<(), ShmError> {
    let c = cname(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    if unsafe { libc::shm_unlink(c.as_ptr()) } != 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
            return Err(ShmError::NotFound);
        }
        return Err(ShmError::last_os("shm_unlink"));
    }
    Ok(())
}

/// A sealed (cannot shrink or grow) anonymous memfd of `size` bytes.
pub(super) fn create_memfd(size: usize) -> Result<OwnedFd, ShmError> {
    // SAFETY: the name is a valid NUL-terminated literal; flags are plain integers.
    let fd = unsafe {
        libc::memfd_create(
            c"tidyheap-shm".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    let fd = owned(fd, "memfd_create")?;
    set_len(&fd, size)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(ShmError::last_os("fcntl(F_ADD_SEALS)"));
    }
    Ok(fd)
}

pub(super) fn map(fd: &OwnedFd, len: usize) -> Result<Mapping, ShmError> {
    // SAFETY: a fresh shared mapping of an fd we own; the kernel picks the address, so no
    // existing memory is affected. `len` is non-zero (callers check it against the file).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(ShmError::last_os("mmap"));
    }
    let ptr = NonNull::new(p.cast::<u8>()).ok_or(ShmError::Os {
        op: "mmap",
        errno: 0,
    })?;
    Ok(Mapping { ptr, len })
}

/// Formats a freshly created, zero-filled segment: `UNINIT -> FORMATTING -> READY`.
///
/// `pause` is a test hook: formatting parks for that long between the two transitions.
pub(super) fn format(m: &Mapping, layout: Layout, pause: Duration) -> Result<(), ShmError> {
    let h = m.header();
    if h.init
        .compare_exchange(UNINIT, FORMATTING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Someone else formats (cannot happen for a file we created, but never format twice).
        return Ok(());
    }
    h.formatter_pid.store(std::process::id(), Ordering::Relaxed);
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    super::tlsf::Heap::new(m, layout).format();
    h.version.store(VERSION, Ordering::Relaxed);
    h.size.store(layout.size as u64, Ordering::Relaxed);
    h.magic.store(MAGIC, Ordering::Relaxed);
    h.init.store(READY, Ordering::Release);
    Ok(())
}

/// Maps an existing segment and validates it, waiting up to `timeout` for its formatter.
pub(super) fn attach(fd: &OwnedFd, timeout: Duration) -> Result<(Mapping, Layout), ShmError> {
    let start = Instant::now();
    let need = size_of::<SegmentHeader>() as u64;
    // A creator sizes the file with one ftruncate right after creating it: wait for it.
    let mut len = file_len(fd)?;
    while len == 0 {
        if start.elapsed() >= timeout {
            return Err(ShmError::StuckFormatter {
                pid: 0,
                alive: false,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
        len = file_len(fd)?;
    }
    if len < need.max(PAGE as u64) {
        return Err(ShmError::Truncated {
            file_len: len,
            expected: need.max(PAGE as u64),
        });
    }
    let m = map(fd, usize::try_from(len).unwrap_or(usize::MAX))?;
    let h = m.header();
    loop {
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != 0 && magic != MAGIC {
            return Err(ShmError::BadMagic { found: magic });
        }
        match h.init.load(Ordering::Acquire) {
            READY => break,
            UNINIT | FORMATTING => {
                if start.elapsed() >= timeout {
                    let pid = h.formatter_pid.load(Ordering::Relaxed);
                    return Err(ShmError::StuckFormatter {
                        pid,
                        alive: lock::alive(pid),
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            _ => return Err(ShmError::BadMagic { found: magic }),
        }
    }
    let magic = h.magic.load(Ordering::Relaxed);
    if magic != MAGIC {
        return Err(ShmError::BadMagic { found: magic });
    }
    let version = h.version.load(Ordering::Relaxed);
    if version != VERSION {
        return Err(ShmError::BadVersion {
            found: version,
            expected: VERSION,
        });
    }
    let size = h.size.load(Ordering::Relaxed);
    if size > len {
        return Err(ShmError::Truncated {
            file_len: len,
            expected: size,
        });
    }
    let layout = Layout::for_size(usize::try_from(size).unwrap_or(usize::MAX)).map_err(|_| {
        ShmError::Corrupt {
            what: "segment size in header out of range",
            offset: 16,
        }
    })?;
    Ok((m, layout))
}
