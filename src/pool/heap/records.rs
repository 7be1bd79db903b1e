//! Thread-cache records: claiming one for a thread, parking it when the thread exits,
//! and flushing cached blocks home.

use core::ptr;
use std::sync::atomic::Ordering;

use super::{HeapInner, MAX_THREAD_CACHES, REGISTRY};
use crate::os;
use crate::pool::span::SpanKind;
use crate::pool::thread_cache::{self, PARK_BYTES, PARKED_TOTAL_BYTES, ThreadCache};
use crate::size_class::NUM_CLASSES;

impl HeapInner {
    /// Claims a free thread-cache record for the calling thread.
    pub(crate) fn claim_cache(&self) -> Option<*const ThreadCache> {
        self.ensure_id();
        if !self.registered.load(Ordering::Acquire) {
            let mut reg = REGISTRY.lock();
            if !self.registered.load(Ordering::Relaxed) {
                self.reg_next
                    .store(reg.head as *mut HeapInner, Ordering::Relaxed);
                reg.head = self;
                self.registered.store(true, Ordering::Release);
            }
        }
        let mut table = self.caches.load(Ordering::Acquire);
        if table.is_null() {
            let bytes = MAX_THREAD_CACHES * size_of::<ThreadCache>();
            let fresh = os::reserve(bytes, os::PAGE_SIZE)
                .ok()?
                .cast::<ThreadCache>();
            table = match self.caches.compare_exchange(
                ptr::null_mut(),
                fresh.as_ptr(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh.as_ptr(),
                Err(winner) => {
                    // SAFETY: `fresh` was never shared.
                    unsafe { os::release(fresh.cast(), bytes) };
                    winner
                }
            };
        }
        for i in 0..MAX_THREAD_CACHES {
            // SAFETY: `i` is in the table, whose records are valid zeroed or used ones.
            let rec = unsafe { &*table.add(i) };
            if !rec.claimed.load(Ordering::Relaxed)
                && rec
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                self.caches_hwm.fetch_max(i + 1, Ordering::AcqRel);
                // SAFETY: we just claimed the record.
                let local = unsafe { rec.local() };
                self.unpark(local);
                for k in SpanKind::ALL {
                    for (class, list) in local.lists[k as usize].iter_mut().enumerate() {
                        list.set_up(self.list_limit(k, class));
                    }
                }
                rec.arena.store(self.next_arena() as u32, Ordering::Relaxed);
                rec.movable_epoch.store(
                    self.movable_epoch.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                return Some(rec);
            }
        }
        None
    }

    /// Releases `cache` (flushing it home) if `heap` is still a registered heap with
    /// id `id`.
    ///
    /// # Safety
    ///
    /// `cache` was claimed by the calling thread from the heap with id `id`, which lived
    /// at `heap`.
    pub(crate) unsafe fn release_if_alive(
        heap: *const HeapInner,
        id: u64,
        cache: *const ThreadCache,
    ) {
        let reg = REGISTRY.lock();
        let mut cur = reg.head;
        while !cur.is_null() {
            // SAFETY: registered heaps are alive while the registry lock is held (they
            // unlink under it before being freed).
            let h = unsafe { &*cur };
            if cur == heap && h.id() == id {
                // SAFETY: the record belongs to this live heap and to this thread.
                unsafe { h.release_cache(&*cache) };
                break;
            }
            cur = h.reg_next.load(Ordering::Relaxed);
        }
        drop(reg);
    }

    /// Parks `cache` for the next thread (see `thread_cache`): its movable blocks go to
    /// the central lists, its remote lists home, its fixed lists stay (trimmed to
    /// `PARK_BYTES`), its counters fold into the shared ones, and it is unclaimed. Frees
    /// of its spans' blocks go on landing on its remote lists (see `pool::remote`).
    ///
    /// # Safety
    ///
    /// The caller owns `cache` (its thread is the caller, or is gone).
    pub(super) unsafe fn release_cache(&self, cache: &ThreadCache) {
        // SAFETY: forwarded: we own the record.
        let local = unsafe { cache.local() };
        for (class, list) in local.lists[SpanKind::Movable as usize]
            .iter_mut()
            .enumerate()
        {
            while let Some(b) = list.take_batch(self.batch(class)) {
                self.give_central(b, class, SpanKind::Movable);
            }
        }
        // SAFETY: forwarded: we own the record.
        unsafe {
            Self::send_outgoing(local, u128::MAX);
            self.drain_remote(cache, u128::MAX);
        }
        local.resync_all();
        let fixed = SpanKind::Fixed as usize;
        let room = PARKED_TOTAL_BYTES.saturating_sub(self.parked_bytes.load(Ordering::Relaxed));
        let keep = PARK_BYTES.min(room) as isize;
        for class in (0..NUM_CLASSES).rev() {
            if local.cached_bytes <= keep {
                break;
            }
            let list = &mut local.lists[fixed][class];
            while let Some(b) = list.take_batch(usize::MAX) {
                // SAFETY: the batch's blocks are free and ours.
                unsafe { self.return_home(b) };
            }
            local.resync(fixed, class);
        }
        // O1 (`pool::owned`): no local set may outlive the claim, or an adopter of the
        // span would share it with the record's next thread.
        // SAFETY: forwarded: we own the record; no arena lock is held.
        unsafe { self.merge_local(local, u128::MAX) };
        local.parked = local.cached_bytes.max(0) as usize;
        self.parked_bytes.fetch_add(local.parked, Ordering::Relaxed);
        self.drain_counters(cache);
        cache.claimed.store(false, Ordering::Release);
    }

    /// Takes a just-claimed record's parked bytes off the heap's parked total.
    pub(super) fn unpark(&self, local: &mut thread_cache::Local) {
        let p = core::mem::take(&mut local.parked);
        if p != 0 {
            self.parked_bytes.fetch_sub(p, Ordering::Relaxed);
        }
    }

    /// Pushes a record's outgoing remote frees of the classes whose bit is set in
    /// `classes` to their owners.
    ///
    /// # Safety
    ///
    /// `local` is the owner-only part of a record the caller owns.
    unsafe fn send_outgoing(local: &mut thread_cache::Local, classes: u128) {
        for (class, out) in local.outgoing.iter_mut().enumerate() {
            if classes & (1 << class) != 0 {
                // SAFETY: forwarded.
                unsafe { Self::send(out, class) };
            }
        }
    }

    /// Brings the blocks on `cache`'s remote lists of the classes whose bit is set in
    /// `classes` home.
    ///
    /// # Safety
    ///
    /// The caller owns `cache` (a taker must be; see `pool::remote`).
    unsafe fn drain_remote(&self, cache: &ThreadCache, classes: u128) {
        for (class, list) in cache.remote.0.iter().enumerate() {
            if classes & (1 << class) != 0 {
                // SAFETY: the taken chain is ours: free fixed blocks of this heap.
                unsafe { self.return_chain_home(list.take()) };
            }
        }
    }

    /// Returns every cached block of `cache` (of `kind`, or of both kinds) home.
    ///
    /// # Safety
    ///
    /// The caller owns `cache`.
    pub(crate) unsafe fn flush_cache(&self, cache: &ThreadCache, kind: Option<SpanKind>) {
        // SAFETY: forwarded.
        unsafe { self.flush_classes(cache, kind, u128::MAX) }
    }

    /// Returns the cached blocks of `cache` (of `kind`, or of both kinds) whose class
    /// bit is set in `classes` home.
    ///
    /// # Safety
    ///
    /// The caller owns `cache`.
    pub(crate) unsafe fn flush_classes(
        &self,
        cache: &ThreadCache,
        kind: Option<SpanKind>,
        classes: u128,
    ) {
        if kind.is_none_or(|want| want == SpanKind::Fixed) {
            // SAFETY: forwarded: we own the record.
            unsafe { self.drain_remote(cache, classes) };
        }
        // SAFETY: forwarded: we own the record.
        let local = unsafe { cache.local() };
        if kind.is_none_or(|want| want == SpanKind::Fixed) {
            // SAFETY: `local` is the record's, which we own.
            unsafe { Self::send_outgoing(local, classes) };
        }
        for k in SpanKind::ALL {
            if kind.is_some_and(|want| want != k) {
                continue;
            }
            for class in 0..NUM_CLASSES {
                let list = &mut local.lists[k as usize][class];
                if list.len() == 0 || classes & (1 << class) == 0 {
                    continue;
                }
                while let Some(batch) = list.take_batch(usize::MAX) {
                    // SAFETY: the batch's blocks are free and ours.
                    unsafe { self.return_home(batch) };
                }
                local.resync(k as usize, class);
            }
        }
        if kind.is_none_or(|want| want == SpanKind::Fixed) {
            // SAFETY: forwarded: we own the record; no arena lock is held.
            unsafe { self.merge_local(local, classes) };
        }
    }

    /// Brings every parked record's blocks home (records no thread holds).
    pub(crate) fn flush_parked(&self) {
        for rec in self.records().unwrap_or(&[]) {
            if !rec.claimed.load(Ordering::Relaxed)
                && rec
                    .claimed
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                // SAFETY: we claimed the record (a parked one has no thread).
                self.unpark(unsafe { rec.local() });
                // SAFETY: as above.
                unsafe { self.flush_cache(rec, None) };
                rec.claimed.store(false, Ordering::Release);
            }
        }
    }

    /// This thread's cache record.
    #[inline(always)]
    pub(crate) fn thread_cache(&self) -> Option<&ThreadCache> {
        thread_cache::current(self)
    }
}
