//! Loom models of the protocol on `head`. Blocks are real memory; loom does not track
//! their plain reads and writes (see the module docs), but every model scribbles over
//! the blocks it holds, so a stale read would corrupt what it checks.

use super::test_support::Slab;
use super::*;
use loom::sync::Arc;
use loom::thread;

/// Block indices of `batch`, consumed; `None` → empty.
fn idx(slab: &Slab, batch: Option<Batch>) -> Vec<usize> {
    batch.map(|b| slab.indices(b)).unwrap_or_default()
}

/// Three threads: two pop (one also pushes) while the main thread pushes and pops.
#[test]
fn loom_push_pop_three_threads() {
    loom::model(|| {
        let slab = Slab::new(16, 6);
        let list = Arc::new(CentralFreeList::new(4));
        list.push(slab.batch(0..2)).expect("room");
        let (b, c) = (slab.batch(2..4), slab.batch(4..6));
        let l1 = list.clone();
        let t1 = thread::spawn(move || {
            l1.push(b).expect("room");
            l1.pop()
        });
        let l2 = list.clone();
        let t2 = thread::spawn(move || l2.pop());
        list.push(c).expect("room");
        let mine = list.pop();
        let mut all = idx(&slab, mine);
        all.extend(idx(&slab, t1.join().expect("t1")));
        all.extend(idx(&slab, t2.join().expect("t2")));
        let s = list.stats();
        assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken, "C5");
        all.extend(slab.drain(&list));
        slab.assert_exactly_once(all);
    });
}

/// A pop whose put-back races a push: the put-back must merge the newcomer.
#[test]
fn loom_pop_put_back_merges_a_concurrent_push() {
    loom::model(|| {
        let slab = Slab::new(16, 6);
        let list = Arc::new(CentralFreeList::new(4));
        list.push(slab.batch(0..2)).expect("room");
        list.push(slab.batch(2..4)).expect("room");
        let c = slab.batch(4..6);
        let l1 = list.clone();
        let t1 = thread::spawn(move || l1.pop());
        list.push(c).expect("room: capacity 4");
        let popped = t1
            .join()
            .expect("t1")
            .expect("a batch was always visible to t1");
        assert_eq!(list.batches(), 2, "C1 at quiescence");
        let mut all = slab.indices(popped);
        let rest = list.take_all();
        assert_eq!((rest.len(), rest.blocks()), (2, 4));
        all.extend(rest.flat_map(|b| slab.indices(b)));
        slab.assert_exactly_once(all);
    });
}

/// Pushes racing `take_all`: every batch is either taken or left, never both, and
/// the count ends exact.
#[test]
fn loom_push_races_take_all() {
    loom::model(|| {
        let slab = Slab::new(16, 5);
        let list = Arc::new(CentralFreeList::new(4));
        list.push(slab.batch(0..1)).expect("room");
        let (b, c) = (slab.batch(1..3), slab.batch(3..5));
        let l1 = list.clone();
        let t1 = thread::spawn(move || {
            l1.push(b).expect("room");
            l1.push(c).expect("room");
        });
        let taken = list.take_all();
        let taken_len = taken.len();
        let mut all: Vec<usize> = taken.flat_map(|b| slab.indices(b)).collect();
        t1.join().expect("t1");
        let s = list.stats();
        assert_eq!(s.taken, taken_len as u64);
        assert_eq!(list.batches() as u64, 3 - s.taken, "C1/C5");
        all.extend(slab.drain(&list));
        assert_eq!(list.batches(), 0);
        slab.assert_exactly_once(all);
    });
}

/// The ABA interleaving, with the head word itself coming back: T1 starts a pop on
/// `[3 | A] : A → B → C`; T2 pops A, pops B, pushes D, writes over A as a user would
/// and pushes A back, so the head is `[3 | A] : A → D → C` again; T1 resumes. A pop
/// that read `A.next = B` before its CAS would now hand out B twice and lose C and D.
/// Nothing may be lost or duplicated, and every popped batch must be an original,
/// intact.
#[test]
fn loom_aba_pop_interleaving() {
    loom::model(|| {
        let slab = Slab::new(16, 8);
        let list = Arc::new(CentralFreeList::new(4));
        list.push(slab.batch(4..6)).expect("room"); // C
        list.push(slab.batch(2..4)).expect("room"); // B
        list.push(slab.batch(0..2)).expect("room"); // A (top)
        let d = slab.batch(6..8);
        let l1 = list.clone();
        let t1 = thread::spawn(move || l1.pop());
        let a = list.pop();
        let b_idx = idx(&slab, list.pop());
        list.push(d).expect("room: at most 4 batches");
        if let Some(a) = a {
            list.push(slab.scribble(a))
                .expect("room: at most 4 batches");
        }
        let t1_idx = idx(&slab, t1.join().expect("t1"));
        for got in [&b_idx, &t1_idx] {
            assert!(
                got.is_empty() || [[0, 1], [2, 3], [4, 5], [6, 7]].iter().any(|x| got == x),
                "a popped batch is an original batch, intact: {got:?}"
            );
        }
        let mut all = b_idx;
        all.extend(t1_idx);
        let s = list.stats();
        assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken, "C5");
        all.extend(slab.drain(&list));
        slab.assert_exactly_once(all);
    });
}
