//! Relative handles: 8 bytes that name a block in every process that maps the segment.

use std::fmt;
use std::marker::PhantomData;

/// A block in a shared segment: its payload offset from the segment base and its generation.
///
/// A handle means the same block in every process, whatever address each maps the segment
/// at, so it can be sent over a pipe or stored inside the segment. When the block is freed its
/// generation is bumped, so the old handle never resolves again (it reports
/// [`ShmError::Stale`](super::ShmError::Stale)). Generations are 32-bit and segment-wide
/// unique per offset: a stale handle could only match again after 2^32 generations.
///
/// # Examples
///
/// ```
/// use tidyheap::shm::{ShmArena, ShmHandle};
///
/// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
/// let h = arena.alloc_bytes(b"hello").unwrap();
/// let bits = h.to_bits(); // send these 8 bytes to another process
/// let back = ShmHandle::from_bits(bits);
/// let mut buf = [0u8; 5];
/// arena.read(back, 0, &mut buf).unwrap();
/// assert_eq!(&buf, b"hello");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ShmHandle {
    pub(super) offset: u32,
    pub(super) generation: u32,
}

impl ShmHandle {
    /// Packs the handle into 8 bytes (offset in the low half).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::ShmHandle;
    /// assert_eq!(ShmHandle::from_bits(0x0000_0007_0000_1010).to_bits(), 0x0000_0007_0000_1010);
    /// ```
    pub fn to_bits(self) -> u64 {
        u64::from(self.offset) | (u64::from(self.generation) << 32)
    }

    /// Unpacks [`to_bits`](Self::to_bits). Any value is accepted: one that names no live block
    /// is reported as stale when used.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmError, ShmHandle};
    /// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    /// assert_eq!(arena.free(ShmHandle::from_bits(12345)), Err(ShmError::Stale));
    /// ```
    pub fn from_bits(bits: u64) -> Self {
        ShmHandle {
            offset: bits as u32,
            generation: (bits >> 32) as u32,
        }
    }

    /// Byte offset of the payload from the segment base (the same in every process).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let h = arena.alloc(64, 64).unwrap();
    /// assert_eq!(h.offset() % 64, 0);
    /// ```
    pub fn offset(self) -> u32 {
        self.offset
    }

    /// The block's generation when the handle was made (never 0 for a real handle).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// assert_ne!(arena.alloc(8, 8).unwrap().generation(), 0);
    /// ```
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for ShmHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmHandle({:#x}v{})", self.offset, self.generation)
    }
}

/// A typed [`ShmHandle`] to a block holding one `T` (a [`bytemuck::Pod`] value, so any bytes
/// another process writes are a valid `T`). Values are copied in and out
/// ([`ShmArena::get`](super::ShmArena::get), [`ShmArena::set`](super::ShmArena::set)); no
/// reference into shared memory is ever handed out.
///
/// # Examples
///
/// ```
/// use tidyheap::shm::ShmArena;
///
/// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
/// let p = arena.alloc_pod(&[1u32, 2, 3]).unwrap();
/// assert_eq!(arena.get(p).unwrap(), [1, 2, 3]);
/// assert_eq!(size_of_val(&p), 8);
/// ```
pub struct ShmPod<T> {
    raw: ShmHandle,
    _t: PhantomData<fn() -> T>,
}

impl<T> ShmPod<T> {
    /// Types a raw handle. Safe: using it on a block smaller than `T` is an
    /// [`OutOfBounds`](super::ShmError::OutOfBounds) error, and any bytes are a valid `Pod`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::shm::{ShmArena, ShmPod};
    /// let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    /// let raw = arena.alloc_bytes(&7u64.to_ne_bytes()).unwrap();
    /// assert_eq!(arena.get(ShmPod::<u64>::from_raw(raw)).unwrap(), 7);
    /// ```
    pub fn from_raw(raw: ShmHandle) -> Self {
        ShmPod {
            raw,
            _t: PhantomData,
        }
    }

    /// The untyped handle (to send it to another process).
    ///
    /// # Examples
    ///
    /// ```
    /// let arena = tidyheap::shm::ShmArena::create_anonymous(1 << 16).unwrap();
    /// let p = arena.alloc_pod(&1.5f64).unwrap();
    /// assert_eq!(arena.usable_size(p.raw()).unwrap() >= 8, true);
    /// ```
    pub fn raw(self) -> ShmHandle {
        self.raw
    }
}

impl<T> Clone for ShmPod<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ShmPod<T> {}

impl<T> PartialEq for ShmPod<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T> Eq for ShmPod<T> {}

impl<T> fmt::Debug for ShmPod<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmPod<{}>({:?})", std::any::type_name::<T>(), self.raw)
    }
}
