//! Purging hands back runs of adjacent empty spans with one `madvise` each (issue 11):
//! a run covers exactly its empty spans, never a serving neighbour, across runs longer
//! than one batch; and `trim` hands back whole regions, with the pages a budgeted pass
//! gave back lazily from a compaction target's free tail.

use tidyheap::{Budget, CompactionPolicy, Heap, HeapConfig, RawHandle, SpanKind};

const PAGE: usize = 4096;

/// A one-arena heap that never plans and purges spans `purge_delay_passes` passes after
/// they empty.
fn heap(purge_delay_passes: u64) -> Heap {
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: f64::INFINITY,
        purge_delay_passes,
    });
    heap
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

fn exact(heap: &Heap) {
    let (w, s) = (heap.walk(), heap.stats());
    assert_eq!(w.committed_bytes, s.committed_bytes, "{w:?} vs {s:?}");
    assert_eq!(w.spans, s.spans);
}

fn decommits(heap: &Heap) -> u64 {
    heap.stats().arenas.iter().map(|a| a.decommits).sum()
}

/// A span as `(base, bytes)`.
type Region = (usize, usize);
/// A live handle and the byte its block is filled with.
type Stamped = (RawHandle, u8);

/// Movable spans as `(base, bytes)`, by address.
fn movable_spans(heap: &Heap) -> Vec<Region> {
    let mut v: Vec<_> = heap
        .occupancy_map()
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Movable)
        .map(|s| (s.base, s.bytes))
        .collect();
    v.sort_unstable();
    v
}

/// Every live handle still reads its own stamp.
fn assert_stamps<'a>(heap: &Heap, live: impl IntoIterator<Item = &'a Stamped>) {
    for &(h, v) in live {
        assert!(
            heap.read(h).unwrap().iter().all(|&b| b == v),
            "{h:?} lost its data"
        );
    }
}

/// After a `trim`: no emptied span keeps a resident page (a page handed back with
/// `MADV_DONTNEED` reads as zeros, so a wrong run shows in the stamps too), and every
/// live handle reads its own stamp.
fn assert_handed_back(heap: &Heap, emptied: &[Region], live: &[Stamped]) {
    for &(base, bytes) in emptied {
        assert_eq!(
            resident_pages(base, bytes),
            0,
            "span at {base:#x} kept its pages"
        );
    }
    assert_stamps(heap, live);
}

/// Fills about 130 spans of one class with stamped handles, then empties the spans
/// `empty` picks (by index in address order) and keeps the others' handles live.
/// Returns the emptied spans, and the live handles with their stamps.
fn layout(heap: &Heap, empty: impl Fn(usize) -> bool) -> (Vec<Region>, Vec<Stamped>) {
    let hs: Vec<(RawHandle, u8)> = (0..9000)
        .map(|i| {
            let h = heap.alloc_handle(1000, 16).unwrap();
            let v = (i % 251) as u8;
            heap.write(h).unwrap().fill(v);
            (h, v)
        })
        .collect();
    let spans = movable_spans(heap);
    assert!(spans.len() > 100, "{} spans", spans.len());
    let index = |h: RawHandle| {
        let a = heap.read(h).unwrap().as_ptr() as usize;
        spans.partition_point(|&(base, _)| base <= a) - 1
    };
    let (mut emptied, mut live) = (Vec::new(), Vec::new());
    for (h, v) in hs {
        if empty(index(h)) {
            heap.free_handle(h).unwrap();
        } else {
            live.push((h, v));
        }
    }
    for (i, &s) in spans.iter().enumerate() {
        if empty(i) {
            emptied.push(s);
        }
    }
    let adjacent = emptied
        .windows(2)
        .filter(|w| w[0].0 + w[0].1 == w[1].0)
        .count();
    assert!(
        adjacent > 40,
        "only {adjacent} adjacent pairs of empty spans"
    );
    (emptied, live)
}

/// Runs of one, two and three empty spans between serving ones, and one run of 60 past
/// a batch's length: after `trim` (`MADV_DONTNEED`, so a page wrongly handed back reads
/// as zeros) every emptied region is gone from memory, every live block reads its own
/// stamp, one decommit is counted per emptied span, and the counters match a walk.
#[test]
fn trim_hands_back_exactly_the_empty_spans() {
    let heap = heap(u64::MAX);
    let empty = |i: usize| (60..120).contains(&i) || (i < 60 && matches!(i % 7, 1 | 3 | 4 | 5));
    let (emptied, live) = layout(&heap, empty);
    let before = decommits(&heap);
    heap.trim();
    assert_eq!(decommits(&heap) - before, emptied.len() as u64);
    assert_handed_back(&heap, &emptied, &live);
    assert!(movable_spans(&heap).iter().all(|s| !emptied.contains(s)));
    exact(&heap);
    for (h, _) in live {
        heap.free_handle(h).unwrap();
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
    exact(&heap);
}

/// Budgeted passes purge lazily (`MADV_FREE`) in runs: the report matches the
/// counters, live blocks keep their data through reuse of the purged spans, and `trim`
/// then takes every emptied region out of memory.
#[test]
fn passes_purge_runs_lazily_and_trim_finishes() {
    let heap = heap(0);
    let empty = |i: usize| !i.is_multiple_of(4);
    let (emptied, live) = layout(&heap, empty);
    let mut last = heap.stats().committed_bytes;
    let mut released = 0;
    for _ in 0..300 {
        let r = heap.compact(Budget::blocks(0));
        let now = heap.stats().committed_bytes;
        assert_eq!(
            last - now,
            r.bytes_released as usize,
            "report matches counters"
        );
        released += r.bytes_released;
        last = now;
        exact(&heap);
    }
    assert!(released > 0, "nothing purged");
    // Purged spans serve again, and their blocks read what was written.
    let again: Vec<(RawHandle, u8)> = (0..3000)
        .map(|i| {
            let h = heap.alloc_handle(1000, 16).unwrap();
            heap.write(h).unwrap().fill(i as u8);
            (h, i as u8)
        })
        .collect();
    assert_stamps(&heap, live.iter().chain(&again));
    exact(&heap);
    for (h, _) in again {
        heap.free_handle(h).unwrap();
    }
    heap.trim();
    assert_handed_back(&heap, &emptied, &live);
    exact(&heap);
}

/// A budgeted plan gives a target's free tail back lazily (`MADV_FREE`: the pages stay
/// resident until the kernel needs them) and stops counting it; once the span empties,
/// `trim` hands back its whole region, so none of those pages stays resident.
#[test]
fn trim_hands_back_free_tails_given_back_lazily() {
    let heap = heap(u64::MAX);
    heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: 0.0,
        purge_delay_passes: u64::MAX,
    });
    let hs: Vec<RawHandle> = (0..4000)
        .map(|_| {
            let h = heap.alloc_handle(41, 16).unwrap();
            heap.write(h).unwrap().fill(7);
            h
        })
        .collect();
    let spans = movable_spans(&heap);
    // The first span keeps every other block of its low part and nothing above: a
    // target with a free top; the others keep a few blocks, which move into its holes.
    let mut live = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        if (i < 600 && i % 2 == 0) || (i >= 1400 && i % 40 == 0) {
            live.push(h);
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    let mut r = heap.compact(Budget::blocks(1 << 20));
    for _ in 0..100 {
        if r.complete && r.blocks_moved == 0 {
            break;
        }
        r = heap.compact(Budget::blocks(1 << 20));
    }
    let tails = heap
        .occupancy_map()
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Movable && s.committed_bytes < s.bytes)
        .count();
    assert!(tails > 0, "no target gave its free tail back");
    let resident: usize = spans.iter().map(|&(b, n)| resident_pages(b, n)).sum();
    assert!(
        resident * PAGE > heap.stats().committed_bytes,
        "the lazily given-back tail is not resident: the test shows nothing"
    );
    for h in live {
        heap.free_handle(h).unwrap();
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
    for &(base, bytes) in &spans {
        assert_eq!(
            resident_pages(base, bytes),
            0,
            "span at {base:#x} kept pages"
        );
    }
    exact(&heap);
}
