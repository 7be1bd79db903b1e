//! The per-heap commit limit (`HeapConfig::commit_limit`): an allocation or
//! reallocation that could never be backed fails at the call, and leaves the heap and
//! the caller's block as they were.

use std::alloc::{GlobalAlloc, Layout};

use tidyheap::{AllocError, Global, HandleError, Heap, HeapConfig};

const MIB: usize = 1 << 20;
const TIB: usize = 1 << 40;

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn physical_memory() -> usize {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    pages as usize * page as usize
}

fn with_limit(limit: usize) -> Heap {
    Heap::with_config(HeapConfig {
        commit_limit: limit,
        ..HeapConfig::DEFAULT
    })
}

fn fill(p: std::ptr::NonNull<u8>, n: usize, v: u8) {
    // SAFETY: callers pass a live block of at least `n` bytes.
    unsafe { p.as_ptr().write_bytes(v, n) };
}

fn holds(p: std::ptr::NonNull<u8>, n: usize, v: u8) -> bool {
    // SAFETY: callers pass a live block of at least `n` bytes.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), n) }
        .iter()
        .all(|&b| b == v)
}

#[test]
fn by_default_the_limit_is_physical_memory() {
    let heap = Heap::new();
    let phys = physical_memory();
    let want = Err(AllocError::CommitLimit {
        size: 64 * TIB,
        limit: phys,
    });
    assert_eq!(heap.alloc(l(64 * TIB)), want);
    assert_eq!(heap.alloc_zeroed(l(64 * TIB)), want);
    // A realloc to 64 TiB fails at the call and keeps the block.
    let p = heap.alloc(l(MIB)).unwrap();
    fill(p, MIB, 7);
    // SAFETY: `p` is live with `l(MIB)`; a failed realloc leaves it ours.
    unsafe {
        assert_eq!(
            heap.realloc(p, l(MIB), 64 * TIB),
            Err(AllocError::CommitLimit {
                size: 64 * TIB - MIB,
                limit: phys
            })
        );
        assert!(holds(p, MIB, 7));
        // From a pool block too.
        let q = heap.alloc(l(64)).unwrap();
        assert!(matches!(
            heap.realloc(q, l(64), 64 * TIB),
            Err(AllocError::CommitLimit { .. })
        ));
        heap.dealloc(q, l(64));
        heap.dealloc(p, l(MIB));
    }
    // Movable blocks have the same limit.
    match heap.alloc_handle(64 * TIB, 16) {
        Err(HandleError::Alloc(AllocError::CommitLimit { size, limit })) => {
            assert!(size >= 64 * TIB);
            assert_eq!(limit, phys);
        }
        other => panic!("expected CommitLimit, got {other:?}"),
    }
    let s = heap.stats();
    assert_eq!((s.live_bytes(), s.large.live_blocks), (0, 0), "{s:?}");
}

#[test]
fn global_returns_null_past_the_limit() {
    static G: Global = Global::new();
    // SAFETY: a valid layout; null is the documented failure.
    let p = unsafe { G.alloc(l(64 * TIB)) };
    assert!(p.is_null());
    // SAFETY: `q` is live with `l(MIB)`; a failed realloc returns null and keeps it.
    unsafe {
        let q = G.alloc(l(MIB));
        assert!(!q.is_null());
        assert!(G.realloc(q, l(MIB), 64 * TIB).is_null());
        G.dealloc(q, l(MIB));
    }
}

#[test]
fn an_explicit_budget_counts_live_large_blocks() {
    let heap = with_limit(8 * MIB);
    let a = heap.alloc(l(4 * MIB)).unwrap();
    let b = heap.alloc(l(4 * MIB)).unwrap();
    assert_eq!(
        heap.alloc(l(MIB)),
        Err(AllocError::CommitLimit {
            size: MIB,
            limit: 8 * MIB
        })
    );
    // Growing past the budget fails and keeps the block; shrinking works.
    fill(a, 4 * MIB, 3);
    // SAFETY: `a` and `b` are live with `l(4 * MIB)`; each is freed once.
    unsafe {
        assert!(matches!(
            heap.realloc(a, l(4 * MIB), 5 * MIB),
            Err(AllocError::CommitLimit { size, .. }) if size == MIB
        ));
        assert!(holds(a, 4 * MIB, 3));
        let a = heap.realloc(a, l(4 * MIB), 2 * MIB).unwrap();
        assert!(holds(a, 2 * MIB, 3));
        // The 2 MiB given back can be asked for again.
        let c = heap.alloc(l(2 * MIB)).unwrap();
        assert!(heap.alloc(l(MIB)).is_err());
        heap.dealloc(b, l(4 * MIB));
        // A freed block stops counting (even while its mapping is cached).
        let d = heap.alloc(l(4 * MIB)).unwrap();
        heap.dealloc(a, l(2 * MIB));
        heap.dealloc(c, l(2 * MIB));
        heap.dealloc(d, l(4 * MIB));
    }
    let s = heap.stats();
    assert_eq!((s.live_bytes(), s.large.live_blocks), (0, 0), "{s:?}");
}

#[test]
fn usize_max_means_no_limit() {
    let heap = with_limit(usize::MAX);
    // The OS is then the one to refuse an impossible size.
    assert!(matches!(
        heap.alloc(l(1 << 62)),
        Err(AllocError::OutOfMemory { .. })
    ));
}

#[test]
fn the_error_says_what_happened() {
    let e = AllocError::CommitLimit {
        size: 64 * TIB,
        limit: 8 * MIB,
    };
    assert_eq!(
        e.to_string(),
        "70368744177664 more bytes would exceed the heap's commit limit of 8388608 bytes"
    );
}
