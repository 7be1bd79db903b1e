//! ML: large tensors of 1–256 MiB, reallocated often.
//!
//! `tensors` tensors take turns; each step gives the next one a new size, log-uniform
//! in `[min, max]` and page-rounded, with `realloc` (contents kept), then writes one
//! byte in every page of it (the step's computation filling the tensor). At most
//! `tensors × max` bytes are live, plus one tensor's copy while `realloc` moves it:
//! about 1 GiB at full size. One operation is one reallocation (the first step of each
//! tensor is its allocation). The end point is after the last step, with every tensor
//! live.

use std::alloc::Layout;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;

use super::peers::{self, Mi, Peer, Sys};
use super::{Mode, Outcome, Probe, Workload};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// Tensor alignment.
const ALIGN: usize = 64;

/// The workload, sized and scripted.
pub struct Ml {
    tensors: usize,
    max: usize,
    /// New size of the tensor `step % tensors` at each step.
    sizes: Vec<usize>,
    /// tidyheap's heap, kept from run to run like the other peers' process heaps.
    heap: Heap,
}

impl Ml {
    /// The workload for `mode`.
    pub fn new(mode: Mode) -> Self {
        let (tensors, steps, min, max) = match mode {
            Mode::Test => (2, 6, 64 << 10, MIB),
            Mode::Report | Mode::Bench => (3, 24, MIB, 256 * MIB),
        };
        let mut rng = SmallRng::seed_from_u64(0x7e45);
        let (lo, hi) = (min as f64, max as f64);
        let sizes = (0..steps)
            .map(|_| {
                let s = (lo * (hi / lo).powf(rng.r#gen::<f64>())) as usize;
                s.next_multiple_of(PAGE).min(max)
            })
            .collect();
        Self {
            tensors,
            max,
            sizes,
            heap: Heap::new(),
        }
    }
}

impl Workload for Ml {
    fn name(&self) -> &'static str {
        "ml_tensors"
    }

    fn peers(&self) -> &'static [&'static str] {
        &peers::NAMES
    }

    fn size(&self) -> String {
        format!("{}MiB", self.max / MIB)
    }

    fn ops(&self) -> u64 {
        self.sizes.len() as u64
    }

    fn run(&self, peer: &str, probe: bool) -> Outcome {
        match peer {
            "tidyheap" if probe => kernel(&Heap::new(), self, probe),
            "tidyheap" => kernel(&self.heap, self, probe),
            "system" => kernel(&Sys, self, probe),
            "mimalloc" => kernel(&Mi, self, probe),
            _ => panic!("unknown peer {peer}"),
        }
    }
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("valid layout")
}

fn kernel<P: Peer>(peer: &P, w: &Ml, probe: bool) -> Outcome {
    let mut t: Vec<(*mut u8, usize)> = vec![(std::ptr::null_mut(), 0); w.tensors];
    let mut probe = Probe::new(probe);
    let start = Instant::now();
    for (step, &size) in w.sizes.iter().enumerate() {
        let (p, old) = t[step % w.tensors];
        let q = if p.is_null() {
            // SAFETY: sizes are at least one page.
            unsafe { peers::alloc_or_die(peer, layout(size)) }
        } else {
            // SAFETY:
            // - `p` is live with `layout(old)` and only the result is used afterwards;
            // - `size` is nonzero and far below `isize::MAX`.
            let q = unsafe { peer.realloc(p, layout(old), size) };
            assert!(!q.is_null(), "out of memory reallocating to {size}");
            q
        };
        for off in (0..size).step_by(PAGE) {
            // SAFETY: `off < size`, inside the block.
            unsafe { q.add(off).write_volatile(step as u8) };
        }
        t[step % w.tensors] = (q, size);
        probe.sample();
    }
    let elapsed = start.elapsed();
    let end_rss = probe.sample();
    let end_lazy_free = probe.lazy_free_rise();
    let end_live = t.iter().map(|&(_, s)| s).sum();
    for &(p, size) in &t {
        if !p.is_null() {
            // SAFETY: live with this layout, freed once.
            unsafe { peer.dealloc(p, layout(size)) };
        }
    }
    Outcome {
        elapsed,
        ops: w.sizes.len() as u64,
        peak_rss: probe.peak(),
        end_rss,
        end_lazy_free,
        end_live,
        own_frag: None,
        compaction: None,
    }
}
