//! Synchronisation primitives, swapped for loom's under `--cfg tidyheap_loom`.
//!
//! Every concurrent structure in tidyheap imports its atomics, cells and waiting
//! primitives from here, never from `std` directly, so the same code that ships is the
//! code loom model-checks (the crossbeam `primitive` pattern).
//!
//! [`UnsafeCell`] has loom's closure API (`with_mut`) on both backends: loom tracks every
//! access to it and reports unsynchronised ones as data races.

#[cfg(tidyheap_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(tidyheap_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

#[cfg(tidyheap_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` with loom's `with_mut` access API, so code compiles against both.
#[cfg(not(tidyheap_loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

#[cfg(not(tidyheap_loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a mutable raw pointer to the contents.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Bounded exponential back-off for contended waits: spins briefly, then yields.
///
/// Callers that may wait for a long time (a guard held across a frame) park instead; see
/// `handle::slot`. This only smooths short races.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// Past this many steps the wait has stopped being short and callers should park.
    pub(crate) const PARK_AFTER: u32 = 10;

    /// A fresh back-off.
    pub(crate) const fn new() -> Self {
        Self { step: 0 }
    }

    /// Waits a little longer than last time.
    #[inline]
    pub(crate) fn snooze(&mut self) {
        #[cfg(tidyheap_loom)]
        {
            loom::thread::yield_now();
        }
        #[cfg(not(tidyheap_loom))]
        {
            if self.step <= 6 {
                for _ in 0..(1u32 << self.step) {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::yield_now();
            }
        }
        self.step = self.step.saturating_add(1);
    }

    /// True once the waiter has backed off long enough that it should park.
    #[inline]
    pub(crate) fn is_completed(&self) -> bool {
        self.step > Self::PARK_AFTER
    }
}

/// Declares a `const fn` natively and a plain `fn` under loom, whose atomics have no
/// `const` constructors.
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(tidyheap_loom))]
        $(#[$attr])*
        $vis const fn $($rest)*

        #[cfg(tidyheap_loom)]
        $(#[$attr])*
        $vis fn $($rest)*
    };
}
pub(crate) use const_fn_unless_loom;
