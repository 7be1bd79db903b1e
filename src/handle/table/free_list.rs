//! The shared free list: a lock-free LIFO stack of vacant slots with an ABA tag (see
//! "The free list" on [`HandleTable`]).

use super::HandleTable;
use crate::handle::slot::Slot;
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Free-list head index meaning "empty".
pub(super) const NIL: u32 = u32::MAX;

impl HandleTable {
    /// Pops the most recently freed slot, which the caller then owns.
    pub(super) fn pop_free(&self) -> Option<(u32, &Slot)> {
        let mut head = self.counters.free.load(Acquire);
        loop {
            let index = head as u32;
            if index == NIL {
                return None;
            }
            let Some(slot) = self.slot(index) else {
                unreachable!("free list holds index {index}, which was never issued");
            };
            // May be garbage if another thread popped `index` meanwhile; then the tag
            // has moved on and the compare-exchange below fails.
            let next = slot.next_free();
            let new = (head & !0xFFFF_FFFF).wrapping_add(1 << 32) | u64::from(next);
            match self
                .counters
                .free
                .compare_exchange_weak(head, new, AcqRel, Acquire)
            {
                Ok(_) => return Some((index, slot)),
                Err(now) => head = now,
            }
        }
    }

    /// Pushes the vacant slot `index`, which the caller owns, on the free list.
    pub(super) fn push_free(&self, index: u32, slot: &Slot) {
        self.push_chain(index, slot);
    }

    /// Pushes a chain of vacant slots the caller owns, already linked from slot `first`
    /// to `last`, on the free list with one compare-exchange.
    pub(super) fn push_chain(&self, first: u32, last: &Slot) {
        let mut head = self.counters.free.load(Relaxed);
        loop {
            last.set_next_free(head as u32);
            let new = (head & !0xFFFF_FFFF).wrapping_add(1 << 32) | u64::from(first);
            // Release publishes the links and the slots' vacant state to the next popper.
            match self
                .counters
                .free
                .compare_exchange_weak(head, new, Release, Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// The free list from head to tail. Only meaningful at quiescence.
    ///
    /// # Panics
    ///
    /// If the list is longer than the number of issued indexes (it has a cycle).
    #[cfg(test)]
    pub(crate) fn free_list(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut index = self.counters.free.load(Acquire) as u32;
        while index != NIL {
            assert!(
                out.len() < self.issued() as usize,
                "free list has a cycle: {out:?}"
            );
            out.push(index);
            index = self.slot(index).map_or(NIL, Slot::next_free);
        }
        out
    }

    /// Indexes issued so far.
    #[cfg(test)]
    pub(crate) fn issued(&self) -> u32 {
        self.counters.issued.load(Acquire)
    }
}
