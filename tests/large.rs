//! Integration tests of large blocks (`LargeAllocator`) and file-backed assets
//! (`MappedAsset`).

use std::alloc::Layout;
use std::path::PathBuf;
use std::process::Command;
use std::ptr::NonNull;
use std::time::Duration;

use tidyheap::AllocError;
use tidyheap::large::{
    HUGE_PAGE_SIZE, HugePages, LargeAllocator, LargeConfig, LargeStats, MappedAsset,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// A byte pattern that differs per offset and per block.
fn pattern(seed: usize, i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12) ^ seed) as u8
}

/// The bytes `fill` and `check` touch below `len`: every 509th and the last of every
/// page (a full fill is slow in debug builds; this still touches every page, and the
/// sample below any shorter length is the prefix of the sample below `len`).
fn sample(len: usize) -> impl Iterator<Item = usize> {
    (0..len).step_by(509).chain((PAGE - 1..len).step_by(PAGE))
}

/// Writes the pattern at the [`sample`] bytes.
///
/// # Safety
///
/// `[p, p + len)` is writable.
unsafe fn fill(p: NonNull<u8>, len: usize, seed: usize) {
    for i in sample(len) {
        // SAFETY: `i < len`, inside the writable range.
        unsafe { p.as_ptr().add(i).write(pattern(seed, i)) };
    }
}

/// Checks what [`fill`] wrote over `[0, len)`.
///
/// # Safety
///
/// `[p, p + len)` is readable.
unsafe fn check(p: NonNull<u8>, len: usize, seed: usize) {
    for i in sample(len) {
        // SAFETY: `i < len`, inside the readable range.
        let got = unsafe { p.as_ptr().add(i).read() };
        assert_eq!(got, pattern(seed, i), "byte {i} of {len}");
    }
}

/// Checks that `[p + from, p + to)` reads as zero, one byte per page and the last.
///
/// # Safety
///
/// `[p, p + to)` is readable.
unsafe fn check_zero(p: NonNull<u8>, from: usize, to: usize) {
    for i in (from..to)
        .step_by(PAGE)
        .chain(to.checked_sub(1).filter(|&l| l >= from))
    {
        // SAFETY: `from <= i < to`, inside the readable range.
        assert_eq!(unsafe { p.as_ptr().add(i).read() }, 0, "byte {i} not zero");
    }
}

#[test]
fn alloc_is_zeroed_writable_and_freed() {
    let large = LargeAllocator::default();
    for size in [300 * KIB, MIB + 1, 3 * MIB] {
        let l = layout(size, 16);
        let p = large.alloc(l).unwrap();
        let usable = large.usable_size(l);
        assert!(usable >= size && usable % PAGE == 0);
        // SAFETY: a fresh block of `usable` writable bytes, freed with its layout.
        unsafe {
            check_zero(p, 0, usable);
            fill(p, usable, size);
            check(p, usable, size);
            large.dealloc(p, l);
        }
    }
    // No size is within a factor of two of another: three fresh maps, all cached now.
    let s = large.stats();
    assert_eq!(
        (
            s.maps,
            s.unmaps,
            s.live_blocks,
            s.live_bytes,
            s.mapped_bytes,
            s.cached_blocks,
            s.cached_bytes,
        ),
        (3, 0, 0, 0, 0, 3, 300 * KIB + MIB + 4 * KIB + 4 * MIB)
    );
    assert_eq!(large.purge(Duration::ZERO), s.cached_bytes);
    let s = large.stats();
    assert_eq!((s.unmaps, s.cached_blocks, s.cached_bytes), (3, 0, 0));
}

/// Grow and shrink through every path (within usable, in place, moved, across the
/// huge-page threshold), with and without guard pages; contents survive and new bytes
/// are zero.
#[test]
fn realloc_grows_and_shrinks_preserving_contents() {
    for config in [
        LargeConfig::DEFAULT,
        LargeConfig {
            guard_page: true,
            ..LargeConfig::DEFAULT
        },
        LargeConfig {
            growth_room: false,
            huge_pages: HugePages::Never,
            ..LargeConfig::DEFAULT
        },
    ] {
        let large = LargeAllocator::new(config);
        let mut l = layout(300 * KIB, 64);
        let mut p = large.alloc(l).unwrap();
        // SAFETY: a live block of `l`.
        unsafe { fill(p, l.size(), 7) };
        for new_size in [
            301 * KIB,
            900 * KIB,
            5 * MIB,
            17 * MIB,
            4 * MIB,
            700 * KIB,
            260 * KIB,
        ] {
            let keep = l.size().min(new_size);
            // SAFETY: `p` is a live block of `l`; afterwards only the result is used.
            p = unsafe { large.realloc(p, l, new_size) }.unwrap();
            assert_eq!(p.as_ptr() as usize % 64, 0);
            // SAFETY: the block now has `new_size` usable bytes.
            unsafe {
                check(p, keep, 7);
                check_zero(p, l.size().next_multiple_of(PAGE), new_size);
                fill(p, new_size, 7);
            }
            l = layout(new_size, 64);
            let s = large.stats();
            assert_eq!((s.live_blocks, s.live_bytes), (1, new_size));
            assert_eq!(
                s.mapped_bytes,
                large.usable_size(l) + config.guard_page as usize * PAGE
            );
        }
        // SAFETY: a live block of `l`.
        unsafe { large.dealloc(p, l) };
        let s = large.stats();
        assert_eq!(
            (s.live_blocks, s.live_bytes, s.mapped_bytes),
            (0, 0, 0),
            "{config:?}"
        );
        assert_eq!(s.grow_in_place + s.grow_moved, 4, "{config:?} {s:?}");
        assert_eq!(s.shrink_in_place, 3, "{config:?} {s:?}");
        assert_eq!(
            s.copy_fallbacks, 0,
            "remapping should always work here: {s:?}"
        );
    }
}

#[test]
fn relocate_keeps_contents_and_changes_address() {
    for config in [
        LargeConfig::DEFAULT,
        LargeConfig {
            guard_page: true,
            ..LargeConfig::DEFAULT
        },
    ] {
        let large = LargeAllocator::new(config);
        for (size, align) in [(300 * KIB, 16), (3 * MIB, 1 << 22)] {
            let l = layout(size, align);
            let p = large.alloc(l).unwrap();
            // SAFETY: `p` is a live block of `l`; after the move only `q` is used.
            let q = unsafe {
                fill(p, size, 3);
                large.relocate(p, l).unwrap()
            };
            assert_ne!(p, q);
            assert_eq!(q.as_ptr() as usize % align, 0);
            // SAFETY: `q` is the live block now.
            unsafe {
                check(q, size, 3);
                large.dealloc(q, l);
            }
        }
        let s = large.stats();
        assert_eq!(
            (
                s.relocations,
                s.copy_fallbacks,
                s.live_blocks,
                s.mapped_bytes
            ),
            (2, 0, 0, 0)
        );
    }
}

#[test]
fn alignment_sweep_up_to_4_mib() {
    let large = LargeAllocator::default();
    let mut align = PAGE;
    while align <= 4 * MIB {
        for size in [
            0,
            1,
            align - 1,
            align,
            align + 1,
            256 * KIB + 1,
            2 * MIB + 5,
        ] {
            let l = layout(size, align);
            let p = large.alloc(l).unwrap();
            assert_eq!(p.as_ptr() as usize % align, 0, "size {size} align {align}");
            let usable = large.usable_size(l);
            assert!(usable >= size.max(1));
            // SAFETY: a fresh block with `usable` writable bytes.
            unsafe {
                check_zero(p, 0, usable);
                fill(p, usable, align);
                check(p, usable, align);
                large.dealloc(p, l);
            }
        }
        align *= 2;
    }
    assert_eq!(large.stats().live_blocks, 0);
}

#[test]
fn impossible_sizes_are_errors() {
    let large = LargeAllocator::new(LargeConfig {
        guard_page: true,
        ..LargeConfig::DEFAULT
    });
    let max = isize::MAX as usize;
    // Rounding to a page, adding the guard page, or the alignment slack overflows.
    for l in [
        layout(max - 100, 1),
        layout(max - 2 * PAGE + 1, 1),
        layout(max / 2 + 1, 1 << 62),
    ] {
        assert_eq!(large.alloc(l), Err(AllocError::TooLarge { size: l.size() }));
    }
    // Representable, but beyond the address space: the kernel refuses.
    match large.alloc(layout(1 << 60, 16)) {
        Err(AllocError::OutOfMemory { errno, .. }) => assert_eq!(errno, libc::ENOMEM),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // A failed realloc leaves the block intact and owned.
    let l = layout(300 * KIB, 16);
    let p = large.alloc(l).unwrap();
    // SAFETY: `p` is a live block of `l`; the failed reallocs leave it so.
    unsafe {
        fill(p, l.size(), 9);
        assert_eq!(
            large.realloc(p, l, usize::MAX),
            Err(AllocError::TooLarge { size: usize::MAX })
        );
        assert!(matches!(
            large.realloc(p, l, 1 << 60),
            Err(AllocError::OutOfMemory { .. })
        ));
        check(p, l.size(), 9);
        large.dealloc(p, l);
    }
    let s = large.stats();
    assert_eq!(
        (
            s.maps,
            s.unmaps,
            s.live_bytes,
            s.mapped_bytes,
            s.cached_blocks
        ),
        (1, 0, 0, 0, 1)
    );
}

/// The `VmFlags` line of the `/proc/self/smaps` entry that starts at `addr`.
fn vm_flags(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&header));
    assert!(lines.next().is_some(), "no mapping starts at {addr:x}");
    lines
        .find(|line| line.starts_with("VmFlags:"))
        .unwrap()
        .to_string()
}

/// `HugePages::Advise` forces the fallback: ordinary pages, 2 MiB-aligned, with
/// `MADV_HUGEPAGE` (the kernel shows it as the `hg` flag).
#[test]
fn huge_page_fallback_is_forced_and_counted() {
    let large = LargeAllocator::new(LargeConfig {
        huge_pages: HugePages::Advise,
        ..LargeConfig::DEFAULT
    });
    let l = layout(3 * MIB, 16);
    let p = large.alloc(l).unwrap();
    assert_eq!(p.as_ptr() as usize % HUGE_PAGE_SIZE, 0);
    assert_eq!(large.usable_size(l), 4 * MIB);
    let flags = vm_flags(p.as_ptr() as usize);
    assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    // SAFETY: a live 4 MiB block.
    unsafe {
        fill(p, 4 * MIB, 1);
        check(p, 4 * MIB, 1);
        large.dealloc(p, l);
    }
    let small = large.alloc(layout(MIB, 16)).unwrap();
    // SAFETY: a live block of that layout.
    unsafe { large.dealloc(small, layout(MIB, 16)) };
    let s = large.stats();
    assert_eq!((s.huge_tlb, s.huge_fallbacks, s.maps), (0, 1, 2));
}

/// `HugePages::Try` takes one of the two outcomes (which depends on the machine's
/// reserved huge pages) and `Never` neither.
#[test]
fn huge_page_attempt_is_counted_once() {
    let large = LargeAllocator::default();
    let l = layout(2 * MIB, 16);
    let p = large.alloc(l).unwrap();
    // SAFETY: a live 2 MiB block.
    unsafe {
        fill(p, 2 * MIB, 5);
        check(p, 2 * MIB, 5);
        large.dealloc(p, l);
    }
    let s = large.stats();
    assert_eq!(s.huge_tlb + s.huge_fallbacks, 1, "{s:?}");
    let reserved: usize = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .map_or(0, |s| s.trim().parse().unwrap_or(0));
    if reserved == 0 {
        assert_eq!(
            s.huge_fallbacks, 1,
            "no huge pages are reserved, MAP_HUGETLB must fail"
        );
    }

    let never = LargeAllocator::new(LargeConfig {
        huge_pages: HugePages::Never,
        ..LargeConfig::DEFAULT
    });
    let p = never.alloc(l).unwrap();
    // SAFETY: a live block of `l`.
    unsafe { never.dealloc(p, l) };
    let s = never.stats();
    assert_eq!((s.huge_tlb, s.huge_fallbacks), (0, 0));
}

/// Set in the child process of `guard_page_faults`: which overrun to commit.
const GUARD_CHILD: &str = "TIDYHEAP_GUARD_CHILD";

/// Commits an overrun one byte past the usable size of a guarded block (after the
/// `case`'s operation), which must kill the process.
fn overrun_guarded_block(case: &str) -> ! {
    // No core dump for the deliberate crash.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; lowering a limit is always allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    let large = LargeAllocator::new(LargeConfig {
        guard_page: true,
        ..LargeConfig::DEFAULT
    });
    let l = layout(300 * KIB, 16);
    let p = large.alloc(l).unwrap();
    // SAFETY: `p` is a live block of `l`; each case leaves `(p, size)` live.
    let (p, size) = unsafe {
        match case {
            "alloc" => (p, l.size()),
            "grown" => (large.realloc(p, l, 3 * MIB).unwrap(), 3 * MIB),
            "shrunk" => (large.realloc(p, l, 100 * KIB).unwrap(), 100 * KIB),
            "relocated" => (large.relocate(p, l).unwrap(), l.size()),
            // The freed mapping is cached, then reused (shrunk or grown) for the next block.
            "reused_smaller" | "reused_larger" => {
                large.dealloc(p, l);
                let size = if case == "reused_smaller" {
                    200 * KIB
                } else {
                    500 * KIB
                };
                let q = large.alloc(layout(size, 16)).unwrap();
                assert_eq!(large.stats().cache_hits, 1);
                (q, size)
            }
            other => panic!("unknown guard case {other}"),
        }
    };
    let usable = large.usable_size(layout(size, 16));
    // SAFETY: the last usable byte is writable.
    unsafe { p.as_ptr().add(usable - 1).write_volatile(1) };
    // SAFETY: deliberately not sound: this writes the PROT_NONE guard page, which must
    // kill the process with SIGSEGV before the write happens.
    unsafe { p.as_ptr().add(usable).write_volatile(1) };
    eprintln!("guard page did not fault ({case})");
    std::process::exit(0)
}

/// The guard page faults: each case runs in a child process (this test binary, filtered
/// to this test) that must die from SIGSEGV or SIGBUS.
#[test]
fn guard_page_faults() {
    use std::os::unix::process::ExitStatusExt;
    if let Ok(case) = std::env::var(GUARD_CHILD) {
        overrun_guarded_block(&case);
    }
    for case in [
        "alloc",
        "grown",
        "shrunk",
        "relocated",
        "reused_smaller",
        "reused_larger",
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "guard_page_faults",
                "--exact",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(GUARD_CHILD, case)
            .output()
            .unwrap();
        let signal = out.status.signal();
        assert!(
            signal == Some(libc::SIGSEGV) || signal == Some(libc::SIGBUS),
            "{case}: child ended with {:?}; stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Exact statistics after a fixed sequence.
#[test]
fn stats_are_exact_after_a_sequence() {
    let large = LargeAllocator::new(LargeConfig {
        huge_pages: HugePages::Advise,
        ..LargeConfig::DEFAULT
    });
    let (a, b, c) = (
        layout(300 * KIB, 16),
        layout(3 * MIB, 16),
        layout(MIB, 1 << 21),
    );
    let pa = large.alloc(a).unwrap();
    let pb = large.alloc(b).unwrap();
    let pc = large.alloc(c).unwrap();
    let s = large.stats();
    assert_eq!(
        s,
        LargeStats {
            live_blocks: 3,
            live_bytes: 300 * KIB + 3 * MIB + MIB,
            mapped_bytes: 300 * KIB + 4 * MIB + MIB,
            maps: 3,
            huge_fallbacks: 1,
            cache_misses: 3,
            ..LargeStats::default()
        }
    );
    // SAFETY: each pointer is a live block of its layout and replaced by the result.
    unsafe {
        let pa = large.realloc(pa, a, 302 * KIB).unwrap(); // within usable: in place
        let pa = large.realloc(pa, layout(302 * KIB, 16), 200 * KIB).unwrap(); // shrink
        let pb = large.relocate(pb, b).unwrap();
        large.dealloc(pc, c);
        let s = large.stats();
        assert_eq!(
            s,
            LargeStats {
                live_blocks: 2,
                live_bytes: 200 * KIB + 3 * MIB,
                mapped_bytes: 200 * KIB + 4 * MIB,
                maps: 3,
                huge_fallbacks: 1,
                grow_in_place: 1,
                shrink_in_place: 1,
                relocations: 1,
                cached_blocks: 1,
                cached_bytes: MIB,
                cache_misses: 3,
                ..LargeStats::default()
            }
        );
        large.dealloc(pa, layout(200 * KIB, 16));
        large.dealloc(pb, b);
    }
    let s = large.stats();
    assert_eq!(
        (s.live_blocks, s.live_bytes, s.mapped_bytes, s.unmaps),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (s.cached_blocks, s.cached_bytes),
        (3, MIB + 200 * KIB + 4 * MIB)
    );
    assert_eq!(large.purge(Duration::ZERO), s.cached_bytes);
    let s = large.stats();
    assert_eq!((s.unmaps, s.cached_blocks, s.cached_bytes), (3, 0, 0));
}

/// Several threads allocate, grow, relocate and free at once; accounting is exact after.
#[test]
fn threads_share_one_allocator() {
    static LARGE: LargeAllocator = LargeAllocator::new(LargeConfig::DEFAULT);
    std::thread::scope(|scope| {
        for t in 0..4 {
            scope.spawn(move || {
                for i in 0..20 {
                    let l = layout(260 * KIB + i * 5000, 64);
                    let p = LARGE.alloc(l).unwrap();
                    // SAFETY: each block is live and owned by this thread until freed.
                    unsafe {
                        fill(p, l.size(), t);
                        let p = LARGE.realloc(p, l, 2 * l.size()).unwrap();
                        let l2 = layout(2 * l.size(), 64);
                        let p = LARGE.relocate(p, l2).unwrap();
                        check(p, l.size(), t);
                        LARGE.dealloc(p, l2);
                    }
                }
            });
        }
    });
    let s = LARGE.stats();
    assert_eq!(
        (
            s.maps - s.unmaps,
            s.live_blocks,
            s.live_bytes,
            s.mapped_bytes
        ),
        (s.cached_blocks as u64, 0, 0, 0)
    );
    assert_eq!(s.cache_hits + s.cache_misses, 80);
    assert_eq!(s.maps, s.cache_misses, "every miss maps, every hit reuses");
    LARGE.purge(Duration::ZERO);
    let s = LARGE.stats();
    assert_eq!((s.maps, s.cached_blocks, s.cached_bytes), (s.unmaps, 0, 0));
    assert_eq!(
        (
            s.grow_in_place + s.grow_moved,
            s.relocations,
            s.copy_fallbacks
        ),
        (80, 80, 0)
    );
}

/// The seed's vector-growth pattern on large elements: 10 → 1280 elements of 4 KiB by
/// doubling, through raw realloc. Prints the in-place share (`--nocapture`) and checks
/// the target (≥ 50 %) with growth room, the default.
#[test]
fn vector_growth_is_mostly_in_place() {
    const ELEM: usize = 4096;
    for growth_room in [true, false] {
        let large = LargeAllocator::new(LargeConfig {
            growth_room,
            ..LargeConfig::DEFAULT
        });
        for round in 0..4 {
            let mut cap = 10;
            let mut l = layout(cap * ELEM, 8);
            let mut p = large.alloc(l).unwrap();
            while cap < 1280 {
                // SAFETY: `p` is a live block of `l`, replaced by the result.
                unsafe {
                    fill(p, l.size(), round);
                    p = large.realloc(p, l, 2 * cap * ELEM).unwrap();
                    check(p, l.size(), round);
                }
                cap *= 2;
                l = layout(cap * ELEM, 8);
            }
            // SAFETY: the final live block of `l`.
            unsafe { large.dealloc(p, l) };
        }
        let s = large.stats();
        assert_eq!(
            (s.grow_in_place + s.grow_moved, s.copy_fallbacks),
            (4 * 7, 0)
        );
        println!(
            "vector growth 10 -> 1280 x 4 KiB, growth_room = {growth_room}: {} in place, {} moved ({:.0} % in place)",
            s.grow_in_place,
            s.grow_moved,
            100.0 * s.in_place_growth_share()
        );
        if growth_room {
            assert!(s.in_place_growth_share() >= 0.5, "{s:?}");
        }
    }
}

fn temp_file(tag: &str, contents: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tidyheap-large-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn mapped_asset_equals_the_file() {
    let contents: Vec<u8> = (0..3 * MIB + 123).map(|i| pattern(11, i)).collect();
    let path = temp_file("asset", &contents);
    // SAFETY: the file is ours and not modified while mapped.
    let asset = unsafe { MappedAsset::open(&path) }.unwrap();
    assert_eq!(asset.len(), contents.len());
    assert!(asset.as_bytes() == contents.as_slice());
    assert_eq!(asset.path(), path);
    // Shared across threads (Send + Sync).
    let asset = std::sync::Arc::new(asset);
    let remote = std::sync::Arc::clone(&asset);
    let sum = std::thread::spawn(move || remote.iter().map(|&b| b as u64).sum::<u64>())
        .join()
        .unwrap();
    assert_eq!(sum, contents.iter().map(|&b| b as u64).sum::<u64>());
    drop(asset);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn missing_asset_error_names_the_path() {
    let path = std::env::temp_dir().join(format!("tidyheap-missing-{}.bin", std::process::id()));
    // SAFETY: nothing is mapped when the open fails.
    let err = unsafe { MappedAsset::open(&path) }.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn zero_length_asset_is_empty() {
    let path = temp_file("empty", b"");
    // SAFETY: the file is ours and not modified while mapped.
    let asset = unsafe { MappedAsset::open(&path) }.unwrap();
    assert!(asset.is_empty());
    assert_eq!(asset.as_bytes(), b"");
    assert_eq!(
        format!("{asset:?}"),
        format!("MappedAsset {{ path: {path:?}, len: 0 }}")
    );
    drop(asset);
    std::fs::remove_file(&path).unwrap();
}

/// Free reserved 2 MiB huge pages, from `/proc/meminfo`.
fn free_huge_pages() -> usize {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// With reserved huge pages (`vm.nr_hugepages >= 4`; none on a default machine, where
/// this checks nothing and says so): a `MAP_HUGETLB` block keeps its contents through
/// growth, relocation and a shrink below 2 MiB, and every huge page comes back.
#[test]
fn hugetlb_blocks_when_huge_pages_are_reserved() {
    let before = free_huge_pages();
    if before < 4 {
        eprintln!("no reserved huge pages: hugetlb path not exercised");
        return;
    }
    let large = LargeAllocator::default();
    let l = layout(3 * MIB, 16);
    let p = large.alloc(l).unwrap();
    assert_eq!(large.stats().huge_tlb, 1);
    // SAFETY: each step's pointer is the live block of the layout it is used with.
    unsafe {
        fill(p, 4 * MIB, 2);
        let p = large.realloc(p, l, 5 * MIB).unwrap();
        check(p, 4 * MIB, 2);
        let l = layout(5 * MIB, 16);
        let p = large.relocate(p, l).unwrap();
        check(p, 4 * MIB, 2);
        let p = large.realloc(p, l, MIB).unwrap();
        check(p, MIB, 2);
        let p = large.realloc(p, layout(MIB, 16), 2 * MIB).unwrap();
        check(p, MIB, 2);
        large.dealloc(p, layout(2 * MIB, 16));
    }
    let s = large.stats();
    assert_eq!(
        (s.live_blocks, s.mapped_bytes, s.maps, s.unmaps),
        (0, 0, s.unmaps, s.maps)
    );
    assert_eq!(free_huge_pages(), before, "huge pages leaked");
}
