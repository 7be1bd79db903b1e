//! Frame arenas through the public API: N frames in flight, many threads in one frame,
//! no mapping after warm-up, trimming, scratch collections, oversize, zero-size and bad
//! requests.

use std::alloc::Layout;
use std::ptr::NonNull;

use allocator_api2::vec::Vec as ScratchVec;
use tidyheap::AllocError;
use tidyheap::frame::{FrameArena, FrameConfig, FrameConfigError};

fn arena(frames_in_flight: usize, chunk_size: usize) -> FrameArena {
    FrameArena::with_config(
        FrameConfig::new()
            .with_frames_in_flight(frames_in_flight)
            .with_chunk_size(chunk_size),
    )
    .unwrap()
}

/// The byte at offset `i` of block `b` of frame `k`.
fn pattern(k: u64, b: usize, i: usize) -> u8 {
    (k as usize * 131 + b * 17 + i) as u8
}

/// A raw block recorded with the frame that made it.
struct Record {
    frame: u64,
    block: usize,
    ptr: NonNull<u8>,
    len: usize,
}

impl Record {
    fn intact(&self) -> bool {
        // SAFETY: the callers only check records whose frame is still in flight
        // (`frame + N` has not begun), so the block is live and nobody writes it.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        bytes
            .iter()
            .enumerate()
            .all(|(i, &x)| x == pattern(self.frame, self.block, i))
    }

    fn range(&self) -> (usize, usize) {
        let start = self.ptr.as_ptr() as usize;
        (start, start + self.len)
    }
}

/// Frame k's blocks stay intact until frame k + N begins, do not share memory with any
/// other frame in flight, and their memory is reused as soon as frame k + N begins.
fn frames_in_flight_keep_their_data(n: usize) {
    let mut arena = arena(n, 16 * 1024);
    let mut live: Vec<Record> = Vec::new();
    let mut first_block_of = Vec::new();
    for _ in 0..40 {
        let frame = arena.begin_frame();
        let k = frame.index();
        // Frame k - N just died; everything younger must be intact.
        live.retain(|r| r.frame + n as u64 > k);
        assert!(
            live.iter().all(Record::intact),
            "frame {k}: in-flight data lost"
        );
        for b in 0..12 {
            let len = 200 + 80 * b;
            let ptr = frame.alloc_raw(len, 8).unwrap();
            // SAFETY: a fresh block of `len` bytes.
            unsafe {
                for i in 0..len {
                    ptr.as_ptr().add(i).write(pattern(k, b, i));
                }
            }
            live.push(Record {
                frame: k,
                block: b,
                ptr,
                len,
            });
        }
        let first = live.iter().find(|r| r.frame == k && r.block == 0).unwrap();
        first_block_of.push(first.ptr.as_ptr() as usize);
        assert!(live.iter().all(Record::intact), "frame {k}: overwritten");
        let mut ranges: Vec<_> = live.iter().map(Record::range).collect();
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].1 <= w[1].0),
            "frame {k}: blocks of frames in flight overlap"
        );
        frame.end();
    }
    // Each frame fits one chunk; in steady state frame k reuses frame k - N's chunk,
    // so the same block lands at the same address exactly N frames later.
    for k in 2 * n..first_block_of.len() {
        assert_eq!(first_block_of[k], first_block_of[k - n], "frame {}", k + 1);
    }
    assert_eq!(arena.stats().chunks_held, n);
}

#[test]
fn two_frames_in_flight_keep_their_data() {
    frames_in_flight_keep_their_data(2);
}

#[test]
fn three_frames_in_flight_keep_their_data() {
    frames_in_flight_keep_their_data(3);
}

#[test]
fn single_frame_in_flight_recycles_every_frame() {
    frames_in_flight_keep_their_data(1);
}

/// Tiny deterministic generator for sizes.
fn sizes(seed: u64) -> impl Iterator<Item = usize> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        16 + (x % 241) as usize
    })
}

#[test]
fn threads_allocate_in_one_frame_at_once() {
    let mut arena = arena(2, 64 * 1024);
    for round in 0..3u8 {
        let frame = arena.begin_frame();
        let shared = frame.shared();
        let per_thread: Vec<Vec<&mut [u8]>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u8)
                .map(|t| {
                    let frame = shared;
                    s.spawn(move || {
                        let mut scratch = ScratchVec::new_in(frame);
                        let blocks: Vec<&mut [u8]> = sizes(u64::from(t) + 1)
                            .take(1500)
                            .enumerate()
                            .map(|(i, len)| {
                                scratch.push(i);
                                let fill = t.wrapping_mul(61) ^ (i as u8) ^ round;
                                frame.alloc_slice_fill_with(len, |_| fill)
                            })
                            .collect();
                        assert_eq!(scratch.len(), 1500);
                        assert!(scratch.iter().enumerate().all(|(i, &v)| i == v));
                        blocks
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ranges = Vec::new();
        for (t, blocks) in per_thread.iter().enumerate() {
            for (i, block) in blocks.iter().enumerate() {
                let fill = (t as u8).wrapping_mul(61) ^ (i as u8) ^ round;
                assert!(block.iter().all(|&x| x == fill), "thread {t} block {i}");
                let start = block.as_ptr() as usize;
                ranges.push((start, start + block.len()));
            }
        }
        ranges.sort_unstable();
        assert!(
            ranges.windows(2).all(|w| w[0].1 <= w[1].0),
            "blocks overlap"
        );
        drop(per_thread);
        frame.end();
        let requested: usize = (1..=4).map(|t| sizes(t).take(1500).sum::<usize>()).sum();
        assert!(arena.stats().frame_bytes >= requested);
    }
}

/// A steady workload maps nothing once the pool holds N frames' worth of chunks.
#[test]
fn no_new_mapping_after_warm_up() {
    let mut arena = arena(2, 32 * 1024);
    let mut maps_after_warm_up = None;
    for k in 0..40u64 {
        let frame = arena.begin_frame();
        let shared = frame.shared();
        std::thread::scope(|s| {
            for t in 0..3 {
                let frame = shared;
                s.spawn(move || {
                    for len in sizes(t + 1).take(600) {
                        frame.alloc_raw(len, 16).unwrap();
                    }
                    // One oversize-for-nothing request per thread: still a standard chunk.
                    frame.alloc_slice_fill_with(4096, |i| i as u8);
                });
            }
        });
        let mut v = ScratchVec::new_in(&frame);
        v.extend(0..5000u32);
        drop(v);
        frame.end();
        let stats = arena.stats();
        match maps_after_warm_up {
            None if k == 4 => maps_after_warm_up = Some((stats.chunk_maps, stats.chunks_held)),
            None => {}
            Some(before) => assert_eq!(
                (stats.chunk_maps, stats.chunks_held),
                before,
                "frame {k} mapped a chunk after warm-up"
            ),
        }
    }
    assert_eq!(arena.stats().chunk_releases, 0);
}

#[test]
fn idle_chunks_are_trimmed() {
    let config = FrameConfig::new()
        .with_frames_in_flight(2)
        .with_chunk_size(16 * 1024)
        .with_trim_after(3);
    let mut arena = FrameArena::with_config(config).unwrap();
    // A spike: 20 chunks' worth in frame 1.
    let frame = arena.begin_frame();
    for _ in 0..20 {
        frame.alloc_raw(16 * 1024 - 512, 8).unwrap();
    }
    frame.end();
    let spike = arena.stats();
    assert_eq!(spike.chunks_held, 20);
    // Frame 1's chunks are pooled when frame 3 begins; unused in frames 3, 4, 5 they are
    // released when frame 6 begins. Frames 2.. use one chunk each.
    let mut held = Vec::new();
    for _ in 2..=8 {
        let frame = arena.begin_frame();
        frame.alloc([0u8; 100]);
        frame.end();
        held.push(arena.stats().chunks_held);
    }
    // After frame 2: 20 + 1. Frame 3 reuses a pooled chunk; nothing more is mapped.
    assert_eq!(
        &held[..4],
        &[21, 21, 21, 21],
        "frames 2..=5 keep everything"
    );
    assert!(held[4] <= 3, "frame 6 trimmed the spike: {held:?}");
    assert_eq!(arena.stats().chunk_maps, 21);
    assert_eq!(
        arena.stats().bytes_held,
        arena.stats().chunks_held * 16 * 1024
    );
    assert!(arena.stats().chunk_releases >= 18);
    assert_eq!(arena.stats().peak_bytes_held, 21 * 16 * 1024);
}

#[test]
fn trim_releases_the_pool_now() {
    let mut arena = arena(1, 16 * 1024);
    let frame = arena.begin_frame();
    for _ in 0..5 {
        frame.alloc_raw(10_000, 8).unwrap();
    }
    frame.end();
    drop(arena.begin_frame()); // frame 1 retires: 5 chunks pooled
    assert_eq!(arena.trim(), 5);
    assert_eq!(arena.stats().chunks_held, 0);
    assert_eq!(arena.trim(), 0);
}

#[test]
fn scratch_vec_grows_in_place_while_it_is_the_last_block() {
    let mut arena = FrameArena::new();
    let frame = arena.begin_frame();
    let mut v = ScratchVec::new_in(&frame);
    v.push(0u32);
    let first = v.as_ptr();
    for i in 1..10_000u32 {
        v.push(i);
    }
    assert_eq!(v.as_ptr(), first, "every growth happened in place");
    // Once something else is allocated after it, growth must move it.
    let other = frame.alloc(7u64);
    v.extend(10_000..20_000u32);
    assert_ne!(v.as_ptr(), first);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
    assert_eq!(*other, 7);
    // Shrinking the last block and freeing it give the space back.
    let mut w: ScratchVec<u8, _> = ScratchVec::with_capacity_in(1000, &frame);
    w.push(1);
    let w_start = w.as_ptr() as usize;
    w.shrink_to_fit();
    drop(w);
    let next = frame.alloc(0u8) as *mut u8 as usize;
    assert_eq!(next, w_start, "the freed last block was reused");
}

#[test]
fn hashbrown_map_in_a_frame() {
    let mut arena = FrameArena::new();
    for round in 0..3u64 {
        let frame = arena.begin_frame();
        let mut map = hashbrown::HashMap::new_in(&frame);
        for i in 0..2000u64 {
            map.insert(i, i * round);
        }
        for i in (0..2000u64).step_by(2) {
            assert_eq!(map.remove(&i), Some(i * round));
        }
        assert_eq!(map.len(), 1000);
        assert!((1..2000u64).step_by(2).all(|i| map[&i] == i * round));
        drop(map);
        frame.end();
        assert!(arena.stats().frame_bytes > 0);
    }
}

#[test]
fn oversize_requests_get_their_own_chunk() {
    let mut arena = arena(2, 64 * 1024);
    let frame = arena.begin_frame();
    let small = frame.alloc(1u64) as *mut u64 as usize;
    let big_len = 1 << 20;
    let big = frame.alloc_raw(big_len, 4096).unwrap();
    assert_eq!(big.as_ptr() as usize % 4096, 0);
    // SAFETY: a fresh block of `big_len` bytes.
    unsafe { big.as_ptr().write_bytes(0xAB, big_len) };
    // The standard chunk is still current: the next small block follows the first.
    let small2 = frame.alloc(2u64) as *mut u64 as usize;
    assert_eq!(small2, small + 8);
    let huge_slice = frame.alloc_slice_fill_with(100_000, |i| i as u32);
    assert_eq!(huge_slice[99_999], 99_999);
    // A scratch Vec that outgrows a chunk moves to a dedicated one.
    let mut v = ScratchVec::new_in(&frame);
    v.extend(0..100_000u64);
    assert_eq!(v[99_999], 99_999);
    let during = frame.stats();
    assert!(
        during.chunk_maps >= 4,
        "one standard chunk and three dedicated"
    );
    assert!(during.bytes_held >= big_len + 400_000 + 800_000);
    // SAFETY: the block lives until frame 1 + 2 begins.
    let big_bytes = unsafe { std::slice::from_raw_parts(big.as_ptr(), big_len) };
    assert!(big_bytes.iter().all(|&x| x == 0xAB));
    drop(v);
    frame.end();
    drop(arena.begin_frame());
    let releases_before = arena.stats().chunk_releases;
    drop(arena.begin_frame()); // frame 3: frame 1 retires; dedicated chunks go
    let after = arena.stats();
    assert!(after.chunk_releases >= releases_before + 3);
    assert!(after.bytes_held < big_len);
}

#[test]
fn zero_size_requests_work() {
    let mut arena = FrameArena::new();
    let frame = arena.begin_frame();
    // Before any real allocation: nothing is mapped for them.
    let unit: &mut () = frame.alloc(());
    *unit = ();
    let p = frame.alloc_raw(0, 1 << 20).unwrap();
    assert_eq!(p.as_ptr() as usize % (1 << 20), 0);
    assert!(frame.alloc_slice_copy::<u64>(&[]).is_empty());
    assert_eq!(frame.alloc_str(""), "");
    assert!(frame.alloc_slice_fill_with(0, |_| 1u8).is_empty());
    assert_eq!(frame.stats().chunk_maps, 0);
    // After a real one: still fine, and aligned.
    frame.alloc(1u8);
    let q = frame
        .alloc_layout(Layout::from_size_align(0, 64).unwrap())
        .unwrap();
    assert_eq!(q.as_ptr() as usize % 64, 0);
    let mut zsts = ScratchVec::new_in(&frame);
    zsts.extend(std::iter::repeat_n((), 1000));
    assert_eq!(zsts.len(), 1000);
    drop(zsts);
    frame.end();
    // One byte (rounded to 8), then padding up to the 64-aligned zero-size block; the
    // other zero-size blocks took nothing.
    assert_eq!(arena.stats().frame_bytes, 64);
}

#[test]
fn bad_requests_are_errors_and_change_nothing() {
    let mut arena = FrameArena::new();
    let frame = arena.begin_frame();
    frame.alloc(0u8);
    let before = frame.stats();
    for align in [0, 3, 48, usize::MAX] {
        assert_eq!(
            frame.alloc_raw(8, align),
            Err(AllocError::InvalidAlignment { align })
        );
    }
    for size in [usize::MAX, isize::MAX as usize, isize::MAX as usize - 4095] {
        assert_eq!(
            frame.alloc_raw(size, 4096),
            Err(AllocError::TooLarge { size })
        );
    }
    assert!(matches!(
        frame.try_alloc_slice_fill_with(usize::MAX / 4, |_| 0u64),
        Err(AllocError::TooLarge { .. })
    ));
    assert!(matches!(
        frame.alloc_raw(1 << 62, 8),
        Err(AllocError::OutOfMemory { .. })
    ));
    let layout = Layout::from_size_align(1 << 62, 8).unwrap();
    assert!(frame.alloc_layout(layout).is_err());
    assert_eq!(frame.stats(), before, "failed requests mapped nothing");
    assert_eq!(*frame.alloc(5u16), 5, "the frame still works");
}

#[test]
fn bad_configs_are_errors() {
    let cases = [
        (
            FrameConfig::new().with_frames_in_flight(0),
            FrameConfigError::FramesInFlight(0),
        ),
        (
            FrameConfig::new().with_frames_in_flight(65),
            FrameConfigError::FramesInFlight(65),
        ),
        (FrameConfig::new().with_lanes(0), FrameConfigError::Lanes(0)),
        (
            FrameConfig::new().with_chunk_size(4095),
            FrameConfigError::ChunkSize(4095),
        ),
        (
            FrameConfig::new().with_chunk_size(usize::MAX),
            FrameConfigError::ChunkSize(usize::MAX),
        ),
    ];
    for (config, err) in cases {
        assert_eq!(FrameArena::with_config(config).unwrap_err(), err);
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn values_are_never_dropped() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Noisy;
    impl Drop for Noisy {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut arena = arena(1, 16 * 1024);
    let frame = arena.begin_frame();
    frame.alloc(Noisy);
    frame.alloc_slice_fill_with(10, |_| Noisy);
    frame.end();
    drop(arena.begin_frame());
    drop(arena);
    assert_eq!(DROPS.load(Ordering::Relaxed), 0);
}

#[test]
fn stats_track_frame_bytes_and_high_water() {
    let mut arena = FrameArena::new();
    for len in [99usize, 300, 200] {
        let frame = arena.begin_frame();
        frame.alloc_raw(len, 1).unwrap();
        frame.end();
    }
    // Block sizes are rounded up to 8 bytes.
    let stats = arena.stats();
    assert_eq!(stats.frames, 3);
    assert_eq!(stats.frame_bytes, 200);
    assert_eq!(stats.previous_frame_bytes, 304);
    assert_eq!(stats.high_water_bytes, 304);
    assert_eq!(stats.chunks_held, 2, "two frames in flight, one chunk each");
    assert_eq!(stats.bytes_held, 2 * FrameConfig::DEFAULT_CHUNK_SIZE);
}
