use std::collections::HashSet;

use super::{Members, PRUNE_SLACK, RING, is_live};
use crate::handle::{HandleTable, RawHandle};

/// A long random life of up to 60 values in a real handle table, whose inserts and
/// removes go through 4 lanes and the laneless path at random, so one value's insert
/// and remove often sit in different rings and slots are reused at once. Every
/// snapshot's live members must be exactly the model's values (each once), `len` must
/// match, and the list must stay within `2 · len + PRUNE_SLACK` plus what the rings
/// hold. One thread plays every lane, so each ring still has one producer.
#[test]
fn lanes_match_the_model_and_the_list_stays_bounded() {
    for seed in 1..=8u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let t = HandleTable::new();
        let m = Members::new();
        let mut live: Vec<RawHandle> = Vec::new();
        let lane = |k: u64| if k == 4 { None } else { Some(k as usize) };
        // The last snapshot and a copy of it: changes made while a snapshot is held must
        // not show in it (the list is copied on write).
        let mut held = (m.snapshot(&t), Vec::new());
        for step in 0..20_000u32 {
            let grow = live.len() < 5 || (live.len() < 60 && next(2) == 0);
            if grow {
                let h = t.insert(core::ptr::NonNull::dangling()).unwrap();
                // SAFETY: this thread is every lane's only producer.
                unsafe { m.add(&t, lane(next(5)), h.index(), h.generation().get()) };
                live.push(h);
            } else {
                let h = live.swap_remove(next(live.len() as u64) as usize);
                t.remove(h).unwrap();
                // SAFETY: as above.
                unsafe { m.remove(lane(next(5))) };
            }
            if step % (RING as u32 * 3 + 1) == 0 {
                assert_eq!(*held.0, held.1, "seed {seed}: a held snapshot changed");
                let seen = m.snapshot(&t);
                held = (seen.clone(), seen.to_vec());
                let alive: Vec<_> = seen.iter().copied().filter(|&x| is_live(&t, x)).collect();
                let set: HashSet<_> = alive.iter().copied().collect();
                assert_eq!(set.len(), alive.len(), "seed {seed}: a member twice");
                let want: HashSet<_> = live
                    .iter()
                    .map(|h| (h.index(), h.generation().get()))
                    .collect();
                assert_eq!(set, want, "seed {seed}, step {step}");
                assert_eq!(m.len(), live.len(), "seed {seed}, step {step}");
                assert!(
                    seen.len() <= 2 * live.len() + PRUNE_SLACK + 1,
                    "seed {seed}, step {step}: {} members for {} values",
                    seen.len(),
                    live.len()
                );
            }
        }
    }
}
