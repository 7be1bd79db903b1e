//! The part of the heap model that depends on a store's value type: `Value` (the
//! value types the model stores) and `TypedModel` (one store against its model).

use super::*;

/// A value type stored in a `Store` by the model.
pub(super) trait Value:
    Clone + PartialEq + core::fmt::Debug + Send + Sync + 'static
{
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
pub(super) trait StoreModel {
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

pub(super) struct TypedModel<T: Value> {
    name: &'static str,
    store: Store<T>,
    live: Vec<(Handle<T>, T)>,
    grave: Vec<Handle<T>>,
}

const GRAVE_MAX: usize = 512;

pub(super) fn bury<H>(grave: &mut Vec<H>, h: H, rng: &mut SmallRng) {
    if grave.len() < GRAVE_MAX {
        grave.push(h);
    } else {
        let i = rng.gen_range(0..GRAVE_MAX);
        grave[i] = h;
    }
}

impl<T: Value> TypedModel<T> {
    pub(super) fn new(name: &'static str, heap: &Arc<Heap>) -> Self {
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
