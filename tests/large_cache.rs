//! The large-block cache: freed mappings reused at the right size and zeroed when
//! promised, exact accounting with cached mappings, `trim` releasing them, `realloc`
//! across and above the pool/large boundary against a `Vec` model, and the cache shared
//! by several threads.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::large::{HugePages, LargeAllocator, LargeConfig, LargeStats};
use tidyheap::{Global, Heap};

/// The tests of this file run one at a time: `reused_mapping_has_the_right_size_and_is_zeroed`
/// checks that the page after a block is unmapped, which another test's block growing
/// in place could otherwise cover.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`SERIAL`] (a failed test poisons it, which must not fail the others).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

/// Fills `[p, p + len)` with `byte`.
///
/// # Safety
///
/// The range is writable.
unsafe fn fill(p: NonNull<u8>, len: usize, byte: u8) {
    // SAFETY: forwarded from the caller.
    unsafe { p.as_ptr().write_bytes(byte, len) };
}

/// Whether every byte of `[p, p + len)` is `byte`.
///
/// # Safety
///
/// The range is readable.
unsafe fn all(p: NonNull<u8>, len: usize, byte: u8) -> bool {
    let page = [byte; PAGE];
    // SAFETY: forwarded from the caller.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), len) }
        .chunks(PAGE)
        .all(|c| c == &page[..c.len()])
}

/// Whether the page at `addr` is mapped (`mincore` fails with `ENOMEM` on unmapped
/// pages).
fn mapped(addr: usize) -> bool {
    let mut vec = 0u8;
    // SAFETY: mincore only inspects the page table for the page-aligned range and writes
    // one byte to `vec`.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, PAGE, &raw mut vec) };
    rc == 0
}

/// `maps - unmaps == live + cached`, and the byte counts agree with `live` (the sum of
/// the requested sizes) and `mapped` (the sum of the mapping sizes).
fn check_accounting(s: &LargeStats, live: &[(usize, usize)]) {
    assert_eq!(
        s.maps - s.unmaps,
        (s.live_blocks + s.cached_blocks) as u64,
        "{s:?}"
    );
    assert_eq!(s.live_blocks, live.len(), "{s:?}");
    assert_eq!(
        s.live_bytes,
        live.iter().map(|b| b.0).sum::<usize>(),
        "{s:?}"
    );
    assert_eq!(
        s.mapped_bytes,
        live.iter().map(|b| b.1).sum::<usize>(),
        "{s:?}"
    );
}

/// A cached mapping reused for a smaller, equal or larger request: the block has its
/// exact mapping (usable bytes mapped, the page after unmapped), `alloc` zeroes all of
/// it, and freeing it with its layout leaves exact accounting.
#[test]
fn reused_mapping_has_the_right_size_and_is_zeroed() {
    let _serial = serial();
    let large = LargeAllocator::new(LargeConfig {
        huge_pages: HugePages::Never,
        ..LargeConfig::DEFAULT
    });
    for (first, second) in [
        (MIB, MIB),
        (MIB, 600 * KIB),
        (MIB, 1900 * KIB),
        (400 * KIB, 300 * KIB + 5),
        (3 * MIB + 7, 5 * MIB),
    ] {
        let l1 = layout(first, 64);
        let p = large.alloc(l1).unwrap();
        let usable1 = large.usable_size(l1);
        // SAFETY: a live block of `usable1` bytes, freed with its layout.
        unsafe {
            fill(p, usable1, 0xAB);
            large.dealloc(p, l1);
        }
        let hits = large.stats().cache_hits;
        let l2 = layout(second, 64);
        let q = large.alloc(l2).unwrap();
        assert_eq!(large.stats().cache_hits, hits + 1, "{first} -> {second}");
        let usable2 = large.usable_size(l2);
        assert_eq!(q.as_ptr() as usize % 64, 0);
        assert!(mapped(q.as_ptr() as usize + usable2 - PAGE));
        assert!(
            !mapped(q.as_ptr() as usize + usable2),
            "{first} -> {second}: the mapping extends past its geometry"
        );
        // SAFETY: a live block of `usable2` bytes.
        unsafe {
            assert!(all(q, usable2, 0), "{first} -> {second}: not zeroed");
            fill(q, usable2, 0xCD);
        }
        check_accounting(&large.stats(), &[(second, usable2)]);
        // SAFETY: `q` is a live block of `l2`.
        unsafe { large.dealloc(q, l2) };
        check_accounting(&large.stats(), &[]);
    }
    let cached = large.stats().cached_bytes;
    assert_eq!(large.purge(Duration::ZERO), cached);
    let s = large.stats();
    assert_eq!((s.maps, s.cached_blocks), (s.unmaps, 0));
}

/// `alloc_zeroed` through a `Heap` and a `Global` zeroes reused large mappings.
#[test]
fn alloc_zeroed_zeroes_reused_mappings() {
    let _serial = serial();
    static GLOBAL: Global = Global::new();
    let heap = Heap::new();
    for size in [300 * KIB, 2 * MIB, 5 * MIB] {
        let l = layout(size, 16);
        // SAFETY: each block is live between its alloc and dealloc, `l` is not zero-sized.
        unsafe {
            let p = heap.alloc(l).unwrap();
            fill(p, size, 0x5A);
            heap.dealloc(p, l);
            let q = heap.alloc_zeroed(l).unwrap();
            assert!(all(q, size, 0), "Heap {size}");
            heap.dealloc(q, l);

            let p = GLOBAL.alloc(l);
            fill(NonNull::new(p).unwrap(), size, 0x5A);
            GLOBAL.dealloc(p, l);
            let q = GLOBAL.alloc_zeroed(l);
            assert!(all(NonNull::new(q).unwrap(), size, 0), "Global {size}");
            GLOBAL.dealloc(q, l);
        }
    }
    assert!(heap.stats().large.cache_hits >= 3);
    assert!(GLOBAL.stats().large.cache_hits >= 3);
}

/// `trim` gives every cached mapping back, on a `Heap` and a `Global`.
#[test]
fn trim_releases_the_cache() {
    let _serial = serial();
    static GLOBAL: Global = Global::new();
    let heap = Heap::new();
    // No two within a factor of two: each one maps afresh and is cached.
    let sizes = [300 * KIB, MIB, 4 * MIB, 16 * MIB];
    for size in sizes {
        let l = layout(size, 16);
        // SAFETY: allocated and freed with `l`.
        unsafe {
            let p = heap.alloc(l).unwrap();
            heap.dealloc(p, l);
            GLOBAL.dealloc(GLOBAL.alloc(l), l);
        }
    }
    for s in [heap.stats().large, GLOBAL.stats().large] {
        assert_eq!(s.cached_blocks, sizes.len(), "{s:?}");
        assert!(s.cached_bytes >= sizes.iter().sum::<usize>());
    }
    let cached = heap.stats().large.cached_bytes;
    assert!(heap.trim() >= cached);
    assert!(GLOBAL.trim() >= cached);
    for s in [heap.stats().large, GLOBAL.stats().large] {
        assert_eq!((s.cached_blocks, s.cached_bytes), (0, 0), "{s:?}");
        assert_eq!(s.maps, s.unmaps, "{s:?}");
    }
}

/// The cache respects its byte cap and can be turned off.
#[test]
fn cache_is_bounded_and_can_be_off() {
    let _serial = serial();
    let capped = LargeAllocator::new(LargeConfig {
        cache_bytes: 4 * MIB,
        huge_pages: HugePages::Never,
        ..LargeConfig::DEFAULT
    });
    let off = LargeAllocator::new(LargeConfig::UNCACHED);
    let mut live = Vec::new();
    for i in 0..12 {
        let l = layout(300 * KIB + i * 97 * KIB, 16);
        live.push((capped.alloc(l).unwrap(), off.alloc(l).unwrap(), l));
    }
    for (p, q, l) in live {
        // SAFETY: live blocks of `l`, freed once.
        unsafe {
            capped.dealloc(p, l);
            off.dealloc(q, l);
        }
        assert!(capped.stats().cached_bytes <= 4 * MIB);
    }
    let s = capped.stats();
    assert!(s.cached_blocks > 0 && s.unmaps > 0, "{s:?}");
    check_accounting(&s, &[]);
    // Too large for the cache: unmapped at once.
    let big = layout(5 * MIB, 16);
    // SAFETY: allocated and freed with `big`.
    unsafe { capped.dealloc(capped.alloc(big).unwrap(), big) };
    assert!(capped.stats().cached_bytes <= 4 * MIB);
    let s = off.stats();
    assert_eq!(
        (
            s.cached_blocks,
            s.cache_hits,
            s.cache_misses,
            s.maps,
            s.unmaps
        ),
        (0, 0, 0, 12, 12)
    );
}

/// Content of a model block: a byte per page derived from its seed, so a page that moved
/// or a stale page shows.
fn model_fill(v: &mut [u8], from: usize, seed: u8) {
    let mut start = from;
    while start < v.len() {
        let end = ((start / PAGE) + 1) * PAGE;
        let end = end.min(v.len());
        let byte = seed.wrapping_mul(31) ^ ((start / PAGE) as u8).wrapping_mul(7) ^ 0x5C;
        v[start..end].fill(byte);
        start = end;
    }
}

/// A size from 0 to 8 MiB, weighted towards the pool/large boundary (256 KiB) and page
/// and huge-page edges.
fn model_size(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..10) {
        0..=3 => rng.gen_range(200 * KIB..=320 * KIB),
        4 | 5 => rng.gen_range(0..=256 * KIB),
        6 => 256 * KIB + rng.gen_range(0..=2),
        7 => 2 * MIB - 1 + rng.gen_range(0..=2),
        _ => rng.gen_range(0..=8 * MIB),
    }
}

/// `realloc` across and above the boundary keeps contents: random alloc / realloc /
/// free sequences on a `Heap`, every block mirrored by a `Vec<u8>`, compared in full
/// after every step; accounting exact and the cache emptied by `trim` at the end.
#[test]
fn realloc_model_against_vec() {
    let _serial = serial();
    for seed in 0..4u64 {
        let heap = Heap::new();
        let mut rng = SmallRng::seed_from_u64(0x7E11 + seed);
        let mut blocks: Vec<(NonNull<u8>, Layout, Vec<u8>)> = Vec::new();
        for step in 0..200 {
            let op = rng.gen_range(0..10);
            if blocks.is_empty() || (op < 3 && blocks.len() < 8) {
                let l = layout(model_size(&mut rng), 1 << rng.gen_range(0..6));
                let zeroed = rng.gen_bool(0.3);
                let p = if zeroed {
                    heap.alloc_zeroed(l)
                } else {
                    heap.alloc(l)
                }
                .unwrap();
                let mut v = vec![0u8; l.size()];
                // SAFETY: a live block of `l.size()` bytes.
                unsafe {
                    if zeroed {
                        assert!(all(p, l.size(), 0), "seed {seed} step {step}");
                    }
                    model_fill(&mut v, 0, step as u8);
                    p.as_ptr().copy_from_nonoverlapping(v.as_ptr(), v.len());
                }
                blocks.push((p, l, v));
            } else if op < 8 {
                let i = rng.gen_range(0..blocks.len());
                let (p, l, v) = &mut blocks[i];
                let new_size = model_size(&mut rng);
                // SAFETY: `p` is a live block of `l`; only the result is used afterwards.
                let q = unsafe { heap.realloc(*p, *l, new_size) }.unwrap();
                let keep = l.size().min(new_size);
                // SAFETY: the block holds `new_size` bytes.
                let got = unsafe { std::slice::from_raw_parts(q.as_ptr(), keep) };
                assert!(
                    got == &v[..keep],
                    "seed {seed} step {step}: {} -> {new_size} lost contents",
                    l.size()
                );
                v.resize(new_size, 0);
                model_fill(v, keep, step as u8);
                // SAFETY: the block holds `new_size` bytes.
                unsafe {
                    q.as_ptr()
                        .add(keep)
                        .copy_from_nonoverlapping(v[keep..].as_ptr(), new_size - keep)
                };
                *p = q;
                *l = layout(new_size, l.align());
            } else {
                let (p, l, v) = blocks.swap_remove(rng.gen_range(0..blocks.len()));
                // SAFETY: a live block of `l`, freed once.
                unsafe {
                    assert!(std::slice::from_raw_parts(p.as_ptr(), l.size()) == &v[..]);
                    heap.dealloc(p, l);
                }
            }
            // Every block, every few steps (a full compare of up to 64 MiB is slow in debug).
            for (p, l, v) in blocks.iter().filter(|_| step % 8 == 0) {
                // SAFETY: every block in the model is live with its layout's size.
                let got = unsafe { std::slice::from_raw_parts(p.as_ptr(), l.size()) };
                assert!(got == &v[..], "seed {seed} step {step}: a block changed");
            }
            let hs = heap.stats();
            let s = hs.large;
            assert_eq!(s.maps - s.unmaps, (s.live_blocks + s.cached_blocks) as u64);
            // Blocks past the pools are large; blocks a realloc grew out of the pools
            // (`src/pool/heap/resize.rs`) are too, though their layouts are pool ones.
            let large_live: usize = blocks
                .iter()
                .filter(|(_, l, _)| l.size() > 256 * KIB)
                .map(|(_, l, _)| l.size())
                .sum();
            let all_live: usize = blocks.iter().map(|(_, l, _)| l.size()).sum();
            assert!(s.live_bytes >= large_live, "seed {seed} step {step}");
            assert_eq!(
                hs.fixed.live_bytes() + s.live_bytes as u64,
                all_live as u64,
                "seed {seed} step {step}"
            );
        }
        for (p, l, _) in blocks.drain(..) {
            // SAFETY: live blocks, freed once.
            unsafe { heap.dealloc(p, l) };
        }
        heap.trim();
        let s = heap.stats();
        assert_eq!(s.live_bytes(), 0);
        assert_eq!(
            (s.large.mapped_bytes, s.large.cached_bytes, s.large.maps),
            (0, 0, s.large.unmaps),
            "{:?}",
            s.large
        );
        assert!(
            s.large.cache_hits > 0,
            "seed {seed}: the cache was never used"
        );
    }
}

/// Several threads allocate, resize and free through one small cache (so entries are
/// evicted and reused across threads) while another purges it; every block keeps its own
/// contents, and the accounting is exact afterwards.
#[test]
fn cache_is_thread_safe() {
    let _serial = serial();
    static LARGE: LargeAllocator = LargeAllocator::new(LargeConfig {
        cache_bytes: 8 * MIB,
        huge_pages: HugePages::Advise,
        ..LargeConfig::DEFAULT
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                LARGE.purge(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let workers: Vec<_> = (0..4u8)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(u64::from(t));
                    let mut mine: Vec<(NonNull<u8>, Layout, u8)> = Vec::new();
                    for i in 0..200 {
                        if mine.len() < 4 && rng.gen_bool(0.6) || mine.is_empty() {
                            let l = layout(rng.gen_range(256 * KIB..2 * MIB), 16);
                            let p = LARGE.alloc_uninit(l).unwrap();
                            let byte = t.wrapping_mul(64).wrapping_add(i as u8) | 1;
                            // SAFETY: a live block of `l`, owned by this thread.
                            unsafe { fill(p, l.size(), byte) };
                            mine.push((p, l, byte));
                        } else {
                            let (p, l, byte) = mine.swap_remove(rng.gen_range(0..mine.len()));
                            // SAFETY: a live block of `l` owned by this thread, freed once
                            // (after an optional realloc whose result replaces it).
                            unsafe {
                                assert!(all(p, l.size(), byte), "thread {t}: block changed");
                                let (p, l) = if rng.gen_bool(0.5) {
                                    let n = rng.gen_range(256 * KIB..2 * MIB);
                                    let q = LARGE.realloc(p, l, n).unwrap();
                                    assert!(all(q, l.size().min(n), byte), "thread {t}");
                                    (q, layout(n, 16))
                                } else {
                                    (p, l)
                                };
                                LARGE.dealloc(p, l);
                            }
                        }
                    }
                    for (p, l, byte) in mine {
                        // SAFETY: live blocks of this thread, freed once.
                        unsafe {
                            assert!(all(p, l.size(), byte), "thread {t}: block changed");
                            LARGE.dealloc(p, l);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let s = LARGE.stats();
    check_accounting(&s, &[]);
    assert!(s.cached_bytes <= 8 * MIB);
    assert!(s.cache_hits > 0, "{s:?}");
    LARGE.purge(Duration::ZERO);
    let s = LARGE.stats();
    assert_eq!((s.maps, s.cached_blocks, s.cached_bytes), (s.unmaps, 0, 0));
}

/// Large movable blocks come from the cache too: `alloc_handle` still hands out zeroes
/// where a freed handle's bytes were, and `insert_bytes` exactly its bytes.
#[test]
fn large_handles_reuse_cached_mappings() {
    let _serial = serial();
    let heap = Heap::new();
    let dirty = vec![0xABu8; MIB];
    let h = heap.insert_bytes(&dirty).unwrap();
    heap.free_handle(h).unwrap();
    let z = heap.alloc_handle(MIB, 16).unwrap();
    assert!(heap.read(z).unwrap().iter().all(|&b| b == 0));
    heap.free_handle(z).unwrap();
    let clean = vec![0x5Cu8; MIB - 100];
    let c = heap.insert_bytes(&clean).unwrap();
    assert!(*heap.read(c).unwrap() == clean[..]);
    heap.free_handle(c).unwrap();
    let s = heap.stats().large;
    assert!(s.cache_hits >= 2, "{s:?}");
    heap.trim();
    let s = heap.stats().large;
    assert_eq!(
        (s.maps, s.cached_bytes, s.live_blocks),
        (s.unmaps, 0, 0),
        "{s:?}"
    );
}

/// `get_mempolicy`'s flag for the policy of an address (linux/mempolicy.h; not in libc).
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// The memory policy of the mapping at `p` (`get_mempolicy` with `MPOL_F_ADDR`).
fn policy_at(p: NonNull<u8>) -> i32 {
    let mut mode: libc::c_int = -1;
    // SAFETY: get_mempolicy writes only `mode` (no node mask asked for) and reads the
    // policy of the mapping containing `p`, one of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &raw mut mode,
            std::ptr::null_mut::<libc::c_ulong>(),
            0usize,
            p.as_ptr(),
            MPOL_F_ADDR,
        )
    };
    assert_eq!(rc, 0, "get_mempolicy");
    mode
}

/// `alloc_on_node` maps afresh (its policy must place pages not yet touched), and a
/// mapping it leaves in the cache loses the node policy when reused by a plain `alloc`.
#[test]
fn node_bound_mappings_are_reset_when_reused() {
    let _serial = serial();
    let large = LargeAllocator::default();
    let l = layout(MIB, 16);
    let warm = large.alloc(l).unwrap();
    // SAFETY: a live block of `l`, freed once: it waits in the cache.
    unsafe { large.dealloc(warm, l) };
    let p = large.alloc_on_node(l, 0).unwrap();
    let s = large.stats();
    assert_eq!((s.cache_hits, s.cached_blocks), (0, 1), "{s:?}");
    assert_eq!(policy_at(p), libc::MPOL_PREFERRED);
    // SAFETY: a live block of `l`; it joins the cache beside the other one.
    unsafe { large.dealloc(p, l) };
    for _ in 0..2 {
        let q = large.alloc(l).unwrap();
        assert_eq!(policy_at(q), libc::MPOL_DEFAULT);
        // SAFETY: a live block of `l`, freed once.
        unsafe { large.dealloc(q, l) };
    }
    assert!(large.stats().cache_hits >= 2);
}
