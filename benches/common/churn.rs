//! Two allocator-level patterns of issue 11, shared by `benches/alloc.rs` and
//! `examples/report/`:
//!
//! * [`Churn`]: the realloc churn. 600 live blocks; one operation reallocates a random
//!   one to a random size in `[1, max]` (max 200 KB or 300 KB, so the sizes straddle the
//!   pool/large boundary at 256 KiB) and writes one byte in every page it grew by. The
//!   sequence of (block, size) is fixed by a seed, so every peer sees the same requests.
//! * [`burst_4k`]: 16 384 blocks of 4 KiB allocated (one byte written in each) and then
//!   all freed: one round. Allocators that hand emptied memory back to the OS at once
//!   fault every page again in the next round.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::peers::{self, Peer};

/// Live blocks of the realloc churn.
pub const CHURN_BLOCKS: usize = 600;
/// Blocks of one burst round.
pub const BURST_BLOCKS: usize = 16_384;
/// Size of a burst block.
pub const BURST_SIZE: usize = 4096;

const PAGE: usize = 4096;

/// The realloc churn's state: the live blocks and the fixed sequence of requests.
pub struct Churn {
    /// `(pointer, size)` of each live block.
    blocks: Vec<(*mut u8, usize)>,
    /// `(block index, new size)`, replayed cyclically.
    ops: Vec<(usize, usize)>,
    next: usize,
}

impl Churn {
    /// Allocates the 600 blocks on `peer` (sizes in `[1, max]`, seeded) and draws the
    /// request sequence.
    pub fn new<P: Peer>(peer: &P, max: usize, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let blocks = (0..CHURN_BLOCKS)
            .map(|_| {
                let size = rng.gen_range(1..=max);
                // SAFETY: a nonzero size.
                let p = unsafe { peers::alloc_or_die(peer, peers::layout(size)) };
                // SAFETY: the block holds `size >= 1` bytes.
                unsafe { p.write(1) };
                (p, size)
            })
            .collect();
        let ops = (0..8192)
            .map(|_| (rng.gen_range(0..CHURN_BLOCKS), rng.gen_range(1..=max)))
            .collect();
        Self {
            blocks,
            ops,
            next: 0,
        }
    }

    /// Runs `n` reallocations; returns their time.
    pub fn run<P: Peer>(&mut self, peer: &P, n: usize) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            let (i, new) = self.ops[self.next];
            self.next = (self.next + 1) % self.ops.len();
            let (p, old) = self.blocks[i];
            // SAFETY: `p` is a live block of `old` bytes from this peer; only the result
            // is used afterwards; `new` is nonzero.
            let q = unsafe { peer.realloc(black_box(p), peers::layout(old), new) };
            assert!(!q.is_null(), "out of memory reallocating to {new}");
            for off in (old..new).step_by(PAGE) {
                // SAFETY: `off < new`, inside the block.
                unsafe { q.add(off).write(1) };
            }
            self.blocks[i] = (q, new);
        }
        start.elapsed()
    }

    /// Frees every block.
    pub fn free<P: Peer>(self, peer: &P) {
        for (p, size) in self.blocks {
            // SAFETY: a live block of `size` bytes from this peer, freed once.
            unsafe { peer.dealloc(p, peers::layout(size)) };
        }
    }
}

/// One burst round on `peer`, using `ptrs` (at least [`BURST_BLOCKS`] long) for the
/// pointers; returns its time.
pub fn burst_4k<P: Peer>(peer: &P, ptrs: &mut [*mut u8]) -> Duration {
    let l = peers::layout(BURST_SIZE);
    let ptrs = &mut ptrs[..BURST_BLOCKS];
    let start = Instant::now();
    for slot in ptrs.iter_mut() {
        // SAFETY: a nonzero size.
        let p = unsafe { peers::alloc_or_die(peer, l) };
        // SAFETY: the block holds 4096 bytes.
        unsafe { p.write(1) };
        *slot = p;
    }
    for &p in ptrs.iter() {
        // SAFETY: each block is live with `l` and freed once.
        unsafe { peer.dealloc(black_box(p), l) };
    }
    start.elapsed()
}
