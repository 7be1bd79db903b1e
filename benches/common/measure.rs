//! Measurements shared by the benches and examples (each includes this file with
//! `#[path]`): resident memory, thread CPU time, and Mesh's adversarial pattern run on
//! tidyheap and on the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Duration;

use tidyheap::{Heap, RawHandle};

/// Resident bytes of this process, from `/proc/self/statm`.
pub fn rss() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * tidyheap::os::PAGE_SIZE
}

/// CPU time consumed by the calling thread (it stops while the thread is preempted).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY:
    // - `ts` is a valid, writable `timespec`;
    // - `CLOCK_THREAD_CPUTIME_ID` is supported on every Linux kernel tidyheap runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Mesh's pattern with tidyheap: (committed, rss delta) before and after a full compaction.
pub fn mesh_tidyheap(small: usize, large: usize) -> [(usize, usize); 2] {
    // Handle vectors pre-faulted, so they do not count in the RSS delta.
    let mut hs: Vec<Option<RawHandle>> = vec![None; small.max(large)];
    let base = rss();
    let heap = Heap::new();
    for (size, count) in [(512, small), (1024, large)] {
        for slot in hs.iter_mut().take(count) {
            *slot = Some(heap.alloc_handle(size, 16).expect("alloc_handle"));
        }
        for slot in hs.iter_mut().take(count).skip(1).step_by(2) {
            heap.free_handle(slot.take().expect("allocated"))
                .expect("live");
        }
    }
    let before = (heap.fragmentation().committed_bytes, rss() - base);
    heap.compact_full();
    let after = (
        heap.fragmentation().committed_bytes,
        rss().saturating_sub(base),
    );
    [before, after]
}

/// Mesh's pattern with the system allocator: rss delta after the pattern, and after
/// `malloc_trim(0)`.
pub fn mesh_system(small: usize, large: usize) -> [usize; 2] {
    let mut ptrs: Vec<Vec<*mut u8>> = vec![
        vec![core::ptr::null_mut(); small],
        vec![core::ptr::null_mut(); large],
    ];
    let base = rss();
    for ((size, count), ps) in [(512usize, small), (1024, large)]
        .into_iter()
        .zip(&mut ptrs)
    {
        let layout = Layout::from_size_align(size, 16).expect("layout");
        for p in ps.iter_mut().take(count) {
            // SAFETY: `layout` has a non-zero size.
            let q = unsafe { System.alloc(layout) };
            assert!(!q.is_null(), "system allocator out of memory");
            // SAFETY: `q` is a fresh block of `size` writable bytes (touched, like
            // tidyheap's zero-filled blocks).
            unsafe { q.write_bytes(0, size) };
            *p = q;
        }
        for p in ps.iter_mut().skip(1).step_by(2) {
            // SAFETY: allocated above with `layout`, freed once (then nulled).
            unsafe { System.dealloc(*p, layout) };
            *p = core::ptr::null_mut();
        }
    }
    let after = rss() - base;
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let trimmed = rss().saturating_sub(base);
    for (size, ps) in [512usize, 1024].into_iter().zip(&ptrs) {
        let layout = Layout::from_size_align(size, 16).expect("layout");
        for &p in ps.iter().filter(|p| !p.is_null()) {
            // SAFETY: a live block allocated above with `layout`.
            unsafe { System.dealloc(p, layout) };
        }
    }
    [after, trimmed]
}
