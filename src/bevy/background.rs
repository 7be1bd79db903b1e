//! [`CompactionMode::Background`](super::CompactionMode::Background): a thread that runs
//! one budgeted pass each time the frame's compact system signals it.
//!
//! Signalling is a flag and an unpark. The thread clears the flag before each pass, so a
//! signal that arrives while a pass runs makes exactly one more pass, and signals never
//! pile up: at most one pass per frame, fewer when passes take longer than frames.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use bevy_ecs::prelude::Resource;

use crate::{Budget, Heap};

#[derive(Default)]
struct Flags {
    requested: AtomicBool,
    stop: AtomicBool,
}

/// The background compaction thread; dropping the resource stops and joins it.
#[derive(Resource)]
pub(super) struct BackgroundPass {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundPass {
    /// Spawns the thread.
    pub(super) fn start(heap: Arc<Heap>, budget: Budget) -> std::io::Result<Self> {
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        let thread = std::thread::Builder::new()
            .name("tidyheap-bevy-compactor".into())
            .spawn(move || {
                while !f.stop.load(Ordering::Acquire) {
                    if f.requested.swap(false, Ordering::AcqRel) {
                        heap.compact(budget);
                    } else {
                        // An unpark that came before this park makes it return at once.
                        std::thread::park();
                    }
                }
            })?;
        Ok(Self {
            flags,
            thread: Some(thread),
        })
    }

    /// Asks for one pass.
    pub(super) fn request(&self) {
        self.flags.requested.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for BackgroundPass {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            // A pass that panicked is a tidyheap bug; the thread's panic message was
            // printed already, and a drop must not panic in turn.
            let _ = t.join();
        }
    }
}
