//! A span's *home set*: which of its carved blocks are home (free, kept by the span),
//! as a bitmap in address order.
//!
//! A linked home list made every refill chase one link per block, a dependent cache
//! miss each once random frees had scrambled the list (issue 12, the database
//! workload). The bitmap reads no block: a refill takes the lowest set bits word by
//! word (`trailing_zeros`), so it hands blocks out in address order, and a free sets one
//! bit, which also tells an exact double free (the bit is already set) from a first one.
//!
//! Only touched under the owning arena's lock, through `SpanState::home`.

use crate::size_class;

/// Words of the bitmap.
const HOME_WORDS: usize = 64;
/// Most blocks a span may hold: the bitmap has a bit for each.
pub(crate) const MAX_HOME_BLOCKS: usize = HOME_WORDS * u64::BITS as usize;

const _: () = {
    let mut c = 0;
    while c < size_class::NUM_CLASSES {
        assert!(
            size_class::span_bytes_const(c) / size_class::size_const(c) <= MAX_HOME_BLOCKS,
            "every span's blocks fit the home bitmap"
        );
        c += 1;
    }
};

/// The set of home blocks of one span, by block index (see the module docs).
///
/// Invariant H1: no word below `lo` has a bit set.
///
/// The hint comes first, so it shares a cache line with the lowest words (a free's
/// insert reads and writes both).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct HomeSet {
    /// The lowest word that may have a bit set (H1); `HOME_WORDS` when the set is
    /// known to be empty.
    lo: u32,
    words: [u64; HOME_WORDS],
}

impl HomeSet {
    /// The empty set.
    pub(crate) const fn new() -> Self {
        Self {
            lo: HOME_WORDS as u32,
            words: [0; HOME_WORDS],
        }
    }

    /// Empties the set.
    pub(crate) fn clear(&mut self) {
        self.words = [0; HOME_WORDS];
        self.lo = HOME_WORDS as u32;
    }

    /// Adds block `i` (below [`MAX_HOME_BLOCKS`]); `false`, changing nothing, if it
    /// was already in the set.
    #[inline]
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let w = i / u64::BITS as usize;
        let bit = 1u64 << (i % u64::BITS as usize);
        let word = &mut self.words[w];
        if *word & bit != 0 {
            return false;
        }
        *word |= bit;
        self.lo = self.lo.min(w as u32);
        true
    }

    /// Adds the blocks of `mask` to word `w` of the set (blocks `64·w + bit`, below
    /// [`MAX_HOME_BLOCKS`]): one update for up to 64 blocks; `Err(i)`, changing
    /// nothing, if block `i` of them is already in the set.
    #[inline]
    pub(crate) fn insert_word(&mut self, w: usize, mask: u64) -> Result<(), usize> {
        let word = &mut self.words[w];
        let both = *word & mask;
        if both != 0 {
            return Err(w * u64::BITS as usize + both.trailing_zeros() as usize);
        }
        *word |= mask;
        self.lo = self.lo.min(w as u32);
        Ok(())
    }

    /// Takes every block out of the set, highest index first, calling `f` with each;
    /// returns how many it took. Reads only the words from `lo` on (H1).
    #[inline]
    pub(crate) fn drain_highest(&mut self, mut f: impl FnMut(usize)) -> usize {
        let mut got = 0;
        for w in (self.lo as usize..HOME_WORDS).rev() {
            let mut word = core::mem::take(&mut self.words[w]);
            while word != 0 {
                let bit = (u64::BITS - 1 - word.leading_zeros()) as usize;
                f(w * u64::BITS as usize + bit);
                word &= !(1u64 << bit);
                got += 1;
            }
        }
        self.lo = HOME_WORDS as u32;
        got
    }

    /// Takes up to `n` blocks out of the set, lowest index first, calling `f` with
    /// each; returns how many it took (fewer than `n` only when the set ran empty).
    #[inline]
    pub(crate) fn take_lowest(&mut self, n: usize, mut f: impl FnMut(usize)) -> usize {
        let mut got = 0;
        let mut w = self.lo as usize;
        while got < n && w < HOME_WORDS {
            let mut word = self.words[w];
            while word != 0 && got < n {
                f(w * u64::BITS as usize + word.trailing_zeros() as usize);
                word &= word - 1;
                got += 1;
            }
            self.words[w] = word;
            if word == 0 {
                w += 1;
            }
        }
        // H1: every word below `w` is now empty.
        self.lo = w as u32;
        got
    }

    /// Removes every block from index `top` on.
    pub(crate) fn truncate(&mut self, top: usize) {
        let w = top / u64::BITS as usize;
        if w >= HOME_WORDS {
            return;
        }
        self.words[w] &= (1u64 << (top % u64::BITS as usize)) - 1;
        self.words[w + 1..].fill(0);
    }

    /// Moves every block of `other` into this set, leaving `other` empty; `Err(i)`,
    /// with the sets unchanged from block `i`'s word on, if block `i` is in both (a
    /// block that is home twice: a double free).
    pub(crate) fn absorb(&mut self, other: &mut HomeSet) -> Result<(), usize> {
        for w in other.lo as usize..HOME_WORDS {
            let add = other.words[w];
            if add == 0 {
                continue;
            }
            let both = self.words[w] & add;
            if both != 0 {
                return Err(w * u64::BITS as usize + both.trailing_zeros() as usize);
            }
            self.words[w] |= add;
            self.lo = self.lo.min(w as u32);
            other.words[w] = 0;
            other.lo = w as u32 + 1;
        }
        other.lo = HOME_WORDS as u32;
        Ok(())
    }

    /// Whether block `i` is in the set.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words[i / u64::BITS as usize] & (1 << (i % u64::BITS as usize)) != 0
    }
}
