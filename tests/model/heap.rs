//! The differential model of a whole heap (issue 9): raw handles, pins, fixed blocks
//! and four stores on one heap against a plain model (`Model`), and `run_model`.

use super::stores::{StoreModel, TypedModel, bury};
use super::*;

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
pub(super) fn run_model(seed: u64, arenas: usize, steps: usize) -> (u64, u64) {
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
