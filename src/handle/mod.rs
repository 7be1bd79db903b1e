//! Generational handles and the handle table they resolve through.
//!
//! Game code holds a [`Handle<T>`] (8 bytes: a slot index and a generation) instead of a
//! pointer, so the compactor can move the block behind it. Resolving a handle is:
//!
//! ```text
//!  handle (index, generation)
//!     │  HandleTable::slot(index): leading_zeros → (segment, offset), one Acquire load
//!     ▼
//!  Slot { state: AtomicU64 = generation << 32 | lock word,  ptr: AtomicPtr<u8> }
//!     │  ONE compare-exchange on `state`: "generation still matches and the lock word
//!     │  admits me" → lock word + READER_ONE (or | WRITER, + PIN_ONE, | MOVER)
//!     ▼
//!  guard (SlotRead / SlotWrite / SlotPin / SlotMove) holding the block address
//!     │  dropping it: ONE atomic on `state` (fetch_sub / fetch_and)
//! ```
//!
//! # Why one word
//!
//! Checking the generation and taking the guard in the same compare-exchange is what makes
//! a stale handle harmless: a slot cannot be freed and reused between "the generation
//! matched" and "I hold a guard", because freeing is itself a compare-exchange on the same
//! word that requires the lock word to be empty, and bumps the generation. So a guard is
//! only ever granted on the block the handle named, and while any guard lives the block
//! can be neither freed nor moved (invariants 2 and 3 of `docs/design.md`).
//!
//! # The kinds of access (see [`Slot`] for the bit layout)
//!
//! | guard | excludes | excluded by | waits? |
//! |---|---|---|---|
//! | read | writer, mover | writer, mover | `read` parks, `try_read` never waits |
//! | write | readers, writer, mover | readers, writer, mover | `write` parks, `try_write` never waits |
//! | pin | mover, free | mover | `pin` parks, `try_pin` never waits |
//! | move (compactor) | everything | everything | never: busy or pinned blocks are skipped |
//! | free (`remove`) | — (the slot becomes vacant) | readers, writer, pins, mover | `remove` parks, `try_remove` never waits |
//!
//! There is no writer preference: overlapping readers that keep arriving can delay a
//! blocked `write` or `remove` indefinitely (they are meant to be held briefly, within a
//! frame). The compactor is never delayed at all: it skips busy blocks.
//!
//! A pin keeps the block's *address* stable (it blocks the compactor and free) but does
//! not exclude readers or writers: it is for handing the address to code that outlives a
//! guard's scope, like a GPU upload, while the owner synchronises access itself.
//!
//! Contended waits spin briefly (bounded exponential back-off), then set the slot's
//! `PARKED` bit and park in `parking_lot_core` on the slot's address; every release that
//! can unblock a waiter clears `PARKED` and wakes all parked threads, which re-check. So
//! waiting never spins forever, and the uncontended unlock is one atomic that never
//! touches the parking lot.
//!
//! # Same-thread re-entrance
//!
//! A thread that holds a read guard and asks for a write guard (or a remove) on the same
//! slot would wait for itself forever, and so would one holding a write guard that asks
//! to read, or one holding a pin that asks to remove. The lock word cannot tell whose
//! guard it is, so the hot path does not try: in **debug builds** every guard is also
//! recorded per thread (the `held` module), and a waiting call that finds the slot busy
//! checks that record before it waits and panics with a message naming the handle and
//! the guard held. In release builds the record does not exist and such a call
//! deadlocks. The `try_` forms ([`HandleTable::try_read`], [`HandleTable::try_write`],
//! [`HandleTable::try_remove`]) never wait and answer
//! [`HandleError::Busy`](crate::HandleError::Busy) instead, and are the documented,
//! deadlock-free way to upgrade: drop the read guard first, or use `try_write`.
//! Read guards may be nested freely; pins and reads or writes may be mixed freely.
//!
//! # Generations and retirement
//!
//! A slot's generation is odd while it is occupied and even while it is vacant (as in
//! slotmap). Freeing turns odd `g` into even `g + 1`; reusing turns it into `g + 2`. A slot
//! whose generation is `u32::MAX` when it is freed would wrap to a generation some stale
//! handle may still carry, so it is **retired**: left vacant for good and never put back on
//! the free list. A retired slot costs 16 bytes after 2^31 reuses; a stale handle is never
//! resurrected.
//!
//! # What a foreign handle gets
//!
//! Handles carry no table identity (that would not fit in 8 bytes). Guaranteed for every
//! table: an index that was never issued by *this* table, a vacant slot or a generation
//! that does not match all answer `Stale`. A plain [`HandleTable::new`] starts every slot
//! at generation 1, so a handle from another such table whose index and generation
//! happen to match a live slot here is indistinguishable from one of this table. Tables
//! made with [`HandleTable::with_process_unique_handles`] — every
//! [`Heap`](crate::Heap)'s, and so every store's — close that gap: their generations
//! are leased in windows from a process-wide counter per index (the `lease` module), so
//! no two of them ever issue the same handle, and a handle of another heap, live or
//! long dropped, answers `Stale`.

mod guard;
#[cfg(all(debug_assertions, not(tidyheap_loom)))]
mod held;
mod lease;
pub mod scope;
mod slot;
mod table;

#[cfg(all(test, tidyheap_loom))]
mod loom_lanes;
#[cfg(all(test, tidyheap_loom))]
mod loom_scope;
#[cfg(all(test, tidyheap_loom))]
mod loom_tests;

use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;
use core::num::NonZeroU32;

use slotmap::KeyData;

pub use guard::{SlotMove, SlotPin, SlotRead, SlotWrite};
pub use slot::{MAX_PINS, MAX_READERS, MoveSkip, Slot, SlotState};
pub(crate) use table::LANES;
pub use table::{HandleTable, Iter, MAX_SLOTS};

/// An untyped generational handle: a slot index and the generation the slot had when the
/// handle was issued.
///
/// Eight bytes, `Copy`, and `Option<RawHandle>` is eight bytes too (the generation is
/// never zero). The generation of every `RawHandle` is odd — the parity of an occupied
/// slot — so a handle can never name a vacant slot; the constructors enforce it.
///
/// `RawHandle` implements [`slotmap::Key`], so side data can live in a
/// [`slotmap::SecondaryMap`] keyed by handles; its [`Default`] is the null key
/// ([`RawHandle::NULL`]), which no table ever issues.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use tidyheap::RawHandle;
///
/// let h = RawHandle::new(7, NonZeroU32::new(3).unwrap()).unwrap();
/// assert_eq!((h.index(), h.generation().get()), (7, 3));
/// assert_eq!(RawHandle::from_bits(h.to_bits()), Some(h));
/// assert!(RawHandle::new(7, NonZeroU32::new(4).unwrap()).is_none()); // even: never occupied
/// assert_eq!(size_of::<Option<RawHandle>>(), 8);
/// ```
// Invariants: `generation` is odd; `index == u32::MAX` only in the null handle
// (generation 1). Field order, `Eq`, `Ord` and `Hash` match `slotmap::KeyData` exactly,
// which `unsafe impl slotmap::Key` relies on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawHandle {
    index: u32,
    generation: NonZeroU32,
}

const _: () = assert!(size_of::<RawHandle>() == 8);
const _: () = assert!(size_of::<Option<RawHandle>>() == 8);
const _: () = assert!(size_of::<Handle<u8>>() == 8);
const _: () = assert!(size_of::<Option<Handle<[u64]>>>() == 8);

impl RawHandle {
    /// The null handle: index `u32::MAX`, generation 1. No table issues it, so it never
    /// resolves; it equals `slotmap::KeyData::default()` under the [`slotmap::Key`] impl.
    pub const NULL: Self = Self {
        index: u32::MAX,
        generation: NonZeroU32::MIN,
    };

    /// A handle from its parts, or `None` if `generation` is even (no occupied slot ever
    /// has an even generation, so such a handle could never resolve).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use tidyheap::RawHandle;
    /// assert!(RawHandle::new(0, NonZeroU32::MIN).is_some());
    /// assert!(RawHandle::new(0, NonZeroU32::new(2).unwrap()).is_none());
    /// ```
    #[inline]
    pub const fn new(index: u32, generation: NonZeroU32) -> Option<Self> {
        if generation.get() & 1 == 1 {
            Some(Self { index, generation })
        } else {
            None
        }
    }

    /// Internal constructor for a generation known to be odd.
    #[inline]
    pub(crate) const fn from_odd(index: u32, generation: u32) -> Self {
        debug_assert!(generation & 1 == 1);
        Self {
            index,
            // SAFETY: `generation | 1` has its low bit set, so it is not zero (and it is
            // `generation` itself, which the caller promises is odd).
            generation: unsafe { NonZeroU32::new_unchecked(generation | 1) },
        }
    }

    /// The slot index.
    #[inline]
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The generation the slot had when this handle was issued (always odd).
    #[inline]
    pub const fn generation(self) -> NonZeroU32 {
        self.generation
    }

    /// True for [`RawHandle::NULL`].
    #[inline]
    pub const fn is_null(self) -> bool {
        self.index == u32::MAX
    }

    /// The handle as one `u64`: `generation << 32 | index` (the same encoding as
    /// `slotmap::KeyData::as_ffi`), for passing through FFI or serialising.
    #[inline]
    pub const fn to_bits(self) -> u64 {
        ((self.generation.get() as u64) << 32) | self.index as u64
    }

    /// The handle [`to_bits`](Self::to_bits) encoded, or `None` if the generation half is
    /// even (including zero).
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::RawHandle;
    /// assert_eq!(RawHandle::from_bits(RawHandle::NULL.to_bits()), Some(RawHandle::NULL));
    /// assert_eq!(RawHandle::from_bits(5), None); // generation 0
    /// ```
    #[inline]
    pub const fn from_bits(bits: u64) -> Option<Self> {
        match NonZeroU32::new((bits >> 32) as u32) {
            Some(generation) => Self::new(bits as u32, generation),
            None => None,
        }
    }
}

impl Default for RawHandle {
    /// [`RawHandle::NULL`].
    fn default() -> Self {
        Self::NULL
    }
}

impl Hash for RawHandle {
    /// Hashes the 64-bit encoding with one `write_u64`, exactly as `slotmap::KeyData` does.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.to_bits());
    }
}

impl fmt::Debug for RawHandle {
    /// `"{index}v{generation}"`, or `"null"`, like `slotmap::KeyData`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            f.write_str("null")
        } else {
            write!(f, "{}v{}", self.index, self.generation)
        }
    }
}

impl From<KeyData> for RawHandle {
    fn from(key: KeyData) -> Self {
        let bits = key.as_ffi();
        // `KeyData` versions are always odd; `| 1` keeps that true without a branch.
        Self {
            index: bits as u32,
            generation: NonZeroU32::MIN | (bits >> 32) as u32,
        }
    }
}

// SAFETY:
// - every method and trait impl behaves exactly as on the `KeyData` it converts to:
//   `data()` is `KeyData::from_ffi(to_bits())` and `From<KeyData>` inverts it (both sides
//   have odd generations, so `from_ffi`'s `| 1` changes nothing);
// - `Eq` / `Ord` are derived over `(index, generation)` in `KeyData`'s field order, and
//   `Hash` writes the same single `u64` as `KeyData`'s;
// - `Default` is the null key, `KeyData::default()`.
unsafe impl slotmap::Key for RawHandle {
    #[inline]
    fn data(&self) -> KeyData {
        KeyData::from_ffi(self.to_bits())
    }
}

/// A typed generational handle to a `T` living in a tidyheap store.
///
/// A [`RawHandle`] plus a type tag. The tag is `PhantomData<fn() -> T>`, so `Handle<T>`
/// is `Copy`, `Send` and `Sync` for every `T` and its trait impls put no bounds on `T`.
/// Like `RawHandle` it is 8 bytes, `Option<Handle<T>>` is 8 bytes, and it implements
/// [`slotmap::Key`].
///
/// # Examples
///
/// ```
/// use tidyheap::{Handle, RawHandle};
///
/// struct Mesh; // no derives needed
/// let h: Handle<Mesh> = Handle::from_raw(RawHandle::NULL);
/// let copy = h;
/// assert_eq!(h, copy);
/// assert!(h.is_null());
/// assert_eq!(size_of::<Option<Handle<Mesh>>>(), 8);
/// ```
pub struct Handle<T: ?Sized> {
    raw: RawHandle,
    _type: PhantomData<fn() -> T>,
}

impl<T: ?Sized> Handle<T> {
    /// The null handle (see [`RawHandle::NULL`]).
    pub const NULL: Self = Self::from_raw(RawHandle::NULL);

    /// Tags a raw handle with the type `T`. Nothing is checked here; a store checks the
    /// handle when it is used.
    #[inline]
    pub const fn from_raw(raw: RawHandle) -> Self {
        Self {
            raw,
            _type: PhantomData,
        }
    }

    /// The untyped handle.
    #[inline]
    pub const fn raw(self) -> RawHandle {
        self.raw
    }

    /// The slot index.
    #[inline]
    pub const fn index(self) -> u32 {
        self.raw.index
    }

    /// The generation (always odd).
    #[inline]
    pub const fn generation(self) -> NonZeroU32 {
        self.raw.generation
    }

    /// True for the null handle.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.raw.is_null()
    }
}

impl<T: ?Sized> From<Handle<T>> for RawHandle {
    fn from(h: Handle<T>) -> Self {
        h.raw
    }
}

impl<T: ?Sized> Clone for Handle<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for Handle<T> {}

impl<T: ?Sized> PartialEq for Handle<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl<T: ?Sized> Eq for Handle<T> {}

impl<T: ?Sized> PartialOrd for Handle<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: ?Sized> Ord for Handle<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.raw.cmp(&other.raw)
    }
}

impl<T: ?Sized> Hash for Handle<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

impl<T: ?Sized> Default for Handle<T> {
    /// The null handle.
    fn default() -> Self {
        Self::NULL
    }
}

impl<T: ?Sized> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle({:?})", self.raw)
    }
}

impl<T: ?Sized> From<KeyData> for Handle<T> {
    fn from(key: KeyData) -> Self {
        Self::from_raw(RawHandle::from(key))
    }
}

// SAFETY:
// - every impl forwards to the `RawHandle` inside, whose `Key` impl behaves exactly as
//   `KeyData` (see there); the type tag carries no data.
unsafe impl<T: ?Sized> slotmap::Key for Handle<T> {
    #[inline]
    fn data(&self) -> KeyData {
        self.raw.data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slotmap::Key;

    #[test]
    fn sizes() {
        assert_eq!(size_of::<RawHandle>(), 8);
        assert_eq!(size_of::<Option<RawHandle>>(), 8);
        assert_eq!(size_of::<Handle<String>>(), 8);
        assert_eq!(size_of::<Option<Handle<String>>>(), 8);
        assert_eq!(size_of::<Option<Handle<str>>>(), 8);
    }

    #[test]
    fn handle_is_send_sync_for_any_t() {
        fn assert_send_sync<T: Send + Sync + Copy>() {}
        assert_send_sync::<Handle<std::rc::Rc<u8>>>();
        assert_send_sync::<Handle<std::cell::Cell<u8>>>();
    }

    #[test]
    fn constructors_keep_generations_odd() {
        for g in 1..=64u32 {
            let g = NonZeroU32::new(g).unwrap();
            assert_eq!(RawHandle::new(9, g).is_some(), g.get() % 2 == 1);
        }
        assert_eq!(RawHandle::from_odd(4, 7).generation().get(), 7);
        assert_eq!(
            RawHandle::from_odd(4, u32::MAX).generation().get(),
            u32::MAX
        );
        assert_eq!(RawHandle::from_bits(0x0000_0002_0000_0005), None);
        assert_eq!(RawHandle::from_bits(0), None);
    }

    #[test]
    fn keydata_round_trip_and_null() {
        for (i, g) in [(0, 1), (5, 3), (u32::MAX - 1, u32::MAX), (123, 0x8000_0001)] {
            let h = RawHandle::from_odd(i, g);
            let kd = h.data();
            assert_eq!(kd.as_ffi(), h.to_bits());
            assert_eq!(RawHandle::from(kd), h);
            assert!(!h.is_null() && !Key::is_null(&h));
        }
        assert_eq!(RawHandle::default().data(), KeyData::default());
        assert_eq!(RawHandle::from(KeyData::default()), RawHandle::NULL);
        assert!(Key::is_null(&RawHandle::NULL));
        assert_eq!(<RawHandle as Key>::null(), RawHandle::NULL);
        assert_eq!(format!("{:?}", RawHandle::NULL), "null");
        assert_eq!(format!("{:?}", RawHandle::from_odd(5, 3)), "5v3");
        assert_eq!(
            format!("{:?}", Handle::<u8>::from_raw(RawHandle::from_odd(5, 3))),
            "Handle(5v3)"
        );
    }

    #[test]
    fn eq_ord_hash_agree_with_keydata() {
        use std::hash::BuildHasher;
        let s = std::collections::hash_map::RandomState::new();
        let hs = [
            RawHandle::from_odd(1, 3),
            RawHandle::from_odd(1, 5),
            RawHandle::from_odd(2, 1),
            RawHandle::NULL,
        ];
        for a in hs {
            assert_eq!(s.hash_one(a), s.hash_one(a.data()));
            for b in hs {
                assert_eq!(a.cmp(&b), a.data().cmp(&b.data()));
                assert_eq!(a == b, a.data() == b.data());
                let (ta, tb) = (Handle::<str>::from_raw(a), Handle::<str>::from_raw(b));
                assert_eq!(ta.cmp(&tb), a.cmp(&b));
                assert_eq!(s.hash_one(ta), s.hash_one(a));
            }
        }
    }
}
