//! Typed stores: values, guards, drop counts, bad handles, threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tidyheap::{Budget, Handle, HandleError, Heap, Store};

struct Counted(Arc<AtomicUsize>, u64);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn drop_runs_exactly_once_per_value() {
    let drops = Arc::new(AtomicUsize::new(0));
    let store = Store::new();
    let hs: Vec<_> = (0..1000)
        .map(|i| store.insert(Counted(drops.clone(), i)))
        .collect();
    for h in hs.iter().step_by(2) {
        drop(store.remove(*h).unwrap());
    }
    assert_eq!(drops.load(Ordering::Relaxed), 500);
    assert!(store.remove(hs[0]).is_none(), "double remove is harmless");
    assert_eq!(drops.load(Ordering::Relaxed), 500);
    store.heap().compact_full();
    for (i, h) in hs.iter().enumerate().skip(1).step_by(2) {
        assert_eq!(
            store.get(*h).unwrap().1,
            i as u64,
            "values survive compaction"
        );
    }
    drop(store);
    assert_eq!(drops.load(Ordering::Relaxed), 1000);
}

#[test]
fn over_aligned_and_zero_sized_values() {
    #[repr(align(64))]
    #[derive(Debug, PartialEq, Clone, Copy)]
    struct Aligned([u8; 8]);
    let store = Store::new();
    let hs: Vec<_> = (0..500u32)
        .map(|i| store.insert(Aligned([i as u8; 8])))
        .collect();
    for h in hs.iter().step_by(2) {
        store.remove(*h);
    }
    store.heap().compact_full();
    for (i, h) in hs.iter().enumerate().skip(1).step_by(2) {
        let r = store.get(*h).unwrap();
        assert_eq!(&*r as *const Aligned as usize % 64, 0);
        assert_eq!(*r, Aligned([i as u8; 8]));
    }
    let units: Store<()> = Store::new();
    let a = units.insert(());
    let b = units.insert(());
    assert_ne!(a, b);
    assert_eq!(units.len(), 2);
    assert_eq!(units.remove(a), Some(()));
    assert!(units.get(a).is_none());
    assert!(units.get(b).is_some());
}

#[test]
fn handles_of_other_stores_are_stale() {
    let heap = Arc::new(Heap::new());
    let a: Store<u64> = Store::new_in(heap.clone());
    let b: Store<u64> = Store::new_in(heap.clone());
    let ha = a.insert(1);
    let hb = b.insert(2);
    assert!(b.get(ha).is_none());
    assert!(a.get(hb).is_none());
    assert!(!b.contains(ha));
    assert_eq!(b.try_remove(ha).unwrap_err(), HandleError::Stale);
    assert_eq!(
        *a.get(ha).unwrap(),
        1,
        "a failed foreign remove loses nothing"
    );
    // A raw handle API free of a store's handle is refused too.
    assert_eq!(heap.free_handle(ha.raw()), Err(HandleError::Stale));
    assert!(heap.read(hb.raw()).is_err());
    // A store on another heap does not know the handle's slot at all, or names its own.
    let c: Store<u64> = Store::new();
    assert!(c.get(ha).is_none());
    let forged: Handle<u64> = Handle::from_raw(ha.raw());
    assert_eq!(*a.get(forged).unwrap(), 1);
}

#[test]
fn guards_and_try_forms() {
    let s = Store::new();
    let h = s.insert(10u32);
    let r = s.get(h).unwrap();
    assert_eq!(s.try_get_mut(h).unwrap_err(), HandleError::Busy);
    assert_eq!(s.try_remove(h).unwrap_err(), HandleError::Busy);
    let r2 = s.try_get(h).unwrap();
    assert_eq!(*r + *r2, 20);
    drop((r, r2));
    *s.try_get_mut(h).unwrap() += 1;
    assert_eq!(s.try_remove(h), Ok(11));
    assert_eq!(s.try_remove(h), Err(HandleError::Stale));
}

#[test]
fn owned_and_shared() {
    let s: Store<String> = Store::new();
    let o = s.insert_owned("a".into());
    let h = o.into_handle();
    assert_eq!(*s.get(h).unwrap(), "a", "into_handle keeps the value");
    let sh = s.insert_shared("b".into());
    let sh2 = sh.clone();
    assert_eq!(sh.strong_count(), 2);
    let hb = sh.handle();
    drop(sh);
    assert!(s.contains(hb));
    drop(sh2);
    assert!(!s.contains(hb));
    assert_eq!(s.len(), 1);
}

#[test]
fn threads_read_write_remove_while_compacting() {
    let store: Store<[u64; 16]> = Store::new();
    let seeded = |v: u64| {
        let mut a = [v; 16];
        a[15] = a[..15]
            .iter()
            .fold(0u64, |x, y| x.wrapping_mul(31).wrapping_add(*y));
        a
    };
    let ok = |a: &[u64; 16]| {
        a[15]
            == a[..15]
                .iter()
                .fold(0u64, |x, y| x.wrapping_mul(31).wrapping_add(*y))
    };
    let shared: Vec<_> = (0..2000).map(|i| store.insert(seeded(i))).collect();
    let bad = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for t in 0..4u64 {
            let (store, shared, bad) = (&store, &shared, &bad);
            sc.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..3000u64 {
                    let h = shared[((i * 7 + t * 13) % 2000) as usize];
                    if i % 3 == 0 {
                        if let Some(mut w) = store.get_mut(h) {
                            *w = seeded(w[0] + 1);
                        }
                    } else if let Some(r) = store.get(h)
                        && !ok(&r)
                    {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    mine.push(store.insert(seeded(i + t)));
                    if i % 2 == 0 {
                        let v = store
                            .remove(mine.swap_remove((i as usize / 2) % mine.len()))
                            .unwrap();
                        if !ok(&v) {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for h in mine {
                    store.remove(h).unwrap();
                }
            });
        }
        sc.spawn(|| {
            for _ in 0..200 {
                store.heap().compact(Budget::blocks(256));
            }
        });
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert_eq!(store.len(), 2000);
    for h in &shared {
        assert!(ok(&store.get(*h).unwrap()));
    }
    for h in shared {
        store.remove(h).unwrap();
    }
    let stats = store.heap().stats();
    assert_eq!(stats.movable.live_bytes(), 0, "{stats:?}");
    assert_eq!(stats.movable.live_blocks(), 0);
    assert_eq!(store.heap().fragmentation().live_bytes, 0);
}

#[test]
fn accounting_is_exact_after_a_threaded_run() {
    let heap = Arc::new(Heap::new());
    let store: Store<[u8; 200]> = Store::new_in(heap.clone());
    let layout = std::alloc::Layout::from_size_align(300, 16).unwrap();
    let kept = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let (store, heap) = (&store, &heap);
                sc.spawn(move || {
                    let mut keep = Vec::new();
                    let mut fixed = Vec::new();
                    for i in 0..5000u32 {
                        let h = store.insert([t as u8; 200]);
                        if i % 3 == 0 {
                            keep.push(h)
                        } else {
                            store.remove(h).unwrap();
                        }
                        let p = heap.alloc(layout).unwrap();
                        if i % 4 == 0 {
                            fixed.push(p.as_ptr() as usize)
                        } else {
                            // SAFETY: allocated just above with `layout`.
                            unsafe { heap.dealloc(p, layout) }
                        }
                    }
                    (keep, fixed)
                })
            })
            .collect();
        let out: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        heap.compact_full();
        out
    });
    heap.trim();
    let (walk, stats) = (heap.walk(), heap.stats());
    assert_eq!(
        walk.committed_bytes, stats.committed_bytes,
        "{walk:?} {stats:?}"
    );
    assert_eq!(walk.spans, stats.spans);
    assert_eq!(walk.movable_live_bytes as u64, stats.movable.live_bytes());
    assert_eq!(walk.movable_live_blocks as u64, stats.movable.live_blocks());
    assert_eq!(walk.out_blocks[1] as u64, stats.movable.live_blocks());
    assert_eq!(walk.out_blocks[0] as u64, stats.fixed.live_blocks());
    assert_eq!(stats.movable.live_blocks(), 4 * 1667);
    assert_eq!(stats.fixed.live_blocks(), 4 * 1250);
    for (keep, fixed) in kept {
        for h in keep {
            store.remove(h).unwrap();
        }
        for p in fixed {
            // SAFETY: each pointer was allocated with `layout` and is freed once here.
            unsafe { heap.dealloc(std::ptr::NonNull::new(p as *mut u8).unwrap(), layout) }
        }
    }
    heap.trim();
    let (walk, stats) = (heap.walk(), heap.stats());
    assert_eq!(
        (walk.out_blocks, walk.spans, walk.committed_bytes),
        ([0, 0], 0, 0)
    );
    assert_eq!(
        (stats.live_bytes(), stats.committed_bytes, stats.spans),
        (0, 0, 0)
    );
}

#[test]
fn large_movable_blocks_relocate_without_copying() {
    let heap = Heap::new();
    let h = heap.alloc_handle(3 << 20, 16).unwrap();
    let small = heap.alloc_handle(64, 16).unwrap();
    assert!(
        !heap.relocate_large(small).unwrap(),
        "pool blocks are the compactor's"
    );
    {
        let mut w = heap.write(h).unwrap();
        assert_eq!(w.len(), 3 << 20);
        assert!(w.iter().all(|&b| b == 0), "zero-filled");
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
    }
    let large_before = heap.stats().large;
    let mut addrs = vec![heap.pin(h).unwrap().as_ptr()];
    for _ in 0..4 {
        assert!(heap.relocate_large(h).unwrap());
        addrs.push(heap.pin(h).unwrap().as_ptr());
    }
    addrs.dedup();
    assert_eq!(addrs.len(), 5, "every relocation changed the address");
    assert_eq!(heap.stats().large.relocations, large_before.relocations + 4);
    assert_eq!(
        heap.stats().large.copy_fallbacks,
        large_before.copy_fallbacks,
        "no copy"
    );
    assert!(
        heap.read(h)
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    );
    {
        let _r = heap.read(h).unwrap();
        assert_eq!(heap.relocate_large(h), Err(HandleError::Busy));
    }
    heap.compact_full();
    assert_eq!(
        heap.pin(h).unwrap().as_ptr(),
        *addrs.last().unwrap(),
        "compactor leaves it"
    );
    heap.free_handle(h).unwrap();
    assert_eq!(heap.relocate_large(h), Err(HandleError::Stale));
    assert_eq!(heap.free_handle(h), Err(HandleError::Stale));
    assert_eq!(heap.stats().large.live_blocks, 0);
}

#[test]
fn file_backed_assets_behind_handles() {
    let path = std::env::temp_dir().join(format!("tidyheap-asset-{}.bin", std::process::id()));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let assets: Store<tidyheap::MappedAsset> = Store::new();
    // SAFETY: the test owns the file and nobody modifies it while it is mapped.
    let h = assets.insert(unsafe { tidyheap::MappedAsset::open(&path) }.unwrap());
    assets.heap().compact_full();
    assert_eq!(assets.get(h).unwrap().as_bytes(), &data[..]);
    drop(assets.remove(h));
    std::fs::remove_file(&path).unwrap();
    // SAFETY: opening a missing file maps nothing.
    let err = unsafe { tidyheap::MappedAsset::open(&path) }.unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
