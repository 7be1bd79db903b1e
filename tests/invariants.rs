//! DESIGN invariant 4: no global lock on the fast paths. Once a thread's cache is warm,
//! alloc/free pairs and handle reads and writes take no arena lock at all.

use std::alloc::Layout;

use tidyheap::{Heap, HeapStats};

fn locks(s: &HeapStats) -> u64 {
    s.arenas.iter().map(|a| a.lock_acquisitions).sum()
}

#[test]
fn warm_alloc_free_pairs_take_no_lock() {
    let heap = Heap::new();
    for size in [16, 64, 256, 1024, 4096, 100_000] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        // Warm up: the first allocation refills the cache from an arena.
        let p = heap.alloc(layout).unwrap();
        // SAFETY: allocated just above with `layout`.
        unsafe { heap.dealloc(p, layout) };
        let before = locks(&heap.stats());
        for _ in 0..10_000 {
            let p = heap.alloc(layout).unwrap();
            // SAFETY: as above.
            unsafe { heap.dealloc(p, layout) };
        }
        assert_eq!(
            locks(&heap.stats()),
            before,
            "size {size}: the hot path locked an arena"
        );
    }
}

#[test]
fn handle_reads_and_writes_take_no_lock() {
    let heap = Heap::new();
    let hs: Vec<_> = (0..1000)
        .map(|i| heap.insert_bytes(&[i as u8; 48]).unwrap())
        .collect();
    let before = locks(&heap.stats());
    for _ in 0..10 {
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(heap.read(*h).unwrap()[0], i as u8);
            heap.write(*h).unwrap()[1] = 1;
        }
    }
    assert_eq!(locks(&heap.stats()), before);
}
