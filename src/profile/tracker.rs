//! The per-heap profiler: the hooks the entry layers call, sampling, stack capture.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::config::{MAX_FRAMES, ProfilingConfig, Sampling};
use super::exit;
use super::table::{Key, Record, Tables};

thread_local! {
    /// Set while this thread runs profiler code (capturing a stack, building a report):
    /// allocations it makes then are the profiler's own and are not recorded. Const and
    /// without a destructor, so it is usable inside the global allocator at any time,
    /// thread exit included.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread busy until dropped; `None` if it already is.
struct Busy;

impl Busy {
    #[inline]
    fn enter() -> Option<Busy> {
        // Not `then_some(Busy)`: that would build (and drop, clearing the flag) a
        // `Busy` on the nested path too.
        BUSY.try_with(|b| if b.replace(true) { None } else { Some(Busy) })
            .ok()
            .flatten()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // A const thread-local without destructor is always accessible.
        let _ = BUSY.try_with(|b| b.set(false));
    }
}

/// Runs `f` with this thread marked busy: nothing it allocates is recorded by any
/// profiler (blocks it frees are still looked up).
pub(crate) fn quietly<R>(f: impl FnOnce() -> R) -> R {
    let _busy = Busy::enter();
    f()
}

/// Buckets of the counting filter.
const FILTER_BUCKETS: usize = 1024;

/// A heap's profiler. Lives as long as the heap, at a stable address once it has
/// recorded anything (it may then be in the at-exit list).
///
/// # Locking
///
/// One lock over the tables. Code under it touches only the tables, whose memory
/// comes from the system allocator (module `table`): it never allocates or frees
/// through the Rust global allocator, so a hook that re-enters from there (the
/// profiled heap being [`Global`](crate::Global)) never finds its own thread holding
/// the lock. Stacks are captured before the lock is taken, and reports are built from
/// a copy made under it, after it is released.
pub(crate) struct Profiler {
    pub(crate) config: ProfilingConfig,
    /// Sampling state: allocations (`EveryNth`) or bytes (`EveryBytes`) seen so far.
    seen: AtomicU64,
    /// A counting filter over the keys in `tables.live`: bucket `b` counts the live
    /// records whose key hashes to `b`. A free whose bucket reads 0 has no record, so
    /// frees of unrecorded (sampled-out) blocks cost a hash and a load, no lock.
    /// Exact for a key's own free: its record was counted (under the lock) before the
    /// block was handed out, and the free happens after that hand-out.
    filter: [AtomicU32; FILTER_BUCKETS],
    tables: Mutex<Tables>,
    /// Whether this profiler is in the at-exit list.
    registered: AtomicBool,
}

/// A record taken out for a realloc, to be put back at the new address.
#[derive(Clone, Copy)]
pub(crate) struct Taken(Record);

impl Profiler {
    pub(crate) const fn new(config: ProfilingConfig) -> Self {
        Self {
            config,
            seen: AtomicU64::new(0),
            filter: [const { AtomicU32::new(0) }; FILTER_BUCKETS],
            tables: Mutex::new(Tables::new()),
            registered: AtomicBool::new(false),
        }
    }

    #[inline(always)]
    fn bucket(&self, key: Key) -> &AtomicU32 {
        &self.filter[(key.hash() >> 54) as usize % FILTER_BUCKETS]
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Tables> {
        // No code under the lock panics (table growth failures are counted, not
        // raised), but a poisoned lock must not take the allocator down either.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this allocation of `size` bytes is sampled.
    #[inline]
    fn sampled(&self, size: usize) -> bool {
        match self.config.sampling {
            Sampling::EveryAllocation => true,
            Sampling::EveryNth(n) => {
                n <= 1 || self.seen.fetch_add(1, Ordering::Relaxed).is_multiple_of(n)
            }
            Sampling::EveryBytes(n) => {
                let size = size as u64;
                if n <= 1 {
                    return size > 0;
                }
                let before = self.seen.fetch_add(size, Ordering::Relaxed);
                before / n != before.wrapping_add(size) / n
            }
        }
    }

    /// The hook after a raw-pointer allocation: `p` (null for a failed one) of `size`
    /// requested bytes.
    ///
    /// Sampling is decided here, before any thread-local access (a `__tls_get_addr`
    /// call from this library) or stack frame for the capture: an allocation of the
    /// profiler's own may so take a sample's turn, but it is still not recorded.
    #[inline(never)]
    pub(crate) fn on_alloc_ptr(&self, p: *mut u8, size: usize) {
        if !p.is_null() && self.sampled(size) {
            self.record(Key::Addr(p.addr()), size);
        }
    }

    /// The hook after a movable block's handle was issued.
    #[inline(never)]
    pub(crate) fn on_alloc_handle(&self, h: crate::RawHandle, size: usize) {
        if self.sampled(size) {
            self.record(Key::Handle(h), size);
        }
    }

    /// Records a sampled allocation, unless this thread is inside the profiler.
    #[cold]
    #[inline(never)]
    fn record(&self, key: Key, size: usize) {
        let Some(_busy) = Busy::enter() else {
            return;
        };
        let mut frames = [0usize; CAPTURED];
        let stack = capture(&mut frames, self.config.max_frames);
        let recorded = {
            let mut t = self.lock();
            let ok = t.insert(key, size, stack, self.config.sampling);
            if ok {
                self.bucket(key).fetch_add(1, Ordering::Relaxed);
            }
            ok
        };
        if recorded && !self.registered.swap(true, Ordering::Relaxed) {
            exit::register(self);
        }
    }

    /// The hook before a raw-pointer block is freed (before it can be reused).
    #[inline]
    pub(crate) fn on_free_ptr(&self, p: *mut u8) {
        self.on_free(Key::Addr(p.addr()));
    }

    /// The hook before a block keyed `key` is freed.
    #[inline]
    pub(crate) fn on_free(&self, key: Key) {
        if self.bucket(key).load(Ordering::Relaxed) != 0 {
            self.remove(key);
        }
    }

    #[inline(never)]
    fn remove(&self, key: Key) -> Option<Record> {
        let mut t = self.lock();
        let r = t.remove(key)?;
        self.bucket(key).fetch_sub(1, Ordering::Relaxed);
        Some(r)
    }

    /// The hook before a realloc of `p`: takes its record out (before the old address
    /// can be reused), to be put back by [`Profiler::after_realloc`].
    #[inline]
    pub(crate) fn before_realloc(&self, p: *mut u8) -> Option<Taken> {
        let key = Key::Addr(p.addr());
        if self.bucket(key).load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.take(key)
    }

    #[inline(never)]
    fn take(&self, key: Key) -> Option<Taken> {
        let mut t = self.lock();
        let r = t.live.remove(&key)?;
        self.bucket(key).fetch_sub(1, Ordering::Relaxed);
        Some(Taken(r))
    }

    /// The hook after a realloc: the record taken by [`Profiler::before_realloc`] moves
    /// to `p` (null: the realloc failed and the block stayed at `old`) with its new
    /// size. The allocation site stays the original one.
    #[inline]
    pub(crate) fn after_realloc(
        &self,
        taken: Option<Taken>,
        old: *mut u8,
        p: *mut u8,
        new_size: usize,
    ) {
        if let Some(taken) = taken {
            self.put(taken, old, p, new_size);
        }
    }

    #[inline(never)]
    fn put(&self, Taken(r): Taken, old: *mut u8, p: *mut u8, new_size: usize) {
        let (key, size) = if p.is_null() {
            (Key::Addr(old.addr()), r.size)
        } else {
            (Key::Addr(p.addr()), new_size)
        };
        let mut t = self.lock();
        let site = &mut t.sites[r.site as usize];
        site.live_bytes = site.live_bytes - r.size as u64 + size as u64;
        if t.live.try_reserve(1).is_err() {
            t.dropped += 1;
            let site = &mut t.sites[r.site as usize];
            site.live_blocks -= 1;
            site.live_bytes -= size as u64;
            return;
        }
        let new = Record { size, site: r.site };
        if let Some(stale) = t.live.insert(key, new) {
            // A missed free (see `Tables::insert`): the new record replaces it.
            let s = &mut t.sites[stale.site as usize];
            s.live_blocks -= 1;
            s.live_bytes -= stale.size as u64;
        } else {
            self.bucket(key).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints the report if it is asked for and anything was recorded: called when the
    /// heap is dropped (which then drops this profiler, taking it off the exit list).
    pub(crate) fn finish(&self, addr_of: &dyn Fn(crate::RawHandle) -> Option<usize>) {
        if self.registered.load(Ordering::Relaxed) && exit::report_wanted(&self.config) {
            exit::print_report(self, addr_of);
        }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        // Never leave a dangling entry in the at-exit list, whoever forgot `finish`.
        if *self.registered.get_mut() {
            exit::unregister(self);
        }
    }
}

/// Frames captured at most: the kept ones plus room for the profiler's own.
const CAPTURED: usize = MAX_FRAMES + 16;

/// Captures the calling thread's return addresses, innermost first, and returns the
/// site's part: the frames after the profiler's own (the unwinder's, this function's,
/// `Profiler::record`'s and the hook's), at most `keep` of them. Allocation-free (the
/// unwinder walks the stack in place).
///
/// The profiler's frames are found by the start address of their function (from the
/// unwind tables, so without debug info), not by name. If none is found (no unwind
/// info for them), every frame is kept.
fn capture(frames: &mut [usize; CAPTURED], keep: usize) -> &[usize] {
    if keep == 0 {
        return &[];
    }
    let own = [
        Profiler::record as *const () as usize,
        Profiler::on_alloc_ptr as *const () as usize,
        Profiler::on_alloc_handle as *const () as usize,
    ];
    let (mut n, mut first, mut searching) = (0, 0, true);
    backtrace::trace(|frame| {
        // Looking a frame's function up costs an unwind-table search: only in the
        // first frames, and only until the first frame after the profiler's.
        if searching {
            if own.contains(&frame.symbol_address().addr()) {
                first = n + 1;
            } else if first > 0 || n + 1 == CAPTURED - MAX_FRAMES {
                searching = false;
            }
        }
        frames[n] = frame.ip().addr();
        n += 1;
        n < CAPTURED && n - first < keep
    });
    &frames[first.min(n)..n.min(first + keep)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rules() {
        let with = |sampling| Profiler::new(ProfilingConfig::new().with_sampling(sampling));
        let p = with(Sampling::EveryBytes(100));
        // Running totals 50, 100, 150, 150, 350, 360: multiples of 100 passed twice.
        let picks = [50, 50, 50, 0, 200, 10].map(|s| p.sampled(s));
        assert_eq!(picks, [false, true, false, false, true, false]);
        let p = with(Sampling::EveryNth(3));
        assert_eq!(
            [0; 7].map(|_| p.sampled(8)),
            [true, false, false, true, false, false, true]
        );
        for all in [
            Sampling::EveryAllocation,
            Sampling::EveryNth(0),
            Sampling::EveryNth(1),
        ] {
            let p = with(all);
            assert!([0, 1, 1 << 40].iter().all(|&s| p.sampled(s)));
        }
        for bytes in [0, 1] {
            let p = with(Sampling::EveryBytes(bytes));
            assert_eq!([0, 1, 7].map(|s| p.sampled(s)), [false, true, true]);
        }
    }

    #[test]
    fn nested_quiet_sections_keep_the_thread_busy() {
        quietly(|| {
            quietly(|| ());
            assert!(BUSY.with(Cell::get), "still busy after a nested section");
            assert!(Busy::enter().is_none());
            assert!(BUSY.with(Cell::get), "a refused entry leaves the flag set");
        });
        assert!(!BUSY.with(Cell::get));
    }
}
