//! Loom models of the remote-free protocol: remote frees (`push`) against the owner's
//! collection (`take`), and against the owner parking its record and another thread
//! claiming it (the claim flag protocol of `HeapInner::claim_cache` / `release_cache`).
//! Blocks are real memory that the models scribble over while they own them; loom checks
//! the protocol on the atomics (see `pool::central`'s module docs for why the block
//! words themselves are race-free).
//!
//! The compaction planner never reads remote lists (they hold fixed blocks only), so no
//! model includes it.

use core::ptr::NonNull;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;

use super::RemoteList;

/// `n` 16-byte, 16-aligned blocks, leaked for the model's life (loom runs each model
/// many times; a few bytes per run).
fn blocks(n: usize) -> Vec<usize> {
    #[repr(C, align(16))]
    struct Unit([u8; 16]);
    let mem: &'static mut [Unit] = Vec::from_iter((0..n).map(|_| Unit([0; 16]))).leak();
    mem.iter_mut()
        .map(|u| core::ptr::from_mut(u) as usize)
        .collect()
}

fn ptr(addr: usize) -> NonNull<u8> {
    NonNull::new(addr as *mut u8).expect("block addresses are non-null")
}

/// Walks a taken chain, scribbling word 1 of every block (as a new owner may), and
/// returns the addresses.
fn drain(chain: *mut u8) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cur = chain;
    while let Some(b) = NonNull::new(cur) {
        // SAFETY: the taken chain is ours: every block is a live 16-byte unit.
        unsafe {
            cur = b.cast::<*mut u8>().read();
            b.cast::<usize>().add(1).write(0xdead);
        }
        out.push(b.as_ptr() as usize);
    }
    out
}

fn assert_each_once(mut got: Vec<usize>, mut want: Vec<usize>) {
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "every block exactly once");
}

/// Two remote freers push (one a single block, one an outgoing chain of two, as
/// `HeapInner::send` does) while the owner collects: nothing lost, nothing twice.
#[test]
fn loom_remote_frees_race_owner_collection() {
    loom::model(|| {
        let b = blocks(3);
        let list = Arc::new(RemoteList::new());
        let single = {
            let (list, a) = (list.clone(), b[2]);
            // SAFETY: the block is pushed once, by the thread that owns it.
            thread::spawn(move || unsafe { list.push(ptr(a)) })
        };
        let chain = {
            let (list, x, y) = (list.clone(), b[0], b[1]);
            thread::spawn(move || {
                // SAFETY: both blocks are this thread's; it links them, then hands the
                // chain over once.
                unsafe {
                    ptr(x).cast::<*mut u8>().write(y as *mut u8);
                    list.push_chain(ptr(x), ptr(y));
                }
            })
        };
        let freers = [single, chain];
        let mut got = drain(list.take());
        for f in freers {
            f.join().unwrap();
        }
        got.extend(drain(list.take()));
        assert_each_once(got, b);
    });
}

/// The record the models park and claim: a claim flag, a remote list, the owner's
/// blocks, and the spans' home sets (under a lock).
struct Record {
    claimed: AtomicBool,
    remote: RemoteList,
    /// Owner-only in the real record (`ThreadCache::local`); a mutex here only so the
    /// model can share it: the claim flag is what orders the accesses.
    local: Mutex<Vec<usize>>,
    home: Mutex<Vec<usize>>,
}

/// The owner collects, then exits: it brings its remote list home and parks the record
/// (Release). A freer pushes meanwhile (the freed block may land before or after the
/// park); a new thread claims the record (Acquire CAS) and collects. Every block ends up
/// exactly once on the owner's list, home, or still on the remote list (a parked record
/// keeps receiving frees until someone claims it or trims).
#[test]
fn loom_remote_free_races_owner_exit_and_adoption() {
    loom::model(|| {
        let b = blocks(3);
        let rec = Arc::new(Record {
            claimed: AtomicBool::new(true),
            remote: RemoteList::new(),
            local: Mutex::new(Vec::new()),
            home: Mutex::new(Vec::new()),
        });
        // SAFETY: the block is the pusher's own.
        unsafe { rec.remote.push(ptr(b[0])) };
        let owner = {
            let rec = rec.clone();
            thread::spawn(move || {
                let got = drain(rec.remote.take());
                rec.local.lock().unwrap().extend(got);
                // Exit: remote lists home, then unclaim.
                let got = drain(rec.remote.take());
                rec.home.lock().unwrap().extend(got);
                rec.claimed.store(false, Ordering::Release);
            })
        };
        let freer = {
            let rec = rec.clone();
            let (x, y) = (b[1], b[2]);
            thread::spawn(move || {
                // SAFETY: each block is pushed once, by the thread that owns it.
                unsafe {
                    rec.remote.push(ptr(x));
                    rec.remote.push(ptr(y));
                }
            })
        };
        let adopter = {
            let rec = rec.clone();
            thread::spawn(move || {
                if rec
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    let got = drain(rec.remote.take());
                    rec.local.lock().unwrap().extend(got);
                }
            })
        };
        owner.join().unwrap();
        freer.join().unwrap();
        adopter.join().unwrap();
        let mut all = drain(rec.remote.take());
        all.extend(rec.local.lock().unwrap().iter().copied());
        all.extend(rec.home.lock().unwrap().iter().copied());
        assert_each_once(all, b);
    });
}
