//! The profiling methods of [`Heap`] and [`Global`].

use core::ptr::NonNull;

use super::config::ProfilingConfig;
use super::report::{Leak, ProfileReport, TopSites};
use super::tracker::Profiler;
use crate::movable::untag;
use crate::{AllocError, Global, Heap, HeapConfig, RawHandle};

impl Heap {
    /// A heap with `config` whose allocations are profiled with `profiling` (a heap
    /// made by [`Heap::new`] or [`Heap::with_config`] uses
    /// [`ProfilingConfig::DEFAULT`]: every allocation recorded).
    ///
    /// # Panics
    ///
    /// If the OS refuses the bookkeeping; see [`Heap::try_with_profiling`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::{ProfilingConfig, Sampling};
    /// use tidyheap::{Heap, HeapConfig};
    /// let heap = Heap::with_profiling(
    ///     HeapConfig::DEFAULT,
    ///     ProfilingConfig::new().with_sampling(Sampling::EveryNth(2)),
    /// );
    /// let l = std::alloc::Layout::new::<u64>();
    /// let ps: Vec<_> = (0..10).map(|_| heap.alloc(l).unwrap()).collect();
    /// assert_eq!(heap.leaks().len(), 5);
    /// # for p in ps { unsafe { heap.dealloc(p, l) } }
    /// ```
    pub fn with_profiling(config: HeapConfig, profiling: ProfilingConfig) -> Self {
        match Self::try_with_profiling(config, profiling) {
            Ok(h) => h,
            Err(e) => panic!("tidyheap: cannot create a heap: {e}"),
        }
    }

    /// [`Heap::with_profiling`], or the OS error.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfMemory`] if the bookkeeping cannot be mapped.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// let heap = tidyheap::Heap::try_with_profiling(Default::default(), ProfilingConfig::new())?;
    /// assert!(heap.leaks().is_empty());
    /// # Ok::<(), tidyheap::AllocError>(())
    /// ```
    pub fn try_with_profiling(
        config: HeapConfig,
        profiling: ProfilingConfig,
    ) -> Result<Self, AllocError> {
        let mut heap = Self::try_with_config(config)?;
        // Nothing was allocated yet, so the default profiler being replaced is empty
        // and was never listed for the at-exit report.
        *heap.profiler = Profiler::new(profiling);
        Ok(heap)
    }

    /// How this heap is profiled.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// assert_eq!(tidyheap::Heap::new().profiling_config(), ProfilingConfig::DEFAULT);
    /// ```
    pub fn profiling_config(&self) -> ProfilingConfig {
        self.profiler.config
    }

    /// The recorded blocks still live (all live blocks, unless sampling is on), by
    /// address, each with its size and allocation site. Movable blocks carry their
    /// handle and current address. Exact at quiescence; blocks allocated or freed
    /// meanwhile by other threads may or may not be in it.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let h = heap.alloc_handle(100, 16)?;
    /// let leaks = heap.leaks();
    /// assert_eq!((leaks[0].handle, leaks[0].size), (Some(h), 100));
    /// heap.free_handle(h)?;
    /// assert!(heap.leaks().is_empty());
    /// # Ok::<(), tidyheap::HandleError>(())
    /// ```
    pub fn leaks(&self) -> Vec<Leak> {
        self.profiler.leaks(&|h| self.handle_address(h))
    }

    /// The `n` allocation sites with the most recorded allocations, and the `n` with
    /// the most recorded bytes, since the heap was created (freed blocks included).
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let l = std::alloc::Layout::new::<[u8; 32]>();
    /// for _ in 0..3 {
    ///     let p = heap.alloc(l).unwrap();
    ///     // SAFETY: `p` came from `heap` with `l`.
    ///     unsafe { heap.dealloc(p, l) };
    /// }
    /// let top = heap.top_sites(5);
    /// assert_eq!((top.by_count[0].allocations, top.by_count[0].bytes), (3, 96));
    /// assert_eq!(top.by_count[0].live_blocks, 0);
    /// ```
    pub fn top_sites(&self, n: usize) -> TopSites {
        self.profiler.top_sites(n)
    }

    /// [`Heap::leaks`] and [`Heap::top_sites`] in one report; `Display` prints it.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let report = heap.profile_report(10);
    /// assert!(report.leaks.is_empty());
    /// assert!(report.to_string().starts_with("tidyheap profile"));
    /// ```
    pub fn profile_report(&self, n: usize) -> ProfileReport {
        self.profiler.report(n, &|h| self.handle_address(h))
    }

    /// The current address of live movable block `h` (for reports only: it may move
    /// right after).
    fn handle_address(&self, h: RawHandle) -> Option<usize> {
        let table = self.handles();
        let p = NonNull::new(table.get(h)?.ptr())?;
        // The slot's pointer is `h`'s only while `h` is current: check after reading.
        table.contains(h).then(|| untag(p).0.as_ptr().addr())
    }

    /// Prints the at-drop report if asked for (the heap is being dropped).
    pub(crate) fn finish_profiling(&self) {
        self.profiler.finish(&|h| self.handle_address(h));
    }
}

impl Global {
    /// How this allocator is profiled.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::ProfilingConfig;
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert_eq!(A.profiling_config(), ProfilingConfig::DEFAULT);
    /// ```
    pub fn profiling_config(&self) -> ProfilingConfig {
        self.profiler.config
    }

    /// The recorded blocks still live; see [`Heap::leaks`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// let l = Layout::new::<[u8; 40]>();
    /// // SAFETY: `A` is a static; `l` is not zero-sized.
    /// let p = unsafe { A.alloc(l) };
    /// assert_eq!(A.leaks()[0].size, 40);
    /// // SAFETY: `p` came from `A` with `l`.
    /// unsafe { A.dealloc(p, l) };
    /// assert!(A.leaks().is_empty());
    /// ```
    pub fn leaks(&self) -> Vec<Leak> {
        self.profiler.leaks(&|_| None)
    }

    /// The top allocation sites; see [`Heap::top_sites`].
    ///
    /// # Examples
    ///
    /// ```
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert!(A.top_sites(3).by_count.is_empty());
    /// ```
    pub fn top_sites(&self, n: usize) -> TopSites {
        self.profiler.top_sites(n)
    }

    /// The full report; see [`Heap::profile_report`].
    ///
    /// # Examples
    ///
    /// ```
    /// static A: tidyheap::Global = tidyheap::Global::new();
    /// assert_eq!(A.profile_report(3).live_bytes(), 0);
    /// ```
    pub fn profile_report(&self, n: usize) -> ProfileReport {
        self.profiler.report(n, &|_| None)
    }

    /// Prints the at-drop report if asked for (the allocator is being dropped).
    pub(crate) fn finish_profiling(&self) {
        self.profiler.finish(&|_| None);
    }
}
