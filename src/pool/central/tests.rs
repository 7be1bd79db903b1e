use super::test_support::Slab;
use super::*;

#[test]
fn batch_links_blocks_lifo_and_iterates_head_first() {
    let slab = Slab::new(16, 5);
    // SAFETY: blocks of the slab, each handed over once.
    let mut b = unsafe { Batch::from_block(slab.block(4)) };
    assert_eq!(
        (b.len(), b.head(), b.tail()),
        (1, slab.block(4), slab.block(4))
    );
    for i in (0..4).rev() {
        // SAFETY: as above.
        unsafe { b.push(slab.block(i)) };
    }
    assert_eq!(
        (b.len(), b.head(), b.tail()),
        (5, slab.block(0), slab.block(4))
    );
    let it = b.into_iter();
    assert_eq!(it.len(), 5);
    let got: Vec<usize> = it.map(|p| slab.index(p)).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
}

#[test]
fn split_first_and_raw_parts_round_trip() {
    let slab = Slab::new(64, 3);
    let b = slab.batch(0..3);
    let (first, rest) = b.split_first();
    assert_eq!(slab.index(first), 0);
    let rest = rest.expect("two blocks left");
    assert_eq!(
        (rest.len(), rest.head(), rest.tail()),
        (2, slab.block(1), slab.block(2))
    );
    let (h, t, c) = rest.into_raw_parts();
    // SAFETY: the parts come from a valid batch we just gave up.
    let rest = unsafe { Batch::from_raw_parts(h, t, c) };
    let (second, rest) = rest.split_first();
    let (third, none) = rest.expect("one left").split_first();
    assert!(none.is_none());
    assert_eq!([slab.index(second), slab.index(third)], [1, 2]);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "they leak")]
fn dropping_a_batch_is_caught_in_debug() {
    let slab = Slab::new(16, 2);
    drop(slab.batch(0..2));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "does not end at its tail")]
fn from_raw_parts_checks_the_chain_in_debug() {
    let slab = Slab::new(16, 3);
    let (h, _, _) = slab.batch(0..3).into_raw_parts();
    // SAFETY: deliberately wrong tail; the debug walk only reads the three owned blocks.
    let _ = unsafe { Batch::from_raw_parts(h, slab.block(1), 3) };
}

#[test]
fn push_pop_round_trip_keeps_every_block_once() {
    for size in [16, 64] {
        let lens = [1, 2, 3, 32, 5, 1, 17];
        let total: usize = lens.iter().sum();
        let slab = Slab::new(size, total);
        let mut list = CentralFreeList::new(16);
        let mut start = 0;
        let mut pushed = Vec::new();
        for len in lens {
            let b = slab.batch(start..start + len);
            list.push(b).expect("room");
            pushed.push((start..start + len).collect::<Vec<_>>());
            start += len;
            assert_eq!(list.batches(), pushed.len());
        }
        let audit = list.audit();
        assert_eq!(
            audit,
            CentralAudit {
                batches: lens.len(),
                blocks: total
            }
        );
        // LIFO, each batch intact (order, head, tail, length).
        let mut all = Vec::new();
        while let Some(b) = list.pop() {
            let expect = pushed.pop().expect("popped no more than pushed");
            assert_eq!(b.len() as usize, expect.len());
            assert_eq!(slab.index(b.head()), expect[0]);
            assert_eq!(slab.index(b.tail()), *expect.last().expect("non-empty"));
            let got = slab.indices(b);
            assert_eq!(got, expect);
            all.extend(got);
            let audit = list.audit();
            assert_eq!(audit.batches, pushed.len());
        }
        assert!(pushed.is_empty());
        slab.assert_exactly_once(all);
        let s = list.stats();
        assert_eq!((s.pushes, s.pops, s.pop_misses), (7, 7, 1));
        // C5 at quiescence.
        assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken);
    }
}

#[test]
fn full_list_rejects_the_batch_intact() {
    let slab = Slab::new(16, 6);
    let list = CentralFreeList::new(2);
    list.push(slab.batch(0..2)).expect("room");
    list.push(slab.batch(2..4)).expect("room");
    let back = list.push(slab.batch(4..6)).expect_err("full");
    assert_eq!(slab.indices(back), [4, 5]);
    assert_eq!(list.batches(), 2);
    assert_eq!(list.stats().full_rejections, 1);
    let popped = list.pop().expect("non-empty");
    list.push(slab.batch(4..6)).expect("room after a pop");
    let mut all = slab.indices(popped);
    all.extend(slab.drain(&list));
    slab.assert_exactly_once(all);
}

#[test]
fn capacity_is_clamped_and_zero_rejects_everything() {
    assert_eq!(CentralFreeList::new(usize::MAX).capacity(), MAX_BATCHES);
    assert_eq!(CentralFreeList::new(7).capacity(), 7);
    let slab = Slab::new(16, 1);
    let list = CentralFreeList::new(0);
    let back = list.push(slab.batch(0..1)).expect_err("capacity 0");
    slab.assert_exactly_once(slab.indices(back));
}

#[test]
#[cfg_attr(miri, ignore = "65 536 blocks: too slow under Miri")]
fn batch_too_long_to_pack_is_rejected() {
    let n = MAX_BATCH_LEN as usize + 1;
    let slab = Slab::new(16, n);
    let list = CentralFreeList::new(4);
    let back = list
        .push(slab.batch(0..n))
        .expect_err("length does not fit 16 bits");
    assert_eq!(back.len() as usize, n);
    assert_eq!(list.stats().full_rejections, 1);
    let (first, rest) = back.split_first();
    let rest = rest.expect("more than one block");
    assert_eq!(rest.len(), MAX_BATCH_LEN);
    list.push(rest).expect("MAX_BATCH_LEN blocks fit");
    let mut all = vec![slab.index(first)];
    all.extend(slab.drain(&list));
    slab.assert_exactly_once(all);
}

#[test]
fn take_all_empties_the_list_and_uncounts() {
    let slab = Slab::new(64, 10);
    let mut list = CentralFreeList::new(8);
    let chain = list.take_all();
    assert!(chain.is_empty());
    assert_eq!((chain.len(), chain.blocks()), (0, 0));
    drop(chain);
    for (a, b) in [(0, 1), (1, 4), (4, 10)] {
        list.push(slab.batch(a..b)).expect("room");
    }
    let chain = list.take_all();
    assert_eq!((chain.len(), chain.blocks()), (3, 10));
    assert_eq!(list.batches(), 0);
    assert_eq!(
        list.audit(),
        CentralAudit {
            batches: 0,
            blocks: 0
        }
    );
    assert!(list.pop().is_none());
    let batches: Vec<Vec<usize>> = chain.map(|b| slab.indices(b)).collect();
    assert_eq!(batches, [vec![4, 5, 6, 7, 8, 9], vec![1, 2, 3], vec![0]]);
    let s = list.stats();
    assert_eq!((s.pushes, s.taken), (3, 3));
    assert_eq!(list.batches() as u64, s.pushes - s.pops - s.taken);
    // The list works after being drained.
    list.push(slab.batch(0..10)).expect("room");
    slab.assert_exactly_once(slab.drain(&list));
}

#[test]
#[should_panic(expected = "C3")]
fn audit_catches_a_corrupted_length() {
    let slab = Slab::new(16, 4);
    let mut list = CentralFreeList::new(4);
    list.push(slab.batch(0..4)).expect("room");
    // SAFETY: simulates a bug: the test still owns the slab memory and no operation
    // is running on the list.
    unsafe { set_link_word(slab.block(0), pack(ptr::null_mut(), 3)) };
    let _ = list.audit();
}

/// 4 threads push and pop batches of mixed lengths, scribbling over the blocks they
/// hold as users would, one of them also draining with `take_all`; afterwards every
/// block is found exactly once and the counters agree.
#[test]
fn concurrent_push_pop_take_all_keep_every_block_once() {
    const THREADS: usize = 4;
    // Miri (whose data-race detector checks the block-word accesses loom cannot see)
    // runs a shorter version.
    const PER_THREAD: usize = if cfg!(miri) { 64 } else { 512 };
    const ROUNDS: usize = if cfg!(miri) { 400 } else { 20_000 };
    let slab = Slab::new(16, THREADS * PER_THREAD);
    let mut list = CentralFreeList::new(if cfg!(miri) { 6 } else { 24 });
    let list_ref = &list;
    let slab_ref = &slab;
    let start = &std::sync::Barrier::new(THREADS);
    let mut held: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    // This thread's blocks, in batches of 1..=32.
                    let mut mine: Vec<Batch> = Vec::new();
                    let (mut at, end) = (t * PER_THREAD, (t + 1) * PER_THREAD);
                    let mut len = 1 + t;
                    while at < end {
                        let to = (at + len).min(end);
                        mine.push(slab_ref.batch(at..to));
                        at = to;
                        len = len % 32 + 1;
                    }
                    start.wait();
                    // xorshift64: pop or push at random, so the list's length
                    // random-walks between empty and full.
                    let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (t as u64 + 1);
                    for round in 0..ROUNDS {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if rng.is_multiple_of(2) || mine.is_empty() {
                            if let Some(b) = list_ref.pop() {
                                mine.push(slab_ref.scribble(b));
                            }
                        } else if let Some(b) = mine.pop()
                            && let Err(b) = list_ref.push(b)
                        {
                            mine.insert(0, b);
                        }
                        if t == 0 && round % (ROUNDS / 10) == ROUNDS / 10 - 1 {
                            mine.extend(list_ref.take_all());
                        }
                    }
                    mine.into_iter()
                        .flat_map(|b| slab_ref.indices(b))
                        .collect::<Vec<usize>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker panicked"))
            .collect()
    });
    let audit = list.audit();
    let s = list.stats();
    assert_eq!(audit.batches as u64, s.pushes - s.pops - s.taken, "C5");
    assert!(s.pushes > 0 && s.pops > 0 && s.taken > 0);
    let drained = slab.drain(&list);
    assert_eq!(drained.len(), audit.blocks);
    held.extend(drained);
    assert_eq!(held.len(), slab.len());
    slab.assert_exactly_once(held);
}
