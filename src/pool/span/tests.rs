//! Unit tests of `Span`: the home marks, `detach_home` and `put_indices` against a model.

use super::*;
use crate::size_class::{NUM_CLASSES, SPAN_UNIT};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::collections::BTreeSet;

/// Random takes, puts (one block, or a batch with `put_indices`) and detaches on one
/// movable span against a model of its home blocks: `detach_home` must hand over
/// exactly the home blocks, lowest address last, and keep `out` exact; `take` must
/// never return a detached block.
#[test]
fn detach_home_matches_a_model() {
    for (seed, size) in [(1u64, 64usize), (2, 48), (3, 1024), (4, 16), (5, 4096)] {
        let class = size_class::class_for(size, 16).expect("a pool class");
        let bytes = size_class::span_bytes(class);
        let layout = Layout::from_size_align(bytes, SPAN_UNIT).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        let table_layout = Layout::from_size_align(table_bytes(bytes), 4096).unwrap();
        // SAFETY: non-zero size.
        let table = unsafe { alloc_zeroed(table_layout) };
        assert!(!table.is_null());
        let (committed, movable) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // SAFETY: both areas are ours, mapped, page-aligned and used by this span only;
        // the counters outlive `span`.
        let span = unsafe { Span::new(base.addr(), bytes, table.addr(), 0, &committed, &movable) };
        // In the page map, as a heap's spans are: `hardened` checks every free-list
        // link it decodes against the span there.
        crate::pool::pagemap::set(base.addr(), bytes, ptr::from_ref(&span).cast_mut())
            .expect("page map");
        // SAFETY: no other thread sees `span`, which stands in for the arena lock;
        // the region is ours and mapped; the span is empty. (The blocks below that
        // say "as above" rely on the same.)
        unsafe { span.init(class, SpanKind::Movable) };
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut home = BTreeSet::new();
        let mut out: Vec<usize> = Vec::new();
        let mut run: Vec<u32> = Vec::with_capacity(span.capacity());
        for _ in 0..4000 {
            match rng.gen_range(0..11) {
                0..=4 => {
                    // SAFETY: as above.
                    if let Some(b) = unsafe { span.take() } {
                        let i = span.block_index(b.as_ptr().addr()).unwrap();
                        assert!(!out.contains(&i), "block {i} handed out twice");
                        home.remove(&i);
                        out.push(i);
                    }
                }
                // A batch of moved blocks' old copies: live (their entries hold an
                // owner), home at once.
                9 if !out.is_empty() => {
                    let n = rng.gen_range(1..=out.len().min(20));
                    let mut batch: Vec<u32> = Vec::with_capacity(n);
                    for _ in 0..n {
                        batch.push(out.swap_remove(rng.gen_range(0..out.len())) as u32);
                    }
                    batch.sort_unstable();
                    for &i in &batch {
                        // SAFETY: as above; `i` is an out block, made live here.
                        unsafe { span.meta(i as usize) }.set_owner(1, Ordering::Relaxed);
                    }
                    // SAFETY: as above; the blocks are out, live, strictly ascending.
                    unsafe { span.put_indices(&batch) };
                    for &i in &batch {
                        // SAFETY: as above.
                        assert_eq!(unsafe { span.meta(i as usize) }.owner(Ordering::Relaxed), 0);
                        home.insert(i as usize);
                    }
                }
                5..=8 if !out.is_empty() => {
                    let i = out.swap_remove(rng.gen_range(0..out.len()));
                    // SAFETY: as above; `i` is out and unused.
                    unsafe { span.put(span.block(i)) };
                    home.insert(i);
                }
                _ => {
                    run.clear();
                    // SAFETY: as above.
                    let n = unsafe { span.detach_home(&mut run) }.expect("room");
                    assert_eq!(n, home.len());
                    let want: Vec<u32> = home.iter().rev().map(|&i| i as u32).collect();
                    assert_eq!(run, want, "home blocks, lowest address last");
                    out.extend(home.iter().copied());
                    home.clear();
                }
            }
            // SAFETY: as above.
            assert_eq!(unsafe { span.out() }, out.len());
            // SAFETY: as above.
            assert_eq!(unsafe { span.state().free_count } as usize, home.len());
        }
        // Too little room: nothing is taken.
        run.clear();
        // SAFETY: as above.
        unsafe { span.detach_home(&mut run) }.expect("room");
        out.extend(home.iter().copied());
        if let Some(&i) = out.first() {
            // SAFETY: as above.
            unsafe { span.put(span.block(i)) };
            let mut none: Vec<u32> = Vec::new();
            // SAFETY: as above.
            assert_eq!(unsafe { span.detach_home(&mut none) }, None);
            // SAFETY: as above.
            assert_eq!(unsafe { span.state().free_count }, 1);
        }
        crate::pool::pagemap::set(base.addr(), bytes, ptr::null_mut()).expect("page map");
        // Every page carved or written is counted, and nothing else.
        assert_eq!(committed.load(Ordering::Relaxed), span.committed_bytes());
        assert_eq!(movable.load(Ordering::Relaxed), span.committed_bytes());
        // SAFETY: allocated above with `layout`; `span` is not used again.
        unsafe { dealloc(base, layout) };
        // SAFETY: allocated above with `table_layout`; `span` is not used again.
        unsafe { dealloc(table, table_layout) };
    }
}

#[test]
fn geometry_fits_and_aligns() {
    for c in 0..NUM_CLASSES {
        for kind in SpanKind::ALL {
            let cap = capacity_of(c, kind);
            let size = size_class::size(c);
            assert!(cap >= 1, "class {c} {kind:?}");
            assert!(cap * size <= size_class::span_bytes(c));
            if kind == SpanKind::Movable {
                assert!(
                    cap * META_BYTES <= table_bytes(size_class::span_bytes(c)),
                    "the side table fits its area"
                );
                assert_eq!(
                    cap,
                    size_class::movable_capacity(size, size_class::span_bytes(c)),
                    "class {c}: span sizing sees the real movable capacity"
                );
            }
        }
    }
}

/// A span's region and side table, heap-allocated, with its counters.
struct TestSpan {
    base: *mut u8,
    table: *mut u8,
    layout: Layout,
    table_layout: Layout,
    committed: Box<AtomicUsize>,
    movable: Box<AtomicUsize>,
}

impl TestSpan {
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes, SPAN_UNIT).unwrap();
        let table_layout = Layout::from_size_align(table_bytes(bytes), 4096).unwrap();
        // SAFETY: non-zero sizes.
        let (base, table) = unsafe { (alloc_zeroed(layout), alloc_zeroed(table_layout)) };
        assert!(!base.is_null() && !table.is_null());
        Self {
            base,
            table,
            layout,
            table_layout,
            committed: Box::new(AtomicUsize::new(0)),
            movable: Box::new(AtomicUsize::new(0)),
        }
    }

    fn span(&self) -> Span {
        // SAFETY: both areas are ours, mapped, page-aligned and used by this span only;
        // the counters are boxed and outlive it (the span is dropped first).
        unsafe {
            Span::new(
                self.base.addr(),
                self.layout.size(),
                self.table.addr(),
                0,
                &self.committed,
                &self.movable,
            )
        }
    }
}

impl Drop for TestSpan {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; no span uses them any more.
        unsafe {
            dealloc(self.base, self.layout);
            dealloc(self.table, self.table_layout);
        }
    }
}

/// A span retained with stale side-table entries (owners, home marks and short
/// lengths of one class) is re-initialised for another class of the same span length,
/// then for fixed blocks, then for movable blocks again: every block it hands out reads
/// no owner and its own class size until its owner writes, and the pages counted are
/// exactly those its carving and entries reached.
#[test]
fn a_reused_span_reads_no_stale_entry() {
    let (a, b) = (
        size_class::class_for(48, 16).unwrap(),
        size_class::class_for(64, 16).unwrap(),
    );
    let bytes = size_class::span_bytes(a);
    assert_eq!(size_class::span_bytes(b), bytes);
    let mem = TestSpan::new(bytes);
    let span = mem.span();
    let fill = |class: usize| {
        // SAFETY: the test stands in for the arena lock; the span is empty.
        unsafe { span.init(class, SpanKind::Movable) };
        let mut got = Vec::new();
        // SAFETY: as above.
        while let Some(blk) = unsafe { span.take() } {
            let i = span.block_index(blk.as_ptr().addr()).unwrap();
            // SAFETY: movable, initialised, `i < capacity`.
            let m = unsafe { span.meta(i) };
            assert_eq!(m.owner(Ordering::Relaxed), 0, "class {class}: stale owner");
            assert_eq!(m.len(), span.block_size(), "class {class}: stale length");
            assert!(!m.is_home(), "class {class}: stale home mark");
            m.set_len(span.block_size() - 7);
            m.set_owner(i as u32 + 1, Ordering::Relaxed);
            got.push(blk);
        }
        assert_eq!(got.len(), span.capacity());
        for (n, blk) in got.into_iter().enumerate() {
            let i = span.block_index(blk.as_ptr().addr()).unwrap();
            // SAFETY: as above.
            let m = unsafe { span.meta(i) };
            if n % 3 != 0 {
                m.set_owner(0, Ordering::Relaxed);
                // SAFETY: as above; the block is out and unused.
                unsafe { span.put(blk) };
            }
        }
        // The rest keep their owners and lengths: stale entries for the next life. The
        // counters cover every page written.
        assert_eq!(
            mem.committed.load(Ordering::Relaxed),
            span.committed_bytes()
        );
    };
    fill(a);
    // Some entries home, some cleared by a detach, some with owners.
    let mut home = Vec::with_capacity(span.capacity());
    // SAFETY: as above.
    unsafe { span.detach_home(&mut home) }.unwrap();
    for &i in home.iter().step_by(2) {
        // SAFETY: as above; the block was detached and is unused.
        unsafe { span.put(span.block(i as usize)) };
    }
    fill(b);
    // A fixed life carves and writes blocks but no entries.
    // SAFETY: as above: the test treats the span as empty.
    unsafe { span.init(a, SpanKind::Fixed) };
    // SAFETY: as above.
    while let Some(blk) = unsafe { span.take() } {
        // SAFETY: a carved block of the region, ours.
        unsafe { blk.as_ptr().write_bytes(0xff, span.block_size()) };
    }
    fill(a);
    assert_eq!(
        span.committed_bytes(),
        bytes + pages_for(span.capacity() * 6) * 4096,
        "the region and the 48 B class's table (the larger one)"
    );
}

/// The home set of one span against a model (`BTreeSet`) over long random sequences of
/// single and batched takes (home blocks lowest address first, then carving in address
/// order), puts in random order, free tails uncarved (movable), and retirements with a
/// re-initialisation for another kind: `free_count`, `out`, the bitmap, and (movable) the side-table home marks stay
/// exact, no block is handed out twice, and putting a home block again is refused.
#[test]
fn home_set_matches_a_model() {
    let mut uncarved = 0;
    for (seed, size) in [(11u64, 16usize), (12, 64), (13, 48), (14, 176), (15, 1024)] {
        let class = size_class::class_for(size, 16).expect("a pool class");
        let bytes = size_class::span_bytes(class);
        let base = crate::os::reserve(bytes, SPAN_UNIT).expect("a span region");
        let table_layout = Layout::from_size_align(table_bytes(bytes), 4096).unwrap();
        // SAFETY: non-zero size.
        let table = unsafe { alloc_zeroed(table_layout) };
        assert!(!table.is_null());
        let (committed, movable) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // SAFETY: both areas are ours, mapped, page-aligned and used by this span only;
        // the counters outlive `span`.
        let span = unsafe {
            Span::new(
                base.as_ptr().addr(),
                bytes,
                table.addr(),
                0,
                &committed,
                &movable,
            )
        };
        crate::pool::pagemap::set(span.base, bytes, ptr::from_ref(&span).cast_mut())
            .expect("page map");
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut kind = SpanKind::Fixed;
        // SAFETY: no other thread sees `span`, which stands in for the arena lock; the
        // region is ours and mapped; the span is empty. (The blocks below that say "as
        // above" rely on the same.)
        unsafe { span.init(class, kind) };
        let mut home = BTreeSet::new();
        let mut out: Vec<usize> = Vec::new();
        let mut carved = 0usize;
        for step in 0..20_000 {
            let cap = span.capacity();
            match rng.gen_range(0..20) {
                0..=7 => {
                    let want = if rng.gen_bool(0.3) {
                        1
                    } else {
                        rng.gen_range(1..=40)
                    };
                    let fresh_max = rng.gen_range(1..=40);
                    let mut got = Vec::new();
                    // SAFETY: as above.
                    let (n_home, n_fresh) = unsafe {
                        span.take_many(want, fresh_max, |b| {
                            got.push(span.block_index(b.as_ptr().addr()).unwrap())
                        })
                    };
                    assert_eq!(n_home + n_fresh, got.len());
                    let mut expect: Vec<usize> = home.iter().copied().take(want).collect();
                    assert_eq!(n_home, expect.len());
                    let fresh = (want - expect.len()).min(fresh_max).min(cap - carved);
                    assert_eq!(n_fresh, fresh);
                    expect.extend(carved..carved + fresh);
                    assert_eq!(
                        got, expect,
                        "seed {seed} step {step}: lowest home, then carve"
                    );
                    for i in &got {
                        home.remove(i);
                    }
                    carved += fresh;
                    out.extend(got);
                }
                8 => {
                    // SAFETY: as above.
                    let b = unsafe { span.take() };
                    let expect = home.first().copied().or((carved < cap).then_some(carved));
                    assert_eq!(
                        b.map(|b| span.block_index(b.as_ptr().addr()).unwrap()),
                        expect
                    );
                    if let Some(i) = expect {
                        if !home.remove(&i) {
                            carved += 1;
                        }
                        out.push(i);
                    }
                }
                9..=17 if !out.is_empty() => {
                    let i = out.swap_remove(rng.gen_range(0..out.len()));
                    // SAFETY: as above; `i` is out and unused.
                    unsafe { span.put(span.block(i)) };
                    assert!(home.insert(i));
                    // SAFETY: as above.
                    let st = unsafe { span.state() };
                    assert!(!st.home.insert(i), "a home block is refused a second time");
                }
                18 if kind == SpanKind::Movable && rng.gen_bool(0.5) => {
                    // The free tail goes back: the home blocks above the last out one
                    // are uncarved (if that frees a whole page).
                    let mut top = carved;
                    while top > 0 && home.contains(&(top - 1)) {
                        top -= 1;
                    }
                    // SAFETY: as above; a movable, initialised span.
                    if unsafe { span.uncarve_tail(false) } {
                        assert!(top < carved, "seed {seed} step {step}: nothing to uncarve");
                        uncarved += 1;
                        home.retain(|&i| i < top);
                        carved = top;
                    }
                }
                19 if rng.gen_range(0..20) == 0 => {
                    // Every block comes home in random order; the emptied span retires
                    // and serves again, maybe as the other kind (a fixed span's guard
                    // page goes up or down under `hardened`).
                    out.shuffle(&mut rng);
                    for i in out.drain(..) {
                        // SAFETY: as above; `i` is out and unused.
                        unsafe { span.put(span.block(i)) };
                        assert!(home.insert(i));
                    }
                    // SAFETY: as above.
                    assert_eq!(unsafe { span.out() }, 0);
                    assert_eq!(home.len(), carved);
                    kind = SpanKind::ALL[rng.gen_range(0..2)];
                    // SAFETY: as above; no block is out.
                    unsafe { span.init(class, kind) };
                    home.clear();
                    carved = 0;
                }
                _ => {}
            }
            // SAFETY: as above.
            let st = unsafe { span.state() };
            assert_eq!(st.free_count as usize, home.len());
            assert_eq!(st.carved as usize, carved);
            // SAFETY: as above.
            assert_eq!(unsafe { span.out() }, out.len());
            if step % 64 == 0 {
                for i in 0..span.capacity() {
                    assert_eq!(st.home.contains(i), home.contains(&i), "block {i}");
                    // An uncarved block's entry is stale until its carving clears it.
                    if kind == SpanKind::Movable && i < carved {
                        // SAFETY: as above; a movable span, `i < capacity`.
                        assert_eq!(unsafe { span.meta(i) }.is_home(), home.contains(&i));
                    }
                }
            }
        }
        // SAFETY: as above; a movable span lifts the guard page before the region goes.
        unsafe { span.init(class, SpanKind::Movable) };
        crate::pool::pagemap::set(span.base, bytes, ptr::null_mut()).expect("page map");
        // SAFETY: reserved above with this length; `span` is not used again.
        unsafe { crate::os::release(base, bytes) };
        // SAFETY: allocated above with this layout; `span` is not used again.
        unsafe { dealloc(table, table_layout) };
    }
    assert!(uncarved > 0, "some free tail went back");
}
