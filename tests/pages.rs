//! Page-granular committed memory (issue 11, item 5): a span counts as committed only
//! the pages it may have written (its region up to the furthest block carved, and the
//! side-table pages its entries reached), and the counters agree with a walk of the heap
//! through random workloads, trims and reuse of spans across classes and kinds.

use std::alloc::Layout;
use std::ptr::NonNull;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Budget, CompactionPolicy, Heap, HeapConfig, RawHandle, SpanKind};

const PAGE: usize = 4096;

/// A one-arena heap that plans every pass and purges empty spans `purge_delay_passes`
/// passes after they empty (`u64::MAX`: never lazily; `MADV_FREE`d pages stay
/// resident, which the residency check below would read as committed).
fn heap_purging_after(purge_delay_passes: u64) -> Heap {
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: 0.0,
        purge_delay_passes,
    });
    heap
}

fn heap() -> Heap {
    heap_purging_after(u64::MAX)
}

/// Pages of `[base, base + bytes)` resident in memory (`mincore`).
fn resident_pages(base: usize, bytes: usize) -> usize {
    let mut v = vec![0u8; bytes.div_ceil(PAGE)];
    // SAFETY: the range is a span region, mapped for the heap's life and page-aligned;
    // `v` holds one byte per page.
    let r = unsafe { libc::mincore(base as *mut libc::c_void, bytes, v.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore");
    v.iter().filter(|&&b| b & 1 != 0).count()
}

/// The counters against the walk, the occupancy map and the model, and, if `resident`,
/// every serving span's resident region pages against what it counts (only where no
/// page was handed back with `MADV_FREE`, which leaves it resident).
fn check_pages(heap: &Heap, live: &[(RawHandle, usize, u8)], resident: bool) {
    let (w, s, map, f) = (
        heap.walk(),
        heap.stats(),
        heap.occupancy_map(),
        heap.fragmentation(),
    );
    assert_eq!(w.committed_bytes, s.committed_bytes, "{w:?} vs {s:?}");
    assert_eq!(map.committed_bytes(), s.committed_bytes);
    assert_eq!(s.committed_bytes % PAGE, 0);
    let want: usize = live.iter().map(|&(_, len, _)| len).sum();
    assert_eq!(w.movable_live_bytes, want);
    assert_eq!(s.movable.live_bytes(), want as u64);
    assert_eq!(f.live_bytes, want);
    assert_eq!(f.committed_bytes, map.movable_committed_bytes());
    assert_eq!(
        f.committed_bytes,
        f.live_bytes + f.internal_bytes + f.external_bytes + f.metadata_bytes + f.tail_bytes,
        "{f:?}"
    );
    for span in &map.spans {
        // A span's region pages: carved blocks' pages at least, and every resident
        // page of its region is counted.
        let carved_end = span
            .blocks
            .iter()
            .rposition(|b| *b != tidyheap::BlockState::Free)
            .map_or(0, |i| (i + 1) * span.block_size);
        assert!(span.committed_bytes >= carved_end.next_multiple_of(PAGE));
        assert!(
            !resident || resident_pages(span.base, span.bytes) * PAGE <= span.committed_bytes,
            "{:?} span at {:#x}: resident pages not counted",
            span.kind,
            span.base
        );
    }
    for &(h, len, v) in live {
        let r = heap.read(h).unwrap();
        assert_eq!(r.len(), len);
        assert!(r.iter().all(|&b| b == v), "{h:?} changed");
    }
}

fn check(heap: &Heap, live: &[(RawHandle, usize, u8)]) {
    check_pages(heap, live, true);
}

/// Random movable and fixed allocations and frees, full compactions and trims, and on
/// odd seeds budgeted passes (which purge spans empty for 2 passes and hand target
/// tails back, both with `MADV_FREE`, and reuse them): the
/// committed bytes always equal the walk's sum over spans of their counted pages, live
/// bytes are exact, and (on even seeds) no resident page goes uncounted.
#[test]
fn committed_pages_follow_a_random_workload() {
    for seed in 1..=4u64 {
        let budgeted = seed % 2 == 1;
        let heap = heap_purging_after(if budgeted { 2 } else { u64::MAX });
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut live: Vec<(RawHandle, usize, u8)> = Vec::new();
        let mut fixed: Vec<(NonNull<u8>, Layout)> = Vec::new();
        for step in 0..6000 {
            match rng.gen_range(0..100) {
                0..=44 => {
                    let len = if rng.gen_bool(0.8) {
                        rng.gen_range(1..=512)
                    } else {
                        rng.gen_range(513..=70_000)
                    };
                    let h = heap.alloc_handle(len, 16).unwrap();
                    let v = rng.r#gen::<u8>();
                    heap.write(h).unwrap().fill(v);
                    live.push((h, len, v));
                }
                45..=79 if !live.is_empty() => {
                    let (h, _, _) = live.swap_remove(rng.gen_range(0..live.len()));
                    heap.free_handle(h).unwrap();
                }
                80..=87 => {
                    let l = Layout::from_size_align(rng.gen_range(1..=3000), 16).unwrap();
                    let p = heap.alloc(l).unwrap();
                    // SAFETY: a fresh block of `l.size()` bytes.
                    unsafe { p.as_ptr().write_bytes(0xa5, l.size()) };
                    fixed.push((p, l));
                }
                88..=93 if !fixed.is_empty() => {
                    let (p, l) = fixed.swap_remove(rng.gen_range(0..fixed.len()));
                    // SAFETY: allocated above with `l`, freed once.
                    unsafe { heap.dealloc(p, l) };
                }
                94..=96 if budgeted => {
                    heap.compact(Budget::blocks(rng.gen_range(1..200)));
                }
                97 => {
                    heap.compact_full();
                }
                _ => {
                    heap.trim();
                }
            }
            if step % 250 == 0 {
                check_pages(&heap, &live, !budgeted);
            }
        }
        check_pages(&heap, &live, !budgeted);
        let a = &heap.stats().arenas[0];
        assert!(
            a.decommits > 0 && a.recommits > 0,
            "seed {seed}: purged spans were reused ({a:?})"
        );
        for (h, _, _) in live.drain(..) {
            heap.free_handle(h).unwrap();
        }
        for (p, l) in fixed.drain(..) {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { heap.dealloc(p, l) };
        }
        heap.trim();
        check_pages(&heap, &live, !budgeted);
        assert_eq!(
            heap.stats().committed_bytes,
            0,
            "trim gives everything back"
        );
    }
}

/// 1000 × 64 B movable blocks commit their 16 pages and one page of owners: lengths
/// equal to the class size never touch the slack entries.
#[test]
fn exact_size_blocks_commit_no_slack_pages() {
    let heap = heap();
    let hs: Vec<RawHandle> = (0..1000)
        .map(|_| heap.alloc_handle(64, 16).unwrap())
        .collect();
    let f = heap.fragmentation();
    assert_eq!(f.committed_bytes, 17 * PAGE, "{f:?}");
    assert_eq!(f.metadata_bytes, PAGE);
    // One odd length touches the first slack page.
    let odd = heap.alloc_handle(50, 16).unwrap();
    assert_eq!(heap.fragmentation().metadata_bytes, 2 * PAGE);
    assert_eq!(heap.read(odd).unwrap().len(), 50);
    for h in hs.into_iter().chain([odd]) {
        heap.free_handle(h).unwrap();
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
}

/// Runs `f` on a thread of its own, then brings every movable block home: fixed spans
/// retire at the thread's exit (retained, committed) but for the few blocks its parked
/// record keeps warm for the next thread (its fixed lists, at most 32 KiB a class),
/// movable ones through a full compaction.
fn phase(heap: &Heap, f: impl FnOnce(&Heap) + Send) {
    std::thread::scope(|s| s.spawn(|| f(heap)).join().unwrap());
    // The exited thread's movable blocks wait in the central lists: a full compaction
    // brings them home (and hands the emptied spans back with `MADV_DONTNEED`).
    heap.compact_full();
    let map = heap.occupancy_map();
    assert!(
        map.spans.iter().all(|s| s.kind == SpanKind::Fixed),
        "every movable span came home empty"
    );
    let parked: usize = map
        .spans
        .iter()
        .map(|s| {
            s.blocks
                .iter()
                .filter(|b| **b != tidyheap::BlockState::Free)
                .count()
                * s.block_size
        })
        .sum();
    assert!(parked <= 32 << 10, "{parked} B of fixed blocks kept out");
    check(heap, &[]);
}

fn movable_bases(heap: &Heap) -> Vec<usize> {
    heap.occupancy_map()
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Movable)
        .map(|s| s.base)
        .collect()
}

/// Allocates `n` movable blocks of `len` bytes, checks them (lengths and owners read as
/// their own), and returns the bases of the movable spans serving them; frees nothing.
fn fill(heap: &Heap, len: usize, n: usize, salt: u8) -> (Vec<(RawHandle, usize, u8)>, Vec<usize>) {
    let hs: Vec<(RawHandle, usize, u8)> = (0..n)
        .map(|i| {
            let h = heap.alloc_handle(len, 16).unwrap();
            let v = (i as u8) ^ salt;
            heap.write(h).unwrap().fill(v);
            (h, len, v)
        })
        .collect();
    check(heap, &hs);
    let live_slots = heap
        .occupancy_map()
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Movable)
        .flat_map(|s| s.blocks.iter())
        .filter(|b| **b == tidyheap::BlockState::Movable)
        .count();
    assert_eq!(live_slots, n, "a stale owner reads as live");
    let bases = movable_bases(heap);
    (hs, bases)
}

/// Spans purged after serving a class are reused by another class of the same span
/// length, as fixed spans, and as movable spans again (the fixed spans retained, not
/// purged): each block's length and owner read as its own, never a previous life's, and
/// the accounting stays exact. (The span unit test `a_reused_span_reads_no_stale_entry`
/// covers spans retained with stale entries.)
#[test]
fn reused_spans_start_with_a_clean_side_table() {
    let class = |len: usize| tidyheap::size_class::class_for(len, 16).unwrap();
    assert_eq!(
        tidyheap::size_class::span_bytes(class(48)),
        tidyheap::size_class::span_bytes(class(64)),
        "two classes sharing a span length"
    );
    const N: usize = 50_000;
    {
        let heap = heap();
        let mut first = Vec::new();
        // Class 48 B with 41-byte requests: slack 7 in every entry, then all home.
        phase(&heap, |heap| {
            let (hs, bases) = fill(heap, 41, N, 0);
            first = bases;
            for (h, _, _) in hs {
                heap.free_handle(h).unwrap();
            }
        });
        // Class 64 B, exact lengths, in the same regions: slack 0 and no stale owner.
        phase(&heap, |heap| {
            let (hs, bases) = fill(heap, 64, N / 2, 1);
            assert!(
                bases.iter().all(|b| first.contains(b)),
                "the 64 B class reuses the 48 B class's regions"
            );
            for (h, _, _) in hs {
                heap.free_handle(h).unwrap();
            }
        });
        // The same regions as fixed spans.
        phase(&heap, |heap| {
            let l = Layout::from_size_align(48, 16).unwrap();
            let ps: Vec<NonNull<u8>> = (0..N).map(|_| heap.alloc(l).unwrap()).collect();
            for p in &ps {
                // SAFETY: a live fixed block of 48 bytes.
                unsafe { p.as_ptr().write_bytes(0x5a, 48) };
            }
            check(heap, &[]);
            for p in ps {
                // SAFETY: allocated above with `l`.
                unsafe { heap.dealloc(p, l) };
            }
        });
        // Movable again, with exact lengths after the fixed life.
        phase(&heap, |heap| {
            let (hs, _) = fill(heap, 48, N, 2);
            for (h, _, _) in hs {
                heap.free_handle(h).unwrap();
            }
        });
        heap.trim();
        assert_eq!(heap.stats().committed_bytes, 0);
    }
}

/// A target's free tail handed back when a plan ends is carved again later: by the
/// allocations a thread makes *between* two budgeted passes (tails given back lazily,
/// with `MADV_FREE`, so their pages may still hold old bytes), then after a full
/// compaction. Every block carved over a given-back tail reads its own length and
/// bytes (never a slack or owner of the block that lay there before), and the pages
/// counted follow: a full compaction gives tail pages back, the new blocks count them
/// again.
#[test]
fn free_tails_given_back_are_carved_again_clean() {
    for seed in 0..3u64 {
        let heap = heap_purging_after(2);
        let mut rng = SmallRng::seed_from_u64(seed);
        // Odd lengths: every entry has a slack, so a stale one would show.
        let (all, _) = fill(&heap, 41, 4000, 7);
        // The first span (1365 blocks of the 48 B class) keeps every other block of
        // its low part and nothing above: the densest span, so a target, with a free
        // top. The others keep a few blocks each, which move into its holes.
        let mut live = Vec::new();
        for (i, e) in all.into_iter().enumerate() {
            if (i < 600 && i % 2 == 0) || (i >= 1400 && i % 40 == 0) {
                live.push(e);
            } else {
                heap.free_handle(e.0).unwrap();
            }
        }
        heap.compact_full();
        check(&heap, &live);
        assert!(
            heap.occupancy_map()
                .spans
                .iter()
                .any(|s| s.kind == SpanKind::Movable && s.committed_bytes < s.bytes),
            "seed {seed}: no target gave its free tail back"
        );
        // Budgeted passes with allocations and frees between them, more allocations
        // than frees, so refills carve over the given-back tails.
        for pass in 0..300 {
            for _ in 0..rng.gen_range(0..60) {
                let len = rng.gen_range(33..=64);
                let v = rng.r#gen::<u8>();
                let h = heap.alloc_handle(len, 16).unwrap();
                assert_eq!(heap.read(h).unwrap().len(), len, "seed {seed} pass {pass}");
                heap.write(h).unwrap().fill(v);
                live.push((h, len, v));
            }
            for _ in 0..rng.gen_range(0..20) {
                if live.is_empty() {
                    break;
                }
                let (h, _, _) = live.swap_remove(rng.gen_range(0..live.len()));
                heap.free_handle(h).unwrap();
            }
            heap.compact(Budget::blocks(rng.gen_range(1..64)));
            if pass % 50 == 0 {
                // Lazily given-back pages may stay resident: counters and data only.
                check_pages(&heap, &live, false);
            }
        }
        check_pages(&heap, &live, false);
        heap.compact_full();
        check_pages(&heap, &live, false);
        // Every block comes home, those carved over given-back tails too.
        for (h, _, _) in live.drain(..) {
            heap.free_handle(h).unwrap();
        }
        heap.trim();
        check_pages(&heap, &live, false);
        assert_eq!(
            heap.stats().committed_bytes,
            0,
            "seed {seed}: trim gives all back"
        );
    }
}
