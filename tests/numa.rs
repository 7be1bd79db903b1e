//! NUMA: topology detection, node placement, migration, binding errors, and arena
//! assignment under an injected two-node topology.
//!
//! Written for single-node machines (where CI runs); the tests that need two real memory
//! nodes print why they skip and return.

use std::alloc::Layout;
use std::sync::mpsc;

use tidyheap::numa::{self, NodePolicy, NumaError, Topology, TopologySource};
use tidyheap::{Heap, HeapConfig};

const INTS: usize = 256 * 1024;

/// The online node ids as sysfs lists them, parsed independently of tidyheap (`None`
/// without a sysfs node directory).
fn sysfs_nodes() -> Option<Vec<u32>> {
    let s = std::fs::read_to_string("/sys/devices/system/node/online").ok()?;
    let mut v = Vec::new();
    for part in s.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        v.extend(lo.parse::<u32>().ok()?..=hi.parse::<u32>().ok()?);
    }
    Some(v)
}

/// A node id the machine does not have.
fn missing_node() -> u32 {
    (0..)
        .find(|n| Topology::system().index_of(*n).is_none())
        .unwrap()
}

/// Pins the calling thread to `cpu`; false if the kernel refuses (CPU absent or outside
/// the cpuset).
fn pin(cpu: usize) -> bool {
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
fn two_cpus() -> bool {
    std::thread::spawn(|| pin(0) && pin(1)).join().unwrap()
}

fn leak(t: Topology) -> &'static Topology {
    Box::leak(Box::new(t))
}

/// Node 0 = CPU 0, node 1 = CPU 1.
fn two_nodes() -> &'static Topology {
    leak(Topology::from_nodes(&[(0, &[0]), (1, &[1])]).unwrap())
}

fn fill(p: *mut u32, n: usize) {
    for i in 0..n {
        // SAFETY: callers pass a block of at least `n` u32s.
        unsafe { p.add(i).write((i as u32).wrapping_mul(37)) };
    }
}

fn check(p: *const u32, n: usize) {
    for i in 0..n {
        // SAFETY: callers pass a block of at least `n` u32s, filled by `fill`.
        let v = unsafe { p.add(i).read() };
        assert_eq!(v, (i as u32).wrapping_mul(37), "int {i} changed");
    }
}

#[test]
fn detection_matches_sysfs() {
    let t = Topology::detect();
    match sysfs_nodes() {
        Some(ids) => {
            assert_eq!(t.source(), TopologySource::Sysfs);
            assert_eq!(t.node_ids().collect::<Vec<_>>(), ids);
            if ids.len() == 1 {
                assert_eq!(t.node_count(), 1);
                assert_eq!(t.current_node(), ids[0]);
            }
        }
        None => assert_eq!(t, Topology::single_node()),
    }
    assert_eq!(Topology::system(), &t);
    let here = numa::current_cpu().unwrap();
    assert!(t.index_of(here.node).is_some());
}

/// On a one-node machine: topology detection finds one node, and fixed, large and
/// node-placed blocks all report node 0 through `get_mempolicy`.
#[test]
fn single_node_blocks_report_node_0() {
    if Topology::system().node_count() != 1 {
        println!(
            "skipped: this machine has {} nodes",
            Topology::system().node_count()
        );
        return;
    }
    let node = Topology::system().node_id(0).unwrap();
    assert_eq!(node, 0);
    let heap = Heap::new();
    assert_eq!(heap.topology().node_count(), 1);
    assert_eq!(heap.arena_node(0), Some(0));
    for size in [16, 4096, 200_000, 1 << 20, 5 << 20] {
        let l = Layout::from_size_align(size, 16).unwrap();
        for on_node in [false, true] {
            let p = if on_node {
                heap.alloc_on_node(l, 0).unwrap()
            } else {
                heap.alloc(l).unwrap()
            };
            // SAFETY: `p` holds `size` writable bytes.
            unsafe { p.as_ptr().write_bytes(0xa5, size) };
            for off in [0, size / 2, size - 1] {
                // SAFETY: in bounds.
                let at = unsafe { p.as_ptr().add(off) };
                assert_eq!(numa::node_of_address(at), Ok(0), "size {size} offset {off}");
            }
            // SAFETY: `p` came from `heap` with `l`.
            unsafe { heap.dealloc(p, l) };
        }
    }
    let h = heap.alloc_handle(512, 16).unwrap();
    heap.write(h).unwrap().fill(3);
    let r = heap.read(h).unwrap();
    assert_eq!(numa::node_of_address(r.as_ptr()), Ok(0));
    drop(r);
    heap.free_handle(h).unwrap();
    let s = heap.stats();
    assert_eq!(s.numa.nodes.len(), 1);
    assert_eq!((s.numa.remote_spans(), s.numa.bind_failures), (0, 0));
    assert!(s.numa.local_spans() >= 3);
    assert_eq!(s.large.node_placements, 2);
}

/// 256 Ki ints of i × 37 in fixed pool memory, a large block and a node-placed large
/// block: migrated to node 0 (the node of a one-node machine), every int checked.
#[test]
fn migration_keeps_contents() {
    let node = Topology::system().node_id(0).unwrap();
    let heap = Heap::new();
    let large = Layout::array::<u32>(INTS).unwrap();
    let pool = Layout::array::<u32>(INTS / 8).unwrap();
    let blocks = [
        (heap.alloc(large).unwrap(), large),
        (heap.alloc_on_node(large, node).unwrap(), large),
        (heap.alloc(pool).unwrap(), pool),
    ];
    for &(p, l) in &blocks {
        let n = l.size() / 4;
        fill(p.as_ptr().cast(), n);
        let m = heap.migrate_to_node(p.as_ptr(), l.size(), node).unwrap();
        let (start, end) = (p.as_ptr() as usize, p.as_ptr() as usize + l.size());
        assert_eq!(m.pages, end.div_ceil(4096) - start / 4096);
        assert!(m.complete(), "{m:?}");
        assert_eq!(m.not_present, 0, "every page was written: {m:?}");
        check(p.as_ptr().cast(), n);
        for i in (0..n).step_by(1024) {
            // SAFETY: `i < n`, inside the block.
            let at = unsafe { p.as_ptr().add(4 * i) };
            assert_eq!(numa::node_of_address(at), Ok(node));
        }
    }
    let s = heap.stats().numa;
    assert_eq!(s.migrations, 3);
    assert_eq!(s.migration_failures, 0);
    assert!(s.migrated_pages >= 2 * 256 + 32);
    for (p, l) in blocks {
        // SAFETY: each block came from `heap` with its layout.
        unsafe { heap.dealloc(p, l) };
    }
}

/// Pages that are never touched, and a range that was freed between allocation and
/// migration: neither is an error, and the counts say what happened.
#[test]
fn migration_of_untouched_and_freed_ranges() {
    let heap = Heap::new();
    let l = Layout::from_size_align(1 << 20, 4096).unwrap();
    let p = heap.alloc(l).unwrap();
    // SAFETY: the first page of the block.
    unsafe { p.as_ptr().write(1) };
    let m = heap.migrate_to_node(p.as_ptr(), 1 << 20, 0).unwrap();
    assert_eq!(
        (m.pages, m.on_node, m.not_present, m.failed),
        (256, 1, 255, 0)
    );
    assert!(m.complete());
    // SAFETY: `p` came from `heap` with `l`; only its (now dangling) address is used below.
    unsafe { heap.dealloc(p, l) };
    // The freed mapping waits in the large-block cache; trim unmaps it.
    heap.trim();
    let m = heap.migrate_to_node(p.as_ptr(), 1 << 20, 0).unwrap();
    assert_eq!((m.pages, m.on_node, m.failed), (256, 0, 256));
    assert!(!m.complete());
    assert_eq!(heap.stats().numa.migration_failures, 256);
    let empty = heap.migrate_to_node(p.as_ptr(), 0, 0).unwrap();
    assert_eq!(empty, numa::Migration::default());
    assert_eq!(
        heap.migrate_to_node(usize::MAX as *const u8, 2, 0),
        Err(NumaError::BadRange {
            addr: usize::MAX,
            len: 2
        })
    );
}

/// Every way of naming a node the kernel does not have is an error, never a panic, and
/// leaves nothing allocated.
#[test]
fn missing_nodes_are_errors() {
    let missing = missing_node();
    let heap = Heap::new();
    let v = vec![1u8; 1 << 16];
    let unavailable = |r: Result<_, NumaError>, op: &str| match r {
        Err(NumaError::NodeUnavailable { node, op: o, .. }) => {
            assert_eq!((node, o), (missing, op));
        }
        other => panic!("expected NodeUnavailable from {op}, got {other:?}"),
    };
    for policy in [NodePolicy::Preferred, NodePolicy::Bind] {
        for mv in [false, true] {
            unavailable(
                numa::bind(v.as_ptr(), v.len(), missing, policy, mv),
                "mbind",
            );
        }
    }
    unavailable(
        numa::migrate_to_node(v.as_ptr(), v.len(), missing).map(|_| ()),
        "move_pages",
    );
    unavailable(
        heap.migrate_to_node(v.as_ptr(), v.len(), missing)
            .map(|_| ()),
        "move_pages",
    );
    assert!(v.iter().all(|&b| b == 1));
    let large = Layout::from_size_align(1 << 20, 16).unwrap();
    unavailable(heap.alloc_on_node(large, missing).map(|_| ()), "mbind");
    let small = Layout::new::<[u8; 64]>();
    assert_eq!(
        heap.alloc_on_node(small, missing),
        Err(NumaError::UnknownNode { node: missing })
    );
    for node in [numa::MAX_NODE_ID, u32::MAX] {
        let out = NumaError::NodeOutOfRange { node };
        assert_eq!(heap.alloc_on_node(large, node), Err(out));
        assert_eq!(heap.alloc_on_node(small, node), Err(out));
        assert_eq!(heap.migrate_to_node(v.as_ptr(), 1, node), Err(out));
        assert_eq!(
            numa::bind(v.as_ptr(), 1, node, NodePolicy::Bind, false),
            Err(out)
        );
    }
    let s = heap.stats();
    assert_eq!((s.large.live_blocks, s.large.node_placements), (0, 0));
    assert_eq!(s.fixed.live_blocks(), 0);
    assert_eq!(s.numa.migrations, 0);
    let e = heap.alloc_on_node(large, missing).unwrap_err();
    assert!(e.to_string().contains("rejected NUMA node"), "{e}");
}

/// With an injected two-node topology: at least one arena per node, a node's threads
/// round-robin over its arenas, spans count as local or remote by the thread's node,
/// and on a one-node machine the kernel's refusal of node 1 is counted as one bind
/// failure (the node-1 chunk), while node 0's binding succeeds.
#[test]
fn injected_two_nodes_drive_arena_assignment_and_stats() {
    if !two_cpus() {
        println!("skipped: needs CPUs 0 and 1 to pin threads to");
        return;
    }
    let topo = two_nodes();
    let one = Heap::with_config(HeapConfig {
        arenas: 1,
        topology: Some(topo),
        ..HeapConfig::DEFAULT
    });
    assert_eq!(one.arena_count(), 2, "raised to one arena per node");
    drop(one);
    let heap = Heap::with_config(HeapConfig {
        arenas: 4,
        topology: Some(topo),
        ..HeapConfig::DEFAULT
    });
    assert_eq!(heap.topology(), topo);
    let nodes: Vec<_> = (0..4).map(|a| heap.arena_node(a).unwrap()).collect();
    assert_eq!(nodes, [0, 1, 0, 1]);
    let l = Layout::new::<[u8; 64]>();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let exit_rx = std::sync::Mutex::new(exit_rx);
    std::thread::scope(|s| {
        // Owned by the closure: if an assertion fails, unwinding drops it before the
        // scope joins, so the waiting threads wake instead of deadlocking.
        let exit_tx = exit_tx;
        // One at a time, so the per-node round-robin order is known: A, B, E on CPU 0
        // (arenas 0, 2, 0), C, D on CPU 1 (arenas 1, 3).
        for cpu in [0, 0, 1, 1, 0] {
            let (heap, exit) = (&heap, &exit_rx);
            let (done_tx, done_rx) = mpsc::channel::<()>();
            s.spawn(move || {
                assert!(pin(cpu));
                let p = heap.alloc(l).unwrap();
                done_tx.send(()).unwrap();
                // Hold the cache until every thread has one.
                let _ = exit.lock().unwrap().recv();
                // SAFETY: `p` came from `heap` with `l`.
                unsafe { heap.dealloc(p, l) };
            });
            done_rx.recv().expect("the thread allocated");
        }
        let st = heap.stats();
        let threads: Vec<_> = st.arenas.iter().map(|a| a.threads).collect();
        assert_eq!(threads, [2, 1, 1, 1]);
        let per_node: Vec<_> = st
            .numa
            .nodes
            .iter()
            .map(|n| (n.node, n.arenas, n.threads))
            .collect();
        assert_eq!(per_node, [(0, 2, 3), (1, 2, 2)]);
        // Every thread started one 64 B span of its own (fixed spans are thread-owned,
        // see `pool::remote`), in an arena of its own node: A, B, E on node 0, C, D on 1.
        for (n, spans) in st.numa.nodes.iter().zip([3, 2]) {
            assert_eq!((n.local_spans, n.remote_spans), (spans, 0), "{n:?}");
            // Committed pages lie in local spans (a span counts the pages it wrote, at
            // most its region).
            assert!(n.committed_bytes > 0, "{n:?}");
            assert!(n.committed_bytes as u64 <= n.local_span_bytes, "{n:?}");
            assert_eq!(n.local_share(), 1.0);
        }
        for _ in 0..5 {
            exit_tx.send(()).unwrap();
        }
    });
    // A thread that gets its arena on node 0 (and a parked record, whose cached 64 B
    // blocks serve its first allocation) and then runs on node 1: its first carving
    // refill checks its node and switches it to a node-1 arena, so its new span is local.
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(0));
            let a = heap.alloc(l).unwrap();
            assert!(pin(1));
            let other = Layout::new::<[u8; 512]>();
            let b = heap.alloc(other).unwrap();
            // SAFETY: both came from `heap` with these layouts.
            unsafe {
                heap.dealloc(a, l);
                heap.dealloc(b, other);
            }
        });
    });
    let st = heap.stats().numa;
    assert_eq!(st.thread_moves, 1);
    assert_eq!(st.remote_spans(), 0);
    assert_eq!(st.nodes[1].local_spans, 3);
    if Topology::system().index_of(1).is_none() {
        // Node 0's chunk was bound, node 1's refused (and used anyway).
        assert_eq!(st.bind_failures, 1);
    } else {
        assert_eq!(st.bind_failures, 0);
    }
}

/// A thread the scheduler moves to another node (here: it re-pins itself) switches to an
/// arena of the new node within a few refills, so its new fixed and handle blocks come
/// from that node's spans (counted local); the blocks it took before stay valid and go
/// home to their own spans; arena and node thread counts follow it.
#[test]
fn moved_threads_switch_to_an_arena_of_their_new_node() {
    if !two_cpus() {
        println!("skipped: needs CPUs 0 and 1 to pin threads to");
        return;
    }
    let heap = Heap::with_config(HeapConfig {
        arenas: 2,
        topology: Some(two_nodes()),
        ..HeapConfig::DEFAULT
    });
    let l = Layout::new::<[u64; 8]>();
    let threads =
        |st: &tidyheap::HeapStats| st.arenas.iter().map(|a| a.threads).collect::<Vec<_>>();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(0));
            let fill = |k: usize| [k as u64; 8];
            let alloc = |k: usize| {
                let p = heap.alloc(l).unwrap().cast::<[u64; 8]>();
                // SAFETY: a fresh block of `l`.
                unsafe { p.write(fill(k)) };
                p
            };
            let bytes = |k: usize| [(k % 251) as u8; 64];
            let old: Vec<_> = (0..100).map(alloc).collect();
            let old_h: Vec<_> = (0..100)
                .map(|k| heap.insert_bytes(&bytes(k)).unwrap())
                .collect();
            let st = heap.stats();
            assert_eq!(threads(&st), [1, 0]);
            assert_eq!(st.numa.thread_moves, 0);
            assert_eq!(st.arenas[1].committed_bytes, 0);
            assert!(pin(1));
            // Many carving refills: the node is checked within the first four.
            let new: Vec<_> = (100..4100).map(alloc).collect();
            let fixed_on_1 = heap.stats().arenas[1].committed_bytes;
            assert!(fixed_on_1 > 0);
            let new_h: Vec<_> = (100..4100)
                .map(|k| heap.insert_bytes(&bytes(k)).unwrap())
                .collect();
            let st = heap.stats();
            assert_eq!(st.numa.thread_moves, 1, "{:?}", st.numa);
            assert_eq!(threads(&st), [0, 1]);
            assert!(st.arenas[1].committed_bytes > fixed_on_1);
            let per_node: Vec<_> = st
                .numa
                .nodes
                .iter()
                .map(|n| (n.arenas, n.threads))
                .collect();
            assert_eq!(per_node, [(1, 0), (1, 1)]);
            // Node 1's spans were all started by the thread on node 1 (one fixed, one
            // handle span at least); node 0's before the move, locally.
            let n = &st.numa.nodes;
            assert!(n[1].local_spans >= 2 && n[1].remote_spans == 0, "{n:?}");
            assert!(n[0].local_spans >= 2, "{n:?}");
            for &h in &old_h {
                assert_eq!(heap.node_of_handle(h), Ok(Some(0)));
            }
            for &h in &new_h[new_h.len() / 2..] {
                assert_eq!(heap.node_of_handle(h), Ok(Some(1)));
            }
            // Every block is intact and frees cleanly, old ones home to their node-0 spans.
            for (k, &p) in old.iter().chain(&new).enumerate() {
                // SAFETY: `p` is a live block written with `fill(k)`; freed once with `l`.
                unsafe {
                    assert_eq!(p.read(), fill(k));
                    heap.dealloc(p.cast(), l);
                }
            }
            for (k, &h) in old_h.iter().chain(&new_h).enumerate() {
                assert_eq!(&*heap.read(h).unwrap(), &bytes(k)[..]);
                heap.free_handle(h).unwrap();
            }
            let st = heap.stats();
            assert_eq!((st.fixed.live_bytes(), st.movable.live_bytes()), (0, 0));
            // Trimming brings every cached block home to its span, in either arena, so
            // every span is empty and released.
            heap.trim();
            let st = heap.stats();
            assert_eq!(st.committed_bytes, 0, "{st:?}");
        });
    });
}

/// Under an injected two-node topology on a machine without node 1, a pool block asked
/// for on node 1 is an error (the pool's binding would be refused), and one on node 0
/// comes from a node-0 arena.
#[test]
fn injected_node_missing_from_the_machine_is_an_error() {
    if Topology::system().index_of(1).is_some() {
        println!("skipped: this machine has a node 1");
        return;
    }
    let heap = Heap::with_config(HeapConfig {
        topology: Some(two_nodes()),
        ..HeapConfig::DEFAULT
    });
    let l = Layout::new::<[u8; 128]>();
    assert!(matches!(
        heap.alloc_on_node(l, 1),
        Err(NumaError::NodeUnavailable { node: 1, .. })
    ));
    let p = heap.alloc_on_node(l, 0).unwrap();
    let st = heap.stats();
    let arena = st
        .arenas
        .iter()
        .position(|a| a.committed_bytes > 0)
        .unwrap();
    assert_eq!(heap.arena_node(arena), Some(0));
    assert_eq!(st.fixed.live_blocks(), 1);
    // SAFETY: `p` came from `heap` with `l`.
    unsafe { heap.dealloc(p, l) };
    assert_eq!(heap.stats().fixed.live_blocks(), 0);
}

/// Two real nodes: a block migrated to the other node is there afterwards, page by page,
/// with its contents, while another thread keeps writing to a neighbouring block.
#[test]
fn migration_between_real_nodes() {
    let t = Topology::system();
    if t.node_count() < 2 {
        println!(
            "skipped: needs two memory nodes; this machine has {}",
            t.node_count()
        );
        return;
    }
    let (a, b) = (t.node_id(0).unwrap(), t.node_id(1).unwrap());
    let heap = Heap::new();
    let l = Layout::array::<u32>(INTS).unwrap();
    let p = heap.alloc_on_node(l, a).unwrap();
    fill(p.as_ptr().cast(), INTS);
    assert_eq!(numa::node_of_address(p.as_ptr()), Ok(a));
    let m = heap.migrate_to_node(p.as_ptr(), l.size(), b).unwrap();
    assert!(m.complete(), "{m:?}");
    check(p.as_ptr().cast(), INTS);
    for i in (0..INTS).step_by(1024) {
        // SAFETY: inside the block.
        let at = unsafe { p.as_ptr().add(4 * i) };
        assert_eq!(numa::node_of_address(at), Ok(b));
    }
    // SAFETY: `p` came from `heap` with `l`.
    unsafe { heap.dealloc(p, l) };
}

/// Two real nodes: a thread pinned to a CPU of the second node gets pool memory placed
/// on that node.
#[test]
fn spans_land_on_the_thread_node() {
    let t = Topology::system();
    if t.node_count() < 2 {
        println!(
            "skipped: needs two memory nodes; this machine has {}",
            t.node_count()
        );
        return;
    }
    let node = t.node_id(1).unwrap();
    let Some(cpu) = (0..numa::MAX_CPUS).find(|&c| t.node_of_cpu(c) == node && pin_test(c)) else {
        println!("skipped: no CPU of node {node} can be pinned to");
        return;
    };
    let heap = Heap::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            assert!(pin(cpu));
            let l = Layout::new::<[u8; 256]>();
            let p = heap.alloc(l).unwrap();
            // SAFETY: `p` holds 256 writable bytes.
            unsafe { p.as_ptr().write_bytes(1, 256) };
            assert_eq!(numa::node_of_address(p.as_ptr()), Ok(node));
            // SAFETY: `p` came from `heap` with `l`.
            unsafe { heap.dealloc(p, l) };
        });
    });
    assert_eq!(heap.stats().numa.bind_failures, 0);
}

fn pin_test(cpu: usize) -> bool {
    std::thread::spawn(move || pin(cpu)).join().unwrap()
}

/// A node-placed block is handed out like any other: blocks that went home freed (so
/// they carry the free stamp) and are placed again free cleanly, and with `hardened`
/// each has its canary after the requested size. Before the fix, `hardened` aborted at
/// the first free with "canary corrupted" (no canary was written, and on a fresh heap
/// the key it is derived from was not even set); CI runs this file with `hardened`.
#[test]
fn node_placed_blocks_are_handed_out_like_any_other() {
    let heap = Heap::new();
    let layout = Layout::from_size_align(100, 16).unwrap();
    for _ in 0..3 {
        let blocks: Vec<_> = (0..64)
            .map(|_| heap.alloc_on_node(layout, 0).unwrap())
            .collect();
        for &b in &blocks {
            // SAFETY: `b` is a live block of 100 bytes.
            unsafe { b.as_ptr().write_bytes(0xA5, 100) };
        }
        for b in blocks {
            // SAFETY: `b` came from `heap` with `layout` and is freed once.
            unsafe { heap.dealloc(b, layout) };
        }
        // Everything cached goes home to its spans, stamped free, for the next round.
        heap.trim();
    }
    assert_eq!(heap.stats().fixed.live_bytes(), 0);
}
