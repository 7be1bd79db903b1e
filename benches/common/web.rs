//! Web server: a burst of allocations per request, all freed at the request's end.
//!
//! Each request makes 32–256 allocations (70 % of 16–128 B, 25 % of 128 B–1 KiB, 5 % of
//! 1–8 KiB, log-uniform inside each band) and writes the first 8 bytes of each (a header
//! stamp), then the request ends and everything it allocated goes at once. Peers:
//!
//! * `tidyheap_frame`: one frame of a `FrameArena` (one frame in flight) per request;
//! * `tidyheap`, `system`, `mimalloc`: malloc-style, each block freed at the request's
//!   end (in allocation order);
//! * `bumpalo`: `Bump::reset` per request.
//!
//! One operation is one allocation (its free or the reset included). The end point is
//! after the last request, when nothing is live: the RSS rise there is what the
//! allocator kept.

use std::alloc::Layout;
use std::time::Instant;

use bumpalo::Bump;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;
use tidyheap::frame::{FrameArena, FrameConfig};

use super::peers::{self, Mi, Peer, Sys, layout};
use super::{Mode, Outcome, Probe, Workload};

/// Every peer of this workload, in table order.
pub const NAMES: [&str; 5] = [
    "tidyheap_frame",
    "tidyheap",
    "system",
    "mimalloc",
    "bumpalo",
];

/// The request sequence every peer replays.
struct Script {
    /// Allocation sizes of all requests, back to back.
    sizes: Vec<u32>,
    /// End offset in `sizes` of each request.
    ends: Vec<u32>,
    /// The most allocations of one request.
    max_burst: usize,
}

/// A log-uniform size in `[lo, hi)`.
fn log_uniform(rng: &mut SmallRng, lo: f64, hi: f64) -> u32 {
    (lo * (hi / lo).powf(rng.r#gen::<f64>())) as u32
}

impl Script {
    /// The sequence for `requests` requests, from a fixed seed.
    fn new(requests: usize) -> Self {
        let mut rng = SmallRng::seed_from_u64(0x3eb);
        let mut sizes = Vec::new();
        let mut ends = Vec::with_capacity(requests);
        let mut max_burst = 0;
        for _ in 0..requests {
            let n = rng.gen_range(32..=256);
            max_burst = usize::max(max_burst, n);
            for _ in 0..n {
                let size = match rng.gen_range(0..100) {
                    0..70 => log_uniform(&mut rng, 16.0, 128.0),
                    70..95 => log_uniform(&mut rng, 128.0, 1024.0),
                    _ => log_uniform(&mut rng, 1024.0, 8192.0),
                };
                sizes.push(size);
            }
            ends.push(sizes.len() as u32);
        }
        Self {
            sizes,
            ends,
            max_burst,
        }
    }

    /// The requests, as slices of sizes.
    fn requests(&self) -> impl Iterator<Item = &[u32]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.sizes[start..end as usize];
            start = end as usize;
            r
        })
    }
}

/// Writes the 8-byte stamp at the start of a fresh block.
///
/// # Safety
///
/// `p` points to at least 8 writable bytes aligned to 8.
#[inline(always)]
unsafe fn stamp(p: *mut u8, v: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { p.cast::<u64>().write(v) };
}

/// The workload, sized and scripted.
pub struct Web {
    requests: usize,
    script: Script,
    /// tidyheap's heap, kept from run to run like the other peers' process heaps.
    heap: Heap,
}

impl Web {
    /// The workload for `mode`.
    pub fn new(mode: Mode) -> Self {
        let requests = match mode {
            Mode::Test => 50,
            Mode::Report | Mode::Bench => 20_000,
        };
        Self {
            requests,
            script: Script::new(requests),
            heap: Heap::new(),
        }
    }
}

impl Workload for Web {
    fn name(&self) -> &'static str {
        "web_server"
    }

    fn peers(&self) -> &'static [&'static str] {
        &NAMES
    }

    fn size(&self) -> String {
        self.requests.to_string()
    }

    fn ops(&self) -> u64 {
        self.script.sizes.len() as u64
    }

    fn run(&self, peer: &str, probe: bool) -> Outcome {
        let script = &self.script;
        match peer {
            "tidyheap_frame" => frame_kernel(script, probe),
            "tidyheap" if probe => malloc_kernel(&Heap::new(), script, probe),
            "tidyheap" => malloc_kernel(&self.heap, script, probe),
            "system" => malloc_kernel(&Sys, script, probe),
            "mimalloc" => malloc_kernel(&Mi, script, probe),
            "bumpalo" => bump_kernel(script, probe),
            _ => panic!("unknown peer {peer}"),
        }
    }
}

fn finish(start: Instant, script: &Script, mut probe: Probe) -> Outcome {
    let elapsed = start.elapsed();
    let end_rss = probe.sample();
    let end_lazy_free = probe.lazy_free_rise();
    Outcome {
        elapsed,
        ops: script.sizes.len() as u64,
        peak_rss: probe.peak(),
        end_rss,
        end_lazy_free,
        end_live: 0,
        own_frag: None,
        compaction: None,
    }
}

fn malloc_kernel<P: Peer>(peer: &P, script: &Script, probe: bool) -> Outcome {
    let mut blocks: Vec<(*mut u8, Layout)> = Vec::with_capacity(script.max_burst);
    let mut probe = Probe::new(probe);
    let start = Instant::now();
    for (r, req) in script.requests().enumerate() {
        for &size in req {
            let l = layout(size as usize);
            // SAFETY: sizes are at least 16 B, aligned to 8: room for the stamp.
            let p = unsafe {
                let p = peers::alloc_or_die(peer, l);
                stamp(p, r as u64);
                p
            };
            blocks.push((p, l));
        }
        probe.sample();
        for (p, l) in blocks.drain(..) {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { peer.dealloc(p, l) };
        }
    }
    finish(start, script, probe)
}

fn frame_kernel(script: &Script, probe: bool) -> Outcome {
    let mut arena = FrameArena::with_config(FrameConfig::new().with_frames_in_flight(1))
        .expect("valid frame config");
    let mut probe = Probe::new(probe);
    let start = Instant::now();
    for (r, req) in script.requests().enumerate() {
        let frame = arena.begin_frame();
        for &size in req {
            let p = frame
                .alloc_layout(layout(size as usize))
                .expect("frame alloc");
            // SAFETY: a fresh block of at least 16 B aligned to 8.
            unsafe { stamp(p.as_ptr(), r as u64) };
        }
        probe.sample();
        frame.end();
    }
    finish(start, script, probe)
}

fn bump_kernel(script: &Script, probe: bool) -> Outcome {
    let mut bump = Bump::new();
    let mut probe = Probe::new(probe);
    let start = Instant::now();
    for (r, req) in script.requests().enumerate() {
        bump.reset();
        for &size in req {
            let p = bump.alloc_layout(layout(size as usize));
            // SAFETY: a fresh block of at least 16 B aligned to 8.
            unsafe { stamp(p.as_ptr(), r as u64) };
        }
        probe.sample();
    }
    finish(start, script, probe)
}
