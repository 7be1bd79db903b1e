//! Debug builds only: a per-thread record of the guards each thread holds, so that a
//! call that would wait for the calling thread's *own* guard panics with a message
//! instead of deadlocking silently (DESIGN invariant 9).
//!
//! # What is caught
//!
//! A waiting call (`read`, `write`, `remove` of [`HandleTable`](super::HandleTable), and
//! everything built on them: `Store::get`, `get_mut`, `remove`, `iter`, dropping an
//! `Owned` or the last `Shared`, `Heap::read`, `write`, `free_handle`) first tries
//! without waiting. Only if that answers `Busy` does it look here: if this thread holds a
//! guard on the same slot that blocks the request, the wait could never end, and it
//! panics naming the handle and the guard held:
//!
//! | request | blocked by this thread's |
//! |---|---|
//! | read (`get`) | write guard (`RefMut`, `WriteGuard`) |
//! | write (`get_mut`) | read or write guard |
//! | remove (`remove`, dropping an `Owned`) | read or write guard, or pin |
//!
//! Pins never block reads or writes, and read guards nest freely. The slot's generation
//! need not be compared: a request is only `Busy` (and so only checked) when its handle
//! is current, and a slot on which this thread holds a guard cannot have been freed.
//!
//! # How
//!
//! Each thread owns an `Arc<Registry>`: a mutex-protected list of `(slot address, kind)`
//! entries. A guard adds its entry when made and keeps a clone of the `Arc`, so that it
//! removes the entry from the right list even when it is dropped on another thread
//! (guards are `Send`). Entries of the same slot and kind are interchangeable, so a drop
//! removes any one of them. A guard moved to another thread still counts as held by the
//! thread that took it until it is dropped: a thread that sends its guard away and then
//! waits on the same handle gets the panic too (use the `try_` form there).
//!
//! Release builds compile none of this: the guards stay two words and the waiting
//! calls deadlock as documented on each of them. Under `cfg(tidyheap_loom)` it is off as well,
//! since loom's threads share one OS thread's thread-locals.

use std::sync::{Arc, Mutex, PoisonError};

use super::{RawHandle, Slot};

/// The kind of guard a thread holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Read,
    Write,
    Pin,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Read => "a read guard (Ref / ReadGuard / SlotRead)",
            Kind::Write => "a write guard (RefMut / WriteGuard / SlotWrite)",
            Kind::Pin => "a pin (PinGuard / SlotPin)",
        }
    }
}

/// What a waiting call wants.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Want {
    Read,
    Write,
    Remove,
}

impl Want {
    /// True if a guard of `kind` held by the caller keeps this request waiting.
    fn blocked_by(self, kind: Kind) -> bool {
        match self {
            Want::Read => kind == Kind::Write,
            Want::Write => kind != Kind::Pin,
            Want::Remove => true,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Want::Read => "read it (get / read)",
            Want::Write => "write it (get_mut / write)",
            Want::Remove => "remove it (remove / free_handle / dropping an Owned)",
        }
    }
}

#[derive(Debug)]
struct Entry {
    slot: usize,
    kind: Kind,
}

/// One thread's held guards.
#[derive(Debug, Default)]
struct Registry(Mutex<Vec<Entry>>);

impl Registry {
    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // Nothing panics while the lock is held, but a poisoned list is still right.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    static MINE: Arc<Registry> = Arc::new(Registry::default());
}

/// The record of one guard, kept inside it: made when the guard is taken, removed when
/// it drops.
#[derive(Debug)]
pub(crate) struct Held {
    /// `None` if the thread-local was already gone (a guard taken during thread exit).
    registry: Option<Arc<Registry>>,
    slot: usize,
    kind: Kind,
}

impl Held {
    /// Records that the calling thread now holds a guard of `kind` on `slot`.
    pub(crate) fn new(slot: &Slot, kind: Kind) -> Self {
        let slot = core::ptr::from_ref(slot).addr();
        let registry = MINE.try_with(Arc::clone).ok();
        if let Some(r) = &registry {
            r.entries().push(Entry { slot, kind });
        }
        Self {
            registry,
            slot,
            kind,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = &self.registry {
            let mut entries = r.entries();
            if let Some(i) = entries
                .iter()
                .position(|e| e.slot == self.slot && e.kind == self.kind)
            {
                entries.swap_remove(i);
            }
        }
    }
}

/// Panics if the calling thread holds a guard on `slot` (named by `handle`) that keeps
/// `want` waiting forever. Call it only when the request found the slot busy.
#[track_caller]
pub(crate) fn check(slot: &Slot, handle: RawHandle, want: Want) {
    let addr = core::ptr::from_ref(slot).addr();
    let held = MINE
        .try_with(|r| {
            r.entries()
                .iter()
                .find(|e| e.slot == addr && want.blocked_by(e.kind))
                .map(|e| e.kind)
        })
        .ok()
        .flatten();
    if let Some(kind) = held {
        panic!(
            "tidyheap: deadlock on handle {handle:?}: this thread holds {} on it and asked \
             to {}, which would wait for itself forever; drop the guard first, or use the \
             try_ form, which answers Busy",
            kind.describe(),
            want.verb()
        );
    }
}
