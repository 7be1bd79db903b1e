//! The `allocator-api2` adapters: collections in a `Heap` (and in a static `Global`
//! that is not the process allocator), and the `Allocator` contract at its edges.

use std::alloc::Layout;
use std::collections::HashSet;

use allocator_api2::alloc::Allocator;
use allocator_api2::boxed::Box as ApiBox;
use allocator_api2::vec::Vec as ApiVec;
use tidyheap::{Global, Heap};

/// Not the global allocator: only what is explicitly allocated in it lands here.
static G: Global = Global::new();

#[test]
fn vec_in_a_heap() {
    let heap = Heap::new();
    {
        let mut v = ApiVec::new_in(&heap);
        for i in 0..50_000u64 {
            v.push(i * 3); // grows through `grow`, into the large path at the end
        }
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
        v.truncate(100);
        v.shrink_to_fit(); // `shrink`
        assert_eq!(v.iter().sum::<u64>(), 3 * (0..100).sum::<u64>());
        assert!(
            heap.stats().fixed.allocations > 10,
            "the Vec grew in the heap"
        );
    }
    let s = heap.stats();
    assert_eq!(s.fixed.live_blocks(), 0);
    assert_eq!(s.live_bytes(), 0);
}

#[test]
fn hashbrown_map_in_a_heap() {
    let heap = Heap::new();
    {
        let mut map = hashbrown::HashMap::new_in(&heap);
        for i in 0..20_000u32 {
            map.insert(i, [i; 4]);
        }
        for i in (0..20_000u32).step_by(2) {
            assert_eq!(map.remove(&i), Some([i; 4]));
        }
        assert_eq!(map.len(), 10_000);
        assert!(map.iter().all(|(k, v)| k % 2 == 1 && *v == [*k; 4]));
        map.shrink_to_fit();
        assert_eq!(map.get(&19_999), Some(&[19_999; 4]));
    }
    let s = heap.stats();
    assert!(s.fixed.allocations > 5);
    assert_eq!(s.fixed.live_blocks(), 0);
    assert_eq!(s.live_bytes(), 0);
}

#[test]
fn collections_in_a_static_global() {
    let before = G.stats().fixed;
    {
        let mut v: ApiVec<String, _> = ApiVec::new_in(&G);
        v.extend((0..1000).map(|i| i.to_string()));
        let b = ApiBox::new_in([7u8; 300], &G);
        let mut m = hashbrown::HashMap::new_in(&G);
        m.extend(v.iter().map(|s| (s.clone(), s.len())));
        assert_eq!(m["999"], 3);
        assert_eq!(b.iter().map(|&x| x as u32).sum::<u32>(), 2100);
    }
    let after = G.stats().fixed;
    assert!(after.allocations > before.allocations);
    assert_eq!(after.live_blocks(), before.live_blocks());
    assert_eq!(after.live_bytes(), before.live_bytes());
}

#[test]
fn zero_size_layouts_get_unique_blocks() {
    let heap = Heap::new();
    let a = &heap;
    for align in [1, 16, 256] {
        let l = Layout::from_size_align(0, align).unwrap();
        let blocks: Vec<_> = (0..100).map(|_| a.allocate(l).unwrap()).collect();
        let addrs: HashSet<_> = blocks
            .iter()
            .map(|b| b.cast::<u8>().as_ptr() as usize)
            .collect();
        assert_eq!(addrs.len(), 100, "a real, unique block each");
        for b in blocks {
            assert_eq!(b.len(), heap.usable_size(l));
            assert_eq!(b.cast::<u8>().as_ptr() as usize % align, 0);
            // SAFETY: allocated above with `l`, freed once.
            unsafe { a.deallocate(b.cast(), l) };
        }
    }
    assert_eq!(heap.stats().fixed.live_blocks(), 0);
}

#[test]
fn zeroed_allocation_and_grow_zeroed() {
    let heap = Heap::new();
    let a = &heap;
    // Dirty a block and free it so the next one of its class is recycled.
    let l = Layout::from_size_align(200, 8).unwrap();
    let dirty = a.allocate(l).unwrap();
    // SAFETY: the whole slice is ours; freed with a fitting layout.
    unsafe {
        dirty.cast::<u8>().as_ptr().write_bytes(0xAA, dirty.len());
        a.deallocate(dirty.cast(), l);
    }
    let z = a.allocate_zeroed(l).unwrap();
    // SAFETY: `allocate_zeroed` returns `z.len()` initialised bytes.
    let bytes = unsafe { z.as_ref() };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "all {} bytes are zero",
        z.len()
    );
    let big = Layout::from_size_align(5000, 8).unwrap();
    // SAFETY: `z` is live and `l` fits it; the result is live with `big`.
    unsafe {
        z.cast::<u8>().as_ptr().write_bytes(0x11, 200);
        let g = a.grow_zeroed(z.cast(), l, big).unwrap();
        let s = g.as_ref();
        assert_eq!(s.len(), heap.usable_size(big));
        assert!(s[..200].iter().all(|&b| b == 0x11), "kept");
        assert!(
            s[200..].iter().all(|&b| b == 0),
            "zeroed from the old size on"
        );
        a.deallocate(g.cast(), big);
    }
    assert_eq!(heap.stats().fixed.live_bytes(), 0);
}

#[test]
fn grow_and_shrink_keep_contents_and_respect_alignment() {
    let heap = Heap::new();
    let a = &heap;
    let steps = [
        (24, 8),
        (24, 8), // same layout: in place
        (100, 8),
        (100, 256), // alignment change: moves
        (3000, 256),
        (300_000, 256), // into the large path
        (5000, 64),
        (40, 16),
        (1, 1),
    ];
    let (s0, a0) = steps[0];
    let mut layout = Layout::from_size_align(s0, a0).unwrap();
    let mut block = a.allocate(layout).unwrap();
    // SAFETY: the block holds at least `s0` bytes.
    unsafe { block.cast::<u8>().as_ptr().write_bytes(0x42, s0) };
    let mut kept = s0;
    for &(size, align) in &steps[1..] {
        let new = Layout::from_size_align(size, align).unwrap();
        let old_ptr = block.cast::<u8>();
        // SAFETY: `block` is live and `layout` fits it; afterwards only the result is
        // used.
        block = unsafe {
            if size >= layout.size() {
                a.grow(old_ptr, layout, new)
            } else {
                a.shrink(old_ptr, layout, new)
            }
        }
        .unwrap();
        let what = format!("{layout:?} -> {new:?}");
        let p = block.cast::<u8>();
        assert_eq!(p.as_ptr() as usize % align, 0, "{what}");
        assert_eq!(block.len(), heap.usable_size(new), "{what}");
        if align == layout.align()
            && heap.usable_size(new) == heap.usable_size(layout)
            && size <= 256 * 1024
        {
            assert_eq!(p, old_ptr, "{what}: same class, same alignment: in place");
        }
        kept = kept.min(size);
        // SAFETY: the block holds `size` ≥ `kept` bytes.
        unsafe {
            assert!(
                std::slice::from_raw_parts(p.as_ptr(), kept)
                    .iter()
                    .all(|&b| b == 0x42),
                "{what}: contents lost"
            );
            p.as_ptr().write_bytes(0x42, size);
        }
        kept = size;
        layout = new;
    }
    // SAFETY: live with `layout`.
    unsafe { a.deallocate(block.cast(), layout) };
    let s = heap.stats();
    assert_eq!(s.fixed.live_blocks(), 0);
    assert_eq!(s.live_bytes(), 0);
}

#[test]
fn impossible_requests_are_errors() {
    let heap = Heap::new();
    let a = &heap;
    assert!(
        a.allocate(Layout::from_size_align(1 << 62, 8).unwrap())
            .is_err()
    );
    let l = Layout::new::<[u8; 64]>();
    let b = a.allocate(l).unwrap();
    // SAFETY: `b` is live with `l`; a failed grow leaves it ours, freed below.
    unsafe {
        b.cast::<u8>().as_ptr().write_bytes(9, 64);
        assert!(
            a.grow(b.cast(), l, Layout::from_size_align(1 << 62, 1).unwrap())
                .is_err()
        );
        assert!(
            b.as_ref()[..64].iter().all(|&x| x == 9),
            "untouched by the failure"
        );
        a.deallocate(b.cast(), l);
    }
    assert_eq!(heap.stats().fixed.live_blocks(), 0);
}
