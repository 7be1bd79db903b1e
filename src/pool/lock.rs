//! The lock of the allocator's own bookkeeping: a `lock_api` mutex that never parks.
//!
//! Arenas, the span source and the heap registry sit on the global allocator's paths.
//! A parking lock cannot be used there: parking_lot's `park` lazily creates its
//! per-thread data and grows its hash table, which *allocates* — through the global
//! allocator, i.e. through us, which may need the same contended lock and park again.
//! We saw exactly that recursion overflow a thread's stack (13 000 frames deep) in
//! `tests/global_alloc.rs` under load. So these locks spin briefly and then yield the
//! CPU (`sched_yield`, which allocates nothing) until the lock is free; they are held
//! for a few hundred nanoseconds at most (carving or returning one batch of blocks).
//!
//! The type is parking_lot's `lock_api::Mutex` over [`RawSpinYield`], so callers keep
//! parking_lot's guard API.

use std::sync::atomic::{AtomicBool, Ordering};

/// A raw lock that spins briefly, then yields, and never allocates or parks.
#[derive(Debug)]
pub(crate) struct RawSpinYield {
    locked: AtomicBool,
}

// SAFETY: `lock`/`try_lock` grant the lock to one owner at a time (a successful
// compare-exchange from `false` to `true` with Acquire), and `unlock` releases it with
// Release, so every critical section happens-before the next one.
unsafe impl lock_api::RawMutex for RawSpinYield {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = Self {
        locked: AtomicBool::new(false),
    };

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        let mut step = 0u32;
        while !self.try_lock() {
            // Wait on a plain load, so waiters do not bounce the line with RMWs.
            while self.locked.load(Ordering::Relaxed) {
                if step < 6 {
                    for _ in 0..(1u32 << step) {
                        std::hint::spin_loop();
                    }
                    step += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// A mutex for allocator bookkeeping; see the module docs.
pub(crate) type Mutex<T> = lock_api::Mutex<RawSpinYield, T>;
/// Its guard.
pub(crate) type MutexGuard<'a, T> = lock_api::MutexGuard<'a, RawSpinYield, T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_across_threads() {
        let m = Mutex::new(0u64);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        *m.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*m.lock(), 40_000);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
    }
}
