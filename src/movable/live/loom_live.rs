//! Loom model of the pending live-count deltas (`movable::live`, `pool::span::live`):
//! an owner's pending `+1` against the compactor evacuating and re-initialising the
//! span, and a remover's pending `−1` on the target. Run with
//! `RUSTFLAGS="--cfg tidyheap_loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib -- loom_`.
//!
//! Span `S` starts in life 1 with one block, allocated by thread A, whose `+1` stays
//! pending in A's entry (loom runs the model's three threads without spin waits: the
//! steps that must come first happen before the spawns). The compactor (C) moves the block to span `T` (`S −1`,
//! `T +1`, directly, as `compact::moves` does), re-initialises the emptied `S` as life
//! 2 and allocates one block of it (`+1`). Meanwhile A evicts its entry, flushing the
//! `+1` of life 1, and B frees the moved block, recording `−1` for `T` in its own
//! entry. Whatever the interleaving, at the end `S` counts exactly its one block of
//! life 2 and `T` (word plus pending) counts none. Flushing without the life check
//! fails the first assertion.

use loom::sync::Arc;
use loom::thread;

use super::Entry;
use crate::pool::span::LiveCount;

const S: usize = 0x1000;
const T: usize = 0x2000;
const X: usize = 0x3000;

struct World {
    s: LiveCount,
    t: LiveCount,
    a: Entry,
    b: Entry,
}

fn flush_to(w: &World, span: usize, life: u32, delta: u32) {
    match span {
        S => {
            w.s.add(life, delta);
        }
        T => {
            w.t.add(life, delta);
        }
        _ => {}
    }
}

/// Records `delta` for `span` in `life` through entry `e`, as `PendingLive::record`.
fn record(w: &World, e: &Entry, span: usize, life: u32, delta: u32) {
    if !e.bump(span, life, delta) {
        e.replace(span, life, delta, |s, l, d| flush_to(w, s, l, d));
    }
}

#[test]
fn loom_live_delta_vs_evacuation_and_reinit() {
    loom::model(|| {
        let w = Arc::new(World {
            s: LiveCount::new(),
            t: LiveCount::new(),
            a: Entry::new(),
            b: Entry::new(),
        });
        w.s.reset(1);
        w.t.reset(1);
        // Thread A allocated S's block: its +1 is pending in A's entry. (Done before A
        // is spawned, so the block is published to the compactor by the spawn.)
        record(&w, &w.a, S, 1, 1);
        let owner = {
            let w = w.clone();
            // A block of another span evicts A's entry: the +1 of life 1 is flushed.
            thread::spawn(move || record(&w, &w.a, X, 1, 1))
        };
        // The compactor (this thread) moves the block from S to T.
        assert!(w.t.add(1, 1), "the target keeps its life");
        assert!(w.s.add(1, u32::MAX), "a scanned source keeps its life");
        let remover = {
            let w = w.clone();
            // B frees the moved block, now in T: its -1 stays pending in B's entry.
            thread::spawn(move || record(&w, &w.b, T, 1, u32::MAX))
        };
        // S is empty: re-initialised, then one block of its new life is allocated.
        w.s.reset(2);
        let ok = w.s.add(2, 1);
        assert!(ok, "{:?}", w.s.get());
        owner.join().unwrap();
        remover.join().unwrap();
        assert_eq!(w.s.get(), (2, 1), "a stale delta landed on the new life");
        let (life, count) = w.t.get();
        let pending = match w.b.read() {
            Some((T, l, d)) if l == life => d,
            _ => 0,
        };
        assert_eq!(count.wrapping_add(pending), 0, "T: word plus pending");
    });
}
