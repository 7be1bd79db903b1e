//! The profiler's own tables: live records and allocation sites, in memory from the
//! **system allocator**, never from the Rust global allocator.
//!
//! That is what keeps the profiler from recursing when it profiles
//! [`Global`](crate::Global): inserting a record may grow a table, and if that growth
//! went through the global allocator it would re-enter the hook (under the table's
//! lock, which is not reentrant). Nothing here allocates or frees through the global
//! allocator, so no code running under the lock does.

use core::alloc::Layout;
use core::hash::{BuildHasher, Hash, Hasher};
use core::ptr::NonNull;
use std::alloc::{GlobalAlloc, System};

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::vec::Vec as SysVec;
use hashbrown::{HashMap, HashTable};

use super::config::Sampling;
use crate::RawHandle;

/// `std::alloc::System` as an `allocator-api2` allocator.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sys;

// SAFETY:
// - blocks come from `System` and stay valid until `deallocate` (which hands them back
//   to `System` with the same layout); copies of `Sys` are interchangeable because
//   `System` is one allocator;
// - zero-size requests get a dangling, aligned pointer that is never handed to
//   `System`.
unsafe impl Allocator for Sys {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            let dangling = NonNull::new(core::ptr::without_provenance_mut::<u8>(layout.align()))
                .ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(dangling, 0));
        }
        // SAFETY: the layout's size is not zero.
        let p = unsafe { System.alloc(layout) };
        let p = NonNull::new(p).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: the `Allocator` contract: `ptr` came from `allocate` with
            // `layout`, which (not being zero-sized) got it from `System`.
            unsafe { System.dealloc(ptr.as_ptr(), layout) }
        }
    }
}

/// A multiplicative hasher for words (keys are addresses, handles and return
/// addresses; none is chosen by an adversary).
#[derive(Clone, Copy, Default)]
pub(crate) struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// Builds [`WordHasher`]s.
#[derive(Clone, Copy, Default)]
pub(crate) struct WordHash;

impl BuildHasher for WordHash {
    type Hasher = WordHasher;
    fn build_hasher(&self) -> WordHasher {
        WordHasher(0)
    }
}

/// What a live record is keyed by: a raw pointer's address, or a movable block's
/// handle (so that compaction, which moves the block but keeps its handle, leaves the
/// record where it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A fixed or large block, by address.
    Addr(usize),
    /// A movable block, by handle.
    Handle(RawHandle),
}

impl Key {
    /// A well-mixed hash of the key (for the filter and the table).
    #[inline(always)]
    pub(crate) fn hash(self) -> u64 {
        WordHash.hash_one(self)
    }
}

/// A live, recorded block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    /// Requested bytes.
    pub(crate) size: usize,
    /// Index into `Tables::sites`.
    pub(crate) site: u32,
}

/// One allocation site: a distinct stack, with its counters.
pub(crate) struct Site {
    /// Return addresses, innermost first.
    pub(crate) stack: SysVec<usize, Sys>,
    /// Recorded allocations from here, ever.
    pub(crate) allocations: u64,
    /// Their requested bytes.
    pub(crate) bytes: u64,
    /// Recorded blocks from here still live.
    pub(crate) live_blocks: u64,
    /// Their current requested bytes.
    pub(crate) live_bytes: u64,
    /// The program's allocations the recorded ones stand for (see
    /// [`Sampling::represented`]).
    pub(crate) estimated_allocations: u64,
    /// Their bytes.
    pub(crate) estimated_bytes: u64,
}

/// The profiler's state, under its lock.
pub(crate) struct Tables {
    /// Live recorded blocks. Invariant: for every site `s`,
    /// `sites[s].live_blocks == |{r in live : r.site == s}|` and `live_bytes` is the sum
    /// of their sizes.
    pub(crate) live: HashMap<Key, Record, WordHash, Sys>,
    /// Site indexes, found by the hash of their stack.
    index: HashTable<u32, Sys>,
    /// Every site seen, in order of first appearance.
    pub(crate) sites: SysVec<Site, Sys>,
    /// Allocations sampled but not recorded because a table could not grow.
    pub(crate) dropped: u64,
}

impl Tables {
    pub(crate) const fn new() -> Self {
        Self {
            live: HashMap::with_hasher_in(WordHash, Sys),
            index: HashTable::new_in(Sys),
            sites: SysVec::new_in(Sys),
            dropped: 0,
        }
    }

    /// Records a live block `key` of `size` bytes allocated at `stack`, sampled under
    /// `sampling`. Returns false (and records nothing, counting it in `dropped`) if a
    /// table could not grow.
    pub(crate) fn insert(
        &mut self,
        key: Key,
        size: usize,
        stack: &[usize],
        sampling: Sampling,
    ) -> bool {
        if self.live.try_reserve(1).is_err() {
            self.dropped += 1;
            return false;
        }
        let Some(site) = self.site_of(stack) else {
            self.dropped += 1;
            return false;
        };
        // A key recorded twice means a free was missed (a block freed through a path
        // without a hook); the newer record wins and the older one's site lets go.
        if let Some(old) = self.live.insert(key, Record { size, site }) {
            self.forget(old);
        }
        let s = &mut self.sites[site as usize];
        s.allocations += 1;
        s.bytes += size as u64;
        s.live_blocks += 1;
        s.live_bytes += size as u64;
        let w = sampling.represented(size);
        s.estimated_allocations = s.estimated_allocations.saturating_add(w.allocations);
        s.estimated_bytes = s.estimated_bytes.saturating_add(w.bytes);
        true
    }

    /// Removes the record of `key`, if any, and updates its site.
    pub(crate) fn remove(&mut self, key: Key) -> Option<Record> {
        let r = self.live.remove(&key)?;
        self.forget(r);
        Some(r)
    }

    /// `r` is no longer live.
    fn forget(&mut self, r: Record) {
        let s = &mut self.sites[r.site as usize];
        s.live_blocks -= 1;
        s.live_bytes -= r.size as u64;
    }

    /// The index of the site with `stack`, created if new; `None` if a table could not
    /// grow.
    fn site_of(&mut self, stack: &[usize]) -> Option<u32> {
        let hash = WordHash.hash_one(stack);
        let sites = &self.sites;
        if let Some(&i) = self
            .index
            .find(hash, |&i| sites[i as usize].stack[..] == *stack)
        {
            return Some(i);
        }
        let i = u32::try_from(self.sites.len()).ok()?;
        let mut copy = SysVec::new_in(Sys);
        copy.try_reserve_exact(stack.len()).ok()?;
        copy.extend_from_slice(stack);
        self.sites.try_reserve(1).ok()?;
        let sites = &self.sites;
        self.index
            .try_reserve(1, |&j| WordHash.hash_one(&sites[j as usize].stack[..]))
            .ok()?;
        self.sites.push(Site {
            stack: copy,
            allocations: 0,
            bytes: 0,
            live_blocks: 0,
            live_bytes: 0,
            estimated_allocations: 0,
            estimated_bytes: 0,
        });
        let sites = &self.sites;
        self.index.insert_unique(hash, i, |&j| {
            WordHash.hash_one(&sites[j as usize].stack[..])
        });
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Sampling = Sampling::EveryAllocation;

    #[test]
    fn sites_are_shared_by_equal_stacks_and_counts_follow_the_records() {
        let mut t = Tables::new();
        assert!(t.insert(Key::Addr(16), 10, &[1, 2, 3], ALL));
        assert!(t.insert(Key::Addr(32), 20, &[1, 2, 3], ALL));
        assert!(t.insert(Key::Addr(48), 5, &[1, 2], ALL));
        assert_eq!(t.sites.len(), 2);
        assert_eq!((t.sites[0].allocations, t.sites[0].live_bytes), (2, 30));
        assert_eq!(t.remove(Key::Addr(16)).map(|r| r.size), Some(10));
        assert!(t.remove(Key::Addr(16)).is_none());
        assert_eq!((t.sites[0].live_blocks, t.sites[0].live_bytes), (1, 20));
        assert_eq!(
            t.sites[0].allocations, 2,
            "allocations count ever, not live"
        );
        // A key recorded again (a missed free) replaces the old record.
        assert!(t.insert(Key::Addr(48), 7, &[1, 2, 3], ALL));
        assert_eq!((t.sites[1].live_blocks, t.sites[1].live_bytes), (0, 0));
        assert_eq!((t.sites[0].live_blocks, t.sites[0].live_bytes), (2, 27));
        assert_eq!(t.live.len(), 2);
    }

    #[test]
    fn sites_sum_what_their_samples_stand_for() {
        let mut t = Tables::new();
        assert!(t.insert(Key::Addr(16), 10, &[1], Sampling::EveryNth(5)));
        assert!(t.insert(Key::Addr(32), 30, &[1], Sampling::EveryNth(5)));
        let s = &t.sites[0];
        assert_eq!((s.allocations, s.bytes), (2, 40));
        assert_eq!((s.estimated_allocations, s.estimated_bytes), (10, 200));
        // A free forgets the live figures only; what was allocated stays counted.
        t.remove(Key::Addr(16));
        assert_eq!(t.sites[0].estimated_allocations, 10);
    }

    #[test]
    fn many_sites_and_records_survive_table_growth() {
        let mut t = Tables::new();
        for i in 0..5000usize {
            assert!(t.insert(Key::Addr(i * 16), i, &[i % 300, 7], ALL));
        }
        assert_eq!(t.sites.len(), 300);
        for i in (0..5000usize).step_by(2) {
            assert_eq!(t.remove(Key::Addr(i * 16)).map(|r| r.size), Some(i));
        }
        let live: u64 = t.sites.iter().map(|s| s.live_blocks).sum();
        assert_eq!(live, 2500);
        assert_eq!(t.live.len(), 2500);
    }
}
