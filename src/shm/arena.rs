//! [`ShmArena`]: the public face of a shared segment.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use super::ShmError;
use super::copy::{copy_in, copy_out};
use super::handle::{ShmHandle, ShmPod};
use super::lock::Acquired;
use super::options::{ShmOptions, ShmStats};
use super::segment::{self, Layout, Mapping};
use super::tlsf::{HEADER, Heap};

/// A segment of shared memory with a TLSF heap that several processes allocate from at once.
///
/// See the [module docs](super) for the layout, the bootstrap, the lock and crash recovery.
/// Data moves in and out by copy ([`read`](Self::read), [`write`](Self::write),
/// [`get`](Self::get), [`set`](Self::set)); [`as_ptr`](Self::as_ptr) is the raw escape hatch.
///
/// # Examples
///
/// ```
/// use tidyheap::shm::ShmArena;
///
/// let arena = ShmArena::create_anonymous(1 << 20).unwrap();
/// let h = arena.alloc(100, 16).unwrap();
/// arena.write(h, 0, b"shared").unwrap();
/// let mut out = [0u8; 6];
/// arena.read(h, 0, &mut out).unwrap();
/// assert_eq!(&out, b"shared");
/// arena.free(h).unwrap();
/// assert_eq!(arena.stats().unwrap().live_blocks, 0);
/// ```
pub struct ShmArena {
    map: Mapping,
    layout: Layout,
    fd: OwnedFd,
    name: Option<String>,
}

impl std::fmt::Debug for ShmArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmArena")
            .field("name", &self.name)
            .field("size", &self.layout.size)
            .field("base", &self.map.base())
            .finish()
    }
}

struct Locked<'a>(&'a ShmArena);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.map.header().lock.unlock();
    }
}

fn check_size(size: usize) -> Result<usize, ShmError> {
    let rounded = size.checked_next_multiple_of(4096).unwrap_or(usize::MAX);
    Layout::for_size(rounded).map(|l| l.size)
}

impl ShmArena {
    fn fresh(
        fd: OwnedFd,
        size: usize,
        name: Option<String>,
        opts: &ShmOptions,
    ) -> Result<Self, ShmError> {
        let layout = Layout::for_size(size)?;
        let map = segment::map(&fd, size)?;
        segment::format(&map, layout, opts.format_delay)?;
        Ok(ShmArena {
            map,
            layout,
            fd,
            name,
        })
    }

    fn attached(fd: OwnedFd, name: Option<String>, opts: &ShmOptions) -> Result<Self, ShmError> {
        let (map, layout) = segment::attach(&fd, opts.attach_timeout)?;
        Ok(ShmArena {
            map,
            layout,
            fd,
            name,
        })
    }

    /// Creates the named segment `/dev/shm/<name without '/'>` of `size` bytes (rounded up to
    /// 4 KiB) and formats it. The name persists until [`unlink`](Self::unlink).
    ///
    /// # Errors
    ///
    /// [`ShmError::AlreadyExists`], [`ShmError::InvalidName`], [`ShmError::InvalidSize`]
    /// (64 KiB ..= 4 GiB - 4 KiB), or [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::ShmArena;
    /// let name = format!("/tidyheap-doc-create-{}", std::process::id());
    /// let a = ShmArena::create(&name, 1 << 20).unwrap();
    /// let b = ShmArena::open(&name).unwrap();
    /// let h = a.alloc_bytes(b"x").unwrap();
    /// assert_eq!(b.usable_size(h).unwrap(), 16);
    /// ShmArena::unlink(&name).unwrap();
    /// ```
    pub fn create(name: &str, size: usize) -> Result<Self, ShmError> {
        Self::create_with(name, size, &ShmOptions::new())
    }

    /// [`create`](Self::create) with options.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmOptions};
    /// let name = format!("/tidyheap-doc-create-with-{}", std::process::id());
    /// let a = ShmArena::create_with(&name, 1 << 16, &ShmOptions::new()).unwrap();
    /// assert_eq!(a.name(), Some(name.as_str()));
    /// ShmArena::unlink(&name).unwrap();
    /// ```
    pub fn create_with(name: &str, size: usize, opts: &ShmOptions) -> Result<Self, ShmError> {
        let size = check_size(size)?;
        let fd = segment::create_named(name, size)?;
        Self::fresh(fd, size, Some(name.to_owned()), opts).inspect_err(|_| {
            let _ = segment::unlink_named(name);
        })
    }

    /// Attaches to an existing named segment, waiting up to 5 s for its formatter.
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`], [`ShmError::BadMagic`], [`ShmError::BadVersion`],
    /// [`ShmError::Truncated`], [`ShmError::StuckFormatter`], [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError};
    /// assert_eq!(ShmArena::open("/tidyheap-doc-missing").unwrap_err(), ShmError::NotFound);
    /// ```
    pub fn open(name: &str) -> Result<Self, ShmError> {
        Self::open_with(name, &ShmOptions::new())
    }

    /// [`open`](Self::open) with options.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError, ShmOptions};
    /// let r = ShmArena::open_with("bad/name", &ShmOptions::new());
    /// assert_eq!(r.unwrap_err(), ShmError::InvalidName);
    /// ```
    pub fn open_with(name: &str, opts: &ShmOptions) -> Result<Self, ShmError> {
        let fd = segment::open_named(name)?;
        Self::attached(fd, Some(name.to_owned()), opts)
    }

    /// Attaches to the named segment, or creates and formats it if there is none. Any number
    /// of processes may call this at once: exactly one formats, the rest wait for it.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create) and [`open`](Self::open).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::ShmArena;
    /// let name = format!("/tidyheap-doc-ooc-{}", std::process::id());
    /// let a = ShmArena::open_or_create(&name, 1 << 16).unwrap();
    /// let b = ShmArena::open_or_create(&name, 1 << 16).unwrap();
    /// assert_eq!(a.size(), b.size());
    /// ShmArena::unlink(&name).unwrap();
    /// ```
    pub fn open_or_create(name: &str, size: usize) -> Result<Self, ShmError> {
        Self::open_or_create_with(name, size, &ShmOptions::new())
    }

    /// [`open_or_create`](Self::open_or_create) with options.
    ///
    /// # Errors
    ///
    /// As [`open_or_create`](Self::open_or_create).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmOptions};
    /// let name = format!("/tidyheap-doc-ooc-with-{}", std::process::id());
    /// let a = ShmArena::open_or_create_with(&name, 1 << 16, &ShmOptions::new()).unwrap();
    /// assert!(a.heap_bytes() > 0);
    /// ShmArena::unlink(&name).unwrap();
    /// ```
    pub fn open_or_create_with(
        name: &str,
        size: usize,
        opts: &ShmOptions,
    ) -> Result<Self, ShmError> {
        match Self::create_with(name, size, opts) {
            Err(ShmError::AlreadyExists) => Self::open_with(name, opts),
            other => other,
        }
    }

    /// Creates an anonymous segment (a sealed `memfd`: it cannot be shrunk or grown) to share
    /// with children through [`inheritable_fd`](Self::inheritable_fd).
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidSize`] or [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// assert_eq!(arena.name(), None);
    /// ```
    pub fn create_anonymous(size: usize) -> Result<Self, ShmError> {
        let size = check_size(size)?;
        let fd = segment::create_memfd(size)?;
        Self::fresh(fd, size, None, &ShmOptions::new())
    }

    /// Attaches to a segment given its file descriptor (a memfd inherited from the parent,
    /// or any fd of a tidyheap segment).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open), but never [`ShmError::NotFound`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::ShmArena;
    /// let a = ShmArena::create_anonymous(1 << 16).unwrap();
    /// let b = ShmArena::from_fd(a.inheritable_fd().unwrap()).unwrap();
    /// let h = a.alloc_bytes(b"hi").unwrap();
    /// let mut out = [0; 2];
    /// b.read(h, 0, &mut out).unwrap();
    /// assert_eq!(&out, b"hi");
    /// ```
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ShmError> {
        Self::from_fd_with(fd, &ShmOptions::new())
    }

    /// [`from_fd`](Self::from_fd) with options.
    ///
    /// # Errors
    ///
    /// As [`from_fd`](Self::from_fd).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmOptions};
    /// let a = ShmArena::create_anonymous(1 << 16).unwrap();
    /// let b = ShmArena::from_fd_with(a.inheritable_fd().unwrap(), &ShmOptions::new()).unwrap();
    /// assert_eq!(b.heap_bytes(), a.heap_bytes());
    /// ```
    pub fn from_fd_with(fd: OwnedFd, opts: &ShmOptions) -> Result<Self, ShmError> {
        Self::attached(fd, None, opts)
    }

    /// A duplicate of the segment's fd *without* close-on-exec, so a child spawned while it is
    /// open inherits it under the same number (pass `as_raw_fd()` to the child, which calls
    /// [`from_fd`](Self::from_fd)). Drop it after spawning.
    ///
    /// # Errors
    ///
    /// [`ShmError::Os`] if `fcntl(F_DUPFD)` fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let fd = arena.inheritable_fd().unwrap();
    /// assert!(fd.as_raw_fd() >= 0);
    /// ```
    pub fn inheritable_fd(&self) -> Result<OwnedFd, ShmError> {
        // SAFETY: F_DUPFD duplicates an fd we own into a new number; no memory is passed.
        let fd = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD, 0) };
        if fd < 0 {
            return Err(ShmError::last_os("fcntl(F_DUPFD)"));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The segment's file descriptor.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// assert!(arena.fd().as_raw_fd() >= 0);
    /// ```
    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Removes a segment name; processes that have it mapped keep using it.
    ///
    /// # Errors
    ///
    /// [`ShmError::NotFound`], [`ShmError::InvalidName`] or [`ShmError::Os`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError};
    /// assert_eq!(ShmArena::unlink("/tidyheap-doc-none"), Err(ShmError::NotFound));
    /// ```
    pub fn unlink(name: &str) -> Result<(), ShmError> {
        segment::unlink_named(name)
    }

    /// The name this segment was created or opened by (`None` for anonymous segments).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap().name().is_none());
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Segment size in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(tidyheap::shm::ShmArena::create_anonymous(65_000).unwrap().size(), 65_536);
    /// ```
    pub fn size(&self) -> usize {
        self.layout.size
    }

    /// Bytes managed by the heap.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = tidyheap::shm::ShmArena::create_anonymous(1 << 20).unwrap();
    /// assert!(a.heap_bytes() < a.size() && a.heap_bytes() > a.size() / 2);
    /// ```
    pub fn heap_bytes(&self) -> usize {
        (self.layout.heap_end - self.layout.heap_start) as usize
    }

    fn heap(&self) -> Heap<'_> {
        Heap::new(&self.map, self.layout)
    }

    /// Takes the lock; recovers the heap if the previous holder died.
    fn lock(&self) -> Result<Locked<'_>, ShmError> {
        let h = self.map.header();
        let acquired = h.lock.lock();
        let guard = Locked(self);
        if h.poisoned.load(Ordering::Relaxed) != 0 {
            return Err(ShmError::Corrupt {
                what: "segment poisoned by an earlier failed check",
                offset: 0,
            });
        }
        if let Acquired::FromDead(_) = acquired
            && let Err(e) = self.heap().recover()
        {
            h.poisoned.store(1, Ordering::Relaxed);
            return Err(e);
        }
        Ok(guard)
    }

    /// Runs `f` under the lock; a corruption found mid-operation poisons the segment.
    fn locked<T>(&self, f: impl FnOnce(&Heap<'_>) -> Result<T, ShmError>) -> Result<T, ShmError> {
        let _guard = self.lock()?;
        let r = f(&self.heap());
        if let Err(ShmError::Corrupt { .. }) = r {
            self.map.header().poisoned.store(1, Ordering::Relaxed);
        }
        r
    }

    /// Allocates `size` bytes aligned to `align` (a power of two up to 4096; alignment holds
    /// in every process because mappings are page-aligned). O(1): two bitmap scans, one list
    /// pop, at most two splits. Zero-size requests get a minimum block.
    ///
    /// # Errors
    ///
    /// [`ShmError::InvalidAlign`], [`ShmError::OutOfMemory`], or [`ShmError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 20).unwrap();
    /// let h = arena.alloc(1000, 4096).unwrap();
    /// assert_eq!(h.offset() % 4096, 0);
    /// assert!(arena.usable_size(h).unwrap() >= 1000);
    /// ```
    pub fn alloc(&self, size: usize, align: usize) -> Result<ShmHandle, ShmError> {
        if !align.is_power_of_two() || align > 4096 {
            return Err(ShmError::InvalidAlign { align });
        }
        let oom = ShmError::OutOfMemory { size, align };
        let Ok(size32) = u32::try_from(size) else {
            return Err(oom);
        };
        match self.locked(|heap| heap.alloc(size32, align as u32))? {
            Some((offset, generation)) => Ok(ShmHandle { offset, generation }),
            None => Err(oom),
        }
    }

    /// Allocates a block holding a copy of `data` (16-byte aligned).
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc_bytes(&[9; 40]).unwrap();
    /// let mut out = [0; 40];
    /// arena.read(h, 0, &mut out).unwrap();
    /// assert_eq!(out, [9; 40]);
    /// ```
    pub fn alloc_bytes(&self, data: &[u8]) -> Result<ShmHandle, ShmError> {
        let h = self.alloc(data.len(), 16)?;
        self.write(h, 0, data)?;
        Ok(h)
    }

    /// Frees a block. Its generation is bumped first, so `h` (and every copy of it, in every
    /// process) is stale from then on; the block merges with free neighbours at once.
    ///
    /// # Errors
    ///
    /// [`ShmError::Stale`] for a handle that names no live block (double free, foreign or
    /// forged handle), [`ShmError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError};
    /// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(10, 8).unwrap();
    /// arena.free(h).unwrap();
    /// assert_eq!(arena.free(h), Err(ShmError::Stale));
    /// ```
    pub fn free(&self, h: ShmHandle) -> Result<(), ShmError> {
        self.locked(|heap| heap.free(h.offset, h.generation))
    }

    /// Usable bytes of the block (at least what was requested).
    ///
    /// # Errors
    ///
    /// [`ShmError::Stale`], [`ShmError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(20, 8).unwrap();
    /// assert_eq!(arena.usable_size(h).unwrap(), 32);
    /// ```
    pub fn usable_size(&self, h: ShmHandle) -> Result<usize, ShmError> {
        let (_, size) = self.heap().resolve(h.offset, h.generation)?;
        Ok((size - HEADER) as usize)
    }

    fn span(&self, h: ShmHandle, offset: usize, len: usize) -> Result<(u32, *mut u8), ShmError> {
        let (off, size) = self.heap().resolve(h.offset, h.generation)?;
        let usable = (size - HEADER) as usize;
        if offset.checked_add(len).is_none_or(|end| end > usable) {
            return Err(ShmError::OutOfBounds {
                offset,
                len,
                usable,
            });
        }
        // SAFETY: `off + HEADER + offset + len <= off + size <= heap_end <= mapping length`
        // (resolve checked the block size against the heap end; the line above the rest).
        let p = unsafe { self.map.base().add((off + HEADER) as usize + offset) };
        Ok((off, p))
    }

    /// Copies `dst.len()` bytes at `offset` in the block into `dst`. Lock-free: the copy is
    /// validated afterwards (seqlock), so a block freed during the copy reports
    /// [`ShmError::Stale`] instead of returning its next owner's bytes. A concurrent
    /// [`write`](Self::write) to the same range may be seen partly; order your writers.
    ///
    /// # Errors
    ///
    /// [`ShmError::Stale`], [`ShmError::OutOfBounds`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError};
    /// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc_bytes(b"abcdef").unwrap();
    /// let mut two = [0; 2];
    /// arena.read(h, 2, &mut two).unwrap();
    /// assert_eq!(&two, b"cd");
    /// assert!(matches!(arena.read(h, 100, &mut two), Err(ShmError::OutOfBounds { .. })));
    /// ```
    pub fn read(&self, h: ShmHandle, offset: usize, dst: &mut [u8]) -> Result<(), ShmError> {
        let (off, src) = self.span(h, offset, dst.len())?;
        // SAFETY: `src .. src + dst.len()` is inside the mapping (`span`), which `&self` keeps
        // mapped; it is only accessed through atomics, so racing writers are not a data race.
        unsafe { copy_out(src, dst) };
        if !self.heap().still_live(off, h.generation) {
            return Err(ShmError::Stale);
        }
        Ok(())
    }

    /// Copies `src` into the block at `offset`. Takes the lock so the bytes can never land
    /// in a block that was freed and reused meanwhile.
    ///
    /// # Errors
    ///
    /// [`ShmError::Stale`], [`ShmError::OutOfBounds`], [`ShmError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(4, 4).unwrap();
    /// arena.write(h, 0, &[1, 2, 3, 4]).unwrap();
    /// assert!(arena.write(h, 14, &[0; 4]).is_err());
    /// ```
    pub fn write(&self, h: ShmHandle, offset: usize, src: &[u8]) -> Result<(), ShmError> {
        let _guard = self.lock()?;
        let (_, dst) = self.span(h, offset, src.len())?;
        // SAFETY: `dst .. dst + src.len()` is inside the mapping (`span`) and belongs to a live
        // block that cannot be freed while we hold the lock; accesses are atomic.
        unsafe { copy_in(src, dst) };
        Ok(())
    }

    /// A raw pointer to the block's payload in this process's mapping, for zero-copy use.
    ///
    /// The pointer is valid for [`usable_size`](Self::usable_size) bytes while the block is
    /// live and `self` exists. Other processes may read and write the same bytes at any time:
    /// making a `&` or `&mut` from it is sound only if your own protocol guarantees that
    /// nobody else writes (or, for `&mut`, reads) those bytes for the reference's lifetime.
    ///
    /// # Errors
    ///
    /// [`ShmError::Stale`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(8, 8).unwrap();
    /// let p = arena.as_ptr(h).unwrap();
    /// // SAFETY: the block is live, 8 bytes, 8-aligned, and no other process knows `h`.
    /// unsafe { p.cast::<u64>().write_volatile(42) };
    /// let mut out = [0; 8];
    /// arena.read(h, 0, &mut out).unwrap();
    /// assert_eq!(u64::from_ne_bytes(out), 42);
    /// ```
    pub fn as_ptr(&self, h: ShmHandle) -> Result<NonNull<u8>, ShmError> {
        let (_, p) = self.span(h, 0, 0)?;
        NonNull::new(p).ok_or(ShmError::Stale)
    }

    /// Allocates a block for a `T` (aligned for it) holding a copy of `value`.
    ///
    /// # Errors
    ///
    /// As [`alloc`](Self::alloc) (alignments above 4096 are [`ShmError::InvalidAlign`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let q = arena.alloc_pod(&[7u16, 9]).unwrap();
    /// assert_eq!(arena.get(q).unwrap(), [7, 9]);
    /// ```
    pub fn alloc_pod<T: bytemuck::Pod>(&self, value: &T) -> Result<ShmPod<T>, ShmError> {
        let h = self.alloc(size_of::<T>(), align_of::<T>())?;
        self.write(h, 0, bytemuck::bytes_of(value))?;
        Ok(ShmPod::from_raw(h))
    }

    /// Copies the `T` out of the block.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let p = arena.alloc_pod(&3.5f32).unwrap();
    /// assert_eq!(arena.get(p).unwrap(), 3.5);
    /// ```
    pub fn get<T: bytemuck::Pod>(&self, p: ShmPod<T>) -> Result<T, ShmError> {
        let mut v = T::zeroed();
        self.read(p.raw(), 0, bytemuck::bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Copies `value` into the block.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let p = arena.alloc_pod(&0u64).unwrap();
    /// arena.set(p, &99).unwrap();
    /// assert_eq!(arena.get(p).unwrap(), 99);
    /// ```
    pub fn set<T: bytemuck::Pod>(&self, p: ShmPod<T>, value: &T) -> Result<(), ShmError> {
        self.write(p.raw(), 0, bytemuck::bytes_of(value))
    }

    /// Frees a typed block.
    ///
    /// # Errors
    ///
    /// As [`free`](Self::free).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let p = arena.alloc_pod(&1u8).unwrap();
    /// arena.free_pod(p).unwrap();
    /// assert!(arena.get(p).is_err());
    /// ```
    pub fn free_pod<T>(&self, p: ShmPod<T>) -> Result<(), ShmError> {
        self.free(p.raw())
    }

    fn stats_locked(&self, heap: &Heap<'_>) -> Result<ShmStats, ShmError> {
        let h = self.map.header();
        let n = &h.counters;
        Ok(ShmStats {
            heap_bytes: heap.heap_bytes(),
            live_blocks: n.live_blocks.load(Ordering::Relaxed),
            live_bytes: n.live_bytes.load(Ordering::Relaxed),
            used_bytes: n.used_bytes.load(Ordering::Relaxed),
            free_blocks: n.free_blocks.load(Ordering::Relaxed),
            free_bytes: n.free_bytes.load(Ordering::Relaxed),
            largest_free: u64::from(heap.largest_free()?),
            allocs: n.allocs.load(Ordering::Relaxed),
            frees: n.frees.load(Ordering::Relaxed),
            recoveries: h.lock.recoveries.load(Ordering::Relaxed),
            rolled_back_allocs: n.rolled_back_allocs.load(Ordering::Relaxed),
            completed_frees: n.completed_frees.load(Ordering::Relaxed),
        })
    }

    /// A snapshot of the heap statistics (takes the lock; finding the largest free block scans
    /// the one list of the highest non-empty class).
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`].
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let _h = arena.alloc(100, 8).unwrap();
    /// let s = arena.stats().unwrap();
    /// assert_eq!((s.live_blocks, s.live_bytes), (1, 100));
    /// assert_eq!(s.used_bytes + s.free_bytes, s.heap_bytes);
    /// ```
    pub fn stats(&self) -> Result<ShmStats, ShmError> {
        self.locked(|heap| self.stats_locked(heap))
    }

    /// Walks the whole heap and checks every invariant (tiling, immediate coalescing, free
    /// lists and bitmaps, block starts, counters), then returns the stats. O(blocks).
    ///
    /// # Errors
    ///
    /// [`ShmError::Corrupt`] naming the first broken invariant (and poisoning the segment).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(100, 8).unwrap();
    /// arena.free(h).unwrap();
    /// assert_eq!(arena.check().unwrap().free_blocks, 1);
    /// ```
    pub fn check(&self) -> Result<ShmStats, ShmError> {
        self.locked(|heap| {
            heap.verify()?;
            self.stats_locked(heap)
        })
    }

    /// pid of the process holding the segment's lock right now (0 if free). A snapshot, for
    /// diagnostics.
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// assert_eq!(arena.lock_holder(), 0);
    /// ```
    pub fn lock_holder(&self) -> u32 {
        self.map.header().lock.holder()
    }

    /// Test hook for crash tests, not for use: takes the lock, optionally leaves an
    /// allocation (`mid_alloc`) or the free of `mid_free` cut off mid-way, as a crash inside
    /// them would, and parks forever holding the lock. The caller is meant to be killed; a
    /// peer then recovers the segment.
    #[doc(hidden)]
    pub fn __park_while_locked(&self, mid_alloc: bool, mid_free: Option<ShmHandle>) -> ! {
        let guard = self.lock();
        if guard.is_ok() {
            if mid_alloc {
                let _ = self.heap().half_alloc(64);
            }
            if let Some(h) = mid_free {
                let _ = self.heap().half_free(h.offset, h.generation);
            }
        }
        std::mem::forget(guard);
        loop {
            std::thread::park();
        }
    }
}
