use std::collections::HashSet;

use super::{CHUNK_BITS, Listed, Members, PRUNE_SLACK, RING, live_generation};
use crate::handle::{HandleTable, RawHandle};
use crate::movable::{Tag, tag_ptr};

/// A stand-in block: 16-aligned, so tagging it keeps its address bits intact.
#[repr(align(16))]
struct Block;

/// A long random life of up to 60 values in each of two stores (tags 5 and 6) sharing
/// one real handle table, whose inserts and removes go through 4 lanes and the laneless
/// path at random, so one value's insert and remove often sit in different rings, and
/// slots are reused at once, by the same store or by the other one. Every snapshot's
/// live members must be exactly the model's values of its store, the list must hold
/// each index at most once, `len` must match, and the list must stay within
/// `2 · len + PRUNE_SLACK` plus what the rings hold. One thread plays every lane, so
/// each ring still has one producer.
#[test]
fn lanes_match_the_model_and_the_list_stays_bounded() {
    const TAGS: [Tag; 2] = [5, 6];
    for seed in 1..=8u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let t = HandleTable::new();
        let stores = TAGS.map(Members::new);
        let mut live: [Vec<RawHandle>; 2] = [Vec::new(), Vec::new()];
        let lane = |k: u64| if k == 4 { None } else { Some(k as usize) };
        // The last snapshot of store 0 and a copy of it: changes made while a snapshot
        // is held must not show in it (the list is copied on write).
        let mut held = (stores[0].snapshot(&t), Vec::new());
        for step in 0..20_000u32 {
            let s = next(2) as usize;
            let (m, mine) = (&stores[s], &mut live[s]);
            let grow = mine.len() < 5 || (mine.len() < 60 && next(2) == 0);
            if grow {
                let block = tag_ptr(core::ptr::NonNull::<Block>::dangling().cast(), TAGS[s]);
                let h = t.insert(block).unwrap();
                // SAFETY: this thread is every lane's only producer.
                unsafe { m.add(&t, lane(next(5)), h.index()) };
                mine.push(h);
            } else {
                let h = mine.swap_remove(next(mine.len() as u64) as usize);
                t.remove(h).unwrap();
                // SAFETY: as above.
                unsafe { m.remove(lane(next(5))) };
            }
            if step % (RING as u32 * 3 + 1) == 0 {
                assert_eq!(*held.0, held.1, "seed {seed}: a held snapshot changed");
                for (s, m) in stores.iter().enumerate() {
                    let seen = m.snapshot(&t);
                    if s == 0 {
                        held = (seen.clone(), seen.to_vec());
                    }
                    let listed: HashSet<_> = seen.iter().copied().collect();
                    assert_eq!(listed.len(), seen.len(), "seed {seed}: an index twice");
                    let alive: HashSet<_> = seen
                        .iter()
                        .filter_map(|&i| live_generation(&t, TAGS[s], i).map(|g| (i, g)))
                        .collect();
                    let want: HashSet<_> = live[s]
                        .iter()
                        .map(|h| (h.index(), h.generation().get()))
                        .collect();
                    assert_eq!(alive, want, "seed {seed}, step {step}, store {s}");
                    assert_eq!(m.len(), live[s].len(), "seed {seed}, step {step}");
                    assert!(
                        seen.len() <= 2 * live[s].len() + PRUNE_SLACK + 1,
                        "seed {seed}, step {step}: {} members for {} values",
                        seen.len(),
                        live[s].len()
                    );
                }
            }
        }
    }
}

/// A slot the store reuses (remove, then an insert that takes the same slot back from
/// the lane's stash) is listed once, however often it is reused; and after a prune
/// dropped a slot that another store holds, the store lists it again when it takes the
/// slot back.
#[test]
fn a_reused_slot_is_listed_once_and_relisted_after_a_prune() {
    let t = HandleTable::new();
    let (a, b) = (Members::new(5), Members::new(6));
    let block = |tag| tag_ptr(core::ptr::NonNull::<Block>::dangling().cast(), tag);
    let mut h = insert_in(&t, block(5));
    add(&a, &t, Some(0), h.index());
    for _ in 0..10 * RING {
        let g = t.write(h).unwrap();
        let (_, retired) = t.vacate_written(h, g).ok().unwrap();
        recycle(&t, h.index(), retired);
        remove(&a, Some(0));
        let again = insert_in(&t, block(5));
        assert_eq!(again.index(), h.index(), "the stash gives the slot back");
        add(&a, &t, Some(0), again.index());
        h = again;
    }
    assert_eq!(*a.snapshot(&t), [h.index()]);
    assert_eq!(a.len(), 1);
    // The slot goes to store `b`; store `a` churns through other slots until it prunes.
    t.remove(h).unwrap();
    remove(&a, Some(0));
    let hb = t.insert(block(6)).unwrap();
    assert_eq!(hb.index(), h.index(), "the shared list gives the slot back");
    add(&b, &t, Some(0), hb.index());
    let mut others = Vec::new();
    for _ in 0..PRUNE_SLACK + 2 * RING {
        let x = t.insert(block(5)).unwrap();
        add(&a, &t, None, x.index());
        others.push(x);
    }
    for x in others {
        t.remove(x).unwrap();
        remove(&a, None);
    }
    let pruned = a.snapshot(&t);
    assert!(!pruned.contains(&hb.index()), "a pruned slot of store b");
    assert!(pruned.iter().all(|&i| live_generation(&t, 5, i).is_none()));
    // Store `a` takes the slot back: listed again.
    t.remove(hb).unwrap();
    remove(&b, Some(0));
    let back = t.insert(block(5)).unwrap();
    assert_eq!(back.index(), hb.index());
    add(&a, &t, None, back.index());
    let listed: Vec<_> = a
        .snapshot(&t)
        .iter()
        .copied()
        .filter(|&i| live_generation(&t, 5, i).is_some())
        .collect();
    assert_eq!(listed, [back.index()]);
    assert_eq!(a.len(), 1);
}

// The helpers below use lane 0 (or none); the tests run each on one thread, which is
// so lane 0's only user and every ring's only producer.

fn insert_in(t: &HandleTable, block: core::ptr::NonNull<u8>) -> RawHandle {
    // SAFETY: this thread is lane 0's only user.
    unsafe { t.insert_in(0, block) }.unwrap()
}

fn recycle(t: &HandleTable, index: u32, retired: bool) {
    // SAFETY: this thread is lane 0's only user, and it has just vacated slot `index`.
    unsafe { t.recycle(Some(0), index, retired) };
}

fn add(m: &Members, t: &HandleTable, lane: Option<usize>, index: u32) {
    // SAFETY: this thread is every lane's only producer.
    unsafe { m.add(t, lane, index) };
}

fn remove(m: &Members, lane: Option<usize>) {
    // SAFETY: as in `add`.
    unsafe { m.remove(lane) };
}

/// The listed set at the edges of its chunks and of the index range (the highest index
/// a table issues is `u32::MAX - 1`): each bit is its own, a second insert reports it
/// listed, a remove clears only it, and removing an index never listed grows nothing.
#[test]
fn listed_set_bits_at_chunk_and_range_edges() {
    let mut set = Listed::default();
    let edges = [
        0,
        63,
        64,
        CHUNK_BITS as u32 - 1,
        CHUNK_BITS as u32,
        u32::MAX - 1,
    ];
    for &i in &edges {
        assert!(set.insert(i), "{i} listed before its first insert");
        assert!(!set.insert(i), "{i} not listed after its insert");
    }
    let chunks = set.0.len();
    assert_eq!(chunks, (u32::MAX - 1) as usize / CHUNK_BITS + 1);
    set.remove(CHUNK_BITS as u32);
    for &i in &edges {
        assert_eq!(
            set.insert(i),
            i == CHUNK_BITS as u32,
            "bit {i} after one remove"
        );
    }
    let mut small = Listed::default();
    small.remove(u32::MAX - 1);
    assert!(
        small.0.is_empty(),
        "a remove of an unlisted index grew the set"
    );
}
