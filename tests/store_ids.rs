//! Store identities run out permanently and never wrap (issue 9, defect 4).
//!
//! Alone in its own test binary: it uses up the process's store identities, which would
//! make every other test that creates a store fail.

use std::sync::Arc;

use tidyheap::store::{__skip_store_ids_to, MAX_STORES};
use tidyheap::{Handle, HandleError, Heap, Store};

#[test]
fn store_ids_run_out_for_good_and_never_wrap() {
    let heap = Arc::new(Heap::new());
    let early: Store<String> = Store::new_in(heap.clone());
    let he = early.insert("early".into());
    let raw = heap.insert_bytes(b"raw").unwrap();

    // Jump to the last two identities (the hook only moves forward).
    __skip_store_ids_to(MAX_STORES - 1);
    let a: Store<[u8; 64]> = Store::try_new_in(heap.clone()).unwrap();
    let b: Store<String> = Store::try_new_in(heap.clone()).unwrap();

    // Every further attempt fails, and keeps failing: no wrap to tag 0 or to `early`'s.
    for _ in 0..5 {
        assert_eq!(
            Store::<String>::try_new_in(heap.clone()).unwrap_err(),
            HandleError::StoresExhausted
        );
        assert_eq!(
            Store::<String>::try_new().unwrap_err(),
            HandleError::StoresExhausted
        );
    }
    __skip_store_ids_to(1);
    assert_eq!(
        Store::<u8>::try_new_in(heap.clone()).unwrap_err(),
        HandleError::StoresExhausted,
        "the hook never moves the counter back"
    );
    let e = std::panic::catch_unwind(Store::<u8>::new).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.contains("store identities exhausted"), "{msg}");
    assert!(
        HandleError::StoresExhausted
            .to_string()
            .contains(&MAX_STORES.to_string())
    );

    // The stores made before exhaustion keep working and stay apart, from each other,
    // from `early` and from raw handles.
    let ha = a.insert([0xAB; 64]);
    let hb = b.insert("last".into());
    assert_eq!(a.get(ha).unwrap()[0], 0xAB);
    assert_eq!(*b.get(hb).unwrap(), "last");
    assert_eq!(*early.get(he).unwrap(), "early");
    assert!(b.get(Handle::from_raw(ha.raw())).is_none());
    assert!(early.get(Handle::from_raw(ha.raw())).is_none());
    assert!(early.get(Handle::from_raw(hb.raw())).is_none());
    assert!(b.get(Handle::from_raw(he.raw())).is_none());
    assert!(b.get(Handle::from_raw(raw)).is_none());
    assert!(heap.read(hb.raw()).is_err());
    assert_eq!(&*heap.read(raw).unwrap(), b"raw");
    heap.compact_full();
    assert_eq!(
        *b.get(hb).unwrap(),
        "last",
        "the highest tag survives a move"
    );
    assert_eq!(a.get(ha).unwrap()[63], 0xAB);
}
