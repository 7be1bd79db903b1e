//! Game engine: per-frame temporaries, long-lived assets of mixed sizes streamed in and
//! out through handles, and (for tidyheap) a compaction budget every frame.
//!
//! Every frame:
//!
//! 1. `temps` temporaries of 16–256 B are allocated and stamped (visibility lists,
//!    command buffers...); they live until the frame's end;
//! 2. assets are loaded: their number per frame follows a wave (0.1× to 1.9× of the
//!    mean `loads`, two periods per run, ending in a sparse phase), their sizes are 60 %
//!    64 B–1 KiB, 30 % 1–16 KiB, 10 % 16–64 KiB (log-uniform), and each is copied in
//!    from a source buffer (the "file"); each asset also gets a small metadata record
//!    reached through a handle;
//! 3. `reads` random live assets are read through their handles;
//! 4. assets whose time is up are unloaded (70 % live 30–300 frames, 25 % 300–1200,
//!    5 % for good);
//! 5. the temporaries are read back and released;
//! 6. `tidyheap` only: one `Heap::compact` pass with a budget of 200 µs and 256 KiB.
//!
//! Every peer's [`Outcome::compaction`] reports what compaction cost (wall and thread
//! CPU time inside `Heap::compact`) and what it reclaimed (`bytes_released`): beside
//! frames/s, the honest price of the memory it gives back. The peers that never compact
//! report zero time and nothing reclaimed.
//!
//! Peers:
//!
//! * `tidyheap`: asset bytes in movable blocks (`Heap::insert_bytes`, `RawHandle`),
//!   metadata in a `Store<Meta>` on the same heap, temporaries in a `FrameArena`;
//! * `tidyheap_nocompact`: the same without the compaction passes (what they cost, and
//!   what they save);
//! * `system`, `mimalloc`: asset bytes and temporaries through the allocator (malloc and
//!   free), metadata in a `slotmap::SlotMap` whose entries point at the bytes;
//! * `mimalloc_bumpalo`: as `mimalloc`, but temporaries in a `bumpalo::Bump` reset every
//!   frame (the strongest off-the-shelf combination).
//!
//! One operation is one frame. The end point is after the last frame, with its assets
//! still loaded; unloading them is not timed.

use std::alloc::Layout;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bumpalo::Bump;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::frame::{FrameArena, FrameConfig};
use tidyheap::{Budget, Handle, Heap, RawHandle, Store};

use super::measure::thread_cpu_time;
use super::peers::{self, Mi, Peer, Sys, layout};
use super::{CompactionCost, Mode, Outcome, Probe, Workload};

/// Every peer of this workload, in table order.
pub const NAMES: [&str; 5] = [
    "tidyheap",
    "tidyheap_nocompact",
    "system",
    "mimalloc",
    "mimalloc_bumpalo",
];

/// tidyheap's compaction budget per frame.
pub const BUDGET: Budget = Budget::time(Duration::from_micros(200)).with_bytes(256 << 10);

/// The largest asset.
const MAX_ASSET: usize = 64 << 10;

/// The workload, sized.
pub struct Game {
    frames: usize,
    /// Mean assets loaded per frame.
    loads: f64,
    /// Temporaries per frame.
    temps: usize,
    /// Asset reads per frame.
    reads: usize,
    /// Bytes assets are loaded from.
    source: Vec<u8>,
    /// tidyheap's heaps (with and without compaction), each kept from run to run like
    /// the other peers' process heaps.
    heaps: [Arc<Heap>; 2],
}

impl Game {
    /// The workload for `mode`.
    pub fn new(mode: Mode) -> Self {
        let (frames, loads, temps, reads) = match mode {
            Mode::Test => (40, 4.0, 16, 4),
            Mode::Report | Mode::Bench => (2_000, 20.0, 256, 64),
        };
        Self {
            frames,
            loads,
            temps,
            reads,
            source: (0..MAX_ASSET).map(|i| (i * 31 % 251) as u8).collect(),
            heaps: [Arc::new(Heap::new()), Arc::new(Heap::new())],
        }
    }
}

impl Workload for Game {
    fn name(&self) -> &'static str {
        "game_engine"
    }

    fn peers(&self) -> &'static [&'static str] {
        &NAMES
    }

    fn size(&self) -> String {
        self.frames.to_string()
    }

    fn ops(&self) -> u64 {
        self.frames as u64
    }

    fn run(&self, peer: &str, probe: bool) -> Outcome {
        match peer {
            "tidyheap" | "tidyheap_nocompact" => {
                let compact = peer == "tidyheap";
                let heap = if probe {
                    Arc::new(Heap::new())
                } else {
                    self.heaps[usize::from(compact)].clone()
                };
                let mut assets = TidyAssets {
                    meta: Store::new_in(heap.clone()),
                    heap,
                    compact,
                    cost: CompactionCost::default(),
                };
                let arena = FrameArena::with_config(FrameConfig::new().with_frames_in_flight(1))
                    .expect("valid frame config");
                let mut scratch = FrameScratch {
                    arena,
                    ptrs: Vec::with_capacity(self.temps),
                };
                kernel(self, &mut assets, &mut scratch, probe)
            }
            "system" => kernel(
                self,
                &mut SlotAssets::new(&Sys),
                &mut MallocScratch::new(&Sys, self.temps),
                probe,
            ),
            "mimalloc" => kernel(
                self,
                &mut SlotAssets::new(&Mi),
                &mut MallocScratch::new(&Mi, self.temps),
                probe,
            ),
            "mimalloc_bumpalo" => kernel(
                self,
                &mut SlotAssets::new(&Mi),
                &mut BumpScratch {
                    bump: Bump::new(),
                    ptrs: Vec::with_capacity(self.temps),
                },
                probe,
            ),
            _ => panic!("unknown peer {peer}"),
        }
    }
}

/// Long-lived assets behind handles.
trait Assets {
    /// What the game holds for an asset.
    type Key: Copy;
    /// Loads a copy of `data`.
    fn load(&mut self, data: &[u8]) -> Self::Key;
    /// Unloads a live asset.
    fn unload(&mut self, k: Self::Key);
    /// Reads a live asset: its first 8 bytes and its last byte.
    fn read(&self, k: Self::Key) -> u64;
    /// Work at the end of each frame.
    fn end_frame(&mut self) {}
    /// The allocator's own fragmentation figure, where it has one.
    fn own_frag(&self) -> Option<f64> {
        None
    }
    /// What compaction cost and reclaimed so far (nothing, for allocators without it).
    fn compaction(&self) -> CompactionCost {
        CompactionCost::default()
    }
}

/// Sums the first 8 bytes (as a `u64`) and the last byte of an asset.
fn digest(bytes: &[u8]) -> u64 {
    let head: [u8; 8] = bytes[..8].try_into().expect("assets are at least 64 B");
    u64::from_ne_bytes(head).wrapping_add(u64::from(bytes[bytes.len() - 1]))
}

/// What a `Store` entry holds about an asset.
#[derive(Clone, Copy)]
struct Meta {
    data: RawHandle,
}

struct TidyAssets {
    heap: Arc<Heap>,
    meta: Store<Meta>,
    /// Whether each frame ends with a compaction pass.
    compact: bool,
    /// Time and thread CPU spent in those passes, and the bytes they released.
    cost: CompactionCost,
}

impl Assets for TidyAssets {
    type Key = Handle<Meta>;

    fn load(&mut self, data: &[u8]) -> Handle<Meta> {
        let data = self.heap.insert_bytes(data).expect("insert_bytes");
        self.meta.insert(Meta { data })
    }

    fn unload(&mut self, k: Handle<Meta>) {
        let m = self.meta.remove(k).expect("live asset");
        self.heap.free_handle(m.data).expect("live asset bytes");
    }

    fn read(&self, k: Handle<Meta>) -> u64 {
        let data = self.meta.get(k).expect("live asset").data;
        digest(&self.heap.read(data).expect("live asset bytes"))
    }

    fn end_frame(&mut self) {
        if self.compact {
            let (start, cpu) = (Instant::now(), thread_cpu_time());
            let r = black_box(self.heap.compact(BUDGET));
            self.cost.cpu += thread_cpu_time() - cpu;
            self.cost.time += start.elapsed();
            self.cost.reclaimed += r.bytes_released;
        }
    }

    fn own_frag(&self) -> Option<f64> {
        Some(self.heap.fragmentation().ratio)
    }

    fn compaction(&self) -> CompactionCost {
        self.cost
    }
}

/// An asset's bytes, from a peer allocator.
struct Blob {
    ptr: *mut u8,
    len: usize,
}

impl Blob {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.len, 16).expect("valid layout")
    }
}

struct SlotAssets<'p, P> {
    peer: &'p P,
    map: SlotMap<DefaultKey, Blob>,
}

impl<'p, P: Peer> SlotAssets<'p, P> {
    fn new(peer: &'p P) -> Self {
        Self {
            peer,
            map: SlotMap::new(),
        }
    }
}

impl<P: Peer> Assets for SlotAssets<'_, P> {
    type Key = DefaultKey;

    fn load(&mut self, data: &[u8]) -> DefaultKey {
        let len = data.len();
        let l = Layout::from_size_align(len, 16).expect("valid layout");
        // SAFETY:
        // - assets are at least 64 B, so `l` has a nonzero size;
        // - the fresh block holds `len` bytes and cannot overlap `data`.
        let ptr = unsafe {
            let p = peers::alloc_or_die(self.peer, l);
            core::ptr::copy_nonoverlapping(data.as_ptr(), p, len);
            p
        };
        self.map.insert(Blob { ptr, len })
    }

    fn unload(&mut self, k: DefaultKey) {
        let b = self.map.remove(k).expect("live asset");
        // SAFETY: the blob's block is live with this layout; removed from the map, so
        // it is freed once.
        unsafe { self.peer.dealloc(b.ptr, b.layout()) };
    }

    fn read(&self, k: DefaultKey) -> u64 {
        let b = self.map.get(k).expect("live asset");
        // SAFETY: a live block of `len` initialised bytes.
        digest(unsafe { core::slice::from_raw_parts(b.ptr, b.len) })
    }
}

/// Per-frame temporaries.
trait Scratch {
    /// Allocates one temporary per entry of `sizes` and stamps each, runs `body`, then
    /// reads the stamps back and releases them all. Returns the stamps' sum.
    fn frame(&mut self, sizes: &[u32], body: impl FnOnce()) -> u64;
}

/// Stamps a fresh temporary with `v` and remembers it.
///
/// # Safety
///
/// `p` points to at least 8 writable bytes aligned to 8.
unsafe fn stamp(ptrs: &mut Vec<*mut u8>, p: *mut u8, v: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { p.cast::<u64>().write(v) };
    ptrs.push(p);
}

/// Sums the stamps of `ptrs`.
///
/// # Safety
///
/// Every pointer was stamped by [`stamp`] and its block is still live.
unsafe fn sum_stamps(ptrs: &[*mut u8]) -> u64 {
    ptrs.iter()
        // SAFETY: live, stamped blocks (caller).
        .map(|p| unsafe { p.cast::<u64>().read() })
        .fold(0, u64::wrapping_add)
}

struct FrameScratch {
    arena: FrameArena,
    ptrs: Vec<*mut u8>,
}

impl Scratch for FrameScratch {
    fn frame(&mut self, sizes: &[u32], body: impl FnOnce()) -> u64 {
        let frame = self.arena.begin_frame();
        self.ptrs.clear();
        for (i, &s) in sizes.iter().enumerate() {
            let p = frame.alloc_layout(layout(s as usize)).expect("frame alloc");
            // SAFETY: a fresh block of at least 16 B aligned to 8.
            unsafe { stamp(&mut self.ptrs, p.as_ptr(), i as u64) };
        }
        body();
        // SAFETY: stamped above; the frame is still open.
        let sum = unsafe { sum_stamps(&self.ptrs) };
        frame.end();
        sum
    }
}

struct MallocScratch<'p, P> {
    peer: &'p P,
    ptrs: Vec<*mut u8>,
}

impl<'p, P: Peer> MallocScratch<'p, P> {
    fn new(peer: &'p P, temps: usize) -> Self {
        Self {
            peer,
            ptrs: Vec::with_capacity(temps),
        }
    }
}

impl<P: Peer> Scratch for MallocScratch<'_, P> {
    fn frame(&mut self, sizes: &[u32], body: impl FnOnce()) -> u64 {
        self.ptrs.clear();
        for (i, &s) in sizes.iter().enumerate() {
            // SAFETY: sizes are at least 16 B; the block is aligned to 8.
            unsafe {
                let p = peers::alloc_or_die(self.peer, layout(s as usize));
                stamp(&mut self.ptrs, p, i as u64);
            }
        }
        body();
        // SAFETY: stamped above, not freed yet.
        let sum = unsafe { sum_stamps(&self.ptrs) };
        for (&p, &s) in self.ptrs.iter().zip(sizes) {
            // SAFETY: allocated above with this layout, freed once.
            unsafe { self.peer.dealloc(p, layout(s as usize)) };
        }
        sum
    }
}

struct BumpScratch {
    bump: Bump,
    ptrs: Vec<*mut u8>,
}

impl Scratch for BumpScratch {
    fn frame(&mut self, sizes: &[u32], body: impl FnOnce()) -> u64 {
        self.bump.reset();
        self.ptrs.clear();
        for (i, &s) in sizes.iter().enumerate() {
            let p = self.bump.alloc_layout(layout(s as usize));
            // SAFETY: a fresh block of at least 16 B aligned to 8.
            unsafe { stamp(&mut self.ptrs, p.as_ptr(), i as u64) };
        }
        body();
        // SAFETY: stamped above; the bump is not reset before the next frame.
        unsafe { sum_stamps(&self.ptrs) }
    }
}

/// An asset size: mostly small blobs, some medium buffers, a few large textures.
fn asset_size(rng: &mut SmallRng) -> usize {
    let (lo, hi): (f64, f64) = match rng.gen_range(0..100) {
        0..60 => (64.0, 1024.0),
        60..90 => (1024.0, 16384.0),
        _ => (16384.0, MAX_ASSET as f64),
    };
    (lo * (hi / lo).powf(rng.r#gen::<f64>())) as usize
}

/// How many frames an asset stays: mostly short, some medium, a few for good.
fn lifetime(rng: &mut SmallRng) -> usize {
    match rng.gen_range(0..100) {
        0..70 => rng.gen_range(30..300),
        70..95 => rng.gen_range(300..1200),
        _ => usize::MAX,
    }
}

/// A loaded asset as the game tracks it.
struct Live<K> {
    key: K,
    len: usize,
    unload_at: usize,
}

fn kernel<A: Assets, S: Scratch>(
    g: &Game,
    assets: &mut A,
    scratch: &mut S,
    probe: bool,
) -> Outcome {
    let mut rng = SmallRng::seed_from_u64(0x6a3e);
    let mut live: Vec<Live<A::Key>> = Vec::with_capacity(g.frames * g.loads as usize * 2);
    let mut temps: Vec<u32> = Vec::with_capacity(g.temps);
    let wave = g.frames as f64 / 2.0;
    let mut live_bytes = 0usize;
    let mut sink = 0u64;
    let mut probe = Probe::new(probe);
    let start = Instant::now();
    for frame in 0..g.frames {
        temps.clear();
        temps.extend((0..g.temps).map(|_| rng.gen_range(16..=256u32)));
        let mut reads = 0u64;
        sink = sink.wrapping_add(scratch.frame(&temps, || {
            let phase = 2.0 * std::f64::consts::PI * frame as f64 / wave;
            let rate = g.loads * (1.0 - 0.9 * phase.cos());
            let loads = rate as usize + usize::from(rng.r#gen::<f64>() < rate.fract());
            for _ in 0..loads {
                let len = asset_size(&mut rng);
                let key = assets.load(&g.source[..len]);
                live.push(Live {
                    key,
                    len,
                    unload_at: frame.saturating_add(lifetime(&mut rng)),
                });
                live_bytes += len;
            }
            for _ in 0..g.reads {
                if !live.is_empty() {
                    let i = rng.gen_range(0..live.len());
                    reads = reads.wrapping_add(assets.read(live[i].key));
                }
            }
            live.retain(|a| {
                if a.unload_at > frame {
                    return true;
                }
                assets.unload(a.key);
                live_bytes -= a.len;
                false
            });
        }));
        sink = sink.wrapping_add(reads);
        assets.end_frame();
        probe.sample();
    }
    let elapsed = start.elapsed();
    black_box(sink);
    let end_rss = probe.sample();
    let end_lazy_free = probe.lazy_free_rise();
    let own_frag = probe.is_on().then(|| assets.own_frag()).flatten();
    let compaction = Some(assets.compaction());
    for a in live {
        assets.unload(a.key);
    }
    Outcome {
        elapsed,
        ops: g.frames as u64,
        peak_rss: probe.peak(),
        end_rss,
        end_lazy_free,
        end_live: live_bytes,
        own_frag,
        compaction,
    }
}
