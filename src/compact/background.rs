//! A background thread that runs a budgeted pass every interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Budget;
use crate::heap::Heap;

/// Runs [`Heap::compact`] with a budget every `interval` on its own thread until
/// stopped; dropping it stops and joins the thread.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use tidyheap::{BackgroundCompactor, Budget, Heap};
///
/// let heap = Arc::new(Heap::new());
/// let bg = BackgroundCompactor::start(heap.clone(), Duration::from_millis(1), Budget::blocks(64));
/// std::thread::sleep(Duration::from_millis(5));
/// let passes = bg.stop();
/// assert!(passes >= 1);
/// ```
#[derive(Debug)]
pub struct BackgroundCompactor {
    stop: Arc<AtomicBool>,
    passes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundCompactor {
    /// Starts the thread.
    ///
    /// # Panics
    ///
    /// If the OS cannot spawn a thread; see [`BackgroundCompactor::try_start`].
    pub fn start(heap: Arc<Heap>, interval: Duration, budget: Budget) -> Self {
        Self::try_start(heap, interval, budget)
            .expect("tidyheap: cannot spawn the compactor thread")
    }

    /// Starts the thread, or returns the spawn error.
    ///
    /// # Errors
    ///
    /// The `io::Error` of a failed thread spawn.
    pub fn try_start(heap: Arc<Heap>, interval: Duration, budget: Budget) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let passes = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), passes.clone());
        let thread = std::thread::Builder::new()
            .name("tidyheap-compactor".into())
            .spawn(move || {
                // Run at least one pass, even if stopped before the first tick.
                loop {
                    heap.compact(budget);
                    p.fetch_add(1, Ordering::Relaxed);
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                    std::thread::park_timeout(interval);
                    if s.load(Ordering::Acquire) {
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop,
            passes,
            thread: Some(thread),
        })
    }

    /// Passes run so far.
    pub fn passes(&self) -> u64 {
        self.passes.load(Ordering::Relaxed)
    }

    /// Stops and joins the thread; returns the number of passes it ran.
    pub fn stop(mut self) -> u64 {
        self.shutdown();
        self.passes()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // A panicking pass is a tidyheap bug; surface it here.
            if let Err(e) = t.join() {
                std::panic::resume_unwind(e);
            }
        }
    }
}

impl Drop for BackgroundCompactor {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        } else {
            self.stop.store(true, Ordering::Release);
        }
    }
}
