//! Live large blocks: each block's start address and mapping length, so a free with
//! another size (or of a pointer that is no live large block: a double free, a foreign
//! pointer) is caught before anything is unmapped or cached (DESIGN invariant 9).
//!
//! One process-wide table (a block may be freed through any allocator with the same
//! configuration), an open-addressing hash set with linear probing and backward-shift
//! deletion, in one `MAP_NORESERVE` mapping reserved on first use (so it never touches
//! the Rust heap and works inside the global allocator). Its pages are touched as
//! entries land on them. If the table ever fills (more than [`MAX_LIVE`] live large
//! blocks) or cannot be mapped, blocks go untracked and the checks turn lenient for
//! good: a block the table does not know is then let through.

use core::ptr::NonNull;
use std::sync::Mutex;

use crate::os;

/// Entries in the table (16 bytes each: 16 MiB of address space).
const SLOTS: usize = 1 << 20;
/// Live blocks tracked at most (a load factor of 3/4).
pub(crate) const MAX_LIVE: usize = SLOTS / 4 * 3;

struct Table {
    /// `SLOTS` pairs `(start address, mapping bytes)`; address 0 marks a free slot.
    slots: *mut [usize; 2],
    len: usize,
    /// Some block went untracked: an unknown address is no proof of misuse any more.
    lossy: bool,
}

// SAFETY: the table's mapping is only touched under the mutex.
unsafe impl Send for Table {}

static TABLE: Mutex<Table> = Mutex::new(Table {
    slots: core::ptr::null_mut(),
    len: 0,
    lossy: false,
});

/// What the table says about a block being freed or resized.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Known {
    /// Live, with this many mapping bytes.
    Live(usize),
    /// Not a live large block (and no block ever went untracked).
    Unknown,
    /// Not in the table, but some block went untracked: nothing can be said.
    Untracked,
}

fn home(addr: usize) -> usize {
    ((addr >> 12).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 44) & (SLOTS - 1)
}

fn lock() -> std::sync::MutexGuard<'static, Table> {
    TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Table {
    /// The slot holding `addr`, or the free slot where it would go.
    fn find(&self, addr: usize) -> usize {
        let mut i = home(addr);
        loop {
            // SAFETY: `i < SLOTS`, inside the table's mapping (non-null: callers check).
            let k = unsafe { (*self.slots.add(i))[0] };
            if k == addr || k == 0 {
                return i;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    }

    fn slot(&mut self, i: usize) -> &mut [usize; 2] {
        // SAFETY: `i < SLOTS`, inside the mapping, which the mutex gives us alone.
        unsafe { &mut *self.slots.add(i) }
    }

    fn get(&mut self, addr: usize) -> Known {
        if !self.slots.is_null() {
            let i = self.find(addr);
            let [k, bytes] = *self.slot(i);
            if k == addr {
                return Known::Live(bytes);
            }
        }
        if self.lossy {
            Known::Untracked
        } else {
            Known::Unknown
        }
    }

    fn insert(&mut self, addr: usize, bytes: usize) {
        if self.slots.is_null() {
            match os::reserve(SLOTS * 16, os::PAGE_SIZE) {
                Ok(p) => self.slots = p.as_ptr().cast(),
                Err(_) => {
                    self.lossy = true;
                    return;
                }
            }
        }
        if self.len >= MAX_LIVE {
            self.lossy = true;
            return;
        }
        let i = self.find(addr);
        if self.slot(i)[0] == 0 {
            self.len += 1;
        }
        *self.slot(i) = [addr, bytes];
    }

    fn remove(&mut self, addr: usize) {
        if self.slots.is_null() {
            return;
        }
        let mut hole = self.find(addr);
        if self.slot(hole)[0] != addr {
            return;
        }
        self.len -= 1;
        // Backward-shift deletion: move later entries of the run into the hole when
        // their home is not between the hole and them.
        let mut j = hole;
        loop {
            *self.slot(hole) = [0, 0];
            loop {
                j = (j + 1) & (SLOTS - 1);
                let k = self.slot(j)[0];
                if k == 0 {
                    return;
                }
                let h = home(k);
                let between = if hole <= j {
                    hole < h && h <= j
                } else {
                    hole < h || h <= j
                };
                if !between {
                    break;
                }
            }
            *self.slot(hole) = *self.slot(j);
            hole = j;
        }
    }
}

/// Records a new live block at `p` of `bytes` mapping bytes.
pub(crate) fn insert(p: NonNull<u8>, bytes: usize) {
    lock().insert(p.as_ptr() as usize, bytes);
}

/// What the table knows about `p`.
pub(crate) fn get(p: NonNull<u8>) -> Known {
    lock().get(p.as_ptr() as usize)
}

/// Forgets `p` (if it was known).
pub(crate) fn remove(p: NonNull<u8>) {
    lock().remove(p.as_ptr() as usize);
}

/// The block at `old` now lives at `new` with `bytes` mapping bytes.
pub(crate) fn moved(old: NonNull<u8>, new: NonNull<u8>, bytes: usize) {
    let mut t = lock();
    t.remove(old.as_ptr() as usize);
    t.insert(new.as_ptr() as usize, bytes);
}

/// Checks that `p`, about to be freed or resized with a layout of `size` bytes (a
/// mapping of `bytes`), is a live large block of that mapping length; aborts with a
/// message naming the problem otherwise.
pub(crate) fn check(p: NonNull<u8>, size: usize, bytes: usize) {
    match get(p) {
        Known::Live(b) if b == bytes => {}
        Known::Live(b) => crate::misuse::fatal!(
            "free of large block {p:p} with a layout of {size} B ({bytes} B mapping), but \
             its mapping is {b} B (wrong layout passed to dealloc)"
        ),
        Known::Unknown => crate::misuse::fatal!(
            "free of {p:p} with a layout of {size} B, which is not a live large block \
             (a double free, or a pointer no large allocation returned)"
        ),
        Known::Untracked => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_with_collisions() {
        let mut t = Table {
            slots: core::ptr::null_mut(),
            len: 0,
            lossy: false,
        };
        // Many blocks, half of them removed: the runs left behind must stay findable.
        let addrs: Vec<usize> = (1..5000usize).map(|i| i << 22 | 0x7000_0000_0000).collect();
        for (n, &a) in addrs.iter().enumerate() {
            t.insert(a, n);
        }
        for (n, &a) in addrs.iter().enumerate().step_by(2) {
            assert_eq!(t.get(a), Known::Live(n));
            t.remove(a);
        }
        for (n, &a) in addrs.iter().enumerate() {
            let want = if n % 2 == 0 {
                Known::Unknown
            } else {
                Known::Live(n)
            };
            assert_eq!(t.get(a), want, "{n}");
        }
        assert_eq!(t.len, addrs.len() / 2);
        // SAFETY: the table was reserved with this size and is not used afterwards.
        unsafe { os::release(NonNull::new(t.slots.cast()).unwrap(), SLOTS * 16) };
    }
}
