use super::*;

#[test]
fn tags_round_trip() {
    let b = NonNull::new(0x7fff_1234_5670 as *mut u8).unwrap();
    for tag in [0, 1, 0xF, 0x10, 0xBEEF, 0x1_2345, MAX_TAG] {
        let t = tag_ptr(b, tag);
        assert_eq!(untag(t), (b, tag));
        assert_eq!(peek_tag(t.as_ptr()), Some(tag));
    }
    assert_eq!(MAX_TAG, 0xF_FFFF);
    assert_eq!(peek_tag(core::ptr::null_mut()), None);
}

#[test]
fn untag_of_a_free_list_link_never_panics() {
    // A racy peek can read a vacant slot's free-list link (a small index).
    for link in [1usize, 5, 15, 16, 17, u32::MAX as usize] {
        let p = NonNull::new(core::ptr::without_provenance_mut::<u8>(link)).unwrap();
        let (addr, _) = untag(p);
        assert_ne!(addr.as_ptr().addr(), 0);
    }
}

#[test]
#[should_panic(expected = "cannot carry store tag")]
fn misaligned_blocks_cannot_be_tagged() {
    let b = NonNull::new(0x7fff_1234_5678 as *mut u8).unwrap();
    let _ = tag_ptr(b, 1);
}

#[test]
fn tag_counter_stops_at_the_maximum_for_good() {
    let c = std::sync::atomic::AtomicU32::new(MAX_TAG - 1);
    assert_eq!(take_tag(&c), Some(MAX_TAG - 1));
    assert_eq!(take_tag(&c), Some(MAX_TAG));
    for _ in 0..3 {
        assert_eq!(take_tag(&c), None, "exhaustion is permanent");
    }
    assert_eq!(
        c.load(Ordering::Relaxed),
        MAX_TAG + 1,
        "refusals do not move the counter, so it never wraps"
    );
    let c = std::sync::atomic::AtomicU32::new(u32::MAX);
    assert_eq!(
        take_tag(&c),
        None,
        "even a counter past the end never wraps"
    );
}
