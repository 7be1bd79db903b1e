//! Database: many small records held, then deleted in batches in random order.
//!
//! `records` records of 50–200 B (uniform) are inserted and each is written in full.
//! Then three quarters of them, in a random order, are deleted in batches of `batch`;
//! after each batch `reinsert` new records come in (a table that shrinks while it still
//! takes inserts, so freed holes get reused). At that point the end-point figures are
//! taken (RSS rise, live bytes, fragmentation); then every remaining record is freed.
//! One operation is one allocation or one free.

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::Heap;

use super::peers::{self, Mi, Peer, Sys, layout};
use super::{Mode, Outcome, Probe, Workload};

/// Sizes of one run.
#[derive(Clone, Copy, Debug)]
struct Scale {
    /// Records inserted first.
    records: usize,
    /// Records deleted per batch.
    batch: usize,
    /// Records inserted after each batch.
    reinsert: usize,
}

impl Scale {
    /// The sizes for `mode`.
    fn new(mode: Mode) -> Self {
        let records = match mode {
            Mode::Test => 4_000,
            Mode::Report | Mode::Bench => 500_000,
        };
        let batch = if mode == Mode::Test { 100 } else { 1_000 };
        Self {
            records,
            batch,
            reinsert: batch / 4,
        }
    }
}

/// The request sequence every peer replays.
struct Script {
    /// Record sizes: the first `records`, then the reinserted ones in order.
    sizes: Vec<u32>,
    /// Deletion order: indices of first records, three quarters of them.
    deletions: Vec<u32>,
}

impl Script {
    /// The sequence for `scale`, from a fixed seed.
    fn new(scale: &Scale) -> Self {
        let mut rng = SmallRng::seed_from_u64(0xdb);
        let mut order: Vec<u32> = (0..scale.records as u32).collect();
        order.shuffle(&mut rng);
        order.truncate(scale.records - scale.records / 4);
        let batches = order.len().div_ceil(scale.batch);
        let total = scale.records + batches * scale.reinsert;
        let sizes = (0..total).map(|_| rng.gen_range(50..=200)).collect();
        Self {
            sizes,
            deletions: order,
        }
    }

    /// Operations in one run: every record is allocated once and freed once.
    fn ops(&self) -> u64 {
        2 * self.sizes.len() as u64
    }
}

/// The workload, sized and scripted.
pub struct Database {
    scale: Scale,
    script: Script,
    /// tidyheap's heap, kept from run to run like the other peers' process heaps.
    heap: Heap,
}

impl Database {
    /// The workload for `mode`.
    pub fn new(mode: Mode) -> Self {
        let scale = Scale::new(mode);
        let script = Script::new(&scale);
        Self {
            scale,
            script,
            heap: Heap::new(),
        }
    }
}

impl Workload for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    fn peers(&self) -> &'static [&'static str] {
        &peers::NAMES
    }

    fn size(&self) -> String {
        self.scale.records.to_string()
    }

    fn ops(&self) -> u64 {
        self.script.ops()
    }

    fn run(&self, peer: &str, probe: bool) -> Outcome {
        let (scale, script) = (&self.scale, &self.script);
        match peer {
            "tidyheap" if probe => kernel(&Heap::new(), scale, script, probe),
            "tidyheap" => kernel(&self.heap, scale, script, probe),
            "system" => kernel(&Sys, scale, script, probe),
            "mimalloc" => kernel(&Mi, scale, script, probe),
            _ => panic!("unknown peer {peer}"),
        }
    }
}

fn kernel<P: Peer>(peer: &P, scale: &Scale, script: &Script, probe: bool) -> Outcome {
    // Driver memory first, touched, so it is not part of the RSS rise.
    let mut recs: Vec<(*mut u8, u32)> = vec![(std::ptr::null_mut(), 1); script.sizes.len()];
    let mut probe = Probe::new(probe);
    let mut live = 0usize;
    let start = Instant::now();
    let insert = |recs: &mut [(*mut u8, u32)], i: usize, live: &mut usize| {
        let size = script.sizes[i];
        // SAFETY: sizes are 50..=200, nonzero; the record is written inside its bounds.
        let p = unsafe {
            let p = peers::alloc_or_die(peer, layout(size as usize));
            p.write_bytes(i as u8, size as usize);
            p
        };
        recs[i] = (p, size);
        *live += size as usize;
    };
    for i in 0..scale.records {
        insert(&mut recs, i, &mut live);
    }
    probe.sample();
    let mut next = scale.records;
    for batch in script.deletions.chunks(scale.batch) {
        for &i in batch {
            let (p, size) = std::mem::replace(&mut recs[i as usize], (std::ptr::null_mut(), 0));
            // SAFETY: record `i` is live (each index is deleted once) with this layout.
            unsafe { peer.dealloc(p, layout(size as usize)) };
            live -= size as usize;
        }
        for _ in 0..scale.reinsert {
            insert(&mut recs, next, &mut live);
            next += 1;
        }
        probe.sample();
    }
    let mut elapsed = start.elapsed();
    let end_rss = probe.sample();
    let end_lazy_free = probe.lazy_free_rise();
    let own_frag = probe.is_on().then(|| peer.own_fragmentation()).flatten();
    let start = Instant::now();
    for &(p, size) in &recs {
        if !p.is_null() {
            // SAFETY: a live record with this layout, freed once.
            unsafe { peer.dealloc(p, layout(size as usize)) };
        }
    }
    elapsed += start.elapsed();
    Outcome {
        elapsed,
        ops: script.ops(),
        peak_rss: probe.peak(),
        end_rss,
        end_lazy_free,
        end_live: live,
        own_frag,
        compaction: None,
    }
}
