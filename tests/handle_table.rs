//! Integration tests of the handle table through its public API: sizes, generations,
//! stale and double-freed handles, retirement, slotmap interop, growth, a proptest model,
//! and multi-threaded stress with a compactor-like mover.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slotmap::{Key, SecondaryMap};
use tidyheap::handle::{MoveSkip, Slot};
use tidyheap::{Handle, HandleError, HandleTable, RawHandle};

/// A test "block": a leaked box.
fn leak(v: u64) -> NonNull<u8> {
    NonNull::from(Box::leak(Box::new(v))).cast()
}

/// Frees a block made by `leak`, returning its value.
///
/// # Safety
///
/// * `p` came from `leak` and is not referenced by any slot or guard any more.
unsafe fn free(p: NonNull<u8>) -> u64 {
    // SAFETY:
    // - `p` is a leaked `Box<u64>` nobody else refers to (caller's precondition).
    *unsafe { Box::from_raw(p.cast::<u64>().as_ptr()) }
}

/// Removes `h` from a table whose blocks all come from `leak`, frees the block and
/// returns its value.
fn take(t: &HandleTable, h: RawHandle) -> Result<u64, HandleError> {
    let block = t.remove(h)?;
    // SAFETY:
    // - every block in the tables this is used on came from `leak`, and the slot is
    //   vacant now, so nothing else refers to it.
    Ok(unsafe { free(block) })
}

/// Reads the `u64` a guard's address points at.
///
/// # Safety
///
/// * `p` is a live `leak` block the caller holds a read or write guard on.
unsafe fn peek(p: NonNull<u8>) -> u64 {
    // SAFETY:
    // - live, aligned u64 block, guarded against writers (caller's precondition).
    unsafe { p.cast::<u64>().as_ptr().read() }
}

#[test]
fn sizes() {
    struct Mesh;
    assert_eq!(size_of::<RawHandle>(), 8);
    assert_eq!(size_of::<Option<RawHandle>>(), 8);
    assert_eq!(size_of::<Handle<Mesh>>(), 8);
    assert_eq!(size_of::<Option<Handle<Mesh>>>(), 8);
    assert_eq!(size_of::<Slot>(), 16, "memory per handle");
}

#[test]
fn generation_bumps_on_remove_and_stale_handles_never_resolve() {
    let t = HandleTable::new();
    let h = t.insert(leak(10)).unwrap();
    assert_eq!(h.generation().get(), 1);
    let slot = t.get(h).unwrap();
    assert_eq!(slot.generation(), 1);

    // SAFETY: the block is removed from the table, so only we refer to it.
    assert_eq!(unsafe { free(t.remove(h).unwrap()) }, 10);
    assert_eq!(slot.generation(), 2, "vacant: even");
    assert!(!t.contains(h));
    assert_eq!(t.read(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.try_read(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.write(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.try_write(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.pin(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.try_pin(h).unwrap_err(), HandleError::Stale);
    assert_eq!(t.try_remove(h), Err(HandleError::Stale));

    let h2 = t.insert(leak(20)).unwrap();
    assert_eq!((h2.index(), h2.generation().get()), (h.index(), 3));
    // The old handle still does not resolve to the new occupant.
    assert_eq!(t.read(h).unwrap_err(), HandleError::Stale);
    // SAFETY: the read guard excludes writers.
    assert_eq!(unsafe { peek(t.read(h2).unwrap().ptr()) }, 20);
    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.remove(h2).unwrap()) };
}

#[test]
fn never_issued_null_and_even_generations_are_stale() {
    let t = HandleTable::new();
    let live = t.insert(leak(1)).unwrap();
    let g = NonZeroU32::MIN;
    for h in [
        RawHandle::NULL,
        RawHandle::new(1, g).unwrap(), // in an installed segment, never issued
        RawHandle::new(1_000_000, g).unwrap(), // segment not installed
        RawHandle::new(u32::MAX - 1, g).unwrap(), // last index
        RawHandle::new(live.index(), NonZeroU32::new(3).unwrap()).unwrap(), // wrong generation
    ] {
        assert_eq!(t.read(h).unwrap_err(), HandleError::Stale, "{h:?}");
        assert_eq!(t.remove(h), Err(HandleError::Stale), "{h:?}");
        assert!(!t.contains(h));
    }
    // At the slot level an even generation never matches, even a vacant slot's.
    let slot = t.slot(1).unwrap();
    assert_eq!(slot.generation(), 0);
    assert_eq!(slot.try_read(0), Err(HandleError::Stale));
    assert_eq!(slot.try_write(0), Err(HandleError::Stale));
    assert_eq!(t.len(), 1);
    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.remove(live).unwrap()) };
}

#[test]
fn double_free_is_stale_and_loses_nothing() {
    let t = HandleTable::new();
    let a = t.insert(leak(1)).unwrap();
    let keep = t.insert(leak(2)).unwrap();
    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.remove(a).unwrap()) };
    assert_eq!(t.remove(a), Err(HandleError::Stale));
    assert_eq!(t.try_remove(a), Err(HandleError::Stale));
    assert_eq!(t.len(), 1);
    // The slot went on the free list once: two inserts get two distinct slots.
    let b = t.insert(leak(3)).unwrap();
    let c = t.insert(leak(4)).unwrap();
    assert_eq!(b.index(), a.index());
    assert_ne!(b.index(), c.index());
    assert_ne!(c.index(), keep.index());
    // And the double free did not disturb the survivors.
    for (h, v) in [(keep, 2), (b, 3), (c, 4)] {
        // SAFETY: read guard held for the read.
        assert_eq!(unsafe { peek(t.read(h).unwrap().ptr()) }, v);
        // SAFETY: removed, so only we refer to it.
        assert_eq!(unsafe { free(t.remove(h).unwrap()) }, v);
    }
    assert!(t.is_empty());
}

#[test]
fn generation_wrap_retires_the_slot_for_good() {
    let t = HandleTable::new().with_first_generation(u32::MAX - 2);
    let h1 = t.insert(leak(1)).unwrap();
    assert_eq!(h1.generation().get(), u32::MAX - 2);
    take(&t, h1).unwrap();
    let h2 = t.insert(leak(2)).unwrap();
    assert_eq!((h2.index(), h2.generation().get()), (h1.index(), u32::MAX));
    take(&t, h2).unwrap();
    assert_eq!(t.retired(), 1);
    // The slot is not reused: the next insert takes a fresh index.
    let h3 = t.insert(leak(3)).unwrap();
    assert_ne!(h3.index(), h1.index());
    assert_eq!(h3.generation().get(), u32::MAX - 2);
    for stale in [h1, h2] {
        assert_eq!(t.read(stale).unwrap_err(), HandleError::Stale);
        assert_eq!(t.remove(stale), Err(HandleError::Stale));
    }
    assert!(!t.get(h2).unwrap().is_occupied());
    // Many more insert/remove rounds never hand out the retired index again.
    for round in 0..10 {
        let h = t.insert(leak(round)).unwrap();
        assert_ne!(h.index(), h1.index());
        take(&t, h).unwrap();
    }
    // Each fresh slot lives two generations (MAX - 2, MAX), so 10 rounds retire 5.
    assert_eq!(t.retired(), 6);
    take(&t, h3).unwrap();
    assert_eq!(t.retired(), 6, "MAX - 2 -> MAX - 1 is not a wrap");
}

#[test]
fn secondary_map_keyed_by_handles() {
    let t = HandleTable::new();
    let mut side: SecondaryMap<RawHandle, &str> = SecondaryMap::new();
    let a = t.insert(leak(1)).unwrap();
    let b = t.insert(leak(2)).unwrap();
    assert_eq!(side.insert(a, "a"), None);
    assert_eq!(side.insert(b, "b"), None);
    assert_eq!((side[a], side[b]), ("a", "b"));
    // Round trip through KeyData, and the FFI encoding matches slotmap's.
    assert_eq!(RawHandle::from(a.data()), a);
    assert_eq!(a.data().as_ffi(), a.to_bits());

    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.remove(a).unwrap()) };
    let a2 = t.insert(leak(3)).unwrap();
    assert_eq!(a2.index(), a.index());
    assert_eq!(side.get(a2), None, "a new occupant has no side data yet");
    assert_eq!(side.insert(a2, "a2"), None);
    assert_eq!(
        side.get(a),
        None,
        "the newer generation replaced the stale entry"
    );
    assert_eq!(side.len(), 2);

    // The null / default key behaves like slotmap's.
    let null = RawHandle::default();
    assert!(null.is_null() && Key::is_null(&null));
    assert_eq!(null.data(), slotmap::KeyData::default());
    assert_eq!(side.insert(null, "x"), None);
    assert!(!side.contains_key(null));
    assert_eq!(t.read(null).unwrap_err(), HandleError::Stale);

    // Typed handles work as keys too.
    struct Mesh;
    let mut typed: SecondaryMap<Handle<Mesh>, u32> = SecondaryMap::new();
    let hb = Handle::<Mesh>::from_raw(b);
    typed.insert(hb, 7);
    assert_eq!(typed[hb], 7);
    assert!(Handle::<Mesh>::default().is_null());

    for h in [a2, b] {
        // SAFETY: removed, so only we refer to it.
        unsafe { free(t.remove(h).unwrap()) };
    }
}

#[test]
fn growth_keeps_slots_in_place_and_never_blocks_readers() {
    let t = HandleTable::new();
    let first = t.insert(leak(42)).unwrap();
    let addr = ptr::from_ref(t.get(first).unwrap()).addr();
    let done = AtomicBool::new(false);
    let handles = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0u64;
            while !done.load(Acquire) || reads == 0 {
                let r = t.read(first).unwrap();
                // SAFETY: the read guard excludes writers; nobody writes anyway.
                assert_eq!(unsafe { peek(r.ptr()) }, 42);
                assert_eq!(ptr::from_ref(r.slot()).addr(), addr);
                reads += 1;
            }
            reads
        });
        let hs: Vec<_> = (0..5000).map(|i| t.insert(leak(i)).unwrap()).collect();
        done.store(true, Release);
        assert!(reader.join().unwrap() > 0);
        hs
    });
    assert_eq!(ptr::from_ref(t.get(first).unwrap()).addr(), addr);
    assert_eq!(t.capacity(), 256 + 512 + 1024 + 2048 + 4096);
    // Every slot kept its address and its block.
    for (i, h) in handles.into_iter().enumerate() {
        // SAFETY: removed, so only we refer to it.
        assert_eq!(unsafe { free(t.remove(h).unwrap()) }, i as u64);
    }
    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.remove(first).unwrap()) };
}

#[test]
fn try_forms_never_block() {
    let t = HandleTable::new();
    let h = t.insert(leak(5)).unwrap();
    {
        // Same thread: read, then asking to write answers Busy instead of deadlocking.
        let r1 = t.read(h).unwrap();
        let r2 = t.try_read(h).unwrap(); // reads nest
        assert_eq!(t.try_write(h).unwrap_err(), HandleError::Busy);
        assert_eq!(t.try_remove(h), Err(HandleError::Busy));
        let p = t.try_pin(h).unwrap(); // pins coexist with readers
        assert_eq!(p.ptr(), r1.ptr());
        assert_eq!(t.get(h).unwrap().snapshot().readers, 2);
        drop((r1, r2, p));
    }
    {
        let w = t.write(h).unwrap();
        assert_eq!(t.try_read(h).unwrap_err(), HandleError::Busy);
        assert_eq!(t.try_write(h).unwrap_err(), HandleError::Busy);
        assert_eq!(t.try_remove(h), Err(HandleError::Busy));
        let p = t.try_pin(h).unwrap(); // pins do not exclude writers
        // Another thread gets the same answers.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(t.try_read(h).unwrap_err(), HandleError::Busy);
                assert_eq!(t.try_write(h).unwrap_err(), HandleError::Busy);
            });
        });
        drop(w);
        assert_eq!(t.try_remove(h), Err(HandleError::Busy), "still pinned");
        drop(p);
    }
    let s = t.get(h).unwrap().snapshot();
    assert_eq!(
        (s.readers, s.pins, s.writer, s.moving),
        (0, 0, false, false)
    );
    // SAFETY: removed, so only we refer to it.
    unsafe { free(t.try_remove(h).unwrap()) };
}

#[test]
fn pins_and_guards_block_moves_and_moves_never_wait() {
    let t = HandleTable::new();
    let old = leak(9);
    let h = t.insert(old).unwrap();
    let i = h.index();
    {
        let _pin = t.pin(h).unwrap();
        assert_eq!(t.try_lock_move(i, old).unwrap_err(), MoveSkip::Pinned);
    }
    {
        let _r = t.read(h).unwrap();
        assert_eq!(t.try_lock_move(i, old).unwrap_err(), MoveSkip::Busy);
    }
    {
        let _w = t.write(h).unwrap();
        assert_eq!(t.try_lock_move(i, old).unwrap_err(), MoveSkip::Busy);
    }
    assert_eq!(
        t.try_lock_move(i, leak(0)).unwrap_err(),
        MoveSkip::Gone,
        "wrong block"
    );
    assert_eq!(
        t.try_lock_move(i + 1, old).unwrap_err(),
        MoveSkip::Gone,
        "vacant"
    );
    assert_eq!(
        t.try_lock_move(9_999_999, old).unwrap_err(),
        MoveSkip::Gone,
        "no segment"
    );

    let mut mv = t.try_lock_move(i, old).unwrap();
    assert_eq!(mv.handle(), h);
    assert_eq!(t.try_lock_move(i, old).unwrap_err(), MoveSkip::Busy);
    assert_eq!(t.try_pin(h).unwrap_err(), HandleError::Busy);
    assert_eq!(t.try_read(h).unwrap_err(), HandleError::Busy);
    // A blocking reader waits for the move and then sees the new address.
    let new = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let r = t.read(h).unwrap();
            // SAFETY: the read guard excludes writers and movers.
            (r.ptr().addr(), unsafe { peek(r.ptr()) })
        });
        // SAFETY: the move lock excludes every other access while we copy.
        let new = leak(unsafe { peek(old) });
        // SAFETY: we hold the move lock; `new` is a complete copy.
        unsafe { mv.set_ptr(new) };
        drop(mv);
        let (seen, value) = reader.join().unwrap();
        assert_eq!((seen, value), (new.addr(), 9));
        new
    });
    // SAFETY: nothing refers to the old block any more.
    unsafe { free(old) };
    // The old address no longer matches: a stale move attempt is Gone.
    assert_eq!(t.try_lock_move(i, old).unwrap_err(), MoveSkip::Gone);
    // SAFETY: removed, so only we refer to it.
    assert_eq!(unsafe { free(t.remove(h).unwrap()) }, 9);
    assert_eq!(
        t.try_lock_move(i, new).unwrap_err(),
        MoveSkip::Gone,
        "freed"
    );
}

#[test]
fn blocking_remove_waits_for_guards() {
    let t = HandleTable::new();
    let h = t.insert(leak(3)).unwrap();
    let r = t.read(h).unwrap();
    std::thread::scope(|s| {
        let remover = s.spawn(|| t.remove(h).map(NonNull::addr));
        // Wait until the remover has parked on the slot, then let it in.
        while !t.get(h).unwrap().snapshot().waiters {
            std::thread::yield_now();
        }
        let p = r.ptr();
        drop(r);
        assert_eq!(remover.join().unwrap(), Ok(p.addr()));
        // SAFETY: removed, so only we refer to it.
        unsafe { free(p) };
    });
    assert_eq!(t.read(h).unwrap_err(), HandleError::Stale);
}

// ----- proptest model -----

#[derive(Clone, Debug)]
enum Op {
    Insert(u64),
    Remove(usize),
    TryRemove(usize),
    Read(usize),
    Write(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u64>().prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Remove),
        1 => any::<usize>().prop_map(Op::TryRemove),
        2 => any::<usize>().prop_map(Op::Read),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| Op::Write(i, v)),
    ]
}

/// What the table should do, written the obvious way.
struct Model {
    live: HashMap<RawHandle, (u64, NonNull<u8>)>,
    /// Generation per issued index (0 once retired).
    gens: Vec<u32>,
    free: Vec<u32>,
    retired: usize,
    first: u32,
}

impl Model {
    fn insert(&mut self) -> RawHandle {
        let (index, generation) = match self.free.pop() {
            Some(i) => (i, self.gens[i as usize] + 1),
            None => {
                self.gens.push(0);
                ((self.gens.len() - 1) as u32, self.first)
            }
        };
        self.gens[index as usize] = generation;
        RawHandle::new(index, NonZeroU32::new(generation).unwrap()).unwrap()
    }

    fn remove(&mut self, h: RawHandle) {
        let g = h.generation().get();
        if g == u32::MAX {
            self.gens[h.index() as usize] = 0;
            self.retired += 1;
        } else {
            self.gens[h.index() as usize] = g + 1;
            self.free.push(h.index());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn model_insert_remove_read_write(
        first in prop_oneof![Just(1u32), Just(u32::MAX - 6)],
        ops in prop::collection::vec(op(), 1..200),
    ) {
        let t = HandleTable::new().with_first_generation(first);
        let mut m = Model { live: HashMap::new(), gens: Vec::new(), free: Vec::new(), retired: 0, first };
        let mut ever: Vec<RawHandle> = Vec::new();
        for op in ops {
            let pick = |i: usize| (!ever.is_empty()).then(|| ever[i % ever.len()]);
            match op {
                Op::Insert(v) => {
                    let block = leak(v);
                    let h = t.insert(block).unwrap();
                    prop_assert_eq!(h, m.insert());
                    m.live.insert(h, (v, block));
                    ever.push(h);
                }
                Op::Remove(i) | Op::TryRemove(i) => {
                    let Some(h) = pick(i) else { continue };
                    let got = if matches!(op, Op::Remove(_)) { t.remove(h) } else { t.try_remove(h) };
                    match m.live.remove(&h) {
                        Some((v, block)) => {
                            prop_assert_eq!(got, Ok(block));
                            // SAFETY: removed, so only we refer to it.
                            prop_assert_eq!(unsafe { free(block) }, v);
                            m.remove(h);
                        }
                        None => prop_assert_eq!(got, Err(HandleError::Stale)),
                    }
                }
                Op::Read(i) => {
                    let Some(h) = pick(i) else { continue };
                    match (t.try_read(h), m.live.get(&h)) {
                        // SAFETY: the read guard excludes writers.
                        (Ok(r), Some(&(v, _))) => prop_assert_eq!(unsafe { peek(r.ptr()) }, v),
                        (Err(e), None) => prop_assert_eq!(e, HandleError::Stale),
                        (r, m) => prop_assert!(false, "table {:?} vs model {:?}", r.map(|g| g.ptr()), m),
                    }
                }
                Op::Write(i, v) => {
                    let Some(h) = pick(i) else { continue };
                    match (t.write(h), m.live.get_mut(&h)) {
                        (Ok(w), Some(entry)) => {
                            // SAFETY: the write guard gives exclusive access.
                            unsafe { w.ptr().cast::<u64>().as_ptr().write(v) };
                            entry.0 = v;
                        }
                        (Err(e), None) => prop_assert_eq!(e, HandleError::Stale),
                        (r, m) => prop_assert!(false, "table {:?} vs model {:?}", r.map(|g| g.ptr()), m),
                    }
                }
            }
            prop_assert_eq!(t.len(), m.live.len());
            prop_assert_eq!(t.retired(), m.retired);
            for &h in &ever {
                prop_assert_eq!(t.contains(h), m.live.contains_key(&h));
            }
            for (i, &g) in m.gens.iter().enumerate() {
                prop_assert_eq!(t.slot(i as u32).unwrap().generation(), g);
            }
        }
        let mut live: Vec<_> = m.live.keys().copied().collect();
        live.sort();
        prop_assert_eq!(t.iter().collect::<Vec<_>>(), live);
        for (h, (v, _)) in m.live {
            // SAFETY: removed, so only we refer to it.
            prop_assert_eq!(unsafe { free(t.remove(h).unwrap()) }, v);
        }
    }
}

// ----- multi-threaded stress -----

/// A checksummed 64-byte payload: word 0 is a sequence number, the others derive from it.
#[repr(C, align(64))]
#[derive(PartialEq, Debug)]
struct Payload([u64; 8]);

/// Written over a moved-away block: fails every checksum.
const POISON: u64 = 0xDEAD_DEAD_DEAD_DEAD;

impl Payload {
    fn new(seq: u64) -> Self {
        let mut w = [seq; 8];
        for (i, x) in w.iter_mut().enumerate().skip(1) {
            *x = seq
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(i as u32)
                ^ i as u64;
        }
        Self(w)
    }
}

fn new_block(seq: u64) -> NonNull<u8> {
    NonNull::from(Box::leak(Box::new(Payload::new(seq)))).cast()
}

/// Checks the checksum of the payload at `p` and returns its sequence number.
///
/// # Safety
///
/// * `p` is a live payload block the caller holds a read or write guard on.
unsafe fn check(p: NonNull<u8>) -> u64 {
    // SAFETY:
    // - live, aligned payload, guarded against writers (caller's precondition).
    let payload = unsafe { p.cast::<Payload>().as_ref() };
    assert_ne!(payload.0[0], POISON, "read a moved-away block");
    assert_eq!(
        payload,
        &Payload::new(payload.0[0]),
        "torn or corrupted block"
    );
    payload.0[0]
}

/// Frees a payload block.
///
/// # Safety
///
/// * `p` came from `new_block` and nothing refers to it any more.
unsafe fn free_block(p: NonNull<u8>) {
    // SAFETY:
    // - a leaked `Box<Payload>` nobody refers to (caller's precondition).
    drop(unsafe { Box::from_raw(p.cast::<Payload>().as_ptr()) });
}

/// 4 worker threads read, write, pin, remove and re-insert 48 shared handles (racing on
/// the same ones, so double frees and stale handles happen), while a mover thread
/// relocates random blocks with `try_lock_move` and poisons the old copies. Every read
/// checks the checksum; at the end every block is accounted for.
#[test]
fn stress_readers_writers_removers_and_a_mover() {
    const WORKERS: usize = 4;
    const SHARED: usize = 48;
    const OPS: usize = 40_000;

    let t = HandleTable::new();
    let shared: Vec<AtomicU64> = (0..SHARED)
        .map(|i| AtomicU64::new(t.insert(new_block(i as u64 * 1000)).unwrap().to_bits()))
        .collect();
    let inserted = AtomicUsize::new(SHARED);
    let freed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (mut moved, mut skipped) = (0usize, [0usize; 3]);
    let mut graveyard = Vec::new();

    /// Stops the mover when dropped, so a failing worker ends the test instead of
    /// leaving the scope waiting for the mover forever.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Release);
        }
    }

    std::thread::scope(|s| {
        let stop_guard = StopOnDrop(&stop);
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (t, shared, inserted, freed) = (&t, &shared, &inserted, &freed);
                s.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(w as u64);
                    let mut stale = 0usize;
                    for _ in 0..OPS {
                        let k = rng.gen_range(0..SHARED);
                        let h = RawHandle::from_bits(shared[k].load(Acquire)).unwrap();
                        let r = match rng.gen_range(0..100) {
                            0..40 => t.read(h).map(|g| {
                                // SAFETY: read guard held.
                                let seq = unsafe { check(g.ptr()) };
                                // Hold the guard across a yield: the block must neither
                                // move (and be poisoned) nor change meanwhile.
                                std::thread::yield_now();
                                // SAFETY: read guard still held.
                                assert_eq!(unsafe { check(g.ptr()) }, seq);
                            }),
                            40..65 => t.write(h).map(|g| {
                                // SAFETY: write guard held: exclusive access.
                                let seq = unsafe { check(g.ptr()) };
                                // SAFETY: as above.
                                unsafe { g.ptr().cast::<Payload>().write(Payload::new(seq + 1)) };
                            }),
                            65..75 => match t.try_write(h) {
                                // SAFETY: write guard held.
                                Ok(g) => unsafe {
                                    check(g.ptr());
                                    Ok(())
                                },
                                Err(HandleError::Busy) => Ok(()),
                                Err(e) => Err(e),
                            },
                            75..80 => t.pin(h).map(|p| {
                                for _ in 0..3 {
                                    std::thread::yield_now();
                                    assert_eq!(
                                        p.slot().ptr(),
                                        p.ptr().as_ptr(),
                                        "pinned block moved"
                                    );
                                }
                            }),
                            _ => t.remove(h).map(|block| {
                                // SAFETY: removed: only we refer to the block now.
                                unsafe {
                                    check(block);
                                    free_block(block);
                                }
                                freed.fetch_add(1, Relaxed);
                                let fresh = t.insert(new_block(rng.r#gen::<u32>() as u64)).unwrap();
                                inserted.fetch_add(1, Relaxed);
                                // Only the one successful remover of `h` replaces it.
                                shared[k].store(fresh.to_bits(), Release);
                            }),
                        };
                        match r {
                            Ok(()) => {}
                            Err(HandleError::Stale) => stale += 1,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                    stale
                })
            })
            .collect();

        let mover = s.spawn(|| {
            let mut rng = SmallRng::seed_from_u64(99);
            let (mut moved, mut skipped, mut graveyard) = (0, [0; 3], Vec::new());
            while !stop.load(Acquire) {
                let index = rng.gen_range(0..t.capacity().max(1) as u32);
                let Some(slot) = t.slot(index) else { continue };
                // Possibly stale, or a free-list link: try_lock_move must sort that out.
                let Some(expected) = NonNull::new(slot.ptr()) else {
                    continue;
                };
                match t.try_lock_move(index, expected) {
                    Ok(mut mv) => {
                        // SAFETY: the move lock excludes all other access to the block.
                        let copy = unsafe { mv.ptr().cast::<Payload>().read() };
                        let new = NonNull::from(Box::leak(Box::new(copy))).cast();
                        // SAFETY: as above; the old copy is dead once the slot is repointed.
                        unsafe {
                            mv.set_ptr(new);
                            expected.cast::<Payload>().write(Payload([POISON; 8]));
                        }
                        graveyard.push(expected.as_ptr().expose_provenance());
                        moved += 1;
                    }
                    Err(MoveSkip::Busy) => skipped[0] += 1,
                    Err(MoveSkip::Pinned) => skipped[1] += 1,
                    Err(MoveSkip::Gone) => skipped[2] += 1,
                }
                std::thread::yield_now();
            }
            (moved, skipped, graveyard)
        });

        let stale: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        drop(stop_guard);
        (moved, skipped, graveyard) = mover.join().unwrap();
        assert!(
            stale > 0,
            "racing removers must have produced stale handles"
        );
    });

    assert!(moved > 0, "the mover must have moved blocks");
    assert!(
        skipped[0] + skipped[1] > 0,
        "the mover must have met guarded blocks"
    );
    // Exact accounting at quiescence.
    assert_eq!(t.len(), SHARED);
    let mut live: Vec<_> = shared
        .iter()
        .map(|a| RawHandle::from_bits(a.load(Relaxed)).unwrap())
        .collect();
    live.sort();
    assert_eq!(t.iter().collect::<Vec<_>>(), live);
    for h in live {
        let block = t.remove(h).unwrap();
        // SAFETY: removed: only we refer to the block now.
        unsafe {
            check(block);
            free_block(block);
        }
        freed.fetch_add(1, Relaxed);
    }
    assert_eq!(freed.load(Relaxed), inserted.load(Relaxed));
    assert!(t.is_empty());
    for addr in graveyard {
        let p = NonNull::new(ptr::with_exposed_provenance_mut::<u8>(addr)).unwrap();
        // SAFETY: an old copy left by the mover, referenced by nobody since the move.
        unsafe {
            assert_eq!(
                p.cast::<Payload>().as_ref().0,
                [POISON; 8],
                "written after its move"
            );
            free_block(p);
        }
    }
}
