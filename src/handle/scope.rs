//! Read scopes: many handle reads for one atomic read-modify-write. The protocol behind
//! [`Store::read`](crate::Store::read); its items are internal.
//!
//! A guarded read ([`HandleTable::read`](super::HandleTable::read)) costs two locked
//! read-modify-writes on the slot word (take and drop the read guard); on x86 each is a
//! full fence, so consecutive reads cannot overlap their cache misses. A *read scope*
//! is taken once for a whole group of slots (a store: every slot carrying the store's
//! tag) and makes each read inside it plain loads:
//!
//! ```text
//!  scope open:   scopes.word += 1 (one RMW)          ; fence(SeqCst)             [F_r]
//!  scoped get:   s = slot.state.load(Acquire)  →  generation matches, no W / M?
//!                p = slot.ptr.load(Relaxed)    →  &*p            (no RMW, no fence)
//!  scope close:  scopes.word -= 1 (Release)
//!
//!  writer:       slot CAS → W (write guard)          ; fence(SeqCst)             [F_w]
//!                readers = scopes.word.load(Acquire) → 0: go on; else unlock W, wait
//!  remover:      slot CAS → W | M (alone)             ; fence(SeqCst)             [F_w]
//!                readers = 0: store the vacated word (no second RMW); else clear W | M
//!                and take the writer's path (W, back off, wait), then vacate from W
//!  mover:        slot CAS → M (try_lock_move)        ; fence(SeqCst)             [F_w]
//!                readers = scopes.word.load(Acquire) → 0: copy; else unlock M, skip
//! ```
//!
//! # Why it is sound
//!
//! The two fences are the classic store-buffering (Dekker) pair. In the single total
//! order of `SeqCst` fences, either `F_r` comes before `F_w` — then the writer's load of
//! the reader count sees the scope's increment (C++20 \[atomics.order\]/4: a load
//! sequenced after a fence that follows, in that order, a fence sequenced after a store
//! sees that store or a later one), so the writer backs off **before** it touches the
//! block, the address or the generation — or `F_w` comes first, and then every slot load
//! the reader makes after opening sees the writer's CAS or something later: the `W` / `M`
//! bit (the scoped get answers `Busy` and the scoped `get` waits for that one guard to
//! go), or its release (whose Release the reader's Acquire synchronises with, so the
//! reader sees the written value and the new address), or a later generation (`Stale`).
//! So while a scope is open, no block it can see moves, changes or is freed, and a slot
//! it has read cannot be vacated and reused under it (a remover holds `W` before it
//! vacates). A writer that read the count as zero after a scope closed synchronises with
//! the closing `fetch_sub` (Release → Acquire), so the scope's reads happen before the
//! write. Stale handles never resolve: the generation is checked on the state word the
//! address was published with.
//!
//! The loom models in `loom_scope.rs` check this against a writer, a remover and the
//! mover, with the value in a loom cell so an unordered access is reported as a race.
//!
//! # Waiting, and who never waits
//!
//! * The **compactor never waits**: it skips a block whose group has a scope open
//!   (`MoveSkip::Busy`), exactly as for a block under a guard; a later pass retries.
//! * A **writer or remover** that sees open scopes releases its slot lock and registers
//!   as *pending* (the high half of the word). While a writer is pending, a thread that
//!   opens a scope and holds no other scope steps back (undoes its increment) and waits
//!   for the pending count to drop — once, and for at most 2 ms — so a stream of
//!   overlapping scopes cannot starve writers (a writer waits at most for the scopes
//!   open when it arrived, unless scopes stay open longer than that). A thread that
//!   already holds a scope (on any group) never steps back, so nested scopes cannot
//!   deadlock against a pending writer; the bound on the step-back means a thread that
//!   holds a guard the pending writer needs cannot deadlock with it either, and a
//!   pending writer never waits for a slot guard while registered. The `try_` forms
//!   never wait: they answer `Busy`.
//! * A **scoped get** that finds `W` or `M` waits for that one guard like a guarded read
//!   (a mover holds it for one copy; a writer only if it took the slot before the scope
//!   opened). Hence the rule: a thread must not wait for a write or remove on a group
//!   (`get_mut`, `remove`) while it holds a scope on that group — it would wait for
//!   itself. Debug builds panic there with a message; release builds deadlock; the `try_`
//!   forms answer `Busy`. For the same reason, do not hold a write guard of a group while
//!   waiting for another write on it: a scope that waits for your guard holds up your
//!   second write.
//!
//! Waiting spins briefly, then parks on the word's address (two keys: writers waiting
//! for readers to drain, scopes waiting for pending writers), validating under the
//! parking-lot bucket lock, so wake-ups are not lost. Under loom, waits are `yield_now`
//! loops.
//!
//! # What is not here: an `&mut` fast path and a seqlock `get_copy`
//!
//! `&mut Store<T>` does not prove exclusivity: stores are `Clone` (clones share the
//! values) and the compactor may run on another thread, so a get through `&mut self`
//! would still need the scope check; an exclusive *write* scope would have to exclude
//! guarded reads too, which would put this fence on every guarded `get`. An optimistic
//! `get_copy` (read the bytes, then re-check a version) would read bytes a writer may
//! be writing at the same time: a data race in Rust's memory model unless the copy is
//! made of atomic loads (no atomic memcpy on stable Rust), and a slot freed meanwhile
//! may point at a large block that was already unmapped. Neither is done.
//!
//! # Groups
//!
//! Groups are store tags. Each has one word, on a cache line of its own, in a
//! process-wide table of lazily allocated segments of 4096 words (`scopes_of`), so the mover, which learns a block's tag from the
//! slot pointer under its move lock, finds the word without knowing the store. Tags are
//! never reused, so a word never changes owner.

use core::ptr::NonNull;

use super::{HandleTable, RawHandle, Slot, SlotWrite};
use crate::HandleError;
use crate::sync::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

const READERS: u64 = 0xFFFF_FFFF;
const PENDING_ONE: u64 = 1 << 32;

/// The reader count and pending-writer count of one group (a store), on a cache line
/// of its own (stores made one after another have neighbouring tags).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct Scopes {
    /// `pending writers << 32 | open scopes`.
    word: AtomicU64,
}

impl Scopes {
    crate::sync::const_fn_unless_loom! {
        /// No scope open, no writer pending.
        pub(crate) fn new() -> Self {
            Self {
                word: AtomicU64::new(0),
            }
        }
    }

    /// Opens a scope. If a writer is pending and `nested` is false (the calling thread
    /// holds no other scope), steps back once and waits for the pending writers first,
    /// for at most [`STEP_BACK`] (so a thread that holds a guard a pending writer waits
    /// for cannot deadlock with it).
    pub(crate) fn open(&self, nested: bool) {
        let mut step_back = !nested;
        loop {
            let old = self.word.fetch_add(1, Relaxed);
            assert!(
                old & READERS != READERS,
                "tidyheap: too many read scopes open on one store"
            );
            if !step_back || old & !READERS == 0 {
                // F_r: orders the increment before every slot load of the scope.
                crate::sync::fence(SeqCst);
                return;
            }
            self.close();
            self.wait(|w| w & !READERS != 0, 1, true);
            step_back = false;
        }
    }

    /// Closes a scope: Release, so its reads happen before a writer that sees zero.
    pub(crate) fn close(&self) {
        let old = self.word.fetch_sub(1, Release);
        debug_assert!(old & READERS != 0, "closing a scope that is not open");
        if old & READERS == 1 && old & !READERS != 0 {
            wake(self, 0);
        }
    }

    /// Whether a writer, remover or mover that has just taken a slot of this group may
    /// go on: no scope is open. Call it right after the slot CAS.
    #[inline]
    pub(crate) fn admits_writer(&self) -> bool {
        // F_w: orders the slot CAS before the count load.
        crate::sync::fence(SeqCst);
        self.word.load(Acquire) & READERS == 0
    }

    /// Registers a pending writer until the returned value drops.
    fn pend(&self) -> Pending<'_> {
        self.word.fetch_add(PENDING_ONE, Relaxed);
        Pending(self)
    }

    /// Waits until no scope is open (the caller is pending).
    fn wait_drained(&self) {
        self.wait(|w| w & READERS != 0, 0, false);
    }

    /// Waits while `busy(word)`: spins briefly, then parks on key `which`; if
    /// `bounded`, gives up after [`STEP_BACK`] (under loom: after a few yields).
    fn wait(&self, busy: impl Fn(u64) -> bool, which: usize, bounded: bool) {
        let mut backoff = crate::sync::Backoff::new();
        #[cfg(not(tidyheap_loom))]
        let deadline = bounded.then(|| std::time::Instant::now() + STEP_BACK);
        #[cfg(tidyheap_loom)]
        let mut rounds = 0u32;
        #[cfg(tidyheap_loom)]
        let _ = which;
        while busy(self.word.load(Acquire)) {
            #[cfg(not(tidyheap_loom))]
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return;
            }
            #[cfg(tidyheap_loom)]
            {
                rounds += 1;
                if bounded && rounds > 2 {
                    return;
                }
            }
            if cfg!(tidyheap_loom) || !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            #[cfg(not(tidyheap_loom))]
            park(self, which, || busy(self.word.load(Relaxed)), deadline);
        }
    }
}

/// A registered pending writer (see [`Scopes::pend`]).
struct Pending<'a>(&'a Scopes);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let old = self.0.word.fetch_sub(PENDING_ONE, Release);
        if old >> 32 == 1 {
            wake(self.0, 1);
        }
    }
}

/// The longest a scope opener steps back for pending writers (see [`Scopes::open`]).
#[cfg(not(tidyheap_loom))]
const STEP_BACK: std::time::Duration = std::time::Duration::from_millis(2);

#[cfg(not(tidyheap_loom))]
fn park(
    scopes: &Scopes,
    which: usize,
    validate: impl Fn() -> bool,
    deadline: Option<std::time::Instant>,
) {
    let key = core::ptr::from_ref(scopes).addr() + which;
    // SAFETY:
    // - the key is the word's address (+0 or +1): words live for the process (segments
    //   are leaked) and nothing else parks on these addresses (slots use their own,
    //   16-byte aligned, addresses in the table's segments);
    // - `validate` only loads an atomic; `before_sleep` and `timed_out` do nothing;
    // - a timeout (the deadline) only returns early: callers re-check and loop.
    unsafe {
        parking_lot_core::park(
            key,
            validate,
            || {},
            |_, _| {},
            parking_lot_core::DEFAULT_PARK_TOKEN,
            deadline,
        );
    }
}

#[cfg(not(tidyheap_loom))]
fn wake(scopes: &Scopes, which: usize) {
    let key = core::ptr::from_ref(scopes).addr() + which;
    // SAFETY:
    // - the key is one of the word's park keys (see `park`).
    unsafe {
        parking_lot_core::unpark_all(key, parking_lot_core::DEFAULT_UNPARK_TOKEN);
    }
}

#[cfg(tidyheap_loom)]
fn wake(_: &Scopes, _: usize) {}

/// The block address of `h` for a reader inside an open scope of its group, waiting
/// (like a guarded read) while a writer or mover holds the slot: the slow path of
/// `try_scoped_get`.
///
/// # Errors
///
/// [`HandleError::Stale`] if `h` is not live.
#[cold]
#[inline(never)]
pub(crate) fn scoped_get(table: &HandleTable, h: RawHandle) -> Result<NonNull<u8>, HandleError> {
    loop {
        match try_scoped_get(table, h) {
            Err(HandleError::Busy) => {}
            r => return r,
        }
        // Wait for the writer or mover through a guarded read (which parks, and in debug
        // builds panics if the writer is this thread), then look again.
        drop(table.read(h)?);
    }
}

/// `scoped_get` that never waits.
///
/// # Errors
///
/// [`HandleError::Stale`], or [`HandleError::Busy`] if a writer or mover holds the slot.
#[inline(always)]
pub(crate) fn try_scoped_get(
    table: &HandleTable,
    h: RawHandle,
) -> Result<NonNull<u8>, HandleError> {
    table
        .get(h)
        .ok_or(HandleError::Stale)?
        .scoped_ptr(h.generation().get())
}

/// Takes the write guard of `h`, a handle of the group `scopes` counts, once no scope
/// of the group is open: waiting (if `wait`) for guards and for scopes, registered as
/// pending so new scopes hold back. `before_wait` runs before any wait for scopes (the
/// debug builds' self-deadlock check).
///
/// # Errors
///
/// [`HandleError::Stale`] if `h` is not live; [`HandleError::Busy`] (only if not `wait`)
/// if a guard is held or a scope is open.
pub(crate) fn write_scoped<'a>(
    table: &'a HandleTable,
    scopes: &Scopes,
    h: RawHandle,
    wait: bool,
    before_wait: impl Fn(),
) -> Result<SlotWrite<'a>, HandleError> {
    write_scoped_for(table, scopes, h, wait, false, before_wait)
}

fn write_scoped_for<'a>(
    table: &'a HandleTable,
    scopes: &Scopes,
    h: RawHandle,
    wait: bool,
    for_remove: bool,
    before_wait: impl Fn(),
) -> Result<SlotWrite<'a>, HandleError> {
    let mut pending = None;
    loop {
        let g = match table.try_write(h) {
            Ok(g) => g,
            Err(HandleError::Busy) if wait => {
                // Never wait for a guard while pending: its holder may be a thread that
                // is stepping back for us in `Scopes::open`.
                pending = None;
                table.write_for(h, for_remove)?
            }
            Err(e) => return Err(e),
        };
        if scopes.admits_writer() {
            return Ok(g);
        }
        drop(g);
        if !wait {
            return Err(HandleError::Busy);
        }
        before_wait();
        pending.get_or_insert_with(|| scopes.pend());
        scopes.wait_drained();
    }
}

/// Removes `h`, a handle of the group `scopes` counts, once no scope of the group is
/// open (see [`write_scoped`]): takes the write guard, checks the scopes, then vacates.
/// Returns the block address, now the caller's, and whether the slot was retired; the
/// caller hands the vacant slot back with [`HandleTable::recycle`].
///
/// # Errors
///
/// As [`write_scoped`]; also [`HandleError::Busy`] (only if not `wait`) if a pin is held.
#[cfg(tidyheap_loom)]
pub(crate) fn remove_scoped(
    table: &HandleTable,
    scopes: &Scopes,
    h: RawHandle,
    wait: bool,
    before_wait: impl Fn(),
) -> Result<(NonNull<u8>, bool), HandleError> {
    let slot = table.get(h).ok_or(HandleError::Stale)?;
    remove_scoped_at(table, scopes, slot, h, wait, before_wait)
}

/// [`remove_scoped`] with `h`'s slot already looked up by the caller
/// (`table.get(h)`).
#[inline(always)]
pub(crate) fn remove_scoped_at(
    table: &HandleTable,
    scopes: &Scopes,
    slot: &Slot,
    h: RawHandle,
    wait: bool,
    before_wait: impl Fn(),
) -> Result<(NonNull<u8>, bool), HandleError> {
    // The common case, one read-modify-write: take the slot alone (`W | M`), check the
    // scopes (as a writer does: F_w, then the count), vacate with a plain store.
    let generation = h.generation().get();
    match slot.try_lock_remove(generation) {
        Ok(old) => {
            if scopes.admits_writer() {
                // SAFETY: we took the remove lock just now and give it up here.
                return Ok(unsafe { slot.vacate_removing(generation, old) });
            }
            // SAFETY: as above; nothing was changed.
            unsafe { slot.unlock_remove() };
        }
        Err(HandleError::Stale) => return Err(HandleError::Stale),
        Err(_) => {}
    }
    remove_waiting(table, scopes, h, wait, &before_wait)
}

/// The rest of [`remove_scoped`]: a guard, pin or scope is in the way, so the waiting
/// (or `Busy`) path.
#[cold]
#[inline(never)]
fn remove_waiting(
    table: &HandleTable,
    scopes: &Scopes,
    h: RawHandle,
    wait: bool,
    before_wait: &dyn Fn(),
) -> Result<(NonNull<u8>, bool), HandleError> {
    loop {
        let g = write_scoped_for(table, scopes, h, wait, true, before_wait)?;
        match table.vacate_written(h, g) {
            Ok(r) => return Ok(r),
            Err(g) => {
                // Pinned: pins are brief (nothing in a store holds one across calls).
                let slot = g.slot();
                drop(g);
                if !wait {
                    return Err(HandleError::Busy);
                }
                // Debug builds: a pin of this very thread would never go.
                #[cfg(all(debug_assertions, not(tidyheap_loom)))]
                super::held::check(slot, h, super::held::Want::Remove);
                let _ = slot;
                crate::sync::Backoff::new().snooze();
                #[cfg(not(tidyheap_loom))]
                std::thread::yield_now();
            }
        }
    }
}

mod registry {
    use std::sync::atomic::{AtomicPtr, Ordering};

    use super::Scopes;

    const SEG_BITS: u32 = 12;
    const SEG_LEN: usize = 1 << SEG_BITS;
    /// Enough segments for every 20-bit group id.
    const SEGS: usize = 1 << (20 - SEG_BITS);

    static SEGMENTS: [AtomicPtr<Scopes>; SEGS] =
        [const { AtomicPtr::new(core::ptr::null_mut()) }; SEGS];

    /// The scope word of group `id` (a store tag, below 2^20).
    ///
    /// # Panics
    ///
    /// If `id` is 2^20 or more.
    #[inline]
    pub(crate) fn scopes_of(id: u32) -> &'static Scopes {
        let (seg, off) = ((id >> SEG_BITS) as usize, id as usize & (SEG_LEN - 1));
        let slot = &SEGMENTS[seg];
        let mut p = slot.load(Ordering::Acquire);
        if p.is_null() {
            p = install(slot);
        }
        // SAFETY:
        // - `p` is an installed segment of `SEG_LEN` words (published by the installing
        //   CAS, which we Acquired), leaked for the life of the process; `off < SEG_LEN`.
        unsafe { &*p.add(off) }
    }

    #[cold]
    fn install(slot: &AtomicPtr<Scopes>) -> *mut Scopes {
        let fresh: Box<[Scopes]> = (0..SEG_LEN).map(|_| Scopes::new()).collect();
        let fresh = Box::into_raw(fresh).cast::<Scopes>();
        match slot.compare_exchange(
            core::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(theirs) => {
                // SAFETY: `fresh` was made above from a boxed slice of `SEG_LEN` words
                // and never shared.
                drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(fresh, SEG_LEN)) });
                theirs
            }
        }
    }
}
pub(crate) use registry::scopes_of;

/// Per-thread bookkeeping of open scopes: how many this thread holds (so a nested open
/// never steps back for a pending writer), and in debug builds which groups (so a
/// write or remove that would wait for the thread's own scope panics).
pub(crate) mod mine {
    use std::cell::Cell;
    #[cfg(debug_assertions)]
    use std::cell::RefCell;

    thread_local! {
        static OPEN: Cell<u32> = const { Cell::new(0) };
    }
    #[cfg(debug_assertions)]
    thread_local! {
        static GROUPS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// Records that this thread opens a scope of group `id`; returns whether it already
    /// held one (of any group).
    #[inline]
    pub(crate) fn enter(id: u32) -> bool {
        #[cfg(debug_assertions)]
        let _ = GROUPS.try_with(|g| g.borrow_mut().push(id));
        #[cfg(not(debug_assertions))]
        let _ = id;
        OPEN.try_with(|n| {
            let was = n.get();
            n.set(was + 1);
            was != 0
        })
        .unwrap_or(true)
    }

    /// Records that this thread closed a scope of group `id`.
    #[inline]
    pub(crate) fn leave(id: u32) {
        #[cfg(debug_assertions)]
        let _ = GROUPS.try_with(|g| {
            let mut g = g.borrow_mut();
            if let Some(i) = g.iter().rposition(|&x| x == id) {
                g.swap_remove(i);
            }
        });
        #[cfg(not(debug_assertions))]
        let _ = id;
        let _ = OPEN.try_with(|n| n.set(n.get().saturating_sub(1)));
    }

    /// Debug builds: panics if this thread holds a scope of group `id`, for a `what`
    /// (naming the call and the handle) that would wait for it forever.
    #[track_caller]
    pub(crate) fn check(id: u32, what: &dyn Fn() -> String) {
        #[cfg(debug_assertions)]
        {
            let held = GROUPS
                .try_with(|g| g.borrow().contains(&id))
                .unwrap_or(false);
            if held {
                panic!(
                    "tidyheap: deadlock: {} while this thread holds a read scope (Store::read) \
                     on the same store; it would wait for its own scope forever. Drop the \
                     scope first, or use the try_ form, which answers Busy",
                    what()
                );
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = (id, what);
    }
}
