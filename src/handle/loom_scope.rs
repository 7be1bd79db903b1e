//! Loom models of the read-scope protocol (module `scope`): a reader inside a scope
//! against a writer, a remover and the compactor's mover. Run with
//! `RUSTFLAGS="--cfg tidyheap_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib -- loom_`.
//!
//! The block is a loom `UnsafeCell`, so a scoped read that is not ordered against a
//! write, a move's copy or a free's poisoning fails as a data race, on top of the value
//! assertions. The writer, remover and mover call the same functions the store and the
//! compactor call (`write_scoped`, `remove_scoped`, `Scopes::admits_writer` after
//! `try_lock_move`); the reader calls `Scopes::open` and `try_scoped_get` /
//! `scoped_get`, the fast path with no read-modify-write.

use core::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;

use super::scope::{Scopes, remove_scoped, scoped_get, try_scoped_get, write_scoped};
use super::{HandleTable, RawHandle};
use crate::HandleError;
use crate::sync::UnsafeCell;

type Cell = UnsafeCell<u64>;

/// Written over a block that was freed or moved away; no scoped reader may see it.
const POISON: u64 = 0xDEAD;

fn block(value: u64) -> NonNull<u8> {
    NonNull::from(Box::leak(Box::new(Cell::new(value)))).cast()
}

/// # Safety
///
/// * `p` came from `block` and is still live.
unsafe fn get(p: NonNull<u8>) -> u64 {
    // SAFETY:
    // - a live `Cell` (caller's precondition); loom checks the access is ordered.
    unsafe { p.cast::<Cell>().as_ref().with(|v| *v) }
}

/// # Safety
///
/// * `p` came from `block` and is still live.
unsafe fn set(p: NonNull<u8>, value: u64) {
    // SAFETY:
    // - a live `Cell` (caller's precondition); loom checks the access is ordered.
    unsafe { p.cast::<Cell>().as_ref().with_mut(|v| *v = value) }
}

/// # Safety
///
/// * `p` came from `block`, and no thread uses it any more.
unsafe fn free(p: NonNull<u8>) {
    // SAFETY:
    // - a leaked `Box<Cell>` nobody refers to any more (caller's precondition).
    drop(unsafe { Box::from_raw(p.cast::<Cell>().as_ptr()) });
}

/// A reader: opens a scope, reads `h` twice with the fast path (waiting through the
/// slow path on `Busy`), closes. Both reads inside one scope must agree — nothing may
/// change the value while the scope is open — and never see the poison.
fn scoped_reader(t: Arc<HandleTable>, scopes: Arc<Scopes>, h: RawHandle) -> Option<u64> {
    scopes.open(false);
    let read = |t: &HandleTable| match try_scoped_get(t, h) {
        Err(HandleError::Busy) => scoped_get(t, h),
        r => r,
    };
    let first = read(&t).ok().map(|p| {
        // SAFETY: the open scope keeps the block live, in place and unwritten.
        unsafe { get(p) }
    });
    let second = read(&t).ok().map(|p| {
        // SAFETY: as above.
        unsafe { get(p) }
    });
    scopes.close();
    if let Some(a) = first {
        assert_ne!(a, POISON, "a scoped read saw a freed or moved-away block");
        assert_eq!(
            second,
            Some(a),
            "the value changed or vanished inside a scope"
        );
    }
    first
}

/// (a) Scope vs a waiting writer: the writer either writes before the scope's reads
/// (they see 2) or waits for the scope to close (they see 1); never during. The writer
/// registers as pending while it waits, and the reader opens twice, so a reader that
/// steps back for the pending writer is modelled too.
#[test]
fn loom_scope_vs_writer() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let scopes = Arc::new(Scopes::new());
        let b = block(1);
        let h = t.insert(b).unwrap();

        let reader = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || {
                let a = scoped_reader(t.clone(), scopes.clone(), h);
                let b = scoped_reader(t, scopes, h);
                (a, b)
            })
        };
        let writer = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || {
                let w = write_scoped(&t, &scopes, h, true, || ()).unwrap();
                // SAFETY: the write guard with no scope open excludes every reader.
                unsafe { set(w.ptr(), 2) };
            })
        };
        let (a, b) = reader.join().unwrap();
        writer.join().unwrap();
        assert!(matches!(a, Some(1 | 2)) && matches!(b, Some(1 | 2)));
        assert!(!(a == Some(2) && b == Some(1)), "a write went backwards");
        // SAFETY: both threads are done with the block.
        unsafe { free(t.remove(h).unwrap()) };
    });
}

/// (b) Scope vs a non-waiting writer and the mover (three threads): the writer's
/// `try_` form answers `Busy` when a scope is open (nothing written), the mover skips,
/// and a scoped read never sees a half-done move or the poisoned old copy.
#[test]
fn loom_scope_vs_try_writer_and_mover() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let scopes = Arc::new(Scopes::new());
        let old = block(1);
        let new = block(0);
        let h = t.insert(old).unwrap();

        let reader = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || scoped_reader(t, scopes, h))
        };
        let writer = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || match write_scoped(&t, &scopes, h, false, || ()) {
                Ok(w) => {
                    // SAFETY: the write guard with no scope open excludes every reader.
                    unsafe { set(w.ptr(), get(w.ptr()) + 1) };
                    true
                }
                Err(e) => {
                    assert_eq!(e, HandleError::Busy);
                    false
                }
            })
        };
        let mover = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || {
                let Ok(mut mv) = t.try_lock_move(h.index(), old) else {
                    return false;
                };
                if !scopes.admits_writer() {
                    return false;
                }
                // SAFETY: the move lock with no scope open excludes every other access
                // to both blocks (`new` is unpublished until `set_ptr`).
                unsafe {
                    set(new, get(old));
                    mv.set_ptr(new);
                }
                drop(mv);
                // SAFETY: nobody can reach the old copy after the move.
                unsafe { set(old, POISON) };
                true
            })
        };
        let seen = reader.join().unwrap();
        let wrote = writer.join().unwrap();
        let moved = mover.join().unwrap();
        assert!(matches!(seen, Some(1 | 2)));
        let r = t.read(h).unwrap();
        // SAFETY: every thread is done; the read guard keeps the block in place.
        let v = unsafe { get(r.ptr()) };
        assert_eq!(v, if wrote { 2 } else { 1 });
        assert_eq!(r.ptr() == new, moved);
        drop(r);
        // SAFETY: both threads are done with both blocks.
        unsafe {
            t.remove(h).unwrap();
            free(old);
            free(new);
        }
    });
}

/// (c) Scope vs a waiting remover: the remover frees (and poisons) the block only once
/// no scope that could see it is open; a scoped read sees the value or `Stale`, never
/// the poison, and never a slot reused under it (the generation is checked first).
#[test]
fn loom_scope_vs_remover() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let scopes = Arc::new(Scopes::new());
        let b = block(1);
        let h = t.insert(b).unwrap();

        let reader = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || scoped_reader(t, scopes, h))
        };
        let remover = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || {
                let (p, retired) = remove_scoped(&t, &scopes, h, true, || ()).unwrap();
                // SAFETY: we vacated the slot just now; no lane.
                unsafe { t.recycle(None, h.index(), retired) };
                // SAFETY: the slot is vacant and no scope that saw it is open: ours.
                unsafe { set(p, POISON) };
                p
            })
        };
        let seen = reader.join().unwrap();
        let p = remover.join().unwrap();
        assert!(matches!(seen, None | Some(1)));
        assert_eq!(p, b);
        assert!(!t.contains(h));
        assert_eq!(
            remove_scoped(&t, &scopes, h, false, || ()),
            Err(HandleError::Stale)
        );
        // SAFETY: every thread is done with the block.
        unsafe { free(p) };
    });
}

/// (d) The remove lock (`W | M`, then a plain store of the vacated word) against a
/// guarded reader that waits for it and a pin: the reader sees the value or `Stale`
/// (never the poison), the pin is taken before the remove (which then waits for it) or
/// refused, and the plain store loses nothing: the slot ends vacant with no reader,
/// pin, lock or `PARKED` bit left, and no waiter sleeps forever (loom reports a
/// deadlock otherwise).
#[test]
fn loom_remove_lock_vs_waiting_reader_and_pin() {
    let mut model = loom::model::Builder::new();
    model.max_branches = 100_000;
    model.check(|| {
        let t = Arc::new(HandleTable::new());
        let scopes = Arc::new(Scopes::new());
        let b = block(1);
        let h = t.insert(b).unwrap();

        let reader = {
            let t = t.clone();
            thread::spawn(move || match t.read(h) {
                // SAFETY: the read guard keeps the block live and unwritten.
                Ok(g) => Some(unsafe { get(g.ptr()) }),
                Err(e) => {
                    assert_eq!(e, HandleError::Stale);
                    None
                }
            })
        };
        let pinner = {
            let t = t.clone();
            thread::spawn(move || match t.try_pin(h) {
                Ok(pin) => {
                    assert_eq!(pin.ptr(), b);
                    true
                }
                Err(e) => {
                    assert!(matches!(e, HandleError::Stale | HandleError::Busy));
                    false
                }
            })
        };
        let remover = {
            let (t, scopes) = (t.clone(), scopes.clone());
            thread::spawn(move || {
                let (p, retired) = remove_scoped(&t, &scopes, h, true, || ()).unwrap();
                // SAFETY: the slot is vacant: the block is ours.
                unsafe { set(p, POISON) };
                // SAFETY: we vacated the slot just now; no lane.
                unsafe { t.recycle(None, h.index(), retired) };
                p
            })
        };
        let seen = reader.join().unwrap();
        pinner.join().unwrap();
        let p = remover.join().unwrap();
        assert!(matches!(seen, None | Some(1)), "{seen:?}");
        assert_eq!(p, b);
        let s = t.get(h).unwrap().snapshot();
        assert!(!s.is_occupied());
        assert_eq!(
            (s.readers, s.pins, s.writer, s.moving, s.waiters),
            (0, 0, false, false, false),
            "{s:?}"
        );
        // SAFETY: every thread is done with the block.
        unsafe { free(p) };
    });
}
