//! The tidyheap demo: a game streams assets in and out for 3000 frames, once without
//! compaction and once with a small compaction budget every frame, from the same seed.
//!
//! ```sh
//! cargo run --release --example defrag
//! ```
//!
//! Each frame the "game" loads a few assets (64 B component blobs up to 64 KiB
//! textures, mostly small) into movable blocks addressed by handles, unloads the ones
//! whose time is up, reads a few at random (verifying their checksums) and rewrites a
//! couple. The load rate rises and falls in waves, like a player moving through dense
//! and sparse areas, and a few assets stay loaded for good, pinning the spans they sit
//! in. Without compaction those spans stay committed while mostly empty; with it, live
//! blocks are packed together a slice at a time and emptied spans go back to the OS.
//!
//! At the end every live asset is checksum-verified; the process exits non-zero on any
//! corruption.
//!
//! Pictures: the demo writes `heap-before.png` (the heap at the end of the run without
//! compaction) and `heap-after.png` (the same frames with compaction) next to its
//! binary, or into `DIR` with `-- --pictures DIR`. With `--features tracy` both runs
//! stream to a connected Tracy (memory pools, plots, zones, a frame mark per frame).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::{Budget, Heap, RawHandle};

#[path = "../benches/common/measure.rs"]
#[allow(
    dead_code,
    reason = "the demo needs only the CPU clock of the shared helpers"
)]
mod measure;
use measure::thread_cpu_time;

#[path = "common/picture.rs"]
mod picture;

const FRAMES: usize = 3000;
const SEED: u64 = 0x7d1d_4ea9;
/// Mean assets loaded per frame; the actual rate swings between 0.1× and 1.9× of it.
const LOADS_PER_FRAME: f64 = 20.0;
/// Period of the streaming wave, in frames.
const WAVE: f64 = 1000.0;
/// Assets read (and checksum-verified) per frame.
const READS_PER_FRAME: usize = 8;
/// Assets rewritten per frame.
const WRITES_PER_FRAME: usize = 2;
/// The per-frame compaction budget of the second run.
const BUDGET: Budget = Budget::time(Duration::from_micros(500)).with_bytes(1 << 20);

const MIB: f64 = (1 << 20) as f64;

/// A loaded asset: its handle and what its bytes must hash to.
struct Asset {
    handle: RawHandle,
    len: usize,
    seed: u64,
    checksum: u64,
    unload_at: usize,
}

/// The next value of a SplitMix64 stream.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `bytes` with the pseudo-random stream of `seed`.
fn fill(bytes: &mut [u8], seed: u64) {
    let mut s = seed;
    let mut chunks = bytes.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    let tail = chunks.into_remainder();
    let last = splitmix(&mut s).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// FNV-1a over 8-byte words (and the tail bytes), seeded with the length.
fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h
}

/// An asset size: mostly small blobs, some medium buffers, a few large textures;
/// log-uniform inside each band.
fn asset_size(rng: &mut impl Rng) -> usize {
    let (lo, hi): (f64, f64) = match rng.gen_range(0..100) {
        0..60 => (64.0, 1024.0),
        60..90 => (1024.0, 16384.0),
        _ => (16384.0, 65536.0),
    };
    (lo * (hi / lo).powf(rng.r#gen::<f64>())) as usize
}

/// How many frames an asset stays: mostly short, some medium, a few for good.
fn lifetime(rng: &mut impl Rng) -> usize {
    match rng.gen_range(0..100) {
        0..70 => rng.gen_range(30..300),
        70..95 => rng.gen_range(300..1200),
        _ => usize::MAX,
    }
}

/// Everything one run measured.
#[derive(Default)]
pub struct Outcome {
    frag_end: f64,
    frag_mean: f64,
    committed_end: usize,
    committed_peak: usize,
    live_end: usize,
    assets_end: usize,
    moved_per_frame: Vec<u64>,
    pass_times: Vec<Duration>,
    pass_cpu_times: Vec<Duration>,
    frame_times: Vec<Duration>,
    page_faults: u64,
    /// Checksums verified.
    pub verified: u64,
    /// Checksums that did not match.
    pub corrupt: u64,
    wall: Duration,
}

/// Minor page faults taken by the calling thread so far.
fn thread_page_faults() -> u64 {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY:
    // - `ru` is a valid, writable `rusage`;
    // - `RUSAGE_THREAD` is supported since Linux 2.6.26.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    ru.ru_minflt as u64
}

/// Checks `asset`'s bytes against its checksum.
fn verify(heap: &Heap, asset: &Asset) -> bool {
    heap.read(asset.handle)
        .is_ok_and(|g| g.len() == asset.len && checksum(&g) == asset.checksum)
}

/// The heap of a run: reporting to Tracy when the feature is on.
fn new_heap(name: &str) -> Heap {
    #[cfg(feature = "tracy")]
    return tidyheap::tracy::heap(name);
    #[cfg(not(feature = "tracy"))]
    {
        let _ = name;
        Heap::new()
    }
}

/// Draws `heap` into `dir/file`, titled with its fragmentation.
fn draw_heap(heap: &Heap, dir: &Path, file: &str, what: &str) {
    let map = heap.occupancy_map();
    let title = format!(
        "{what}: fragmentation {:.2} ({:.1} MiB live in {:.1} MiB of movable spans)",
        map.movable_fragmentation(),
        map.movable_live_bytes as f64 / MIB,
        map.movable_committed_bytes() as f64 / MIB,
    );
    picture::write_heap_png(&dir.join(file), &map, &title).expect("write the heap picture");
}

/// Runs `frames` frames, compacting each frame if `compact`; draws the heap at the end
/// into `pictures` if given.
pub fn run(compact: bool, frames: usize, bar: &ProgressBar, pictures: Option<&Path>) -> Outcome {
    let start = Instant::now();
    let faults = thread_page_faults();
    let heap = new_heap(if compact {
        "compaction"
    } else {
        "no compaction"
    });
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut assets: Vec<Asset> = Vec::new();
    let mut out = Outcome::default();
    let mut frag_sum = 0.0;
    let mut next_seed = 0u64;
    for frame in 0..frames {
        let frame_start = Instant::now();

        // Stream in: the rate follows the wave.
        let phase = 2.0 * std::f64::consts::PI * frame as f64 / WAVE;
        let rate = LOADS_PER_FRAME * (1.0 - 0.9 * phase.cos());
        let loads = rate as usize + usize::from(rng.r#gen::<f64>() < rate.fract());
        for _ in 0..loads {
            let len = asset_size(&mut rng);
            let seed = next_seed;
            next_seed += 1;
            let handle = heap.alloc_handle(len, 16).expect("alloc_handle");
            let sum = {
                let mut g = heap.write(handle).expect("fresh handle");
                fill(&mut g, seed);
                checksum(&g)
            };
            assets.push(Asset {
                handle,
                len,
                seed,
                checksum: sum,
                unload_at: frame.saturating_add(lifetime(&mut rng)),
            });
        }

        // Stream out whatever is due.
        assets.retain(|a| {
            if a.unload_at > frame {
                return true;
            }
            heap.free_handle(a.handle).expect("live handle");
            false
        });

        // Gameplay: read some assets, rewrite a couple.
        if !assets.is_empty() {
            for _ in 0..READS_PER_FRAME {
                let a = &assets[rng.gen_range(0..assets.len())];
                out.verified += 1;
                if !verify(&heap, a) {
                    out.corrupt += 1;
                }
            }
            for _ in 0..WRITES_PER_FRAME {
                let i = rng.gen_range(0..assets.len());
                let a = &mut assets[i];
                a.seed = a.seed.wrapping_add(1 << 40);
                let mut g = heap.write(a.handle).expect("live handle");
                fill(&mut g, a.seed);
                a.checksum = checksum(&g);
            }
        }

        // The frame's compaction slice.
        if compact {
            let cpu = thread_cpu_time();
            let r = heap.compact(BUDGET);
            let cpu = thread_cpu_time() - cpu;
            out.moved_per_frame.push(r.bytes_moved);
            if r.ran {
                out.pass_times.push(r.elapsed);
                out.pass_cpu_times.push(cpu);
            }
        }
        out.frame_times.push(frame_start.elapsed());

        let s = heap.stats();
        let live = s.movable.live_bytes() as usize;
        let frag = frag_of(s.committed_bytes, live);
        frag_sum += frag;
        out.committed_peak = out.committed_peak.max(s.committed_bytes);
        if frame % 25 == 0 {
            bar.set_message(format!(
                "fragmentation {frag:.2}  committed {:6.1} MiB  live {:6.1} MiB",
                s.committed_bytes as f64 / MIB,
                live as f64 / MIB
            ));
        }
        bar.inc(1);
        #[cfg(feature = "tracy")]
        {
            tidyheap::tracy::plot_heap(&heap);
            tidyheap::tracy::frame_mark();
        }
    }

    let s = heap.stats();
    out.live_end = s.movable.live_bytes() as usize;
    out.committed_end = s.committed_bytes;
    out.frag_end = frag_of(out.committed_end, out.live_end);
    out.frag_mean = frag_sum / frames as f64;
    out.assets_end = assets.len();
    for a in &assets {
        out.verified += 1;
        if !verify(&heap, a) {
            out.corrupt += 1;
        }
    }
    out.page_faults = thread_page_faults() - faults;
    out.wall = start.elapsed();
    if let Some(dir) = pictures {
        let (file, what) = if compact {
            (
                "heap-after.png",
                format!("after: {frames} frames with compaction"),
            )
        } else {
            (
                "heap-before.png",
                format!("before: {frames} frames, no compaction"),
            )
        };
        draw_heap(&heap, dir, file, &what);
    }
    bar.finish();
    out
}

fn frag_of(committed: usize, live: usize) -> f64 {
    if committed == 0 {
        0.0
    } else {
        1.0 - live as f64 / committed as f64
    }
}

/// The `p`-quantile of `v` (sorted in place); zero for an empty `v`.
fn quantile<T: Ord + Copy + Default>(v: &mut [T], p: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Where the pictures go: `--pictures DIR`, else beside the binary.
fn pictures_dir() -> PathBuf {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--pictures" {
            return PathBuf::from(args.next().expect("--pictures DIR"));
        }
    }
    let exe = std::env::current_exe().expect("the demo's path");
    exe.parent().expect("a directory").to_path_buf()
}

fn main() -> ExitCode {
    let dir = pictures_dir();
    std::fs::create_dir_all(&dir).expect("the pictures directory");
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos:>4}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut results = Vec::new();
    for (name, compact) in [("no compaction", false), ("compaction", true)] {
        let bar = ProgressBar::new(FRAMES as u64)
            .with_style(style.clone())
            .with_prefix(name);
        results.push(run(compact, FRAMES, &bar, Some(&dir)));
    }
    let [off, on] = &mut results[..] else {
        unreachable!("two runs")
    };

    println!(
        "\n{FRAMES} frames, seed {SEED:#x}, per-frame budget on the right: {:?} or {} KiB",
        BUDGET.time.expect("set"),
        BUDGET.bytes.expect("set") >> 10
    );
    println!("{:<34} {:>14} {:>14}", "", "no compaction", "compaction");
    let row = |name: &str, a: String, b: String| println!("{name:<34} {a:>14} {b:>14}");
    let mib = |b: usize| format!("{:.1} MiB", b as f64 / MIB);
    let kib = |b: u64| format!("{:.1} KiB", b as f64 / 1024.0);
    let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
    let dash = || "-".to_string();
    row(
        "fragmentation at the end",
        format!("{:.3}", off.frag_end),
        format!("{:.3}", on.frag_end),
    );
    row(
        "fragmentation, mean over frames",
        format!("{:.3}", off.frag_mean),
        format!("{:.3}", on.frag_mean),
    );
    row(
        "committed at the end",
        mib(off.committed_end),
        mib(on.committed_end),
    );
    row("live at the end", mib(off.live_end), mib(on.live_end));
    row(
        "committed / live at the end",
        format!("{:.2}", off.committed_end as f64 / off.live_end as f64),
        format!("{:.2}", on.committed_end as f64 / on.live_end as f64),
    );
    row(
        "peak committed",
        mib(off.committed_peak),
        mib(on.committed_peak),
    );
    let mean_moved = on.moved_per_frame.iter().sum::<u64>() / FRAMES as u64;
    row("bytes moved per frame, mean", dash(), kib(mean_moved));
    row(
        "bytes moved per frame, p99",
        dash(),
        kib(quantile(&mut on.moved_per_frame, 0.99)),
    );
    row(
        "compaction pass, p50",
        dash(),
        us(quantile(&mut on.pass_times, 0.5)),
    );
    row(
        "compaction pass, p99",
        dash(),
        us(quantile(&mut on.pass_times, 0.99)),
    );
    row(
        "compaction pass, p99 thread CPU",
        dash(),
        us(quantile(&mut on.pass_cpu_times, 0.99)),
    );
    row(
        "frame time (incl. pass), p50",
        us(quantile(&mut off.frame_times, 0.5)),
        us(quantile(&mut on.frame_times, 0.5)),
    );
    row(
        "frame time (incl. pass), p99",
        us(quantile(&mut off.frame_times, 0.99)),
        us(quantile(&mut on.frame_times, 0.99)),
    );
    row(
        "minor page faults",
        off.page_faults.to_string(),
        on.page_faults.to_string(),
    );
    row(
        "assets live / checksums verified",
        format!("{}/{}", off.assets_end, off.verified),
        format!("{}/{}", on.assets_end, on.verified),
    );
    row(
        "run time",
        format!("{:.2} s", off.wall.as_secs_f64()),
        format!("{:.2} s", on.wall.as_secs_f64()),
    );

    let corrupt = off.corrupt + on.corrupt;
    if corrupt > 0 || off.live_end != on.live_end {
        eprintln!(
            "CORRUPTION: {} bad checksums; live bytes {} vs {}",
            corrupt, off.live_end, on.live_end
        );
        return ExitCode::FAILURE;
    }
    println!("\nall checksums verified, no corruption");
    for f in ["heap-before.png", "heap-after.png"] {
        println!("heap picture: {}", dir.join(f).display());
    }
    ExitCode::SUCCESS
}
