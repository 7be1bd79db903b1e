//! Helpers shared by the NUMA compaction test files: an injected two-node topology
//! (node 0 = CPU 0, node 1 = CPU 1) and threads pinned to its "nodes".

use std::sync::Arc;

use tidyheap::numa::{NumaMigration, Topology};
use tidyheap::{Budget, Heap, HeapConfig};

/// Pins the calling thread to `cpu`; false if the kernel refuses.
pub fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it for
    // cpu < CPU_SETSIZE, checked first; sched_setaffinity reads the set we pass.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return false;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Whether CPUs 0 and 1 can both be pinned to (checked on a scratch thread).
pub fn two_cpus() -> bool {
    let ok = std::thread::spawn(|| pin(0) && pin(1)).join().unwrap();
    if !ok {
        println!("skipped: needs CPUs 0 and 1 to pin threads to");
    }
    ok
}

pub fn two_nodes() -> &'static Topology {
    Box::leak(Box::new(
        Topology::from_nodes(&[(0, &[0]), (1, &[1])]).unwrap(),
    ))
}

/// A two-node heap (two arenas: arena 0 on node 0, arena 1 on node 1) that samples every
/// read.
pub fn two_node_heap() -> Arc<Heap> {
    let heap = Heap::with_config(HeapConfig {
        arenas: 2,
        topology: Some(two_nodes()),
        ..HeapConfig::DEFAULT
    });
    assert_eq!(heap.numa_migration(), NumaMigration::DEFAULT);
    heap.set_numa_migration(NumaMigration {
        sample_period: 1,
        budget_share: 0.5,
        ..NumaMigration::DEFAULT
    })
    .unwrap();
    Arc::new(heap)
}

/// Runs `f` on a thread pinned to `cpu` and returns its result.
pub fn on_cpu<R: Send>(cpu: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(cpu));
            f()
        })
        .join()
        .unwrap()
    })
}

pub fn value(i: u64) -> [u64; 8] {
    core::array::from_fn(|k| i.wrapping_mul(37).wrapping_add(k as u64))
}

/// Passes with `budget` until one migrates nothing; returns the blocks migrated, and
/// checks each pass kept to its share of the block budget. For heaps without a
/// defragmenting plan: a plan's one-copy moves (misplaced blocks of its sources sent to
/// their reader's node) count as NUMA moves beyond the share; use [`settle`] there.
pub fn migrate_all(heap: &Heap, budget: Budget) -> u64 {
    passes(heap, budget, true)
}

/// [`migrate_all`] for heaps that may be defragmenting: each pass keeps to the block
/// budget, its NUMA moves to its moves.
pub fn settle(heap: &Heap, budget: Budget) -> u64 {
    passes(heap, budget, false)
}

fn passes(heap: &Heap, budget: Budget, share: bool) -> u64 {
    let mut total = 0;
    for _ in 0..10_000 {
        let r = heap.compact(budget);
        assert!(r.ran);
        if let Some(b) = budget.blocks {
            assert!(!share || r.numa_blocks_moved <= (b / 2) as u64, "{r:?}");
            assert!(r.blocks_moved <= b as u64, "{r:?}");
        }
        assert!(r.numa_blocks_moved <= r.blocks_moved);
        total += r.numa_blocks_moved;
        if r.numa_blocks_moved == 0 && r.skipped_busy == 0 {
            return total;
        }
    }
    panic!("migration did not settle");
}
