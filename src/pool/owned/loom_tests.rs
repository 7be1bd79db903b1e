//! Loom model of the owner-local set protocol (see `pool::owned`): the owner's lock-free
//! overflow and refill through a span's local set, against the owner parking its record
//! (merge under the arena lock, then the `Release` unclaim), a remote free onto the
//! record's remote list, another record adopting the span (`Arena::fixed_span_for`:
//! `Acquire` load of the claim flag under the lock) and `trim` claiming the parked record
//! (`flush_parked`). The local set is a loom `UnsafeCell`, so any access to it that the
//! protocol does not order after the previous one is reported as a data race.
//!
//! Blocks are bits of one span (0: freed by the owner, 1: freed by a remote thread,
//! 2: carved and freed by the adopter); the model checks that every block ends in exactly
//! one place.

use core::ptr::NonNull;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use crate::pool::remote::RemoteList;

const OWNER: usize = 1;
const ADOPTER: usize = 2;

/// The shared state: one span and the owner record's claim flag and remote list.
struct World {
    /// The record's claim flag (`ThreadCache::claimed`).
    claimed: AtomicBool,
    /// The span's owner (`Span::owner`): `OWNER` or `ADOPTER`.
    owner: AtomicUsize,
    /// The span's home set (bits), under the arena lock.
    home: Mutex<u64>,
    /// The span's local set (`Span::local`): owner-only, no lock.
    local: UnsafeCell<u64>,
    /// The record's remote list of the class.
    remote: RemoteList,
    /// Blocks on the record's (parked) thread list: owner-only, handed over with the
    /// claim flag.
    list: UnsafeCell<u64>,
    /// Block 1's memory (the remote list links through it).
    block1: usize,
}

fn world() -> Arc<World> {
    #[repr(C, align(16))]
    struct Unit([u8; 16]);
    let mem: &'static mut Unit = Box::leak(Box::new(Unit([0; 16])));
    Arc::new(World {
        claimed: AtomicBool::new(true),
        owner: AtomicUsize::new(OWNER),
        home: Mutex::new(0),
        local: UnsafeCell::new(0),
        remote: RemoteList::new(),
        list: UnsafeCell::new(0),
        block1: core::ptr::from_mut(mem) as usize,
    })
}

/// Reads an owner-only cell (loom checks the access is ordered after the last write).
fn get(c: &UnsafeCell<u64>) -> u64 {
    // SAFETY: the model's threads touch a cell only as the protocol allows; loom
    // reports any access it does not order as a race.
    c.with(|p| unsafe { *p })
}

/// Takes the contents of an owner-only cell, leaving 0.
fn take(c: &UnsafeCell<u64>) -> u64 {
    // SAFETY: as in `get`.
    c.with_mut(|p| unsafe { core::mem::take(&mut *p) })
}

/// Moves `bits` into an owner-only cell, asserting none was there.
fn add(c: &UnsafeCell<u64>, bits: u64) {
    // SAFETY: as in `get`.
    c.with_mut(|p| put(unsafe { &mut *p }, bits));
}

/// Moves `bits` into `to`, asserting none was there (the double-free check).
fn put(to: &mut u64, bits: u64) {
    assert_eq!(*to & bits, 0, "a block in two sets");
    *to |= bits;
}

/// The owner's thread: overflow into the local set, a refill that empties it, a refill
/// that collects the remote list into it, then park (`HeapInner::release_cache`).
fn owner(w: &World, unclaim: Ordering) {
    // Overflow: block 0 goes from the thread list into the local set (no lock).
    add(&w.local, 1);
    // Refill: takes it back onto the thread list (no lock).
    let took = take(&w.local);
    add(&w.list, took);
    // A refill that finds the remote list: what the thread list has no room for goes
    // into the local set (`let_go_fixed`; the owner is still us).
    let chain = w.remote.take();
    if !chain.is_null() {
        assert_eq!(chain as usize, w.block1);
        assert_eq!(w.owner.load(Ordering::Relaxed), OWNER);
        add(&w.local, 2);
    }
    // Park: merge the local set home under the lock only if it holds blocks (as
    // `merge_local` walks only spans on the owned list), then unclaim.
    let pending = get(&w.local);
    if pending != 0 {
        let mut home = w.home.lock().unwrap();
        let bits = take(&w.local);
        put(&mut home, bits);
    }
    w.claimed.store(false, unclaim);
}

/// Another record's refill adopting the span of a parked owner, then freeing a block it
/// carved into the span's local set.
fn adopter(w: &World) {
    let adopted = {
        let home = w.home.lock().unwrap();
        let parked = !w.claimed.load(Ordering::Acquire);
        if parked && w.owner.load(Ordering::Relaxed) == OWNER {
            w.owner.store(ADOPTER, Ordering::Relaxed);
            // Block 2 is carved for the adopter: never home before it is freed.
            assert_eq!(*home & 4, 0);
            true
        } else {
            false
        }
    };
    if adopted {
        // O1: the previous owner left the local set empty, and its touches happen
        // before ours.
        assert_eq!(get(&w.local), 0, "a local set outlived its owner's claim");
        add(&w.local, 4);
    }
}

/// A thread without a claim on the record: a remote free to it, then `trim`
/// (`flush_parked`): claims the parked record and brings its lists home.
fn remote_and_trim(w: &World) {
    // SAFETY: block 1 is this thread's to hand over: a 16-byte unit nobody else uses.
    unsafe { w.remote.push(NonNull::new(w.block1 as *mut u8).unwrap()) };
    if w.claimed
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        let chain = w.remote.take();
        let list = take(&w.list);
        let mut home = w.home.lock().unwrap();
        if !chain.is_null() {
            put(&mut home, 2);
        }
        put(&mut home, list);
        drop(home);
        w.claimed.store(false, Ordering::Release);
    }
}

fn run(unclaim: Ordering) {
    loom::model(move || {
        let w = world();
        let (w1, w2) = (w.clone(), w.clone());
        let t1 = thread::spawn(move || owner(&w1, unclaim));
        let t2 = thread::spawn(move || adopter(&w2));
        remote_and_trim(&w);
        t1.join().unwrap();
        t2.join().unwrap();
        // Every block in exactly one place: home, the local set (the adopter's), the
        // parked thread list, or still on the remote list.
        let mut all = *w.home.lock().unwrap();
        put(&mut all, get(&w.local));
        put(&mut all, get(&w.list));
        if !w.remote.take().is_null() {
            put(&mut all, 2);
        }
        let adopted = w.owner.load(Ordering::Relaxed) == ADOPTER;
        assert_eq!(all, if adopted { 7 } else { 3 }, "blocks lost or doubled");
    });
}

/// The protocol as built: no race on the local set, no block lost or doubled.
#[test]
fn loom_owned_local_set_vs_park_adoption_remote_trim() {
    run(Ordering::Release);
}

/// The model can fail: with a `Relaxed` unclaim, the owner's last lock-free touch of the
/// local set (the refill that emptied it) is not ordered before the adopter's first.
#[test]
#[should_panic]
fn loom_owned_relaxed_unclaim_races() {
    run(Ordering::Relaxed);
}
