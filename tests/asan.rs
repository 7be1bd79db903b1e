//! Under AddressSanitizer with `--cfg tidyheap_asan` (see the README's *Contributing*
//! section), free pool blocks are poisoned: touching one is reported. Each case runs in
//! a child process, since ASan aborts on the first report.

#![cfg(tidyheap_asan)]

use std::alloc::Layout;
use std::process::Command;

use tidyheap::Heap;

const CHILD: &str = "TIDYHEAP_ASAN_CHILD";

/// Reads one byte through `p` (volatile, so it is not optimised out).
///
/// # Safety
///
/// None in the Rust sense is upheld on purpose: ASan must stop the process first.
unsafe fn touch(p: *const u8) -> u8 {
    // SAFETY: deliberately not; see the function docs.
    unsafe { p.read_volatile() }
}

/// Runs `case` in a child process (this test binary, filtered to `test`), or, in the
/// child, runs `bad`, which must be stopped by ASan.
fn expect_asan_report(test: &str, bad: impl FnOnce()) {
    if std::env::var(CHILD).as_deref() == Ok(test) {
        bad();
        eprintln!("NOT REPORTED");
        std::process::exit(0);
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .output()
        .expect("run the child");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("use-after-poison"),
        "{test}: ASan did not report the access ({:?}):\n{err}",
        out.status
    );
}

#[test]
fn fixed_block_used_after_free() {
    expect_asan_report("fixed_block_used_after_free", || {
        let heap = Heap::new();
        let l = Layout::from_size_align(64, 16).unwrap();
        let p = heap.alloc(l).unwrap();
        // SAFETY: allocated above with `l`.
        unsafe { heap.dealloc(p, l) };
        // SAFETY: none: byte 32 of a free block.
        unsafe { touch(p.as_ptr().add(32)) };
    });
}

#[test]
fn fixed_block_overflow_into_a_carved_neighbour() {
    expect_asan_report("fixed_block_overflow_into_a_carved_neighbour", || {
        let heap = Heap::new();
        let l = Layout::from_size_align(64, 16).unwrap();
        let p = heap.alloc(l).unwrap();
        // SAFETY: none: 32 bytes into the next block, which sits free in this thread's
        // cache (blocks are carved in batches).
        unsafe { touch(p.as_ptr().add(64 + 32)) };
    });
}

#[test]
fn movable_block_used_after_free() {
    expect_asan_report("movable_block_used_after_free", || {
        let heap = Heap::new();
        let h = heap.alloc_handle(256, 16).unwrap();
        let p = heap.pin(h).unwrap().as_ptr();
        heap.free_handle(h).unwrap();
        // SAFETY: none: the handle's block is free.
        unsafe { touch(p.as_ptr().add(100)) };
    });
}

#[test]
fn old_copy_of_a_moved_block_is_poisoned() {
    expect_asan_report("old_copy_of_a_moved_block_is_poisoned", || {
        let heap = Heap::new();
        let hs: Vec<_> = (0..4096)
            .map(|_| heap.alloc_handle(64, 16).unwrap())
            .collect();
        for h in hs.iter().skip(1).step_by(2) {
            heap.free_handle(*h).unwrap();
        }
        let old: Vec<_> = hs
            .iter()
            .step_by(2)
            .map(|&h| (h, heap.pin(h).unwrap().as_ptr()))
            .collect();
        heap.compact_full();
        let (_, p) = old
            .iter()
            .find(|&&(h, p)| heap.pin(h).unwrap().as_ptr() != p)
            .expect("compact_full moved a block");
        // SAFETY: none: the block's old copy went home to its span.
        unsafe { touch(p.as_ptr().add(32)) };
    });
}
