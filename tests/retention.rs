//! Retention and purging: freeing never calls the OS, passes purge what stayed empty
//! for the policy's delay beyond what recent demand retains, committed empty spans are
//! reused before purged ones, `trim` gives everything back, and accounting stays exact
//! through all of it (a walk of the heap agrees with the counters at every step).

use std::alloc::Layout;
use std::ptr::NonNull;

use tidyheap::{Budget, CompactionPolicy, Heap, HeapConfig, RawHandle};

const MIB: usize = 1 << 20;

fn heap(arenas: usize) -> Heap {
    let heap = Heap::with_config(HeapConfig {
        arenas,
        ..HeapConfig::DEFAULT
    });
    // Never plan: these tests look at purging alone.
    heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: f64::INFINITY,
        purge_delay_passes: 5,
    });
    heap
}

fn exact(heap: &Heap) {
    let w = heap.walk();
    let s = heap.stats();
    assert_eq!(w.committed_bytes, s.committed_bytes, "{w:?} vs {s:?}");
    assert_eq!(w.spans, s.spans);
    assert_eq!(w.movable_live_bytes as u64, s.movable.live_bytes());
}

fn decommits(heap: &Heap) -> u64 {
    heap.stats().arenas.iter().map(|a| a.decommits).sum()
}

fn recommits(heap: &Heap) -> u64 {
    heap.stats().arenas.iter().map(|a| a.recommits).sum()
}

/// Allocates `bytes` of 1 KiB handles and `bytes` of 1 KiB fixed blocks.
fn churn_in(heap: &Heap, bytes: usize) -> (Vec<RawHandle>, Vec<NonNull<u8>>) {
    let l = Layout::from_size_align(1024, 16).unwrap();
    let hs = (0..bytes / 1024)
        .map(|i| {
            let h = heap.alloc_handle(1024, 16).unwrap();
            heap.write(h).unwrap().fill(i as u8);
            h
        })
        .collect();
    let ps = (0..bytes / 1024).map(|_| heap.alloc(l).unwrap()).collect();
    (hs, ps)
}

fn churn_out(heap: &Heap, (hs, ps): (Vec<RawHandle>, Vec<NonNull<u8>>)) {
    let l = Layout::from_size_align(1024, 16).unwrap();
    for h in hs {
        heap.free_handle(h).unwrap();
    }
    for p in ps {
        // SAFETY: allocated by `churn_in` with `l`.
        unsafe { heap.dealloc(p, l) };
    }
}

#[test]
fn freeing_never_calls_the_os() {
    let heap = heap(1);
    let blocks = churn_in(&heap, 16 * MIB);
    let committed = heap.stats().committed_bytes;
    churn_out(&heap, blocks);
    assert_eq!(decommits(&heap), 0, "the free path decommitted");
    assert_eq!(heap.stats().committed_bytes, committed);
    exact(&heap);
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
    exact(&heap);
}

#[test]
fn passes_purge_only_after_the_delay_and_beyond_recent_demand() {
    let heap = heap(1);
    let blocks = churn_in(&heap, 16 * MIB);
    churn_out(&heap, blocks);
    let peak = heap.stats().committed_bytes;
    // Spans emptied before the first pass are 1 pass old at the first pass's purge.
    for pass in 1..5 {
        let r = heap.compact(Budget::blocks(0));
        assert_eq!(r.bytes_released, 0, "pass {pass} purged before the delay");
        exact(&heap);
    }
    let mut released = 0;
    let mut last = peak;
    for pass in 5..600 {
        let r = heap.compact(Budget::blocks(0));
        released += r.bytes_released as usize;
        let now = heap.stats().committed_bytes;
        assert_eq!(
            last - now,
            r.bytes_released as usize,
            "report matches counters"
        );
        // Freed between two passes, the memory was never seen serving by a pass: no
        // sudden drop, so the high-water mark alone retains it, closing 1/16 of its gap
        // a pass. It may not go faster than that (with a span of slack for whole spans).
        if pass < 40 {
            let kept = peak as f64 * (15.0f64 / 16.0).powi(pass);
            assert!(
                now as f64 + MIB as f64 >= kept,
                "pass {pass}: {now} B committed, recent demand retains {kept:.0}"
            );
        }
        last = now;
        exact(&heap);
    }
    assert!(released > 0, "nothing purged after the delay");
    // Demand fell to nothing, so the decaying high-water mark lets all but the 1 MiB
    // floor go, plus the spans that blocks cached by this thread (2 MiB at most) and
    // the central lists keep from emptying.
    assert!(
        last <= MIB + 3 * MIB,
        "still {last} B committed after 600 passes"
    );
}

#[test]
fn committed_empty_spans_are_reused_before_purged_ones() {
    let heap = heap(1);
    let blocks = churn_in(&heap, 8 * MIB);
    churn_out(&heap, blocks);
    heap.trim(); // everything purged
    let purged_before = recommits(&heap);
    let blocks = churn_in(&heap, 4 * MIB);
    let recommitted = recommits(&heap) - purged_before;
    assert!(
        recommitted > 0,
        "purged spans are reused rather than new ones"
    );
    churn_out(&heap, blocks);
    // Committed empty spans now exist: a pass before the delay purges none of them.
    let r = heap.compact(Budget::blocks(0));
    assert_eq!(r.bytes_released, 0);
    let before = recommits(&heap);
    let blocks = churn_in(&heap, 2 * MIB);
    assert_eq!(
        recommits(&heap),
        before,
        "a purged span was recommitted while committed empty ones were free"
    );
    churn_out(&heap, blocks);
    exact(&heap);
}

/// A span purged lazily (`MADV_FREE`: its old contents may read back) and reused by
/// another class, movable and fixed: side tables start clean, contents and lengths are
/// right through a full compaction.
#[test]
fn lazily_purged_spans_are_reinitialised_for_other_classes() {
    let heap = heap(1);
    heap.set_compaction_policy(CompactionPolicy {
        min_fragmentation: f64::INFINITY,
        purge_delay_passes: 0,
    });
    for round in 0..4u8 {
        let size = [1024, 96, 4000, 48][round as usize];
        let hs: Vec<_> = (0..20_000)
            .map(|i| {
                let h = heap.alloc_handle(size, 16).unwrap();
                heap.write(h).unwrap().fill(i as u8 ^ round);
                h
            })
            .collect();
        let l = Layout::from_size_align(size, 16).unwrap();
        let ps: Vec<_> = (0..2_000).map(|_| heap.alloc(l).unwrap()).collect();
        for (i, p) in ps.iter().enumerate() {
            // SAFETY: a live block of `size` bytes.
            unsafe { p.as_ptr().write_bytes(i as u8, size) };
        }
        // Free every other handle and compact: lengths and contents survive.
        for h in hs.iter().step_by(2) {
            heap.free_handle(*h).unwrap();
        }
        heap.compact_full();
        for (i, h) in hs.iter().enumerate().skip(1).step_by(2) {
            let r = heap.read(*h).unwrap();
            assert_eq!(r.len(), size);
            assert!(r.iter().all(|&b| b == i as u8 ^ round), "round {round}");
        }
        for (i, p) in ps.iter().enumerate() {
            // SAFETY: as above.
            let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), size) };
            assert!(bytes.iter().all(|&b| b == i as u8));
            // SAFETY: allocated above with `l`.
            unsafe { heap.dealloc(*p, l) };
        }
        for h in hs.iter().skip(1).step_by(2) {
            heap.free_handle(*h).unwrap();
        }
        // Lazy purges (no trim): the next round reuses these spans.
        for _ in 0..3 {
            heap.compact(Budget::blocks(0));
        }
        exact(&heap);
        assert_eq!(heap.walk().movable_live_blocks, 0);
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
    exact(&heap);
}

/// Allocates `steps × step` bytes of 1 KiB handles, a pass after each step.
fn rise(heap: &Heap, steps: usize, step: usize) -> Vec<RawHandle> {
    let mut hs = Vec::new();
    for s in 0..steps {
        for i in 0..step / 1024 {
            let h = heap.alloc_handle(1024, 16).unwrap();
            heap.write(h).unwrap().fill((s + i) as u8);
            hs.push(h);
        }
        heap.compact(Budget::blocks(0));
        exact(heap);
    }
    hs
}

/// A fall spread over many passes (each freeing a small share of the peak) ends with
/// little more than what serves committed: the retention follows a gradual fall.
#[test]
fn a_gradual_fall_gives_memory_back_by_its_end() {
    let heap = heap(1);
    let mut hs = rise(&heap, 64, 256 << 10);
    let peak = heap.stats().committed_bytes;
    assert!(peak >= 16 * MIB);
    // Oldest first, so spans empty whole (these tests never plan).
    hs.reverse();
    while !hs.is_empty() {
        for h in hs.split_off(hs.len().saturating_sub(256)) {
            heap.free_handle(h).unwrap();
        }
        heap.compact(Budget::blocks(0));
        exact(&heap);
    }
    for _ in 0..32 {
        heap.compact(Budget::blocks(0));
    }
    let end = heap.stats().committed_bytes;
    // The 1 MiB floor, what the high-water mark still holds 32 passes after the fall
    // (under 1 MiB), and spans that cached blocks keep serving (2 MiB at most).
    assert!(
        end <= 4 * MIB,
        "{end} B of a {peak} B peak still committed after a gradual fall"
    );
    exact(&heap);
    heap.trim();
    assert_eq!(
        heap.stats().committed_bytes,
        0,
        "trim gives everything back"
    );
    exact(&heap);
}

/// Memory released at once (a level unloaded) is kept for the rise that follows: the
/// next rise reuses the retained spans (no purged span recommitted, no growth),
/// and the reserve still drains to the floor when no rise comes.
#[test]
fn a_sudden_drop_is_kept_for_the_next_rise_and_drains_without_one() {
    let heap = heap(1);
    let hs = rise(&heap, 16, MIB);
    let peak = heap.stats().committed_bytes;
    for h in hs {
        heap.free_handle(h).unwrap();
    }
    for _ in 0..100 {
        heap.compact(Budget::blocks(0));
        exact(&heap);
    }
    let kept = heap.stats().committed_bytes;
    // The reserve loses 1/1024 of itself a pass: about 10 % in 100 passes.
    assert!(
        kept >= peak * 3 / 4,
        "{kept} B of {peak} B kept 100 passes after a sudden drop"
    );
    let (rec, dec) = (recommits(&heap), decommits(&heap));
    let hs = rise(&heap, 8, MIB);
    assert_eq!(recommits(&heap), rec, "a purged span was recommitted");
    assert_eq!(decommits(&heap), dec, "the rise purged");
    let after = heap.stats().committed_bytes;
    assert!(
        after <= kept,
        "the rise grew committed memory: {after} B > {kept} B"
    );
    for h in hs {
        heap.free_handle(h).unwrap();
    }
    for _ in 0..6000 {
        heap.compact(Budget::blocks(0));
    }
    let end = heap.stats().committed_bytes;
    assert!(
        end <= 4 * MIB,
        "{end} B still committed 6000 passes after a drop with no rise"
    );
    exact(&heap);
}
