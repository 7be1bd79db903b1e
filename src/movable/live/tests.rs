use std::sync::Arc;

use super::Entry;
use crate::pool::span::LiveCount;
use crate::{Heap, Store};

/// The hazard of pending deltas: a `+1` recorded for life 1 is still pending when the
/// span empties (its block freed elsewhere, `−1` applied) and is re-initialised as life
/// 2, which then gets one block of its own. Evicting the old entry must not land the
/// `+1` on life 2: the count stays 1. (A plain add would make it 2.)
#[test]
fn a_stale_delta_never_lands_on_a_new_life() {
    let word = LiveCount::new();
    word.reset(1);
    let e = Entry::new();
    let span = 0x1000;
    e.replace(span, 1, 1, |_, _, _| unreachable!("the entry was empty"));
    assert!(word.add(1, u32::MAX), "the free of the block, directly");
    word.reset(2);
    assert!(word.add(2, 1), "a block of the new life");
    let mut flushed = None;
    e.replace(0x2000, 7, 1, |s, life, d| {
        flushed = Some((s, life, d, word.add(life, d)));
    });
    assert_eq!(
        flushed,
        Some((span, 1, 1, false)),
        "the old life's delta is refused"
    );
    assert_eq!(word.get(), (2, 1));
}

/// Hits add to the entry only while it names the span in the same life; a new life of
/// the same span misses (and flushes the old delta, which its word refuses).
#[test]
fn an_entry_hits_only_its_span_and_life() {
    let e = Entry::new();
    assert!(!e.bump(0x1000, 1, 1), "an empty entry misses");
    e.replace(0x1000, 1, 1, |_, _, _| unreachable!());
    assert!(e.bump(0x1000, 1, 1));
    assert!(e.bump(0x1000, 1, u32::MAX));
    assert!(e.bump(0x1000, 1, 1));
    assert!(!e.bump(0x2000, 1, 1), "another span");
    assert!(!e.bump(0x1000, 2, 1), "another life");
    assert_eq!(e.read(), Some((0x1000, 1, 2)));
    let mut seen = None;
    e.replace(0x1000, 2, u32::MAX, |s, life, d| seen = Some((s, life, d)));
    assert_eq!(seen, Some((0x1000, 1, 2)));
    assert_eq!(e.read(), Some((0x1000, 2, u32::MAX)));
}

/// Values of several sizes are inserted on one set of threads and removed on others
/// (so a block's `+1` and `−1` sit in different lanes' tables), while spans empty and
/// are re-initialised for other classes between rounds (full compactions and trims).
/// At every quiescent point each span's word plus its pending deltas equals its side
/// table's live blocks, on 4 seeds.
#[test]
fn live_counts_are_exact_at_quiescence_across_lives() {
    for seed in 1..=4u64 {
        let heap = Arc::new(Heap::new());
        let small = Arc::new(Store::<[u64; 2]>::new_in(heap.clone()));
        let big = Arc::new(Store::<[u64; 40]>::new_in(heap.clone()));
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for round in 0..12u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = 200 + (rng % 3000) as usize;
            let keep = (rng >> 20) % 4 == 0;
            // Inserted on two threads...
            let made: Vec<_> = (0..2)
                .map(|t| {
                    let (small, big) = (small.clone(), big.clone());
                    std::thread::spawn(move || {
                        let mut s = Vec::new();
                        let mut b = Vec::new();
                        for i in 0..n as u64 {
                            if (i + t + round) % 3 == 0 {
                                b.push(big.insert([i; 40]));
                            } else {
                                s.push(small.insert([i, t]));
                            }
                        }
                        (s, b)
                    })
                })
                .map(|j| j.join().unwrap())
                .collect();
            heap.assert_live_counts_exact();
            // ...removed on two others, each taking every other value of both.
            let (s, b): (Vec<Vec<_>>, Vec<Vec<_>>) = made.into_iter().unzip();
            let (mut s, b) = (s.concat(), b.concat());
            for i in (1..s.len()).rev() {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                s.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let keep_s = if keep { s.len() / 5 } else { 0 };
            let (kept, gone) = s.split_at(keep_s);
            let kept = kept.to_vec();
            let gone = gone.to_vec();
            std::thread::scope(|sc| {
                for part in [0, 1] {
                    let (gone, b, small, big) = (&gone, &b, &small, &big);
                    sc.spawn(move || {
                        for h in gone.iter().skip(part).step_by(2) {
                            assert!(small.remove(*h).is_some());
                        }
                        for h in b.iter().skip(part).step_by(2) {
                            assert!(big.remove(*h).is_some());
                        }
                    });
                }
            });
            heap.assert_live_counts_exact();
            heap.compact_full();
            heap.assert_live_counts_exact();
            heap.trim();
            for h in kept {
                assert!(small.remove(h).is_some());
            }
            heap.assert_live_counts_exact();
        }
        assert_eq!(small.len() + big.len(), 0);
    }
}

/// A span's life counter at its limit: the life after `u32::MAX` is 0, and a delta
/// recorded for life `u32::MAX` is still refused once the word is in life 0 (lives
/// compare for equality, never by order).
#[test]
fn a_delta_of_the_last_life_is_refused_after_the_counter_wraps() {
    let word = LiveCount::new();
    word.reset(u32::MAX);
    assert!(word.add(u32::MAX, 1));
    let e = Entry::new();
    e.replace(0x1000, u32::MAX, 1, |_, _, _| {
        unreachable!("the entry was empty")
    });
    assert!(word.add(u32::MAX, u32::MAX), "the first block freed");
    word.reset(u32::MAX.wrapping_add(1));
    let mut landed = None;
    e.replace(0x2000, 0, 1, |_, life, d| landed = Some(word.add(life, d)));
    assert_eq!(
        landed,
        Some(false),
        "the last life's delta is refused in life 0"
    );
    assert_eq!(word.get(), (0, 0));
}

/// A value whose `Drop` panics, removed (and an `Owned` of one dropped): the block's
/// `−1` is still recorded once, so live counts stay exact at quiescence.
#[test]
fn a_panicking_drop_on_remove_keeps_live_counts_exact() {
    struct Bomb([u8; 48]);
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("Bomb::drop of a value stamped {}", self.0[0]);
        }
    }
    let heap = Arc::new(Heap::new());
    let s: Store<Bomb> = Store::new_in(heap.clone());
    let keep: Vec<_> = (0..100).map(|_| s.insert(Bomb([1; 48]))).collect();
    let gone: Vec<_> = (0..100).map(|_| s.insert(Bomb([2; 48]))).collect();
    for h in gone {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(s.remove(h))));
        assert!(r.is_err(), "the Drop panicked");
    }
    let o = s.insert_owned(Bomb([3; 48]));
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(o))).is_err());
    assert_eq!(s.len(), keep.len());
    heap.assert_live_counts_exact();
    for h in keep {
        std::mem::forget(s.remove(h));
    }
    heap.assert_live_counts_exact();
}
