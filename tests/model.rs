//! Model tests.
//!
//! * `store_matches_hashmap`: random insert / get / get_mut / remove / compact sequences
//!   on one `Store` against a `HashMap`, including stale-handle answers (proptest).
//! * `heap_matches_model_*`: the differential model of a whole heap (issue 9): raw
//!   handles, pins, fixed blocks and four stores on one heap, against a plain model, with
//!   budgeted compaction passes interleaved with frees, trims and reuse of whole spans.
//! * `planned_target_reused_*`: issue 9's reproduction of defect 1, literally.

use std::alloc::Layout;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::size_class::{self, MAX_SMALL, SPAN_UNIT};
use tidyheap::{
    Budget, CompactionObserver, Handle, HandleError, Heap, HeapConfig, MoveEvent, PinGuard,
    RawHandle, Store,
};

#[derive(Debug, Clone)]
enum Op {
    Insert(Vec<u8>),
    Get(usize),
    Mutate(usize, u8),
    Remove(usize),
    Compact(usize),
    CompactFull,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Insert),
        3 => any::<usize>().prop_map(Op::Get),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::Mutate(i, b)),
        3 => any::<usize>().prop_map(Op::Remove),
        1 => (0usize..64).prop_map(Op::Compact),
        1 => Just(Op::CompactFull),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_hashmap(ops in proptest::collection::vec(op(), 1..200)) {
        let store: Store<Vec<u8>> = Store::new();
        let mut model: HashMap<Handle<Vec<u8>>, Vec<u8>> = HashMap::new();
        // Every handle ever issued, live or stale, in issue order.
        let mut issued: Vec<Handle<Vec<u8>>> = Vec::new();
        for op in ops {
            match op {
                Op::Insert(v) => {
                    let h = store.insert(v.clone());
                    prop_assert!(!model.contains_key(&h), "a live handle was reissued");
                    model.insert(h, v);
                    issued.push(h);
                }
                Op::Get(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    let got = store.get(h).map(|r| r.clone());
                    prop_assert_eq!(got.as_ref(), model.get(&h));
                }
                Op::Mutate(i, b) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    match (store.get_mut(h), model.get_mut(&h)) {
                        (Some(mut v), Some(m)) => { v.push(b); m.push(b); }
                        (None, None) => {}
                        (got, want) => prop_assert!(false, "get_mut {:?} vs model {:?}", got.is_some(), want.is_some()),
                    }
                }
                Op::Remove(i) if !issued.is_empty() => {
                    let h = issued[i % issued.len()];
                    prop_assert_eq!(store.remove(h), model.remove(&h));
                }
                Op::Compact(n) => { store.heap().compact(Budget::blocks(n)); }
                Op::CompactFull => { store.heap().compact_full(); }
                _ => {}
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (h, v) in &model {
            prop_assert_eq!(&*store.get(*h).unwrap(), v);
        }
        let live: u64 = model.len() as u64 * core::mem::size_of::<Vec<u8>>() as u64;
        prop_assert_eq!(store.heap().stats().movable.live_bytes(), live);
    }
}

// ---------------------------------------------------------------------------------------
// The differential model of the whole heap (issue 9).
//
// One heap, long seeded random sequences of every operation a game does to it, checked
// against a plain model after every step that could disturb memory. The model is:
//
// * raw handles: handle → expected bytes (+ the pin, if pinned: its address must hold);
// * fixed blocks: pointer → layout and expected bytes (a fresh random pattern each);
// * one model per `Store<T>` on the same heap: handle → expected value;
// * graveyards of freed handles, which must never resolve again.
//
// Compaction passes are interleaved with frees of whole spans, `trim`s and bursts of
// allocations of other classes and kinds, so spans named by a live compaction plan get
// emptied, released and re-initialised between two passes of the plan (the bug class of
// issue 9, defect 1). After every pass every byte of the model is compared; after other
// steps a random sample. At quiescence (periodically and at the end) `stats`, `walk` and
// `fragmentation` must agree exactly with the model's live blocks and bytes.
//
// Step counts: `TIDYHEAP_MODEL_STEPS` (per seed and arena count; default short, so
// `cargo test` stays quick); `.ci/run` runs a long version in release.
// ---------------------------------------------------------------------------------------

/// Steps per run, from `TIDYHEAP_MODEL_STEPS`.
fn model_steps() -> usize {
    std::env::var("TIDYHEAP_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 400 } else { 3000 })
}

/// Seeds per arena count, from `TIDYHEAP_MODEL_SEEDS` (default 2 in debug builds, 3 in
/// release).
fn model_seeds() -> u64 {
    std::env::var("TIDYHEAP_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 2 } else { 3 })
}

/// Compared against fresh handles' bytes (a `memcmp`, cheap in debug builds too).
static ZEROS: [u8; 4096] = [0; 4096];

/// Sizes that many requests share, so emptied spans get reused by other classes and kinds.
const HOT_SIZES: [usize; 8] = [16, 32, 48, 64, 96, 128, 256, 1024];

/// A request size: 0 B – 3 MiB, weighted toward small.
fn random_size(rng: &mut SmallRng, big_ok: bool) -> usize {
    match rng.gen_range(0..100) {
        0..40 => rng.gen_range(0..=128),
        40..65 => HOT_SIZES[rng.gen_range(0..HOT_SIZES.len())],
        65..85 => rng.gen_range(129..=4096),
        85..95 => rng.gen_range(4097..=MAX_SMALL),
        95..99 if big_ok => rng.gen_range(MAX_SMALL + 1..=1 << 20),
        99 if big_ok => rng.gen_range((1 << 20) + 1..=3 << 20),
        _ => rng.gen_range(0..=64),
    }
}

/// An alignment: 1 – 64 KiB, mostly small.
fn random_align(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..100) {
        0..75 => 1 << rng.gen_range(0..=4),
        75..95 => 1 << rng.gen_range(5..=12),
        _ => 1 << rng.gen_range(13..=16),
    }
}

fn random_bytes(rng: &mut SmallRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// A budget of a random kind: blocks 1..=6, bytes, time, a mix, or unlimited.
fn random_budget(rng: &mut SmallRng) -> Budget {
    match rng.gen_range(0..12) {
        0..5 => Budget::blocks(rng.gen_range(1..=6)),
        5 | 6 => Budget::bytes(rng.gen_range(0..=1 << 16)),
        7 | 8 => Budget::time(Duration::from_micros(rng.gen_range(0..300))),
        9 => Budget::blocks(rng.gen_range(1..=6))
            .with_bytes(rng.gen_range(0..=1 << 14))
            .with_time(Duration::from_micros(rng.gen_range(0..300))),
        _ => Budget::UNLIMITED,
    }
}

/// A value type stored in a `Store` by the model.
trait Value: Clone + PartialEq + core::fmt::Debug + Send + Sync + 'static {
    fn random(rng: &mut SmallRng) -> Self;
    fn mutate(&mut self, rng: &mut SmallRng);
}

impl Value for u64 {
    fn random(rng: &mut SmallRng) -> Self {
        rng.r#gen()
    }
    fn mutate(&mut self, rng: &mut SmallRng) {
        *self = self.rotate_left(7) ^ rng.r#gen::<u64>();
    }
}

impl Value for [u8; 200] {
    fn random(rng: &mut SmallRng) -> Self {
        let mut a = [0u8; 200];
        rng.fill(&mut a[..]);
        a
    }
    fn mutate(&mut self, rng: &mut SmallRng) {
        let (a, b) = (rng.gen_range(0..200), rng.gen_range(0..200));
        let (lo, hi) = (a.min(b), a.max(b));
        rng.fill(&mut self[lo..=hi]);
    }
}

impl Value for Vec<u8> {
    fn random(rng: &mut SmallRng) -> Self {
        let n = if rng.gen_ratio(1, 20) {
            rng.gen_range(0..20_000)
        } else {
            rng.gen_range(0..300)
        };
        random_bytes(rng, n)
    }
    fn mutate(&mut self, rng: &mut SmallRng) {
        match rng.gen_range(0..3) {
            0 => {
                let n = rng.gen_range(1..64);
                self.extend(random_bytes(rng, n));
            }
            1 => self.truncate(self.len() / 2),
            _ => rng.fill(&mut self[..]),
        }
    }
}

impl Value for String {
    fn random(rng: &mut SmallRng) -> Self {
        let n = rng.gen_range(0..80);
        (0..n)
            .map(|_| match rng.gen_range(0..10) {
                0 => 'é',
                1 => '漢',
                _ => char::from(rng.gen_range(b' '..=b'~')),
            })
            .collect()
    }
    fn mutate(&mut self, rng: &mut SmallRng) {
        if rng.gen_ratio(1, 4) {
            self.clear();
        }
        let extra = String::random(rng);
        self.push_str(&extra);
    }
}

/// The part of the model that depends on a store's value type.
trait StoreModel {
    /// A random store operation (insert, get, get_mut, remove, try forms).
    fn op(&mut self, rng: &mut SmallRng, live: &mut HashSet<RawHandle>) -> String;
    /// Every value compared with the model.
    fn check_all(&self);
    /// `n` random values compared with the model.
    fn check_some(&self, rng: &mut SmallRng, n: usize);
    /// Freed handles never resolve; handles of other owners never resolve here.
    fn check_stale(&self, rng: &mut SmallRng, foreign: &[RawHandle]);
    /// Live (blocks, requested bytes) in the pools.
    fn live(&self) -> (usize, usize);
    /// A random live handle, for cross-owner checks.
    fn any_raw(&self, rng: &mut SmallRng) -> Option<RawHandle>;
    /// The address of a random live value.
    fn any_addr(&self, rng: &mut SmallRng) -> Option<usize>;
    /// Removes every value whose block starts in `[lo, hi)`; returns how many.
    fn remove_in(&mut self, lo: usize, hi: usize, live: &mut HashSet<RawHandle>) -> usize;
    /// Removes each value with probability `p` (a level unloading).
    fn remove_some(&mut self, rng: &mut SmallRng, p: f64, live: &mut HashSet<RawHandle>);
    /// Inserts `n` values at once (a level loading).
    fn burst(&mut self, rng: &mut SmallRng, n: usize, live: &mut HashSet<RawHandle>);
}

struct TypedModel<T: Value> {
    name: &'static str,
    store: Store<T>,
    live: Vec<(Handle<T>, T)>,
    grave: Vec<Handle<T>>,
}

const GRAVE_MAX: usize = 512;

fn bury<H>(grave: &mut Vec<H>, h: H, rng: &mut SmallRng) {
    if grave.len() < GRAVE_MAX {
        grave.push(h);
    } else {
        let i = rng.gen_range(0..GRAVE_MAX);
        grave[i] = h;
    }
}

impl<T: Value> TypedModel<T> {
    fn new(name: &'static str, heap: &Arc<Heap>) -> Self {
        Self {
            name,
            store: Store::new_in(heap.clone()),
            live: Vec::new(),
            grave: Vec::new(),
        }
    }

    fn insert(&mut self, rng: &mut SmallRng, live: &mut HashSet<RawHandle>) -> Handle<T> {
        let v = T::random(rng);
        let h = self.store.insert(v.clone());
        assert!(
            live.insert(h.raw()),
            "{}: insert returned {h:?}, which is live already",
            self.name
        );
        self.live.push((h, v));
        h
    }

    fn remove_at(&mut self, i: usize, live: &mut HashSet<RawHandle>) {
        let (h, want) = self.live.swap_remove(i);
        let got = self.store.remove(h);
        assert_eq!(
            got.as_ref(),
            Some(&want),
            "{}: remove({h:?}) gave the wrong value",
            self.name
        );
        live.remove(&h.raw());
        self.grave.push(h);
        if self.grave.len() > GRAVE_MAX {
            self.grave.swap_remove(0);
        }
    }

    /// A read scope (issue 10): values and addresses of all live values match the model and
    /// stay put through a compaction pass run inside the scope (the compactor skips the
    /// store); stale handles stay stale; writers and removers answer `Busy`.
    fn scoped(&self, rng: &mut SmallRng) -> String {
        let view = self.store.read();
        // Every live value: the pass below may pick any of their spans.
        let sample: Vec<usize> = (0..self.live.len()).collect();
        let seen: Vec<*const T> = sample
            .iter()
            .map(|&i| {
                let (h, want) = &self.live[i];
                let got = view
                    .get(*h)
                    .unwrap_or_else(|| panic!("{}: scoped get({h:?}) of a live handle", self.name));
                assert_eq!(got, want, "{}: scoped value of {h:?} differs", self.name);
                core::ptr::from_ref(got)
            })
            .collect();
        if let Some(&g) = self.grave.last() {
            assert!(
                view.get(g).is_none(),
                "{}: stale {g:?} resolves in a scope",
                self.name
            );
        }
        let h = self.live[sample[0]].0;
        assert_eq!(self.store.try_get_mut(h).err(), Some(HandleError::Busy));
        assert_eq!(self.store.try_remove(h).err(), Some(HandleError::Busy));
        self.store
            .heap()
            .compact(Budget::blocks(rng.gen_range(64..512)));
        for (&i, &p) in sample.iter().zip(&seen) {
            let (h, want) = &self.live[i];
            let got = view.get(*h).expect("still live");
            assert!(
                core::ptr::eq(got, p),
                "{}: {h:?} moved while a read scope was open",
                self.name
            );
            assert_eq!(got, want, "{}: {h:?} changed in a scope", self.name);
        }
        format!("{}.read() + compact", self.name)
    }

    fn addr(&self, h: Handle<T>) -> usize {
        let r = self.store.get(h).expect("live");
        let a: *const T = &*r;
        a as usize
    }

    fn check_one(&self, i: usize) {
        let (h, want) = &self.live[i];
        let got = self.store.get(*h);
        assert!(
            got.is_some(),
            "{}: live handle {h:?} does not resolve",
            self.name
        );
        assert_eq!(
            &*got.expect("checked"),
            want,
            "{}: value of {h:?} differs from the model",
            self.name
        );
    }
}

impl<T: Value> StoreModel for TypedModel<T> {
    fn op(&mut self, rng: &mut SmallRng, live: &mut HashSet<RawHandle>) -> String {
        let n = self.live.len();
        match rng.gen_range(0..100) {
            0..40 => {
                let h = self.insert(rng, live);
                format!("{}.insert → {h:?}", self.name)
            }
            40..55 if n > 0 => {
                let i = rng.gen_range(0..n);
                self.check_one(i);
                format!("{}.get({:?})", self.name, self.live[i].0)
            }
            55..70 if n > 0 => {
                let i = rng.gen_range(0..n);
                let (h, want) = &mut self.live[i];
                let mut got = self
                    .store
                    .get_mut(*h)
                    .unwrap_or_else(|| panic!("{}: get_mut({h:?}) of a live handle", self.name));
                assert_eq!(&*got, want, "{}: value of {h:?} differs", self.name);
                want.mutate(rng);
                got.clone_from(want);
                format!("{}.get_mut({h:?})", self.name)
            }
            70..73 if n > 0 => self.scoped(rng),
            73..75 if n > 0 => {
                let i = rng.gen_range(0..n);
                let (h, want) = &self.live[i];
                let g = self.store.try_get(*h).unwrap_or_else(|e| {
                    panic!("{}: try_get({h:?}) with no guard held: {e:?}", self.name)
                });
                assert_eq!(&*g, want, "{}: try_get({h:?}) value differs", self.name);
                format!("{}.try_get({h:?})", self.name)
            }
            75..100 if n > 0 => {
                let i = rng.gen_range(0..n);
                let h = self.live[i].0;
                self.remove_at(i, live);
                format!("{}.remove({h:?})", self.name)
            }
            _ => String::from("store: nothing to do"),
        }
    }

    fn check_all(&self) {
        assert_eq!(self.store.len(), self.live.len(), "{}: len", self.name);
        for i in 0..self.live.len() {
            self.check_one(i);
        }
    }

    fn check_some(&self, rng: &mut SmallRng, n: usize) {
        if self.live.is_empty() {
            return;
        }
        for _ in 0..n {
            self.check_one(rng.gen_range(0..self.live.len()));
        }
    }

    fn check_stale(&self, rng: &mut SmallRng, foreign: &[RawHandle]) {
        for _ in 0..4.min(self.grave.len()) {
            let h = self.grave[rng.gen_range(0..self.grave.len())];
            assert!(
                self.store.get(h).is_none(),
                "{}: stale {h:?} resolves",
                self.name
            );
            assert!(
                !self.store.contains(h),
                "{}: contains stale {h:?}",
                self.name
            );
            assert!(
                self.store.try_get_mut(h).is_err(),
                "{}: try_get_mut of stale {h:?} succeeds",
                self.name
            );
            assert_eq!(
                self.store.remove(h),
                None,
                "{}: stale {h:?} removed a value",
                self.name
            );
        }
        for &raw in foreign {
            let h = Handle::<T>::from_raw(raw);
            assert!(
                self.store.get(h).is_none(),
                "{}: foreign handle {raw:?} resolves in this store",
                self.name
            );
            assert!(
                !self.store.contains(h),
                "{}: contains foreign {raw:?}",
                self.name
            );
        }
    }

    fn live(&self) -> (usize, usize) {
        (self.live.len(), self.live.len() * size_of::<T>())
    }

    fn any_raw(&self, rng: &mut SmallRng) -> Option<RawHandle> {
        (!self.live.is_empty()).then(|| self.live[rng.gen_range(0..self.live.len())].0.raw())
    }

    fn any_addr(&self, rng: &mut SmallRng) -> Option<usize> {
        let (h, _) = self.live.get(rng.gen_range(0..self.live.len().max(1)))?;
        Some(self.addr(*h))
    }

    fn remove_in(&mut self, lo: usize, hi: usize, live: &mut HashSet<RawHandle>) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.live.len() {
            let a = self.addr(self.live[i].0);
            if (lo..hi).contains(&a) {
                self.remove_at(i, live);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    fn remove_some(&mut self, rng: &mut SmallRng, p: f64, live: &mut HashSet<RawHandle>) {
        let mut i = 0;
        while i < self.live.len() {
            if rng.gen_bool(p) {
                self.remove_at(i, live);
            } else {
                i += 1;
            }
        }
    }

    fn burst(&mut self, rng: &mut SmallRng, n: usize, live: &mut HashSet<RawHandle>) {
        for _ in 0..n {
            self.insert(rng, live);
        }
    }
}

/// A raw handle of the model.
struct Raw<'h> {
    h: RawHandle,
    bytes: Vec<u8>,
    /// Outside the pools (above 256 KiB or aligned above 4 KiB): moved by
    /// `relocate_large` only.
    large: bool,
    pin: Option<PinGuard<'h>>,
}

/// A fixed block of the model.
struct Fixed {
    ptr: NonNull<u8>,
    layout: Layout,
    bytes: Vec<u8>,
}

impl Fixed {
    fn check(&self, what: &str) {
        // SAFETY: the block is live (the model owns it) and `bytes.len()` long; nobody
        // else writes it.
        let got = unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.bytes.len()) };
        if got != &self.bytes[..] {
            let first = got
                .iter()
                .zip(&self.bytes)
                .position(|(a, b)| a != b)
                .expect("they differ");
            panic!(
                "{what}: fixed block {:p} ({:?}) corrupted at byte {first}: {:#04x} instead of {:#04x}",
                self.ptr, self.layout, got[first], self.bytes[first]
            );
        }
    }
}

/// Remembers the latest moves: (from, to, class size).
#[derive(Default)]
struct RecentMoves(std::sync::Mutex<VecDeque<(usize, usize, usize)>>);

impl CompactionObserver for RecentMoves {
    fn on_move(&self, e: &MoveEvent) {
        if e.class_size > MAX_SMALL {
            return; // a large block relocated by `relocate_large`: no plan involved
        }
        let mut q = self.0.lock().expect("observer lock");
        if q.len() == 64 {
            q.pop_front();
        }
        q.push_back((e.from, e.to, e.class_size));
    }
}

/// The whole model.
struct Model<'h> {
    seed: u64,
    step: usize,
    /// The last operations, printed if the run fails.
    log: VecDeque<String>,
    heap: &'h Arc<Heap>,
    rng: SmallRng,
    raws: Vec<Raw<'h>>,
    raw_grave: Vec<RawHandle>,
    fixed: Vec<Fixed>,
    stores: Vec<Box<dyn StoreModel + 'h>>,
    /// Every live handle of the heap (raw and store), to catch a handle issued twice.
    live: HashSet<RawHandle>,
    /// Blocks and bytes the compactor moved, summed over the run.
    moved: (u64, u64),
    relocated: u64,
    /// Recent moves, from an observer: where the live plan's targets and sources are.
    moves: Arc<RecentMoves>,
    /// Whether the last pass left its plan unfinished.
    plan_live: bool,
}

/// Soft cap on raw handles + fixed blocks: above it, allocations turn into frees.
const LIVE_CAP: usize = 5000;

/// Soft cap on the model's bytes: above it, large requests become small ones.
const BYTES_CAP: usize = 40 << 20;

impl<'h> Model<'h> {
    fn new(heap: &'h Arc<Heap>, seed: u64) -> Self {
        let moves = Arc::new(RecentMoves::default());
        heap.subscribe(moves.clone());
        Self {
            moves,
            plan_live: false,
            seed,
            step: 0,
            log: VecDeque::new(),
            heap,
            rng: SmallRng::seed_from_u64(seed),
            raws: Vec::new(),
            raw_grave: Vec::new(),
            fixed: Vec::new(),
            stores: vec![
                Box::new(TypedModel::<u64>::new("u64", heap)),
                Box::new(TypedModel::<[u8; 200]>::new("[u8; 200]", heap)),
                Box::new(TypedModel::<Vec<u8>>::new("Vec<u8>", heap)),
                Box::new(TypedModel::<String>::new("String", heap)),
            ],
            live: HashSet::new(),
            moved: (0, 0),
            relocated: 0,
        }
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 40 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {s}", self.step));
    }

    fn model_bytes(&self) -> usize {
        self.raws.iter().map(|r| r.bytes.len()).sum::<usize>()
            + self.fixed.iter().map(|f| f.bytes.len()).sum::<usize>()
    }

    // ---- raw handles ----

    fn alloc_raw(&mut self, size: usize, align: usize) {
        let h = self
            .heap
            .alloc_handle(size, align)
            .unwrap_or_else(|e| panic!("alloc_handle({size}, {align}): {e:?}"));
        assert!(self.live.insert(h), "alloc_handle returned live {h:?}");
        let bytes = random_bytes(&mut self.rng, size);
        {
            let mut w = self.heap.write(h).expect("fresh handle");
            assert_eq!(w.len(), size, "fresh handle length");
            assert!(
                w.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()]),
                "alloc_handle is zero-filled"
            );
            assert_eq!(w.as_ptr() as usize % align, 0, "alignment {align}");
            w.copy_from_slice(&bytes);
        }
        let large = size_class::class_for(size, align).is_none();
        self.raws.push(Raw {
            h,
            bytes,
            large,
            pin: None,
        });
    }

    fn check_raw(&self, i: usize, what: &str) {
        let r = &self.raws[i];
        let g = self
            .heap
            .read(r.h)
            .unwrap_or_else(|e| panic!("{what}: live raw {:?} does not resolve: {e:?}", r.h));
        assert_eq!(g.len(), r.bytes.len(), "{what}: length of {:?}", r.h);
        if *g != r.bytes[..] {
            let first = g
                .iter()
                .zip(&r.bytes)
                .position(|(a, b)| a != b)
                .expect("they differ");
            panic!(
                "{what}: raw handle {:?} ({} B at {:p}) corrupted at byte {first}: {:#04x} instead of {:#04x}",
                r.h,
                r.bytes.len(),
                g.as_ptr(),
                g[first],
                r.bytes[first]
            );
        }
        if let Some(p) = &r.pin {
            assert_eq!(
                g.as_ptr(),
                p.as_ptr().as_ptr().cast_const(),
                "{what}: pinned {:?} moved",
                r.h
            );
        }
    }

    /// Frees raw handle `i` (a pinned one must answer `Busy` and stay).
    fn free_raw(&mut self, i: usize) -> bool {
        if self.raws[i].pin.is_some() {
            assert_eq!(
                self.heap.try_free_handle(self.raws[i].h),
                Err(HandleError::Busy),
                "try_free_handle of a pinned handle"
            );
            self.check_raw(i, "after a refused free");
            return false;
        }
        self.check_raw(i, "before free");
        let r = self.raws.swap_remove(i);
        self.heap
            .free_handle(r.h)
            .unwrap_or_else(|e| panic!("free_handle({:?}): {e:?}", r.h));
        assert!(self.live.remove(&r.h));
        bury(&mut self.raw_grave, r.h, &mut self.rng);
        true
    }

    fn raw_addr(&self, i: usize) -> usize {
        self.heap.read(self.raws[i].h).expect("live").as_ptr() as usize
    }

    // ---- fixed blocks ----

    fn alloc_fixed(&mut self, size: usize, align: usize) {
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        let ptr = self
            .heap
            .alloc(layout)
            .unwrap_or_else(|e| panic!("alloc({layout:?}): {e:?}"));
        assert_eq!(ptr.as_ptr() as usize % align, 0, "fixed alignment {align}");
        let bytes = random_bytes(&mut self.rng, size);
        // SAFETY: the fresh block holds `size` writable bytes.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), size) };
        self.fixed.push(Fixed { ptr, layout, bytes });
    }

    fn free_fixed(&mut self, i: usize) {
        let f = self.fixed.swap_remove(i);
        f.check("before dealloc");
        // SAFETY: allocated by this heap with `f.layout`, freed once.
        unsafe { self.heap.dealloc(f.ptr, f.layout) };
    }

    // ---- checks ----

    fn check_everything(&self, what: &str) {
        for i in 0..self.raws.len() {
            self.check_raw(i, what);
        }
        for f in &self.fixed {
            f.check(what);
        }
        for s in &self.stores {
            s.check_all();
        }
    }

    fn check_sample(&mut self) {
        for _ in 0..3 {
            if !self.raws.is_empty() {
                let i = self.rng.gen_range(0..self.raws.len());
                self.check_raw(i, "sample");
            }
            if !self.fixed.is_empty() {
                self.fixed[self.rng.gen_range(0..self.fixed.len())].check("sample");
            }
        }
        for s in &self.stores {
            s.check_some(&mut self.rng, 1);
        }
    }

    fn check_stale(&mut self) {
        for _ in 0..4.min(self.raw_grave.len()) {
            let h = self.raw_grave[self.rng.gen_range(0..self.raw_grave.len())];
            assert_eq!(
                self.heap.read(h).err(),
                Some(HandleError::Stale),
                "stale {h:?} reads"
            );
            assert!(self.heap.try_write(h).is_err(), "stale {h:?} writes");
            assert!(self.heap.pin(h).is_err(), "stale {h:?} pins");
            assert!(!self.heap.contains_handle(h), "contains stale {h:?}");
            assert_eq!(
                self.heap.free_handle(h),
                Err(HandleError::Stale),
                "double free of {h:?}"
            );
            assert_eq!(
                self.heap.relocate_large(h),
                Err(HandleError::Stale),
                "relocate_large of stale {h:?}"
            );
        }
        // Handles of stores never resolve as raw handles, nor in another store.
        let foreign: Vec<Option<RawHandle>> = {
            let rng = &mut self.rng;
            self.stores.iter().map(|s| s.any_raw(rng)).collect()
        };
        for &h in foreign.iter().flatten() {
            assert_eq!(
                self.heap.read(h).err(),
                Some(HandleError::Stale),
                "a store's handle {h:?} reads as a raw handle"
            );
            assert!(!self.heap.contains_handle(h));
        }
        for (k, s) in self.stores.iter().enumerate() {
            let mut others: Vec<RawHandle> = foreign
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != k)
                .filter_map(|(_, &h)| h)
                .collect();
            if !self.raws.is_empty() {
                others.push(self.raws[self.rng.gen_range(0..self.raws.len())].h);
            }
            s.check_stale(&mut self.rng, &others);
        }
    }

    /// `stats`, `walk` and `fragmentation` against the model, exactly. Trims first, so
    /// cached blocks are home.
    fn check_accounting(&mut self, what: &str) {
        self.heap.trim();
        let (mut fixed_n, mut fixed_b, mut mov_n, mut mov_b) = (0usize, 0usize, 0usize, 0usize);
        let (mut large_n, mut large_b) = (0usize, 0usize);
        for f in &self.fixed {
            if size_class::class_for(f.layout.size(), f.layout.align()).is_some() {
                fixed_n += 1;
                fixed_b += f.layout.size();
            } else {
                large_n += 1;
                large_b += f.layout.size();
            }
        }
        for r in &self.raws {
            if r.large {
                large_n += 1;
                large_b += r.bytes.len();
            } else {
                mov_n += 1;
                mov_b += r.bytes.len();
            }
        }
        for s in &self.stores {
            let (n, b) = s.live();
            mov_n += n;
            mov_b += b;
        }
        let stats = self.heap.stats();
        let walk = self.heap.walk();
        let frag = self.heap.fragmentation();
        let ctx = format!("{what}: stats {stats:?}\nwalk {walk:?}");
        assert_eq!(
            stats.fixed.live_blocks(),
            fixed_n as u64,
            "fixed live blocks; {ctx}"
        );
        assert_eq!(
            stats.fixed.live_bytes(),
            fixed_b as u64,
            "fixed live bytes; {ctx}"
        );
        assert_eq!(
            stats.movable.live_blocks(),
            mov_n as u64,
            "movable live blocks; {ctx}"
        );
        assert_eq!(
            stats.movable.live_bytes(),
            mov_b as u64,
            "movable live bytes; {ctx}"
        );
        assert_eq!(stats.large.live_blocks, large_n, "large live blocks; {ctx}");
        assert_eq!(
            stats.large.live_bytes, large_b,
            "large live bytes (requested bytes, not mappings); {ctx}"
        );
        assert_eq!(
            walk.out_blocks,
            [fixed_n, mov_n],
            "blocks out of their spans; {ctx}"
        );
        assert_eq!(
            walk.movable_live_blocks, mov_n,
            "walk: movable live blocks; {ctx}"
        );
        assert_eq!(
            walk.movable_live_bytes, mov_b,
            "walk: movable live bytes; {ctx}"
        );
        assert_eq!(
            walk.committed_bytes, stats.committed_bytes,
            "committed; {ctx}"
        );
        assert_eq!(walk.spans, stats.spans, "spans; {ctx}");
        assert_eq!(frag.live_bytes, mov_b, "fragmentation live bytes; {ctx}");
        assert_eq!(
            frag.committed_bytes,
            frag.live_bytes
                + frag.internal_bytes
                + frag.external_bytes
                + frag.metadata_bytes
                + frag.tail_bytes,
            "fragmentation parts; {frag:?}"
        );
        assert!(
            frag.committed_bytes <= stats.committed_bytes,
            "{frag:?}; {ctx}"
        );
        assert_eq!(
            frag.classes.iter().map(|c| c.live_blocks).sum::<usize>(),
            mov_n,
            "fragmentation: live blocks per class; {frag:?}"
        );
    }

    // ---- compaction ----

    fn compact(&mut self, budget: Budget) {
        let r = self.heap.compact(budget);
        assert!(r.ran, "no other pass runs on this heap");
        if let Some(b) = budget.blocks {
            assert!(r.blocks_moved <= b as u64, "{r:?} over {budget:?}");
        }
        if let Some(b) = budget.bytes {
            assert!(r.bytes_moved <= b as u64, "{r:?} over {budget:?}");
        }
        self.moved.0 += r.blocks_moved;
        self.moved.1 += r.bytes_moved;
        self.plan_live = !r.complete;
        self.note(format!(
            "compact({budget:?}) → moved {} ({} B), complete {}",
            r.blocks_moved, r.bytes_moved, r.complete
        ));
        self.check_everything("after a compaction pass");
    }

    // ---- the random step ----

    fn step(&mut self) {
        let big_ok = self.model_bytes() < BYTES_CAP;
        let many = self.raws.len() + self.fixed.len() > LIVE_CAP;
        let op = self.rng.gen_range(0..1000);
        match op {
            // Raw handles.
            0..130 if !many => {
                let (size, align) = (
                    random_size(&mut self.rng, big_ok),
                    random_align(&mut self.rng),
                );
                self.alloc_raw(size, align);
                self.note(format!("alloc_handle({size}, {align})"));
            }
            130..240 if !self.raws.is_empty() => {
                let i = self.rng.gen_range(0..self.raws.len());
                let h = self.raws[i].h;
                let freed = self.free_raw(i);
                self.note(format!("free_handle({h:?}) → {freed}"));
            }
            240..290 if !self.raws.is_empty() => {
                let i = self.rng.gen_range(0..self.raws.len());
                self.check_raw(i, "read");
                self.note(format!("read({:?})", self.raws[i].h));
            }
            290..350 if !self.raws.is_empty() => {
                let i = self.rng.gen_range(0..self.raws.len());
                let n = self.raws[i].bytes.len();
                let (a, b) = (self.rng.gen_range(0..=n), self.rng.gen_range(0..=n));
                let (lo, hi) = (a.min(b), a.max(b));
                let fresh = random_bytes(&mut self.rng, hi - lo);
                let r = &mut self.raws[i];
                r.bytes[lo..hi].copy_from_slice(&fresh);
                self.heap.write(r.h).expect("live")[lo..hi].copy_from_slice(&fresh);
                let h = r.h;
                self.note(format!("write({h:?}, {lo}..{hi})"));
            }
            350..380 if !self.raws.is_empty() => {
                let i = self.rng.gen_range(0..self.raws.len());
                let heap: &'h Heap = self.heap;
                let r = &mut self.raws[i];
                if r.pin.take().is_none() {
                    r.pin = Some(heap.pin(r.h).expect("live"));
                }
                let (h, pinned) = (r.h, r.pin.is_some());
                self.note(format!("pin({h:?}) → {pinned}"));
            }
            380..400 if !self.raws.is_empty() => {
                let large: Vec<usize> = (0..self.raws.len())
                    .filter(|&i| self.raws[i].large)
                    .collect();
                let i = if !large.is_empty() && self.rng.gen_bool(0.8) {
                    large[self.rng.gen_range(0..large.len())]
                } else {
                    self.rng.gen_range(0..self.raws.len())
                };
                let (h, large, pinned) = (
                    self.raws[i].h,
                    self.raws[i].large,
                    self.raws[i].pin.is_some(),
                );
                let got = self.heap.relocate_large(h);
                // A pool block answers `false` whatever its guards; a pinned large one `Busy`.
                let want = if pinned && large {
                    Err(HandleError::Busy)
                } else {
                    Ok(large)
                };
                assert_eq!(
                    got, want,
                    "relocate_large({h:?}), large {large}, pinned {pinned}"
                );
                if got == Ok(true) {
                    self.relocated += 1;
                }
                self.check_raw(i, "after relocate_large");
                self.note(format!("relocate_large({h:?}) → {got:?}"));
            }
            // Fixed blocks.
            400..480 if !many => {
                let (size, align) = (
                    random_size(&mut self.rng, big_ok),
                    random_align(&mut self.rng),
                );
                self.alloc_fixed(size, align);
                self.note(format!("alloc({size}, {align})"));
            }
            480..550 if !self.fixed.is_empty() => {
                let i = self.rng.gen_range(0..self.fixed.len());
                let l = self.fixed[i].layout;
                self.free_fixed(i);
                self.note(format!("dealloc({l:?})"));
            }
            // Stores.
            550..750 => {
                let k = self.rng.gen_range(0..self.stores.len());
                let s = self.stores[k].op(&mut self.rng, &mut self.live);
                self.note(s);
            }
            // Levels: bursts in, spans out.
            750..765 if !many => {
                let size = HOT_SIZES[self.rng.gen_range(0..HOT_SIZES.len())];
                let n = self.rng.gen_range(50..1000);
                for _ in 0..n {
                    self.alloc_raw(size, 16);
                }
                self.note(format!("burst: {n} handles of {size} B"));
            }
            765..780 if !many => {
                let size = HOT_SIZES[self.rng.gen_range(0..HOT_SIZES.len())];
                let n = self.rng.gen_range(20..400);
                for _ in 0..n {
                    self.alloc_fixed(size, 16);
                }
                self.note(format!("burst: {n} fixed blocks of {size} B"));
            }
            780..790 if !many => {
                let k = self.rng.gen_range(0..self.stores.len());
                let n = self.rng.gen_range(50..800);
                self.stores[k].burst(&mut self.rng, n, &mut self.live);
                self.note(format!("burst: {n} values into store {k}"));
            }
            790..805 => self.free_span_mates(),
            805..820 => self.attack_plan(),
            820..825 => {
                let p = self.rng.gen_range(0.2..0.9);
                self.unload(p);
                self.note(format!("unload: each block freed with p = {p:.2}"));
            }
            // Trim and compaction.
            825..850 => {
                let n = self.heap.trim();
                self.note(format!("trim → {n} B"));
            }
            850..960 => {
                let b = random_budget(&mut self.rng);
                self.compact(b);
            }
            960..975 if !self.raws.is_empty() => {
                // A pass while this thread reads a block: the block must stay put.
                let i = self.rng.gen_range(0..self.raws.len());
                let h = self.raws[i].h;
                let g = self.heap.read(h).expect("live");
                let at = g.as_ptr();
                let b = random_budget(&mut self.rng);
                let r = self.heap.compact(b);
                assert!(r.ran);
                self.plan_live = !r.complete;
                assert_eq!(&*g, &self.raws[i].bytes[..], "guarded block changed");
                drop(g);
                assert_eq!(
                    self.heap.read(h).expect("live").as_ptr(),
                    at,
                    "a read-guarded block moved"
                );
                self.moved.0 += r.blocks_moved;
                self.note(format!("compact({b:?}) holding a read guard on {h:?}"));
                self.check_everything("after a pass with a guard held");
            }
            975..985 => {
                let r = self.heap.compact_full();
                self.moved.0 += r.blocks_moved;
                self.plan_live = false;
                self.note(format!("compact_full → moved {}", r.blocks_moved));
                self.check_everything("after compact_full");
            }
            985..1000 => self.check_stale(),
            _ => {
                // The chosen operation had nothing to act on: free something instead.
                if !self.raws.is_empty() {
                    let i = self.rng.gen_range(0..self.raws.len());
                    self.free_raw(i);
                } else if !self.fixed.is_empty() {
                    let i = self.rng.gen_range(0..self.fixed.len());
                    self.free_fixed(i);
                }
                self.note(String::from("free (fallback)"));
            }
        }
        self.check_sample();
    }

    /// Frees every raw handle and store value in the 64 KiB span unit of a random live
    /// block: empties that span (pinned blocks excepted), wherever a plan put it.
    fn free_span_mates(&mut self) {
        let k = self.rng.gen_range(0..=self.stores.len());
        let addr = if k == self.stores.len() {
            let small: Vec<usize> = (0..self.raws.len())
                .filter(|&i| !self.raws[i].large)
                .collect();
            if small.is_empty() {
                return;
            }
            let i = small[self.rng.gen_range(0..small.len())];
            self.raw_addr(i)
        } else {
            match self.stores[k].any_addr(&mut self.rng) {
                Some(a) => a,
                None => return,
            }
        };
        let lo = addr & !(SPAN_UNIT - 1);
        let freed = self.free_region(lo, lo + SPAN_UNIT);
        self.note(format!("free the span unit {lo:#x}: {freed} blocks"));
    }

    /// Frees every raw handle and store value whose block starts in `[lo, hi)`.
    fn free_region(&mut self, lo: usize, hi: usize) -> usize {
        let mut freed = 0;
        let mut i = 0;
        while i < self.raws.len() {
            let a = self.raw_addr(i);
            if !self.raws[i].large && (lo..hi).contains(&a) && self.free_raw(i) {
                freed += 1;
            } else {
                i += 1;
            }
        }
        for s in &mut self.stores {
            freed += s.remove_in(lo, hi, &mut self.live);
        }
        freed
    }

    /// The adversary of a live plan: empties the span a recent move went to (a planned
    /// target) or came from (a planned source), maybe trims, and reuses the memory at
    /// once for fixed blocks or another class, before the plan's next pass.
    fn attack_plan(&mut self) {
        if !self.plan_live {
            // Fragment a hot class (three spans' worth, 85 % freed again), then start a
            // plan: one block moves, the rest waits for later passes.
            let size = HOT_SIZES[self.rng.gen_range(0..HOT_SIZES.len())];
            let n =
                (3 * size_class::class_of(size).map_or(64, size_class::blocks_per_span)).min(3000);
            let first = self.raws.len();
            for _ in 0..n {
                self.alloc_raw(size, 16);
            }
            let mut i = first;
            while i < self.raws.len() {
                if !(self.rng.gen_bool(0.85) && self.free_raw(i)) {
                    i += 1;
                }
            }
            self.note(format!("fragment: {n} handles of {size} B, 85 % freed"));
            self.compact(Budget::blocks(1));
        }
        if !self.plan_live {
            return;
        }
        let (from, to, class_size) = {
            let recent = self.moves.0.lock().expect("observer lock");
            if recent.is_empty() {
                return;
            }
            let i = if self.rng.gen_bool(0.8) {
                recent.len() - 1
            } else {
                self.rng.gen_range(0..recent.len())
            };
            recent[i]
        };
        let addr = if self.rng.gen_bool(0.7) { to } else { from };
        // The span holding `addr` lies within one span length of its unit, either side.
        let span = size_class::class_of(class_size).map_or(SPAN_UNIT, size_class::span_bytes);
        let unit = addr & !(SPAN_UNIT - 1);
        let freed = self.free_region(unit + SPAN_UNIT - span, unit + span);
        let trimmed = if self.rng.gen_bool(0.9) {
            self.heap.trim()
        } else {
            0
        };
        // Reuse by the same class (other kind), a neighbour class, or a hot size; enough
        // blocks to need fresh spans.
        let size = match self.rng.gen_range(0..3) {
            0 => class_size,
            1 => class_size.saturating_sub(16).max(16),
            _ => HOT_SIZES[self.rng.gen_range(0..HOT_SIZES.len())],
        };
        let per_span = size_class::class_of(size).map_or(64, size_class::blocks_per_span);
        let n = self.rng.gen_range(per_span / 2..=2 * per_span).min(2500);
        let before = (self.raws.len(), self.fixed.len());
        let reuse = match self.rng.gen_range(0..2) {
            0 => {
                for _ in 0..n {
                    self.alloc_fixed(size, 16);
                }
                "fixed blocks"
            }
            _ => {
                for _ in 0..n {
                    self.alloc_raw(size, 16);
                }
                "handles"
            }
        };
        let (lo, hi) = (unit + SPAN_UNIT - span, unit + span);
        let landed = (before.0..self.raws.len())
            .filter(|&i| (lo..hi).contains(&self.raw_addr(i)))
            .count()
            + self.fixed[before.1..]
                .iter()
                .filter(|f| (lo..hi).contains(&(f.ptr.as_ptr() as usize)))
                .count();
        self.note(format!(
            "attack: freed {freed} blocks around {addr:#x} ({class_size} B class), trim → {trimmed} B, {n} {reuse} of {size} B, {landed} landed there"
        ));
        if self.rng.gen_bool(0.5) {
            let b = Budget::blocks(self.rng.gen_range(1..=6));
            self.compact(b);
        }
    }

    /// Frees each block with probability `p`.
    fn unload(&mut self, p: f64) {
        let mut i = 0;
        while i < self.raws.len() {
            if self.rng.gen_bool(p) && self.free_raw(i) {
                continue;
            }
            i += 1;
        }
        let mut i = 0;
        while i < self.fixed.len() {
            if self.rng.gen_bool(p) {
                self.free_fixed(i);
            } else {
                i += 1;
            }
        }
        for s in &mut self.stores {
            s.remove_some(&mut self.rng, p, &mut self.live);
        }
    }

    /// Frees everything, then checks the heap is back to nothing.
    fn finish(&mut self) {
        self.check_everything("at the end");
        self.check_accounting("at the end");
        for r in &mut self.raws {
            r.pin = None;
        }
        let r = self.heap.compact_full();
        self.moved.0 += r.blocks_moved;
        self.check_everything("after the last compact_full");
        self.check_accounting("after the last compact_full");
        self.unload(1.0);
        assert!(self.raws.is_empty() && self.fixed.is_empty());
        self.check_accounting("with everything freed");
        self.heap.compact_full();
        self.heap.trim();
        let (stats, walk) = (self.heap.stats(), self.heap.walk());
        assert_eq!(stats.committed_bytes, 0, "committed bytes left: {stats:?}");
        assert_eq!(walk.spans, 0, "spans left: {walk:?}");
        assert_eq!(
            stats.large.mapped_bytes, 0,
            "large mappings left: {stats:?}"
        );
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "model failed: seed {}, arenas {}, step {}; last operations:",
                self.seed,
                self.heap.arena_count(),
                self.step
            );
            for l in &self.log {
                eprintln!("  {l}");
            }
            // The heap may be corrupt: leak what would touch it on the way out.
            for r in &mut self.raws {
                core::mem::forget(r.pin.take());
            }
            core::mem::forget(core::mem::take(&mut self.stores));
        }
    }
}

/// Runs the model for `steps` steps on a fresh heap with `arenas` arenas.
fn run_model(seed: u64, arenas: usize, steps: usize) -> (u64, u64) {
    let heap = Arc::new(Heap::with_config(HeapConfig {
        arenas,
        ..HeapConfig::DEFAULT
    }));
    let mut m = Model::new(&heap, seed);
    while m.step < steps {
        m.step();
        m.step += 1;
        if m.step.is_multiple_of(250) {
            m.check_stale();
            m.check_accounting("periodic quiescence");
        }
    }
    m.finish();
    (m.moved.0, m.relocated)
}

fn run_seeds(arenas: usize, base: u64) {
    let steps = model_steps();
    let mut moved = 0;
    let mut relocated = 0;
    for s in 0..model_seeds() {
        let (m, r) = run_model(base + s, arenas, steps);
        moved += m;
        relocated += r;
    }
    // The model must exercise what it checks.
    assert!(moved > 0, "no block moved in {} steps", steps);
    assert!(
        relocated > 0 || steps < 2000,
        "no large block relocated in {steps} steps"
    );
}

#[test]
fn heap_matches_model_one_arena() {
    run_seeds(1, 0x5EED_0001);
}

#[test]
fn heap_matches_model_two_arenas() {
    run_seeds(2, 0x5EED_1001);
}

#[test]
fn heap_matches_model_many_arenas() {
    run_seeds(7, 0x5EED_2001);
}

// ---------------------------------------------------------------------------------------
// Issue 9, defect 1, literally: a span planned as a compaction target is emptied,
// trimmed and re-initialised between two budgeted passes of the plan.
// ---------------------------------------------------------------------------------------

/// 6000 64 B handles on one arena; keeps one whole span plus every 100th block, runs
/// `compact(Budget::blocks(1))` (a plan is built; one block moves into target T), frees
/// every handle in T and trims. Returns the heap, the kept handles with their bytes, and
/// T's span unit.
fn plan_then_empty_target() -> (Heap, Vec<(RawHandle, Vec<u8>)>, usize) {
    let heap = Heap::with_config(HeapConfig {
        arenas: 1,
        ..HeapConfig::DEFAULT
    });
    let unit = |a: usize| a & !(SPAN_UNIT - 1);
    let addr = |h: RawHandle| heap.read(h).expect("live").as_ptr() as usize;
    let hs: Vec<(RawHandle, Vec<u8>)> = (0..6000u32)
        .map(|i| {
            let h = heap.alloc_handle(64, 16).expect("alloc");
            let bytes: Vec<u8> = (0..64u32).map(|j| (i * 7 + j) as u8).collect();
            heap.write(h).expect("live").copy_from_slice(&bytes);
            (h, bytes)
        })
        .collect();
    let whole = unit(addr(hs[0].0));
    let mut kept = Vec::new();
    for (i, (h, b)) in hs.into_iter().enumerate() {
        if unit(addr(h)) == whole || i % 100 == 0 {
            kept.push((h, b));
        } else {
            heap.free_handle(h).expect("live");
        }
    }
    let before: Vec<usize> = kept.iter().map(|(h, _)| addr(*h)).collect();
    let r = heap.compact(Budget::blocks(1));
    assert_eq!(r.blocks_moved, 1, "{r:?}");
    assert!(
        !r.complete,
        "the plan must stay active for the next pass: {r:?}"
    );
    let moved: Vec<usize> = kept
        .iter()
        .zip(&before)
        .filter(|((h, _), a)| addr(*h) != **a)
        .map(|((h, _), _)| addr(*h))
        .collect();
    assert_eq!(moved.len(), 1, "exactly one block moved");
    let target = unit(moved[0]);
    let mut in_target = 0;
    kept.retain(|(h, _)| {
        if unit(addr(*h)) == target {
            heap.free_handle(*h).expect("live");
            in_target += 1;
            false
        } else {
            true
        }
    });
    assert!(in_target >= 1);
    heap.trim();
    (heap, kept, target)
}

fn check_kept(heap: &Heap, kept: &[(RawHandle, Vec<u8>)], what: &str) {
    for (h, b) in kept {
        let g = heap.read(*h).expect("live");
        assert_eq!(g.len(), b.len(), "{what}: length of {h:?}");
        assert_eq!(&*g, &b[..], "{what}: bytes of {h:?}");
    }
}

#[test]
fn planned_target_reused_by_fixed_blocks_between_passes() {
    let (heap, kept, target) = plan_then_empty_target();
    let layout = Layout::from_size_align(64, 16).expect("layout");
    let fixed: Vec<(NonNull<u8>, u8)> = (0..200u8)
        .map(|i| {
            let p = heap.alloc(layout).expect("alloc");
            // SAFETY: 64 writable bytes.
            unsafe { p.as_ptr().write_bytes(i ^ 0xA5, 64) };
            (p, i ^ 0xA5)
        })
        .collect();
    let reused = fixed
        .iter()
        .filter(|(p, _)| p.as_ptr() as usize & !(SPAN_UNIT - 1) == target)
        .count();
    eprintln!("{reused} of 200 fixed blocks landed in the planned target span");
    heap.compact(Budget::blocks(8));
    for (i, &(p, v)) in fixed.iter().enumerate() {
        // SAFETY: the block is live and 64 bytes long.
        let got = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
        assert!(
            got.iter().all(|&b| b == v),
            "fixed block {i} at {p:p} overwritten by the compactor: {got:?}"
        );
    }
    check_kept(&heap, &kept, "after the second pass");
    heap.compact_full();
    check_kept(&heap, &kept, "after compact_full");
    for (p, _) in fixed {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { heap.dealloc(p, layout) };
    }
    for (h, _) in &kept {
        heap.free_handle(*h).expect("live");
    }
    heap.trim();
    let (stats, walk) = (heap.stats(), heap.walk());
    assert_eq!(
        (stats.fixed.live_bytes(), stats.movable.live_bytes()),
        (0, 0)
    );
    assert_eq!(walk.out_blocks, [0, 0], "{walk:?}");
    assert_eq!(stats.committed_bytes, 0, "{stats:?}");
}

#[test]
fn planned_target_reused_by_another_class_between_passes() {
    let (heap, kept, target) = plan_then_empty_target();
    let small: Vec<(RawHandle, Vec<u8>)> = (0..400u32)
        .map(|i| {
            let h = heap.alloc_handle(32, 16).expect("alloc");
            let bytes: Vec<u8> = (0..32u32).map(|j| (i * 13 + j + 1) as u8).collect();
            heap.write(h).expect("live").copy_from_slice(&bytes);
            (h, bytes)
        })
        .collect();
    let reused = small
        .iter()
        .filter(|(h, _)| {
            heap.read(*h).expect("live").as_ptr() as usize & !(SPAN_UNIT - 1) == target
        })
        .count();
    eprintln!("{reused} of 400 32 B handles landed in the planned target span");
    heap.compact(Budget::blocks(8));
    check_kept(&heap, &small, "32 B handles after the second pass");
    check_kept(&heap, &kept, "64 B handles after the second pass");
    heap.compact_full();
    check_kept(&heap, &small, "32 B handles after compact_full");
    check_kept(&heap, &kept, "64 B handles after compact_full");
    heap.trim();
    let walk = heap.walk();
    assert_eq!(
        walk.movable_live_blocks,
        kept.len() + small.len(),
        "{walk:?}"
    );
    assert_eq!(
        walk.movable_live_bytes,
        kept.len() * 64 + small.len() * 32,
        "{walk:?}"
    );
    for (h, _) in kept.iter().chain(&small) {
        heap.free_handle(*h).expect("live");
    }
    heap.trim();
    assert_eq!(heap.stats().committed_bytes, 0);
}
