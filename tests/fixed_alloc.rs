//! The fixed-allocation API of `Heap`: size × alignment sweep, bad input and bad frees
//! here; multi-thread stress with cross-thread frees, thread exit and the demo workload
//! in `fixed_alloc/threads.rs`.

use std::alloc::Layout;
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::mpsc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::size_class;
use tidyheap::{AllocError, Heap, HeapConfig, HeapStats};

#[path = "../examples/threads.rs"]
mod demo;
#[path = "fixed_alloc/threads.rs"]
mod threads;

/// Reference bytes: blocks are filled by copying a window of this (memcpy, fast even in
/// debug builds) and checked by comparing against the same window (memcmp).
fn pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        (0..(5 << 20)).map(|_| rng.r#gen::<u8>()).collect()
    })
}

/// The window for `seed`: different seeds give different contents.
fn window(seed: u64, len: usize) -> &'static [u8] {
    let off = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize; // < 4096
    &pattern()[off..off + len]
}

/// Fills `len` bytes at `p` with the pattern of `seed`.
///
/// # Safety
///
/// `p` is valid for writes of `len` bytes.
unsafe fn fill(p: NonNull<u8>, len: usize, seed: u64) {
    // SAFETY: the caller guarantees `len` writable bytes; the window is a distinct
    // allocation.
    unsafe { std::ptr::copy_nonoverlapping(window(seed, len).as_ptr(), p.as_ptr(), len) };
}

/// Whether `len` bytes at `p` still hold the pattern of `seed`.
///
/// # Safety
///
/// `p` is valid for reads of `len` bytes.
unsafe fn holds(p: NonNull<u8>, len: usize, seed: u64) -> bool {
    // SAFETY: the caller guarantees `len` readable bytes.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), len) == window(seed, len) }
}

fn is_pool(size: usize, align: usize) -> bool {
    size_class::class_for(size, align).is_some()
}

fn assert_aligned(p: NonNull<u8>, align: usize, what: &str) {
    assert_eq!(
        p.as_ptr() as usize % align,
        0,
        "{what}: {p:p} not {align}-aligned"
    );
}

/// Sizes 2^k, 2^k ± 1 and 2^k ± 16 for 2^k up to 2^20 (nonzero).
fn sweep_sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=20)
        .flat_map(|k| {
            let p = 1usize << k;
            [p, p - 1, p + 1, p.saturating_sub(16), p + 16]
        })
        .filter(|&s| s > 0)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Accounting checks that hold at quiescence for any heap: the arena figures add up to
/// the totals, and the cache counters are coherent.
fn assert_consistent(s: &HeapStats) {
    assert_eq!(
        s.committed_bytes,
        s.arenas.iter().map(|a| a.committed_bytes).sum()
    );
    assert_eq!(s.spans, s.arenas.iter().map(|a| a.spans).sum());
    for c in [s.fixed, s.movable] {
        assert!(c.misses <= c.allocations);
        assert!(c.frees <= c.allocations);
        assert!(c.freed_bytes <= c.allocated_bytes);
    }
}

/// Reallocates `p` (live with `old`) to `new_size`, checks alignment and that the
/// first `keep` bytes of pattern `seed` survived, and counts a pool allocation if the
/// block had to move into a (different) pool class. Blocks that stay in their class
/// must stay in place.
/// Pool blocks handed out so far, and whether the block being resized is one.
struct PoolCount {
    allocs: u64,
    in_pool: bool,
}

/// A pool block grown by a realloc into a class of this size or more leaves the pools
/// (`pool::heap::resize`, "Blocks grown out of the pools").
const GROW_OUT_MIN: usize = 64 << 10;
/// A block out of the pools stays out while resized to this size or more.
const GROWN_KEEP_MIN: usize = 32 << 10;

fn resize_checked(
    heap: &Heap,
    p: NonNull<u8>,
    old: Layout,
    new_size: usize,
    keep: usize,
    seed: u64,
    count: &mut PoolCount,
) -> NonNull<u8> {
    let PoolCount {
        allocs: pool_allocs,
        in_pool,
    } = count;
    let what = format!("realloc {old:?} -> {new_size}");
    let align = old.align();
    let new_class = size_class::class_for(new_size, align);
    // (The class itself, not `usable_size`: under `hardened` that is the request.)
    let same_class = *in_pool
        && is_pool(old.size(), align)
        && new_class.is_some()
        && size_class::class_for(old.size(), align) == new_class;
    // SAFETY: `p` is live with `old`; only the result is used afterwards.
    let q = unsafe { heap.realloc(p, old, new_size) }.unwrap();
    assert_aligned(q, align.max(16), &what);
    if same_class {
        assert_eq!(q, p, "{what}: same-class realloc must stay in place");
    } else if *in_pool {
        let grows_out =
            new_size > old.size() && new_class.is_some_and(|c| size_class::size(c) >= GROW_OUT_MIN);
        if grows_out {
            // Out of the pools into a large mapping (`pool::heap::resize`).
            *in_pool = false;
        } else if q != p {
            // Moved: a new block (a shrink to a smaller class may stay in place, see
            // tests/realloc.rs for when).
            *in_pool = new_class.is_some();
            *pool_allocs += u64::from(*in_pool);
        }
    } else if new_class.is_some() && new_size < GROWN_KEEP_MIN {
        // A grown or large block resized well into the pool range moves back in.
        *in_pool = true;
        *pool_allocs += 1;
    }
    // SAFETY: `q` holds `new_size` ≥ `keep` bytes.
    assert!(unsafe { holds(q, keep, seed) }, "{what}: contents lost");
    q
}

#[test]
fn size_alignment_sweep() {
    let heap = Heap::new();
    let sizes = sweep_sizes();
    let mut count = PoolCount {
        allocs: 0,
        in_pool: false,
    };
    for align in (0..=12).map(|k| 1usize << k) {
        for (i, &size) in sizes.iter().enumerate() {
            let seed = (align * 1000 + i) as u64;
            let what = format!("size {size} align {align}");
            let l = Layout::from_size_align(size, align).unwrap();
            let p = heap.alloc(l).unwrap();
            count.in_pool = is_pool(size, align);
            count.allocs += u64::from(count.in_pool);
            assert_aligned(p, align.max(16), &what);
            let usable = heap.usable_size(l);
            assert!(usable >= size, "{what}: usable {usable}");
            // SAFETY: `usable` bytes are ours: write the pattern, then the last usable
            // byte, and read the pattern back.
            unsafe {
                fill(p, size, seed);
                p.as_ptr().add(usable - 1).write(0xEE);
                assert!(holds(p, size.min(usable - 1), seed), "{what}");
            }
            let keep = size.min(usable - 1);

            // Grow across classes (or into the large path), refill.
            let up = 2 * size + 1;
            let p = resize_checked(&heap, p, l, up, keep, seed, &mut count);
            // SAFETY: `p` holds `up` bytes.
            unsafe { fill(p, up, seed + 1) };
            let l = Layout::from_size_align(up, align).unwrap();

            // Shrink a little: into a lower class, but the old one would still fit.
            let less = up * 5 / 8;
            let p = resize_checked(&heap, p, l, less, less, seed + 1, &mut count);
            let l = Layout::from_size_align(less, align).unwrap();

            // Shrink across classes.
            let down = (size / 3).max(1);
            let p = resize_checked(&heap, p, l, down, down, seed + 1, &mut count);
            let l = Layout::from_size_align(down, align).unwrap();

            // Grow to the full usable size: within the class, so in place for pools.
            let full = heap.usable_size(l);
            let p = resize_checked(&heap, p, l, full, down, seed + 1, &mut count);
            // SAFETY: `p` is live with this layout; freed once.
            unsafe { heap.dealloc(p, Layout::from_size_align(full, align).unwrap()) };
        }
    }
    let s = heap.stats();
    assert_consistent(&s);
    assert_eq!(s.fixed.live_bytes(), 0);
    assert_eq!(s.fixed.live_blocks(), 0);
    assert_eq!(s.fixed.allocations, count.allocs);
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
}

#[test]
fn zero_size_requests_get_unique_freeable_blocks() {
    let heap = Heap::new();
    for align in [1, 8, 16, 64, 4096] {
        let l = Layout::from_size_align(0, align).unwrap();
        let usable = heap.usable_size(l);
        if cfg!(feature = "hardened") {
            // A block is as long as asked for: its class's slack holds the canary.
            assert_eq!(usable, 0);
        } else {
            assert!(usable >= align.min(16), "a real block");
        }
        let blocks: Vec<_> = (0..300).map(|_| heap.alloc(l).unwrap()).collect();
        let distinct: HashSet<_> = blocks.iter().map(|p| p.as_ptr() as usize).collect();
        assert_eq!(
            distinct.len(),
            blocks.len(),
            "align {align}: pointers are unique"
        );
        for (i, &p) in blocks.iter().enumerate() {
            assert_aligned(p, align, "zero-size");
            // SAFETY: each block has `usable` writable bytes, and blocks do not overlap
            // (checked by reading the patterns back below).
            unsafe { fill(p, usable, i as u64) };
        }
        for (i, &p) in blocks.iter().enumerate() {
            // SAFETY: allocated above with `l`, freed once.
            unsafe {
                assert!(holds(p, usable, i as u64), "zero-size blocks overlap");
                heap.dealloc(p, l);
            }
        }
    }
    let s = heap.stats();
    assert_eq!(s.fixed.allocations, 5 * 300);
    assert_eq!(s.fixed.live_blocks(), 0);
}

#[test]
fn bad_alignment_is_an_error() {
    let heap = Heap::new();
    for align in [0, 3, 6, 12, 24, 100, usize::MAX] {
        assert_eq!(
            heap.alloc_with(64, align),
            Err(AllocError::InvalidAlignment { align })
        );
    }
    assert_eq!(heap.stats().fixed.allocations, 0);
}

#[test]
fn overflowing_size_is_too_large() {
    let heap = Heap::new();
    let max = isize::MAX as usize;
    for (size, align) in [(usize::MAX, 1), (max + 1, 1), (max, 2), (max - 100, 4096)] {
        assert_eq!(
            heap.alloc_with(size, align),
            Err(AllocError::TooLarge { size }),
            "size {size} align {align}"
        );
    }
    // A valid block asked to grow past the address space stays intact.
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = heap.alloc(l).unwrap();
    // SAFETY: `p` is live with `l`; a failed realloc leaves it ours, freed below.
    unsafe {
        fill(p, 100, 7);
        assert_eq!(
            heap.realloc(p, l, usize::MAX),
            Err(AllocError::TooLarge { size: usize::MAX })
        );
        assert!(holds(p, 100, 7));
        heap.dealloc(p, l);
    }
}

#[test]
fn impossible_but_valid_size_is_out_of_memory() {
    // No commit limit (the default one refuses first: see tests/commit_limit.rs).
    let heap = Heap::with_config(HeapConfig {
        commit_limit: usize::MAX,
        ..HeapConfig::DEFAULT
    });
    // 4 EiB: a valid `Layout`, but more than any address space; the OS refuses it.
    let huge = 1usize << 62;
    assert!(matches!(
        heap.alloc_with(huge, 8),
        Err(AllocError::OutOfMemory { .. })
    ));
    assert!(matches!(
        heap.alloc_zeroed(Layout::from_size_align(huge, 4096).unwrap()),
        Err(AllocError::OutOfMemory { .. })
    ));
    // Growing a live block to it fails the same way and keeps the block.
    let l = Layout::from_size_align(64, 16).unwrap();
    let p = heap.alloc(l).unwrap();
    // SAFETY: `p` is live with `l`; a failed realloc leaves it ours, freed below.
    unsafe {
        fill(p, 64, 9);
        assert!(matches!(
            heap.realloc(p, l, huge),
            Err(AllocError::OutOfMemory { .. })
        ));
        assert!(holds(p, 64, 9));
        heap.dealloc(p, l);
    }
    let s = heap.stats();
    assert_eq!(s.fixed.allocations, 1);
    assert_eq!(s.live_bytes(), 0);
}

/// Which bad `dealloc` the child process performs; see `bad_dealloc_panics_in_debug`.
#[cfg(debug_assertions)]
const BAD_DEALLOC_ENV: &str = "TIDYHEAP_TEST_BAD_DEALLOC";

/// Re-runs this test binary's test `name` with `BAD_DEALLOC_ENV=case` and returns
/// whether it succeeded, and its stderr.
#[cfg(debug_assertions)]
fn run_child(name: &str, case: &str) -> (bool, String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(BAD_DEALLOC_ENV, case)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The child's side: performs one bad `dealloc`, which must panic before it returns.
#[cfg(debug_assertions)]
fn bad_dealloc(case: &str) {
    let heap = Heap::new();
    let l = Layout::from_size_align(64, 8).unwrap();
    let p = heap.alloc(l).unwrap();
    match case {
        // SAFETY: deliberately violated: the layout is wrong. The debug check panics
        // before the heap is touched.
        "wrong-class" => unsafe { heap.dealloc(p, Layout::from_size_align(1000, 8).unwrap()) },
        "foreign" => {
            let other = Heap::new();
            let q = other.alloc(l).unwrap();
            // SAFETY: deliberately violated: `q` belongs to `other`. Caught first.
            unsafe { heap.dealloc(q, l) }
        }
        // SAFETY: deliberately violated: not the start of a block. Caught first.
        "interior" => unsafe { heap.dealloc(p.add(16), l) },
        other => panic!("unknown case {other}"),
    }
}

#[cfg(debug_assertions)]
#[test]
fn bad_dealloc_panics_in_debug() {
    const NAME: &str = "bad_dealloc_panics_in_debug";
    if let Ok(case) = std::env::var(BAD_DEALLOC_ENV) {
        bad_dealloc(&case);
        return; // Not reached when the check works: the parent then sees success.
    }
    for (case, message) in [
        ("wrong-class", "wrong layout passed to dealloc"),
        ("foreign", "which is not a block of this heap"),
        ("interior", "not the start of a block"),
    ] {
        let (ok, stderr) = run_child(NAME, case);
        assert!(
            !ok,
            "{case}: the bad dealloc did not panic; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(message),
            "{case}: expected {message:?} in stderr:\n{stderr}"
        );
    }
}
