use super::*;

fn slot() -> Slot {
    Slot {
        state: AtomicU64::new(0),
        ptr: AtomicPtr::new(ptr::null_mut()),
    }
}

fn block(n: usize) -> NonNull<u8> {
    NonNull::new(ptr::without_provenance_mut(n * 64)).unwrap()
}

#[test]
fn zeroed_memory_is_a_vacant_slot() {
    // The table relies on zero pages being vacant slots at generation 0.
    let zeroed = std::mem::MaybeUninit::<Slot>::zeroed();
    // SAFETY:
    // - all-zero bytes are a valid AtomicU64 and AtomicPtr, and Slot is repr(C) of them.
    let s = unsafe { zeroed.assume_init() };
    assert_eq!(s.snapshot(), SlotState::decode(0));
    assert!(!s.is_occupied());
    assert_eq!(s.try_read(0), Err(HandleError::Stale), "even generation");
    assert_eq!(s.try_read(1), Err(HandleError::Stale));
}

#[test]
fn layout_algebra() {
    assert_eq!(MAX_READERS, 0xFFFF);
    assert_eq!(MAX_PINS, 0x1FFF);
    let s = (7u64 << 32) | (3 * READER_ONE) | (2 * PIN_ONE) | PARKED;
    assert_eq!(
        SlotState::decode(s),
        SlotState {
            generation: 7,
            readers: 3,
            pins: 2,
            writer: false,
            moving: false,
            waiters: true
        }
    );
    assert_eq!(vacated(7), 8 << 32);
    assert_eq!(vacated(u32::MAX), 0, "wrapping generation retires");
}

#[test]
fn read_write_pin_exclusion() {
    let s = slot();
    s.occupy(block(1), 5);
    s.try_read(5).unwrap();
    s.read(5).unwrap();
    assert_eq!(s.try_write(5), Err(HandleError::Busy));
    assert_eq!(s.try_read(3), Err(HandleError::Stale));
    s.try_pin(5).unwrap();
    // SAFETY: two read guards and one pin taken above, released once each.
    unsafe {
        s.unlock_read();
        s.unlock_read();
    }
    // A pin does not exclude a writer...
    s.try_write(5).unwrap();
    assert!(s.snapshot().writer);
    assert_eq!(s.try_read(5), Err(HandleError::Busy));
    assert_eq!(s.try_write(5), Err(HandleError::Busy));
    // ...but blocks a free even without the writer.
    // SAFETY: the write guard taken above.
    unsafe { s.unlock_write() };
    assert_eq!(s.vacate(5, false), Err(HandleError::Busy));
    // SAFETY: the pin taken above.
    unsafe { s.unpin() };
    assert_eq!(s.vacate(5, false), Ok((block(1), false)));
    assert_eq!(s.snapshot(), SlotState::decode(6 << 32));
    assert_eq!(s.try_read(5), Err(HandleError::Stale));
    assert_eq!(s.try_pin(5), Err(HandleError::Stale));
    assert_eq!(s.vacate(5, false), Err(HandleError::Stale), "double free");
}

#[test]
fn move_lock_rules() {
    let s = slot();
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Err(MoveSkip::Gone));
    s.occupy(block(1), 1);
    assert_eq!(s.try_lock_move(block(2).as_ptr()), Err(MoveSkip::Gone));
    s.pin(1).unwrap();
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Err(MoveSkip::Pinned));
    s.read(1).unwrap();
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Err(MoveSkip::Busy));
    // SAFETY: the pin and read guard taken above.
    unsafe {
        s.unpin();
        s.unlock_read();
    }
    s.write(1).unwrap();
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Err(MoveSkip::Busy));
    // SAFETY: the write guard taken above.
    unsafe { s.unlock_write() };
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Ok(1));
    assert_eq!(s.try_lock_move(block(1).as_ptr()), Err(MoveSkip::Busy));
    for r in [s.try_read(1), s.try_write(1), s.try_pin(1)] {
        assert_eq!(r, Err(HandleError::Busy));
    }
    assert_eq!(s.vacate(1, false), Err(HandleError::Busy));
    // SAFETY: we hold the move lock; block(2) stands for a complete copy.
    unsafe {
        s.set_ptr_locked(block(2));
        s.unlock_move();
    }
    s.read(1).unwrap();
    // SAFETY: the read guard just taken.
    unsafe {
        assert_eq!(s.locked_ptr(), block(2));
        s.unlock_read();
    }
    assert_eq!(s.snapshot(), SlotState::decode(1 << 32));
}

#[test]
fn full_counts_are_busy_not_overflow() {
    let s = slot();
    s.occupy(block(1), 9);
    for _ in 0..MAX_READERS {
        s.try_read(9).unwrap();
    }
    assert_eq!(s.try_read(9), Err(HandleError::Busy));
    assert_eq!(
        s.generation(),
        9,
        "the count never spills into the generation"
    );
    for _ in 0..MAX_PINS {
        s.try_pin(9).unwrap();
    }
    assert_eq!(s.try_pin(9), Err(HandleError::Busy));
    let st = s.snapshot();
    assert_eq!(
        (st.readers, st.pins, st.generation),
        (MAX_READERS, MAX_PINS, 9)
    );
    for _ in 0..MAX_READERS {
        // SAFETY: one of the read guards taken above.
        unsafe { s.unlock_read() };
    }
    for _ in 0..MAX_PINS {
        // SAFETY: one of the pins taken above.
        unsafe { s.unpin() };
    }
    assert_eq!(s.snapshot(), SlotState::decode(9 << 32));
}

#[test]
fn parked_waiters_are_woken_by_each_kind_of_release() {
    let s = slot();
    s.occupy(block(1), 3);
    s.write(3).unwrap();
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| s.read(3));
        // Wait until the reader has parked (PARKED set), then release.
        while !s.snapshot().waiters {
            std::thread::yield_now();
        }
        // SAFETY: the write guard taken above.
        unsafe { s.unlock_write() };
        assert_eq!(reader.join().unwrap(), Ok(()));
    });
    assert!(!s.snapshot().waiters);
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| s.write(3));
        while !s.snapshot().waiters {
            std::thread::yield_now();
        }
        // The last reader out wakes a parked writer...
        // SAFETY: the read guard the reader thread took and handed back by finishing.
        unsafe { s.unlock_read() };
        assert_eq!(writer.join().unwrap(), Ok(()));
        // ...the writer wakes a parked reader, and the last reader a parked free.
        let reader = sc.spawn(|| s.read(3));
        while !s.snapshot().waiters {
            std::thread::yield_now();
        }
        // SAFETY: the writer thread's guard, handed back by finishing.
        unsafe { s.unlock_write() };
        let r = reader.join().unwrap();
        assert_eq!(r, Ok(()));
        let remover = sc.spawn(|| s.vacate(3, true).map(|(b, r)| (b.addr(), r)));
        while !s.snapshot().waiters {
            std::thread::yield_now();
        }
        // SAFETY: the read guard the reader thread took.
        unsafe { s.unlock_read() };
        assert_eq!(remover.join().unwrap(), Ok((block(1).addr(), false)));
    });
    assert_eq!(s.snapshot(), SlotState::decode(4 << 32));
}
