//! tidyheap as the process's global allocator: this whole test binary (the test
//! harness included) allocates through `A`.
//!
//! Tests in this binary run concurrently and share `A`, so heap-wide counters only
//! ever grow monotonically here; exact checks use the calling thread's own cache
//! counters (`A.thread_cache_stats()`), which no other thread touches.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

use tidyheap::{Global, PoolCounters};

#[global_allocator]
static A: Global = Global::new();

/// This thread's cache counters (this thread has allocated by the time a test runs).
fn mine() -> PoolCounters {
    A.thread_cache_stats()
        .expect("the test thread allocates through A")
}

#[test]
fn a_vec_is_served_by_tidyheap() {
    // Warm up: the thread's cache exists once it has allocated anything.
    drop(Vec::<u8>::with_capacity(1));
    let before = mine();
    let v: Vec<u64> = Vec::with_capacity(100);
    let after = mine();
    assert_eq!(after.allocations - before.allocations, 1);
    assert_eq!(after.allocated_bytes - before.allocated_bytes, 800);
    assert_eq!(
        v.as_ptr() as usize % 8,
        0,
        "aligned for u64 (pool blocks are 16-aligned)"
    );
    // Its class, 832 B; `hardened` keeps the slack for the canary.
    let usable = if cfg!(feature = "hardened") { 800 } else { 832 };
    assert_eq!(A.usable_size(Layout::array::<u64>(100).unwrap()), usable);
    drop(v);
    let freed = mine();
    assert_eq!(freed.frees - after.frees, 1);
    assert_eq!(freed.freed_bytes - after.freed_bytes, 800);
}

#[test]
fn std_collections() {
    let before = mine();
    let mut map: HashMap<String, Vec<u32>> = HashMap::new();
    let mut tree: BTreeMap<u32, String> = BTreeMap::new();
    for i in 0..2_000u32 {
        let key = format!("key-{i}");
        map.insert(key.clone(), (0..i % 50).collect());
        tree.insert(i, key);
    }
    for i in (0..2_000u32).step_by(3) {
        let key = tree.remove(&i).unwrap();
        assert_eq!(map.remove(&key).unwrap().len(), (i % 50) as usize);
    }
    for (i, key) in &tree {
        assert_eq!(map[key].iter().sum::<u32>(), (0..i % 50).sum::<u32>());
    }
    let during = mine();
    drop(map);
    drop(tree);
    let after = mine();
    assert!(
        during.allocations - before.allocations >= 4_000,
        "keys, values and nodes came from tidyheap"
    );
    // Everything this test allocated on this thread was freed on this thread. Exact
    // only if the heap's own bookkeeping (central lists, caches) never allocates
    // through `A` itself, so this checks that too.
    assert_eq!(
        after.live_blocks(),
        before.live_blocks(),
        "no block of the test leaked"
    );
    assert_eq!(after.live_bytes(), before.live_bytes());
}

#[test]
fn realloc_heavy_growth() {
    let before = mine();
    let mut v: Vec<u32> = Vec::new();
    for i in 0..200_000u32 {
        v.push(i); // grows through realloc, up into the large path (800 KB)
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    v.truncate(10);
    v.shrink_to_fit(); // realloc down
    assert_eq!(v, (0..10).collect::<Vec<_>>());

    let mut s = String::new();
    for i in 0..20_000 {
        s.push_str(&i.to_string());
        s.push(',');
    }
    let parsed: Vec<u32> = s
        .trim_end_matches(',')
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(parsed, (0..20_000).collect::<Vec<_>>());
    let during = mine();
    drop((v, s, parsed));
    let after = mine();
    assert!(
        during.allocations - before.allocations >= 20,
        "every pool-sized growth step moved through tidyheap"
    );
    assert_eq!(after.live_bytes(), before.live_bytes());
}

#[test]
fn realloc_within_a_class_stays_in_place() {
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: `A` is a static; `p` is live with `l`, then with the new size.
    unsafe {
        let p = A.alloc(l);
        assert!(!p.is_null());
        p.write_bytes(0x3C, 100);
        let q = A.realloc(p, l, 112);
        assert_eq!(q, p, "100 and 112 bytes share the 112 B class");
        let r = A.realloc(q, Layout::from_size_align(112, 8).unwrap(), 600);
        assert_ne!(r, q, "600 bytes need a bigger class");
        assert!(
            std::slice::from_raw_parts(r, 100)
                .iter()
                .all(|&b| b == 0x3C)
        );
        A.dealloc(r, Layout::from_size_align(600, 8).unwrap());
    }
}

#[test]
fn zeroed_and_failed_requests() {
    // SAFETY: `A` is a static; the layouts are not zero-sized; blocks are freed with
    // their layouts.
    unsafe {
        let l = Layout::from_size_align(3000, 64).unwrap();
        let p = A.alloc(l);
        p.write_bytes(0xFF, 3000);
        A.dealloc(p, l);
        let z = A.alloc_zeroed(l);
        assert_eq!(z as usize % 64, 0);
        assert!(std::slice::from_raw_parts(z, 3000).iter().all(|&b| b == 0));
        A.dealloc(z, l);

        let huge = Layout::from_size_align(1 << 62, 8).unwrap();
        assert!(
            A.alloc(huge).is_null(),
            "the OS refuses 4 EiB: null, no abort"
        );
        assert!(A.alloc_zeroed(huge).is_null());
    }
}

#[test]
fn threads_pass_collections_to_each_other() {
    const THREADS: usize = 4;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(usize, Vec<String>)>())
        .unzip();
    let mut rxs: Vec<_> = rxs.into_iter().map(Some).collect();
    let counters: Vec<PoolCounters> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let to_next = txs[(t + 1) % THREADS].clone();
                let from_prev = rxs[t].take().unwrap();
                s.spawn(move || {
                    for round in 0..200 {
                        let batch: Vec<String> = (0..20)
                            .map(|i| format!("{t}:{round}:{i}:{}", "x".repeat(i * 7)))
                            .collect();
                        to_next.send((round, batch)).unwrap();
                        // Check and drop (free here) what the previous thread made.
                        while let Ok((r, batch)) = from_prev.try_recv() {
                            check_batch((t + THREADS - 1) % THREADS, r, &batch);
                        }
                    }
                    drop(to_next);
                    for (r, batch) in from_prev {
                        check_batch((t + THREADS - 1) % THREADS, r, &batch);
                    }
                    A.thread_cache_stats().expect("this thread allocated")
                })
            })
            .collect();
        drop(txs);
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for c in &counters {
        assert!(
            c.allocations >= 200 * 21,
            "each thread allocated its batches"
        );
        assert!(c.frees >= 200 * 21, "and freed its neighbour's");
        assert!(c.hit_rate() > 0.5);
    }
    let s = A.stats();
    assert!(s.fixed.allocations >= counters.iter().map(|c| c.allocations).sum());
    // The workers exited: their records were parked warm for the next threads, and
    // `trim` brings their blocks home.
    A.trim();
    assert!(A.stats().arenas.iter().map(|a| a.returns).sum::<u64>() > 0);
}

fn check_batch(from: usize, round: usize, batch: &[String]) {
    assert_eq!(batch.len(), 20);
    for (i, s) in batch.iter().enumerate() {
        assert_eq!(*s, format!("{from}:{round}:{i}:{}", "x".repeat(i * 7)));
    }
}

/// Set in the child process of `bad_dealloc_aborts_in_debug`.
#[cfg(debug_assertions)]
const BAD_DEALLOC_ENV: &str = "TIDYHEAP_TEST_GLOBAL_BAD_DEALLOC";

/// A wrong layout passed to `A.dealloc` in a debug build prints the heap's message and
/// aborts (a global allocator must not unwind). Checked in a child process.
#[cfg(debug_assertions)]
#[test]
fn bad_dealloc_aborts_in_debug() {
    if std::env::var_os(BAD_DEALLOC_ENV).is_some() {
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: deliberately violated: freed with the wrong layout. The debug check
        // fires before the heap is touched.
        unsafe {
            let p = A.alloc(l);
            A.dealloc(p, Layout::from_size_align(4000, 8).unwrap());
        }
        return; // Not reached when the check works: the parent then sees success.
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bad_dealloc_aborts_in_debug",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(BAD_DEALLOC_ENV, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the bad dealloc went unnoticed:\n{stderr}"
    );
    assert!(
        stderr.contains("wrong layout passed to dealloc"),
        "stderr:\n{stderr}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGABRT),
            "aborted rather than unwound"
        );
    }
}
