//! The `profiling` feature on `Heap`: leaks with their sites, top sites, sampling,
//! records that follow reallocs and compaction, the at-drop and at-exit reports, and a
//! differential model of the live records against the heap's own accounting.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr::NonNull;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::profile::{ProfilingConfig, Sampling};
use tidyheap::{Heap, HeapConfig, RawHandle, Store};

const CHILD_ENV: &str = "PROFILING_CHILD";

fn l(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn profiled(sampling: Sampling) -> Heap {
    Heap::with_profiling(
        HeapConfig::DEFAULT,
        ProfilingConfig::new().with_sampling(sampling),
    )
}

#[test]
fn classic_leak_two_allocations_one_freed() {
    let heap = Heap::new();
    let kept = heap.alloc(l(128)).unwrap();
    let freed = heap.alloc(l(128)).unwrap();
    // SAFETY: `freed` came from `heap` with this layout.
    unsafe { heap.dealloc(freed, l(128)) };
    let leaks = heap.leaks();
    assert_eq!(leaks.len(), 1, "exactly one leak: {leaks:?}");
    assert_eq!(leaks[0].size, 128);
    assert_eq!(leaks[0].address, Some(kept.as_ptr().addr()));
    assert_eq!(leaks[0].handle, None);
    assert!(
        leaks[0]
            .site
            .mentions("classic_leak_two_allocations_one_freed"),
        "the site names the test function:\n{}",
        leaks[0].site
    );
    let site = &leaks[0].site;
    assert!(
        !site.mentions("trace_unsynchronized") && !site.mentions("capture"),
        "the profiler's own frames are left out:\n{site}"
    );
    assert!(
        site.frames()[0]
            .symbols
            .iter()
            .any(|s| s.name.as_deref().is_some_and(|n| n.ends_with("alloc"))),
        "the site starts at the heap's entry point:\n{site}"
    );
    let report = heap.profile_report(3).to_string();
    assert!(report.contains("1 block still live, 128 B"), "{report}");
    assert!(report.contains(&format!("{:#x}", kept.as_ptr().addr())));
    // SAFETY: `kept` came from `heap` with this layout.
    unsafe { heap.dealloc(kept, l(128)) };
    assert!(heap.leaks().is_empty());
}

#[inline(never)]
fn site_a(heap: &Heap) {
    let p = heap.alloc(l(64)).unwrap();
    // SAFETY: `p` came from `heap` with this layout.
    unsafe { heap.dealloc(p, l(64)) };
}

#[inline(never)]
fn site_b(heap: &Heap) -> NonNull<u8> {
    heap.alloc(l(64 << 10)).unwrap()
}

#[test]
fn hot_sites_by_count_and_by_bytes() {
    let heap = Heap::new();
    for _ in 0..1000 {
        site_a(&heap);
    }
    let kept: Vec<_> = (0..10).map(|_| site_b(&heap)).collect();
    let top = heap.top_sites(2);
    assert_eq!(top.by_count.len(), 2);
    let a = &top.by_count[0];
    assert!(
        a.site.mentions("site_a"),
        "A is first by count:\n{}",
        a.site
    );
    assert_eq!((a.allocations, a.bytes), (1000, 64_000));
    assert_eq!((a.live_blocks, a.live_bytes), (0, 0));
    let b = &top.by_count[1];
    assert!(b.site.mentions("site_b"));
    assert_eq!(
        (b.allocations, b.live_blocks, b.live_bytes),
        (10, 10, 640 << 10)
    );
    // By bytes B (640 KiB) comes before A (62.5 KiB).
    assert!(top.by_bytes[0].site.mentions("site_b"));
    assert!(top.by_bytes[1].site.mentions("site_a"));
    assert_eq!(heap.top_sites(1).by_count.len(), 1);
    let report = heap.profile_report(2).to_string();
    let first_a = report.find("site_a").unwrap();
    assert!(
        report.contains("#1 1000 allocations, 64000 B (0 live, 0 B)"),
        "{report}"
    );
    assert!(report.contains("10 blocks"), "{report}");
    assert!(first_a > report.find("top 2 sites by allocations").unwrap());
    for p in kept {
        // SAFETY: each came from `heap` with this layout.
        unsafe { heap.dealloc(p, l(64 << 10)) };
    }
    assert!(heap.leaks().is_empty());
}

#[test]
fn every_nth_sampling_scales_the_counts() {
    for n in [1u64, 2, 10, 100] {
        let heap = profiled(Sampling::EveryNth(n));
        let ps: Vec<_> = (0..1000).map(|_| heap.alloc(l(48)).unwrap()).collect();
        let want = 1000 / n;
        assert_eq!(heap.leaks().len() as u64, want, "every {n}th");
        let top = heap.top_sites(1).by_count[0].clone();
        assert_eq!(top.allocations, want);
        // Each record stands for n allocations: the estimates give the program's figures.
        assert_eq!(
            (top.estimated_allocations, top.estimated_bytes),
            (want * n, want * n * 48)
        );
        assert_eq!(top.estimated_live_blocks, want * n);
        let report = heap.profile_report(1);
        assert_eq!(report.estimated_live_bytes(), want * n * 48);
        if n > 1 {
            assert!(
                report.to_string().contains(&format!(
                    "about {} allocations, {} B ({} live, {} B), from {want} recorded",
                    want * n,
                    want * n * 48,
                    want * n,
                    want * n * 48
                )),
                "{report}"
            );
        }
        // Frees of the sampled-out blocks leave the records alone...
        for (i, &p) in ps.iter().enumerate() {
            if !(i as u64).is_multiple_of(n) {
                // SAFETY: each came from `heap` with this layout, freed once.
                unsafe { heap.dealloc(p, l(48)) };
            }
        }
        assert_eq!(heap.leaks().len() as u64, want);
        // ...and the sampled ones take theirs out.
        for (i, &p) in ps.iter().enumerate() {
            if (i as u64).is_multiple_of(n) {
                // SAFETY: as above; these were not freed yet.
                unsafe { heap.dealloc(p, l(48)) };
            }
        }
        assert!(heap.leaks().is_empty());
    }
}

#[test]
fn every_n_bytes_sampling_scales_with_bytes() {
    let heap = profiled(Sampling::EveryBytes(1000));
    let small: Vec<_> = (0..1000).map(|_| heap.alloc(l(100)).unwrap()).collect();
    // 100 000 bytes pass a multiple of 1000 a hundred times.
    assert_eq!(heap.leaks().len(), 100);
    // An allocation of at least N bytes is always recorded.
    let big = heap.alloc(l(5000)).unwrap();
    assert!(heap.leaks().iter().any(|x| x.size == 5000));
    // SAFETY: all came from `heap` with these layouts, each freed once.
    unsafe {
        heap.dealloc(big, l(5000));
        for p in small {
            heap.dealloc(p, l(100));
        }
    }
    assert!(heap.leaks().is_empty());
}

#[inline(never)]
fn many_small(heap: &Heap) -> Vec<NonNull<u8>> {
    (0..1000).map(|_| heap.alloc(l(16)).unwrap()).collect()
}

#[inline(never)]
fn fewer_bigger(heap: &Heap) -> Vec<NonNull<u8>> {
    (0..200).map(|_| heap.alloc(l(64)).unwrap()).collect()
}

#[test]
fn byte_sampling_estimates_rank_sites_by_what_they_allocated() {
    // 16 000 B in 16 B blocks against 12 800 B in 64 B blocks, one sample per KiB: the
    // recorded bytes rank the 64 B site first (its samples are 4× bigger), the estimates
    // rank them as the program allocated, each within one period of the truth.
    let period = 1024u64;
    let heap = profiled(Sampling::EveryBytes(period));
    let small = many_small(&heap);
    let big = fewer_bigger(&heap);
    let top = heap.top_sites(2);
    let find = |name: &str| {
        top.by_count
            .iter()
            .find(|s| s.site.mentions(name))
            .unwrap_or_else(|| panic!("{name} recorded"))
            .clone()
    };
    let (s, b) = (find("many_small"), find("fewer_bigger"));
    assert!(s.bytes < b.bytes, "recorded bytes favour big blocks");
    for (site, truth_bytes, size) in [(&s, 16_000u64, 16u64), (&b, 12_800, 64)] {
        assert!(
            site.estimated_bytes.abs_diff(truth_bytes) <= period,
            "{site:?}"
        );
        assert_eq!(site.estimated_live_bytes, site.estimated_bytes);
        assert_eq!(
            site.estimated_allocations,
            site.allocations * (period / size)
        );
    }
    assert!(top.by_bytes[0].site.mentions("many_small"));
    assert!(top.by_count[0].site.mentions("many_small"));
    // SAFETY: all came from `heap` with these layouts, each freed once.
    unsafe {
        for p in small {
            heap.dealloc(p, l(16));
        }
        for p in big {
            heap.dealloc(p, l(64));
        }
    }
    assert_eq!(heap.profile_report(2).estimated_live_bytes(), 0);
}

#[inline(never)]
fn allocate_for_realloc(heap: &Heap) -> NonNull<u8> {
    heap.alloc(l(100)).unwrap()
}

#[test]
fn realloc_moves_the_record_and_keeps_the_site() {
    let heap = Heap::new();
    let p = allocate_for_realloc(&heap);
    // SAFETY: `p` came from `heap` with `l(100)`; each result is used as the new block.
    let q = unsafe { heap.realloc(p, l(100), 100_000) }.unwrap();
    let leaks = heap.leaks();
    assert_eq!(leaks.len(), 1);
    assert_eq!(
        (leaks[0].address, leaks[0].size),
        (Some(q.as_ptr().addr()), 100_000)
    );
    assert!(leaks[0].site.mentions("allocate_for_realloc"));
    // A failed realloc leaves the record where it was.
    // SAFETY: `q` is live with `l(100_000)`; on failure it stays the caller's.
    let err = unsafe { heap.realloc(q, l(100_000), usize::MAX / 2) };
    assert!(err.is_err());
    let leaks = heap.leaks();
    assert_eq!(
        (leaks[0].address, leaks[0].size),
        (Some(q.as_ptr().addr()), 100_000)
    );
    // In place (same class): same address, new size.
    // SAFETY: as above.
    let r = unsafe { heap.realloc(q, l(100_000), 99_000) }.unwrap();
    assert_eq!(heap.leaks()[0].size, 99_000);
    assert_eq!(heap.top_sites(1).by_count[0].live_bytes, 99_000);
    // SAFETY: `r` is live with `l(99_000)`.
    unsafe { heap.dealloc(r, l(99_000)) };
    assert!(heap.leaks().is_empty());
    assert_eq!(
        heap.top_sites(1).by_count[0].allocations,
        1,
        "a realloc is not a new allocation"
    );
}

#[test]
fn large_blocks_and_allocator_api2_are_tracked() {
    let heap = Heap::new();
    let big = heap.alloc(l(3 << 20)).unwrap();
    let mut v = allocator_api2::vec::Vec::new_in(&heap);
    v.extend_from_slice(&[7u64; 10]);
    v.extend_from_slice(&[8u64; 1000]);
    let leaks = heap.leaks();
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    let vl = leaks
        .iter()
        .find(|x| x.address == Some(v.as_ptr().addr()))
        .expect("the vector's buffer, at its current address");
    assert_eq!(vl.size, heap.usable_size(l(v.capacity() * 8)));
    assert!(
        leaks
            .iter()
            .any(|x| x.address == Some(big.as_ptr().addr()) && x.size == 3 << 20)
    );
    drop(v);
    // SAFETY: `big` came from `heap` with this layout.
    unsafe { heap.dealloc(big, l(3 << 20)) };
    assert!(heap.leaks().is_empty());
}

#[inline(never)]
fn make_handles(heap: &Heap, n: usize) -> Vec<RawHandle> {
    (0..n).map(|_| heap.alloc_handle(64, 16).unwrap()).collect()
}

#[test]
fn compaction_moves_keep_the_records_of_handle_blocks() {
    let heap = Heap::new();
    let hs = make_handles(&heap, 2000);
    let big = heap.alloc_handle(1 << 20, 16).unwrap();
    let mut kept = Vec::new();
    for (i, h) in hs.into_iter().enumerate() {
        if i % 4 == 0 {
            kept.push(h);
        } else {
            heap.free_handle(h).unwrap();
        }
    }
    let before: HashMap<RawHandle, usize> = heap
        .leaks()
        .iter()
        .map(|x| (x.handle.unwrap(), x.address.unwrap()))
        .collect();
    let report = heap.compact_full();
    assert!(report.blocks_moved > 0, "the compactor moved blocks");
    assert!(heap.relocate_large(big).unwrap(), "and the large block");
    let leaks = heap.leaks();
    assert_eq!(leaks.len(), kept.len() + 1);
    let mut moved = 0;
    for x in &leaks {
        let h = x.handle.expect("movable blocks carry their handle");
        let now = heap.pin(h).unwrap().as_ptr().as_ptr().addr();
        assert_eq!(
            x.address,
            Some(now),
            "the record reports the current address"
        );
        moved += usize::from(before[&h] != now);
        assert!(x.site.mentions("make_handles") || h == big);
    }
    assert!(moved > 0);
    for h in kept {
        heap.free_handle(h).unwrap();
    }
    heap.free_handle(big).unwrap();
    assert!(heap.leaks().is_empty());
}

#[test]
fn store_values_are_tracked_by_handle() {
    let store: Store<[u64; 4]> = Store::new();
    let a = store.insert([1; 4]);
    let b = store.insert([2; 4]);
    assert_eq!(store.heap().leaks().len(), 2);
    assert_eq!(store.remove(a), Some([1; 4]));
    let leaks = store.heap().leaks();
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].handle, Some(b.raw()));
    assert_eq!(leaks[0].size, 32);
    assert!(leaks[0].site.mentions("store_values_are_tracked_by_handle"));
}

#[test]
fn threads_allocating_and_freeing_leave_exactly_their_kept_blocks() {
    let heap = Heap::new();
    let kept: Vec<Vec<usize>> = std::thread::scope(|s| {
        let ts: Vec<_> = (0..4)
            .map(|t| {
                let heap = &heap;
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(t);
                    let mut mine = Vec::new();
                    for _ in 0..3000 {
                        let size = rng.gen_range(1..2000);
                        let p = heap.alloc(l(size)).unwrap();
                        if rng.gen_bool(0.1) {
                            mine.push(p.as_ptr().addr());
                        } else {
                            // SAFETY: `p` came from `heap` with this layout.
                            unsafe { heap.dealloc(p, l(size)) };
                        }
                    }
                    mine
                })
            })
            .collect();
        ts.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let want: std::collections::BTreeSet<usize> = kept.into_iter().flatten().collect();
    let got: std::collections::BTreeSet<usize> =
        heap.leaks().iter().map(|x| x.address.unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(
        heap.profile_report(1).live_bytes() as u64,
        heap.stats().live_bytes(),
        "every live byte is recorded"
    );
}

/// A random sequence of every kind of allocation, freeing and moving against a model
/// of what must be live; the records must match the model and the heap's own byte
/// count after every few steps.
fn differential(seed: u64, sampling: Sampling) {
    let heap = profiled(sampling);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut raw: HashMap<usize, usize> = HashMap::new();
    let mut handles: HashMap<RawHandle, usize> = HashMap::new();
    let every = matches!(sampling, Sampling::EveryAllocation);
    for step in 0..3000 {
        let size = match rng.gen_range(0..10) {
            0 => rng.gen_range(300_000..600_000),
            1..=3 => rng.gen_range(1000..20_000),
            _ => rng.gen_range(0..600),
        };
        match rng.gen_range(0..7) {
            0 | 1 => {
                let p = heap.alloc(l(size)).unwrap();
                raw.insert(p.as_ptr().addr(), size);
            }
            2 => {
                let p = heap.alloc_zeroed(l(size)).unwrap();
                raw.insert(p.as_ptr().addr(), size);
            }
            3 if !raw.is_empty() => {
                let (&a, &s) = raw.iter().nth(rng.gen_range(0..raw.len())).unwrap();
                raw.remove(&a);
                // SAFETY: a live block of `heap` allocated (last) with size `s`.
                unsafe { heap.dealloc(NonNull::new(a as *mut u8).unwrap(), l(s)) };
            }
            4 if !raw.is_empty() => {
                let (&a, &s) = raw.iter().nth(rng.gen_range(0..raw.len())).unwrap();
                raw.remove(&a);
                let p = NonNull::new(a as *mut u8).unwrap();
                // SAFETY: as above; the result replaces the block.
                let q = unsafe { heap.realloc(p, l(s), size) }.unwrap();
                raw.insert(q.as_ptr().addr(), size);
            }
            5 => {
                let h = heap.alloc_handle(size, 16).unwrap();
                handles.insert(h, size);
            }
            _ if !handles.is_empty() => {
                let &h = handles.keys().nth(rng.gen_range(0..handles.len())).unwrap();
                handles.remove(&h);
                heap.free_handle(h).unwrap();
            }
            _ => {}
        }
        if step % 500 == 250 {
            heap.compact_full();
        }
        if step % 100 == 0 || step == 2999 {
            let leaks = heap.leaks();
            if every {
                let got_raw: HashMap<usize, usize> = leaks
                    .iter()
                    .filter(|x| x.handle.is_none())
                    .map(|x| (x.address.unwrap(), x.size))
                    .collect();
                let got_handles: HashMap<RawHandle, usize> = leaks
                    .iter()
                    .filter_map(|x| Some((x.handle?, x.size)))
                    .collect();
                assert_eq!(got_raw, raw, "seed {seed} step {step}");
                assert_eq!(got_handles, handles, "seed {seed} step {step}");
                let model: usize = raw.values().sum::<usize>() + handles.values().sum::<usize>();
                assert_eq!(
                    heap.stats().live_bytes(),
                    model as u64,
                    "seed {seed} step {step}"
                );
            } else {
                // Sampled: the records are a subset of the model, with the same sizes.
                for x in &leaks {
                    match x.handle {
                        Some(h) => assert_eq!(handles.get(&h), Some(&x.size)),
                        None => assert_eq!(raw.get(&x.address.unwrap()), Some(&x.size)),
                    }
                }
            }
        }
    }
}

#[test]
fn differential_model_every_allocation() {
    for seed in 0..3 {
        differential(seed, Sampling::EveryAllocation);
    }
}

#[test]
fn differential_model_sampled() {
    differential(7, Sampling::EveryNth(3));
    differential(8, Sampling::EveryBytes(10_000));
}

#[test]
fn no_frames_kept_still_tracks_sizes() {
    let heap = Heap::with_profiling(
        HeapConfig::DEFAULT,
        ProfilingConfig::new().with_max_frames(0),
    );
    let p = heap.alloc(l(10)).unwrap();
    let leaks = heap.leaks();
    assert_eq!((leaks.len(), leaks[0].size), (1, 10));
    assert!(leaks[0].site.frames().is_empty());
    // SAFETY: `p` came from `heap` with this layout.
    unsafe { heap.dealloc(p, l(10)) };
}

#[inline(never)]
fn leak_for_the_report(heap: &Heap) -> NonNull<u8> {
    heap.alloc(l(128)).unwrap()
}

/// The child side of the report tests: leaks one block in a heap that reports at drop
/// and one in a heap that is never dropped (reported at exit), then exits normally.
#[test]
fn profiling_child() {
    let Ok(case) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config = ProfilingConfig::new().with_report_at_exit(case == "config");
    let dropped = Heap::with_profiling(HeapConfig::DEFAULT, config);
    leak_for_the_report(&dropped);
    drop(dropped);
    eprintln!("child: dropped");
    let forever: &'static Heap =
        Box::leak(Box::new(Heap::with_profiling(HeapConfig::DEFAULT, config)));
    leak_for_the_report(forever);
    leak_for_the_report(forever);
    eprintln!("child: exiting");
}

fn run_child(case: &str, env: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "profiling_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, case)
    .env_remove("TIDYHEAP_PROFILE_REPORT");
    if let Some(v) = env {
        cmd.env("TIDYHEAP_PROFILE_REPORT", v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn reports_at_drop_and_at_exit_when_asked() {
    for (case, env) in [("config", None), ("env", Some("1"))] {
        let stderr = run_child(case, env);
        let (at_drop, rest) = stderr.split_once("child: dropped").unwrap();
        assert!(
            at_drop.contains("1 block still live, 128 B"),
            "{case}: {stderr}"
        );
        assert!(at_drop.contains("leak_for_the_report"), "{case}: {stderr}");
        let (_, at_exit) = rest.split_once("child: exiting").unwrap();
        assert!(
            at_exit.contains("2 blocks still live, 256 B"),
            "{case}: {stderr}"
        );
        assert!(at_exit.contains("leak_for_the_report"), "{case}: {stderr}");
    }
    for env in [None, Some("0")] {
        let stderr = run_child("off", env);
        assert!(
            !stderr.contains("tidyheap profile"),
            "not asked for: {stderr}"
        );
    }
}

#[test]
fn blocks_placed_on_a_node_are_tracked() {
    let heap = Heap::new();
    let small = heap.alloc_on_node(l(100), 0).unwrap();
    let large = heap.alloc_on_node(l(1 << 20), 0).unwrap();
    let mut got: Vec<_> = heap.leaks().iter().map(|x| (x.address, x.size)).collect();
    got.sort();
    let mut want = vec![
        (Some(small.as_ptr().addr()), 100),
        (Some(large.as_ptr().addr()), 1 << 20),
    ];
    want.sort();
    assert_eq!(got, want);
    // SAFETY: both came from `heap` with these layouts.
    unsafe {
        heap.dealloc(small, l(100));
        heap.dealloc(large, l(1 << 20));
    }
    assert!(heap.leaks().is_empty());
}
