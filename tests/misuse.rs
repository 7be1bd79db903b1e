//! Death tests for misuse of the raw-pointer API (DESIGN invariant 9): each case runs in
//! a child process (this test binary, re-executed with `MISUSE_CASE` set), which must
//! die by `SIGABRT` after writing exactly the expected message to stderr.
//!
//! The child prints `misuse-addr=<address>` before the bad call, so the parent can
//! build the exact message. Cases marked `every_free` are checked on the hot path only
//! with debug assertions or the `hardened` feature (see `HeapConfig` docs); in other
//! builds they are checked when the free misses the thread cache's fast slot, which the
//! `miss_*` cases force.

use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::ExitStatusExt;
use std::ptr::NonNull;

use tidyheap::{Global, Heap};

const CASE_ENV: &str = "MISUSE_CASE";

/// Whether every free checks that its pointer is a block start (not only misses):
/// foreign pointers, movable blocks and wrong layouts are caught on every free in every
/// build; interior pointers on the hot path only with debug assertions or `hardened`.
const BLOCK_START_EVERY_FREE: bool = cfg!(any(debug_assertions, feature = "hardened"));

static GLOBAL: Global = Global::new();

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn announce(p: *const u8) {
    eprintln!("misuse-addr={p:p}");
}

/// Runs the misuse named `case`; returns only if it went unnoticed.
fn child(case: &str) {
    let heap = Heap::new();
    let l64 = l(64);
    match case {
        "double_free" => {
            let p = heap.alloc(l64).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: `p` is freed twice.
            unsafe {
                heap.dealloc(p, l64);
                heap.dealloc(p, l64);
            }
        }
        "double_free_later" => {
            // The block is not at the head of its list any more when freed again.
            let p = heap.alloc(l64).unwrap();
            let others: Vec<_> = (0..10).map(|_| heap.alloc(l64).unwrap()).collect();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: `p` is freed twice; the others once.
            unsafe {
                heap.dealloc(p, l64);
                for q in others {
                    heap.dealloc(q, l64);
                }
                heap.dealloc(p, l64);
            }
        }
        "double_free_other_thread" => {
            let p = heap.alloc(l(128)).unwrap();
            announce(p.as_ptr());
            // SAFETY: freed once here...
            unsafe { heap.dealloc(p, l(128)) };
            let addr = p.as_ptr() as usize;
            std::thread::scope(|s| {
                s.spawn(|| {
                    let p = NonNull::new(addr as *mut u8).unwrap();
                    // SAFETY: deliberately violated: ...and again on another thread.
                    unsafe { heap.dealloc(p, l(128)) };
                });
            });
        }
        "double_free_after_refill" => {
            // Enough blocks that the first one goes to the central list and back.
            let blocks: Vec<_> = (0..2000).map(|_| heap.alloc(l(16)).unwrap()).collect();
            let p = blocks[0];
            // SAFETY: each freed once...
            unsafe {
                for &q in &blocks {
                    heap.dealloc(q, l(16));
                }
            }
            let again: Vec<_> = (0..1990).map(|_| heap.alloc(l(16)).unwrap()).collect();
            let victim = blocks.iter().rev().find(|b| !again.contains(b)).copied();
            let victim = victim.unwrap_or(p);
            announce(victim.as_ptr());
            // SAFETY: deliberately violated: `victim` is free already.
            unsafe { heap.dealloc(victim, l(16)) };
        }
        "global_double_free" => {
            // SAFETY: deliberately violated: freed twice through `GlobalAlloc`.
            unsafe {
                let p = GLOBAL.alloc(l64);
                announce(p);
                GLOBAL.dealloc(p, l64);
                GLOBAL.dealloc(p, l64);
            }
        }
        "stack_pointer" | "miss_stack_pointer" => {
            let mut buf = [0u64; 16];
            let p = NonNull::from(&mut buf).cast::<u8>();
            if case.starts_with("miss_") {
                evict_fast_slot(&heap);
            }
            announce(p.as_ptr());
            // SAFETY: deliberately violated: not a heap block.
            unsafe { heap.dealloc(p, l64) };
        }
        "other_heap" => {
            let other = Heap::new();
            let q = other.alloc(l64).unwrap();
            let _warm = heap.alloc(l64).unwrap();
            announce(q.as_ptr());
            // SAFETY: deliberately violated: `q` belongs to `other`.
            unsafe { heap.dealloc(q, l64) };
        }
        "movable_as_fixed" | "miss_movable_as_fixed" => {
            let h = heap.alloc_handle(64, 8).unwrap();
            let p = heap.pin(h).unwrap().as_ptr();
            let _warm = heap.alloc(l64).unwrap();
            if case.starts_with("miss_") {
                evict_fast_slot(&heap);
            }
            announce(p.as_ptr());
            // SAFETY: deliberately violated: a movable block freed as a fixed one.
            unsafe { heap.dealloc(p, l64) };
        }
        "wrong_class" | "miss_wrong_class" => {
            let p = heap.alloc(l64).unwrap();
            let _warm = heap.alloc(l(128)).unwrap();
            if case.starts_with("miss_") {
                evict_fast_slot(&heap);
            }
            announce(p.as_ptr());
            // SAFETY: deliberately violated: freed with a layout of another class.
            unsafe { heap.dealloc(p, l(128)) };
        }
        "interior" | "miss_interior" => {
            let p = heap.alloc(l64).unwrap();
            // SAFETY: in bounds of the 64-byte block.
            let q = unsafe { p.add(16) };
            if case.starts_with("miss_") {
                evict_fast_slot(&heap);
            }
            announce(q.as_ptr());
            // SAFETY: deliberately violated: not the start of a block.
            unsafe { heap.dealloc(q, l64) };
        }
        "tail" => {
            // A 64 KiB span of 48 B blocks holds 1365 of them and a 16 B tail, which
            // starts where block 1365 would.
            let p = heap.alloc(l(48)).unwrap();
            let base = p.as_ptr() as usize & !(64 * 1024 - 1);
            let tail = (base + 1365 * 48) as *mut u8;
            announce(tail);
            // SAFETY: deliberately violated: the tail is no block.
            unsafe { heap.dealloc(NonNull::new(tail).unwrap(), l(48)) };
        }
        "double_free_stamp_erased" => {
            // A write after the first free erases the free stamp, so the second free is
            // not seen on the way in; the span's home bitmap catches it when the block
            // comes home. `keep` stays live, so the span never empties.
            let keep = heap.alloc(l64).unwrap();
            let p = heap.alloc(l64).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: `p` is written after its free (word 1, the
            // stamp) and freed twice; `keep` is freed at the end if nothing aborts.
            unsafe {
                heap.dealloc(p, l64);
                p.as_ptr().cast::<u64>().add(1).write(0);
                heap.dealloc(p, l64);
                heap.trim();
                heap.dealloc(keep, l64);
            }
        }
        "double_free_after_trim" => {
            let p = heap.alloc(l64).unwrap();
            // SAFETY: freed once here; the block's span empties and is trimmed.
            unsafe { heap.dealloc(p, l64) };
            heap.trim();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: freed again.
            unsafe { heap.dealloc(p, l64) };
        }
        "large_double_free" => {
            let big = l(1 << 20);
            let p = heap.alloc(big).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: freed twice.
            unsafe {
                heap.dealloc(p, big);
                heap.dealloc(p, big);
            }
        }
        "grown_double_free" => {
            // A block a realloc grew out of the pools, freed twice with its pool layout.
            let p = heap.alloc(l(1000)).unwrap();
            // SAFETY: `p` is live with that layout; only the result is used after.
            let q = unsafe { heap.realloc(p, l(1000), 100_000) }.unwrap();
            announce(q.as_ptr());
            // SAFETY: deliberately violated: freed twice.
            unsafe {
                heap.dealloc(q, l(100_000));
                heap.dealloc(q, l(100_000));
            }
        }
        "large_freed_as_pool" => {
            let p = heap.alloc(l(1 << 20)).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: freed with a pool layout.
            unsafe { heap.dealloc(p, l(100_000)) };
        }
        "large_wrong_size" => {
            let p = heap.alloc(l(1 << 20)).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: freed with a smaller layout.
            unsafe { heap.dealloc(p, l(300_000)) };
        }
        "large_realloc_wrong_size" => {
            let p = heap.alloc(l(1 << 20)).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: resized with a smaller old layout.
            let _ = unsafe { heap.realloc(p, l(300_000), 2 << 20) };
        }
        "canary_overflow" => {
            let p = heap.alloc(l(100)).unwrap();
            announce(p.as_ptr());
            // SAFETY: deliberately violated: one byte past the 100 requested.
            unsafe {
                p.as_ptr().add(100).write(0x41);
                heap.dealloc(p, l(100));
            }
        }
        "canary_overflow_global" => {
            // SAFETY: deliberately violated: one byte past the 24 requested.
            unsafe {
                let p = GLOBAL.alloc(l(24));
                announce(p);
                p.add(24).write(0);
                GLOBAL.dealloc(p, l(24));
            }
        }
        "canary_after_shrink" => {
            // An in-place realloc moves the canary: a write past the new end is caught.
            let p = heap.alloc(l(100)).unwrap();
            // SAFETY: `p` is live with `l(100)`; 99 keeps it in its class.
            let q = unsafe { heap.realloc(p, l(100), 99) }.unwrap();
            assert_eq!(p, q, "shrunk in place");
            announce(q.as_ptr());
            // SAFETY: deliberately violated: one byte past the 99 requested now.
            unsafe {
                q.as_ptr().add(99).write(1);
                heap.dealloc(q, l(99));
            }
        }
        "use_after_free_link" => {
            let q = heap.alloc(l64).unwrap();
            let p = heap.alloc(l64).unwrap();
            // SAFETY: each freed once: the thread's list is now `p → q`.
            unsafe {
                heap.dealloc(q, l64);
                heap.dealloc(p, l64);
            }
            announce(p.as_ptr());
            // SAFETY: deliberately violated: a write into the freed block's first word
            // (still mapped: the heap holds the span).
            unsafe { p.as_ptr().cast::<usize>().write(0x4141_4141_4140) };
            let _ = heap.alloc(l64);
            let _ = heap.alloc(l64);
        }
        "guard_page" => {
            // With `hardened` a 64 KiB span of 4 KiB blocks holds 15 of them, and its
            // last page is the guard: block 14 ends where the guard page starts.
            let l4k = l(4096);
            let blocks: Vec<_> = (0..16).map(|_| heap.alloc(l4k).unwrap()).collect();
            let last = blocks
                .iter()
                .find(|p| p.as_ptr() as usize % (64 * 1024) == 14 * 4096)
                .expect("some span's last block");
            announce(last.as_ptr());
            // SAFETY: deliberately violated: one byte past the end of the block.
            unsafe { last.as_ptr().add(4096).write_volatile(1) };
        }
        "shrunk_double_free" => {
            // A 4 KiB block shrunk in place to 2500 B, freed twice with its new layout.
            let p = heap.alloc(l(4000)).unwrap();
            // SAFETY: `p` is live with this layout; 2500 B fills half its 4 KiB block.
            let q = unsafe { heap.realloc(p, l(4000), 2500) }.unwrap();
            assert_eq!(p, q, "shrunk in place");
            announce(q.as_ptr());
            // SAFETY: deliberately violated: `q` is freed twice.
            unsafe {
                heap.dealloc(q, l(2500));
                heap.dealloc(q, l(2500));
            }
        }
        "regrown_then_small_layout" => {
            // Shrunk in place, grown back to its class, then freed with the small layout
            // again: the block is a 4 KiB one once more, so that layout is wrong.
            let p = heap.alloc(l(4000)).unwrap();
            // SAFETY: live blocks with these layouts, each resized in place.
            let p = unsafe {
                let q = heap.realloc(p, l(4000), 2500).unwrap();
                heap.realloc(q, l(2500), 4096).unwrap()
            };
            announce(p.as_ptr());
            // SAFETY: deliberately violated: the layout is not the block's.
            unsafe { heap.dealloc(p, l(2500)) };
        }
        other => panic!("unknown case {other}"),
    }
}

/// Uses another `Heap` on this thread, which takes the thread's `Heap` fast slot, so
/// `heap`'s next free misses it.
fn evict_fast_slot(heap: &Heap) {
    let _ = heap;
    let other = Heap::new();
    let p = other.alloc(l(32)).unwrap();
    // SAFETY: a live block of `other`, freed once.
    unsafe { other.dealloc(p, l(32)) };
    std::mem::forget(other);
}

/// The child's entry point: does nothing unless `MISUSE_CASE` is set.
#[test]
fn misuse_child() {
    if let Ok(case) = std::env::var(CASE_ENV) {
        child(&case);
        eprintln!("misuse-unnoticed");
    }
}

/// Runs `case` in a child; asserts it died by `SIGABRT` with `message(addr)` as a line
/// of its stderr.
fn expect_abort(case: &str, message: impl Fn(&str) -> String) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "misuse_child", "--nocapture", "--test-threads=1"])
        .env(CASE_ENV, case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let addr = stderr
        .lines()
        .find_map(|l| l.strip_prefix("misuse-addr="))
        .unwrap_or_else(|| panic!("{case}: no address printed; stderr:\n{stderr}"));
    let want = message(addr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{case}: not aborted ({:?}); stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.lines().any(|l| l == want),
        "{case}: expected the line {want:?} in stderr:\n{stderr}"
    );
}

#[test]
fn double_free_aborts() {
    let msg = |a: &str| format!("tidyheap: double free of {a} (64 B class)");
    expect_abort("double_free", msg);
    expect_abort("double_free_later", msg);
}

#[test]
fn double_free_on_another_thread_aborts() {
    expect_abort("double_free_other_thread", |a| {
        format!("tidyheap: double free of {a} (128 B class)")
    });
}

#[test]
fn double_free_of_a_block_that_went_through_the_central_list_aborts() {
    expect_abort("double_free_after_refill", |a| {
        format!("tidyheap: double free of {a} (16 B class)")
    });
}

#[test]
fn global_double_free_aborts() {
    expect_abort("global_double_free", |a| {
        format!("tidyheap: double free of {a} (64 B class)")
    });
}

fn foreign(a: &str) -> String {
    format!(
        "tidyheap: free of {a}, which is not a block of this heap (freed with a layout of \
         the 64 B class)"
    )
}

fn movable(a: &str) -> String {
    format!("tidyheap: free of {a} as a fixed block, but it is a movable (handle) block")
}

fn wrong_class(a: &str) -> String {
    format!(
        "tidyheap: free of {a} with a layout of the 128 B class, but the block is of the \
         64 B class (wrong layout passed to dealloc)"
    )
}

#[test]
fn foreign_pointers_abort_on_a_miss() {
    expect_abort("miss_stack_pointer", foreign);
    expect_abort("miss_movable_as_fixed", movable);
    expect_abort("miss_wrong_class", wrong_class);
}

/// Checked on the hot path in every build, release included (issue 15).
#[test]
fn foreign_pointers_abort_on_every_free() {
    expect_abort("stack_pointer", foreign);
    expect_abort("other_heap", foreign);
    expect_abort("movable_as_fixed", movable);
    expect_abort("wrong_class", wrong_class);
}

fn not_a_block_start(a: &str) -> String {
    format!("tidyheap: free of {a}, which is not the start of a block (64 B class)")
}

#[test]
fn interior_pointers_abort_on_a_miss() {
    expect_abort("miss_interior", not_a_block_start);
}

#[test]
fn interior_pointers_abort_on_every_free() {
    if !BLOCK_START_EVERY_FREE {
        eprintln!("skipped: the hot path's block-start check needs debug assertions or `hardened`");
        return;
    }
    expect_abort("interior", not_a_block_start);
    expect_abort("tail", |a| {
        format!("tidyheap: free of {a}, which is not the start of a block (48 B class)")
    });
}

/// A double free after the block's span emptied and its pages went back to the OS
/// (which erased the free stamp): the span's owner was cleared when it emptied, so the
/// free takes the slow path, which finds no block of the span out.
#[test]
fn double_free_after_the_span_was_trimmed_aborts() {
    expect_abort("double_free_after_trim", |a| {
        format!("tidyheap: double free of {a} (64 B class)")
    });
}

/// A double free that the free stamp misses (a write after the first free erased
/// it) is caught exactly when the block comes home: its bit in the span's home set
/// is already set.
#[test]
fn double_free_with_an_erased_stamp_aborts_at_home() {
    expect_abort("double_free_stamp_erased", |a| {
        format!("tidyheap: double free of {a} (64 B class)")
    });
}

#[test]
fn large_double_free_aborts() {
    expect_abort("large_double_free", |a| {
        format!(
            "tidyheap: free of {a} with a layout of 1048576 B, which is not a live large \
             block (a double free, or a pointer no large allocation returned)"
        )
    });
}

/// A block a realloc grew out of the pools is found by address; what is no such block
/// is still refused as before.
#[test]
fn grown_blocks_keep_the_misuse_checks() {
    let class =
        |size: usize| tidyheap::size_class::size(tidyheap::size_class::class_for(size, 8).unwrap());
    let msg = move |a: &str| {
        format!(
            "tidyheap: free of {a}, which is not a block of this heap (freed with a layout of \
             the {} B class)",
            class(100_000)
        )
    };
    expect_abort("grown_double_free", msg);
    expect_abort("large_freed_as_pool", msg);
}

#[test]
fn large_block_freed_with_another_size_aborts() {
    expect_abort("large_wrong_size", |a| {
        format!(
            "tidyheap: free of large block {a} with a layout of 300000 B (303104 B \
             mapping), but its mapping is 1048576 B (wrong layout passed to dealloc)"
        )
    });
    expect_abort("large_realloc_wrong_size", |a| {
        format!(
            "tidyheap: free of large block {a} with a layout of 300000 B (303104 B \
             mapping), but its mapping is 1048576 B (wrong layout passed to dealloc)"
        )
    });
}

#[cfg(feature = "hardened")]
#[test]
fn hardened_canary_catches_a_one_byte_overflow() {
    expect_abort("canary_overflow", |a| {
        format!("tidyheap: canary corrupted at {a}, block of 100 B")
    });
    expect_abort("canary_overflow_global", |a| {
        format!("tidyheap: canary corrupted at {a}, block of 24 B")
    });
    expect_abort("canary_after_shrink", |a| {
        format!("tidyheap: canary corrupted at {a}, block of 99 B")
    });
}

/// Runs `case` in a child; asserts it died by `SIGSEGV` (a guard page).
#[cfg(feature = "hardened")]
fn expect_fault(case: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "misuse_child", "--nocapture", "--test-threads=1"])
        .env(CASE_ENV, case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().any(|l| l.starts_with("misuse-addr=")),
        "{case}: the child did not get to the bad write; stderr:\n{stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{case}: no fault ({:?}); stderr:\n{stderr}",
        out.status
    );
}

/// A write one byte past the last block of a fixed span hits the span's guard page.
#[cfg(feature = "hardened")]
#[test]
fn hardened_guard_page_after_each_fixed_span() {
    expect_fault("guard_page");
}

/// A use-after-free write over a free block's list link: the next allocation that
/// reaches the block decodes a link that is no block of its class, and aborts.
#[cfg(feature = "hardened")]
#[test]
fn hardened_catches_a_corrupted_free_list_link() {
    expect_abort("use_after_free_link", |a| {
        format!("tidyheap: free list corrupted at {a}")
    });
}

/// Writes inside the requested bytes and in-place reallocs never trip the canary, and
/// a freed block reads back zero past its first 16 bytes.
#[cfg(feature = "hardened")]
#[test]
fn hardened_zeroes_on_free_and_keeps_good_blocks_quiet() {
    let heap = Heap::new();
    for size in [1, 8, 15, 16, 17, 24, 100, 112, 1000, 4096] {
        let p = heap.alloc(l(size)).unwrap();
        // SAFETY: `p` is live with `l(size)`; every access stays inside the request.
        unsafe {
            p.as_ptr().write_bytes(0xAB, size);
            let q = heap.realloc(p, l(size), size + 1).unwrap();
            q.as_ptr().write_bytes(0xCD, size + 1);
            heap.dealloc(q, l(size + 1));
        }
    }
    let p = heap.alloc(l(64)).unwrap();
    // SAFETY: `p` is live with `l(64)`; after the free the block is read through the
    // heap's mapping (still mapped), only to observe the zeroing.
    unsafe {
        p.as_ptr().write_bytes(0xEE, 64);
        heap.dealloc(p, l(64));
        let again = heap.alloc(l(64)).unwrap();
        assert_eq!(again, p, "the thread cache hands the same block back");
        let bytes = std::slice::from_raw_parts(again.as_ptr().add(16), 48);
        assert!(bytes.iter().all(|&b| b == 0), "{bytes:?}");
        heap.dealloc(again, l(64));
    }
}

#[test]
fn blocks_shrunk_in_place_keep_the_misuse_checks() {
    expect_abort("shrunk_double_free", |a| {
        format!("tidyheap: double free of {a} (4096 B class, shrunk in place by a realloc)")
    });
    expect_abort("regrown_then_small_layout", |a| {
        format!(
            "tidyheap: free of {a} with a layout of the 2560 B class, but the block is of \
             the 4096 B class (wrong layout passed to dealloc)"
        )
    });
}
