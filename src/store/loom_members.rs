//! Loom model of a store's member list (`members`) against scoped iteration: a reader
//! iterates the store in a scope (copy of the list, then plain loads per slot) while
//! another thread removes a value (write guard, scope check, vacate, list removal, slot
//! back to its lane) and then inserts one, which reuses that very slot from its lane's
//! stash (occupy, list add). The reader must see the value that stays exactly once,
//! never a freed value, and never an item twice; the list must end exact. Values are
//! loom cells: a read the scope does not order against the remover's poisoning fails
//! as a data race.

use core::ptr::NonNull;

use loom::sync::Arc;
use loom::thread;

use super::members::{Members, live_generation};
use crate::handle::HandleTable;
use crate::handle::scope::{Scopes, remove_scoped};
use crate::movable::{Tag, tag_ptr, untag};
use crate::sync::UnsafeCell;

type Cell = UnsafeCell<u64>;

/// Written over a removed value before its block is freed.
const POISON: u64 = 0xDEAD;

/// The store's tag: slot pointers carry it, as a store's do.
const TAG: Tag = 5;

/// A 16-aligned cell, so tagging its address keeps the address bits intact.
#[repr(align(16))]
struct Block(Cell);

fn block(value: u64) -> NonNull<u8> {
    tag_ptr(
        NonNull::from(Box::leak(Box::new(Block(Cell::new(value))))).cast(),
        TAG,
    )
}

/// Frees a block made by `block`, from its slot pointer.
///
/// # Safety
///
/// * `p` came from `block`, and nobody can reach the block any more.
unsafe fn free(p: NonNull<u8>) {
    // SAFETY: the caller's precondition.
    drop(unsafe { Box::from_raw(untag(p).0.cast::<Block>().as_ptr()) });
}

/// Inserts `value` through `lane` and lists it, as `Store::insert` does.
fn insert(t: &HandleTable, m: &Members, lane: usize, value: u64) -> u32 {
    // SAFETY: each lane is used by one thread at a time (lanes change hands only across
    // spawn and join).
    let h = unsafe { t.insert_in(lane, block(value)) }.unwrap();
    // SAFETY: as above: this thread owns `lane`.
    unsafe { m.add(t, Some(lane), h.index()) };
    h.index()
}

/// The indexes of the live members of a snapshot (each member checked against its
/// slot, as iteration does).
fn live(t: &HandleTable, m: &Members) -> Vec<u32> {
    m.snapshot(t)
        .iter()
        .copied()
        .filter(|&i| live_generation(t, TAG, i).is_some())
        .collect()
}

#[test]
fn loom_member_removal_and_insert_vs_scoped_iteration() {
    // The remover's wait for the reader's scope and the list's spin lock are yield
    // loops: give the model more branches than loom's default.
    let mut model = loom::model::Builder::new();
    model.max_branches = 100_000;
    model.check(|| {
        let t = Arc::new(HandleTable::new());
        let m = Arc::new(Members::new(TAG));
        let scopes = Arc::new(Scopes::new());
        let a = insert(&t, &m, 0, 1);
        let b = insert(&t, &m, 0, 2);
        let ha = t.iter().find(|h| h.index() == a).unwrap();
        let reader = {
            let (t, m, scopes) = (t.clone(), m.clone(), scopes.clone());
            thread::spawn(move || {
                scopes.open(false);
                let mut seen = Vec::new();
                for &index in m.snapshot(&t).iter() {
                    if let Ok((_, p)) = t.slot(index).unwrap().scoped_entry() {
                        // SAFETY: the open scope keeps the value alive and unwritten.
                        let v = unsafe { untag(p).0.cast::<Block>().as_ref().0.with(|v| *v) };
                        seen.push((index, v));
                    }
                }
                scopes.close();
                seen
            })
        };
        let remover = {
            let (t, m, scopes) = (t.clone(), m.clone(), scopes.clone());
            thread::spawn(move || -> u32 {
                let (p, retired) = remove_scoped(&t, &scopes, ha, true, || ()).unwrap();
                // SAFETY: this thread owns lane 1.
                unsafe { m.remove(Some(1)) };
                // SAFETY: the slot is vacant and no scope that saw it is open: ours.
                unsafe {
                    untag(p)
                        .0
                        .cast::<Block>()
                        .as_ref()
                        .0
                        .with_mut(|v| *v = POISON)
                };
                // SAFETY: we vacated the slot; this thread owns lane 1.
                unsafe { t.recycle(Some(1), ha.index(), retired) };
                // SAFETY: nobody can reach the block any more.
                unsafe { free(p) };
                insert(&t, &m, 1, 3)
            })
        };
        let seen = reader.join().unwrap();
        let c = remover.join().unwrap();
        assert_eq!(c, a, "the insert reuses the slot its lane just stashed");
        let mut indexes: Vec<u32> = seen.iter().map(|&(i, _)| i).collect();
        indexes.sort_unstable();
        indexes.dedup();
        assert_eq!(indexes.len(), seen.len(), "an item seen twice: {seen:?}");
        assert!(
            seen.contains(&(b, 2)),
            "the value that stays was missed: {seen:?}"
        );
        for &(i, v) in &seen {
            assert!(
                (i, v) == (a, 1) || (i, v) == (b, 2) || (i, v) == (c, 3),
                "{seen:?}"
            );
        }
        let mut now = live(&t, &m);
        now.sort_unstable();
        let mut want = vec![b, c];
        want.sort_unstable();
        assert_eq!(now, want);
        assert_eq!(m.len(), 2);
        for h in t.iter().collect::<Vec<_>>() {
            let g = t.write(h).unwrap();
            let (p, _) = t.vacate_written(h, g).ok().unwrap();
            // SAFETY: the slot is vacant and every thread is done.
            unsafe { free(p) };
        }
    });
}

/// Changes reach the list out of order: lane 1's ring is registered (and so drained)
/// before lane 0's, and lane 1 removes a value lane 0 inserted and reinserts into the
/// same slot, so a drain may list `z` before `x`, and count the remove of `x` before its
/// insert. A reader
/// drains concurrently (its snapshot), at any point. With rings of 2 changes the
/// remover's second change drains too. The list must end as {y, z}, every snapshot
/// must list each index at most once, and never an index whose value it does not hold
/// (the slot decides: a member is live while its slot holds a value of the store).
#[test]
fn loom_members_out_of_order_lanes() {
    loom::model(|| {
        let t = Arc::new(HandleTable::new());
        let m = Arc::new(Members::new(TAG));
        let y = insert(&t, &m, 1, 1);
        let x = insert(&t, &m, 0, 2);
        let hx = t.iter().find(|h| h.index() == x).unwrap();
        let reader = {
            let (t, m) = (t.clone(), m.clone());
            thread::spawn(move || {
                // Each index is listed at most once, whatever the drains interleave
                // with (the slot of `x` is reused for `z`).
                let list = m.snapshot(&t);
                let mut dedup = list.to_vec();
                dedup.sort_unstable();
                dedup.dedup();
                assert_eq!(dedup.len(), list.len(), "an index listed twice: {list:?}");
                let seen: Vec<_> = list
                    .iter()
                    .copied()
                    .filter(|&i| live_generation(&t, TAG, i).is_some())
                    .collect();
                assert!(seen.contains(&y), "{seen:?}");
                seen
            })
        };
        let remover = {
            let (t, m) = (t.clone(), m.clone());
            thread::spawn(move || -> u32 {
                let g = t.write(hx).unwrap();
                let (p, retired) = t.vacate_written(hx, g).ok().unwrap();
                // SAFETY: this thread owns lane 1.
                unsafe { m.remove(Some(1)) };
                // SAFETY: we vacated the slot; this thread owns lane 1.
                unsafe { t.recycle(Some(1), hx.index(), retired) };
                // SAFETY: nobody can reach the block any more.
                unsafe { free(p) };
                insert(&t, &m, 1, 3)
            })
        };
        let seen = reader.join().unwrap();
        let z = remover.join().unwrap();
        assert_eq!(z, x, "the reinsert reuses the slot lane 1 just stashed");
        // `x`'s index is listed in a snapshot only for a value that holds it (x or z).
        assert!(seen.iter().all(|&i| i == y || i == x), "{seen:?}");
        let mut now = live(&t, &m);
        now.sort_unstable();
        let mut want = vec![y, z];
        want.sort_unstable();
        assert_eq!(now, want);
        assert_eq!(m.len(), 2);
        for h in t.iter().collect::<Vec<_>>() {
            let g = t.write(h).unwrap();
            let (p, _) = t.vacate_written(h, g).ok().unwrap();
            // SAFETY: the slot is vacant and every thread is done.
            unsafe { free(p) };
        }
    });
}
