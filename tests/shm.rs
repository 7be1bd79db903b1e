//! Shared-memory arena: bootstrap races between processes, crashed lock holders, bad segments,
//! coalescing, and a proptest model of alloc/free.
//!
//! Multi-process tests re-execute this test binary (`current_exe`) with `SHM_ROLE` set and
//! the test's own name as filter; the same `#[test]` then plays the child part. No fork.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tidyheap::shm::{ShmArena, ShmError, ShmHandle, ShmOptions, ShmPod};

const ROLE: &str = "SHM_ROLE";
const NAME: &str = "SHM_NAME";

fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("/tidyheap-test-{tag}-{}-{n}", std::process::id())
}

/// Removes the segment name when the test ends, pass or fail.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = ShmArena::unlink(&self.0);
    }
}

fn spawn_role(test: &str, role: &str, name: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE, role)
        .env(NAME, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Lines the child printed with our prefix (the harness prints its own lines too).
fn child_lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("SHM ").map(str::to_owned))
        .collect()
}

fn role() -> Option<(String, String)> {
    Some((std::env::var(ROLE).ok()?, std::env::var(NAME).ok()?))
}

/// A child that is killed and reaped if the test fails before doing so itself (never signals
/// a pid after the child was reaped: `Child::kill` checks for a collected status).
struct Kid(Child);

impl std::ops::Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill(child: &Child) {
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn bootstrap_race_of_several_processes() {
    if let Some((_, name)) = role() {
        let opts = ShmOptions::new()
            .format_delay(Duration::from_millis(50))
            .attach_timeout(Duration::from_secs(20));
        let arena = ShmArena::open_or_create_with(&name, 1 << 20, &opts).unwrap();
        let me = u64::from(std::process::id());
        let p = arena.alloc_pod(&[me, !me]).unwrap();
        println!("SHM {} {}", me, p.raw().to_bits());
        return;
    }
    let name = unique("boot");
    let _u = Unlink(name.clone());
    let kids: Vec<Child> = (0..6)
        .map(|_| spawn_role("bootstrap_race_of_several_processes", "boot", &name))
        .collect();
    let mut seen = HashMap::new();
    for kid in kids {
        for line in child_lines(kid) {
            let mut it = line.split(' ').map(|w| w.parse::<u64>().unwrap());
            seen.insert(it.next().unwrap(), it.next().unwrap());
        }
    }
    assert_eq!(seen.len(), 6);
    let arena = ShmArena::open(&name).unwrap();
    for (pid, bits) in &seen {
        let p = ShmPod::<[u64; 2]>::from_raw(ShmHandle::from_bits(*bits));
        assert_eq!(arena.get(p).unwrap(), [*pid, !*pid]);
    }
    let s = arena.check().unwrap();
    assert_eq!(
        (s.live_blocks, s.allocs),
        (6, 6),
        "one format, six allocations"
    );
}

#[test]
fn processes_allocate_concurrently_with_checked_data() {
    fn hammer(arena: &ShmArena, seed: u64, ops: usize) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut live: Vec<(ShmHandle, u8, usize)> = Vec::new();
        for _ in 0..ops {
            if live.len() < 40 && rng.gen_bool(0.55) {
                let len = rng.gen_range(1..3000);
                let fill = rng.r#gen::<u8>();
                if let Ok(h) = arena.alloc(len, 1 << rng.gen_range(0..8)) {
                    arena.write(h, 0, &vec![fill; len]).unwrap();
                    live.push((h, fill, len));
                }
            } else if !live.is_empty() {
                let (h, fill, len) = live.swap_remove(rng.gen_range(0..live.len()));
                let mut buf = vec![0; len];
                arena.read(h, 0, &mut buf).unwrap();
                assert!(
                    buf.iter().all(|&b| b == fill),
                    "another process wrote our block"
                );
                arena.free(h).unwrap();
            }
        }
        for (h, _, _) in live {
            arena.free(h).unwrap();
        }
    }
    if let Some((_, name)) = role() {
        let arena = ShmArena::open(&name).unwrap();
        hammer(&arena, u64::from(std::process::id()), 4000);
        println!("SHM done");
        return;
    }
    let name = unique("conc");
    let _u = Unlink(name.clone());
    let arena = ShmArena::create(&name, 1 << 20).unwrap();
    let kids: Vec<Child> = (0..3)
        .map(|_| {
            spawn_role(
                "processes_allocate_concurrently_with_checked_data",
                "hammer",
                &name,
            )
        })
        .collect();
    hammer(&arena, 1, 4000);
    for kid in kids {
        assert_eq!(child_lines(kid), ["done"]);
    }
    let s = arena.check().unwrap();
    assert_eq!((s.live_blocks, s.free_blocks), (0, 1));
    assert_eq!(s.recoveries, 0);
}

/// How the parked child leaves the heap when it is killed.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Between operations (only the lock is held).
    Nothing,
    /// Inside an allocation, after its last store to the block chain.
    MidAlloc,
    /// Inside the free of its second block, after the generation bump.
    MidFree,
}

/// Child: allocates three blocks, reports them, then parks holding the lock (with an
/// operation cut off as `cut` says) until the parent kills it.
fn park_child(name: &str, cut: Cut) -> ! {
    let arena = ShmArena::open(name).unwrap();
    let mut hs = Vec::new();
    for i in 0..3u64 {
        let p = arena.alloc_pod(&(i * 1000 + 7)).unwrap();
        println!("SHM {}", p.raw().to_bits());
        hs.push(p.raw());
    }
    std::io::stdout().flush().unwrap();
    arena.__park_while_locked(cut == Cut::MidAlloc, (cut == Cut::MidFree).then_some(hs[1]))
}

fn crash_holder(test: &str, cut: Cut) {
    let name = unique("crash");
    let _u = Unlink(name.clone());
    let arena = ShmArena::create(&name, 1 << 20).unwrap();
    let mine = arena.alloc_bytes(b"parent data").unwrap();
    let mut kid = Kid(spawn_role(test, "park", &name));
    let mut out = BufReader::new(kid.stdout.take().unwrap());
    let mut handles = Vec::new();
    while handles.len() < 3 {
        let mut line = String::new();
        assert_ne!(out.read_line(&mut line).unwrap(), 0, "child exited early");
        if let Some(bits) = line.trim().strip_prefix("SHM ") {
            handles.push(ShmHandle::from_bits(bits.parse().unwrap()));
        }
    }
    let pid = kid.id();
    wait_for(|| arena.lock_holder() == pid, "the child to hold the lock");
    kill(&kid);
    // The cut children are reaped at once; the other is left a zombie until after recovery.
    if cut != Cut::Nothing {
        kid.wait().unwrap();
    } else {
        // Leave it a zombie until after recovery: kill(pid, 0) still succeeds on zombies.
        wait_for(
            || {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            },
            "the child to become a zombie",
        );
    }
    // The lock is taken over and the heap rebuilt; everything allocated before is intact.
    let h = arena.alloc(100, 16).unwrap();
    let s = arena.check().unwrap();
    assert_eq!(s.recoveries, 1);
    assert_eq!(s.rolled_back_allocs, u64::from(cut == Cut::MidAlloc));
    assert_eq!(s.completed_frees, u64::from(cut == Cut::MidFree));
    let freed = u64::from(cut == Cut::MidFree);
    assert_eq!(
        s.live_blocks,
        5 - freed,
        "the cut alloc rolled back, the cut free done"
    );
    for (i, &h) in handles.iter().enumerate() {
        if cut == Cut::MidFree && i == 1 {
            assert_eq!(arena.usable_size(h), Err(ShmError::Stale));
            continue;
        }
        assert_eq!(
            arena.get(ShmPod::<u64>::from_raw(h)).unwrap(),
            i as u64 * 1000 + 7
        );
        arena.free(h).unwrap();
    }
    let mut buf = [0u8; 11];
    arena.read(mine, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"parent data");
    arena.free(mine).unwrap();
    arena.free(h).unwrap();
    let s = arena.check().unwrap();
    assert_eq!((s.live_blocks, s.free_blocks), (0, 1));
    // Reaps the zombie (or returns the status already collected).
    kid.wait().unwrap();
}

#[test]
fn killed_lock_holder_mid_alloc_leaves_segment_usable() {
    if let Some((_, name)) = role() {
        park_child(&name, Cut::MidAlloc);
    }
    crash_holder(
        "killed_lock_holder_mid_alloc_leaves_segment_usable",
        Cut::MidAlloc,
    );
}

#[test]
fn killed_lock_holder_left_as_zombie_is_recovered() {
    if let Some((_, name)) = role() {
        park_child(&name, Cut::Nothing);
    }
    crash_holder(
        "killed_lock_holder_left_as_zombie_is_recovered",
        Cut::Nothing,
    );
}

#[test]
fn killed_lock_holder_mid_free_has_its_free_completed() {
    if let Some((_, name)) = role() {
        park_child(&name, Cut::MidFree);
    }
    crash_holder(
        "killed_lock_holder_mid_free_has_its_free_completed",
        Cut::MidFree,
    );
}

#[test]
fn killed_at_random_points_of_alloc_and_free_never_corrupts() {
    if let Some((_, name)) = role() {
        let arena = ShmArena::open(&name).unwrap();
        let mut rng = SmallRng::seed_from_u64(u64::from(std::process::id()));
        let mut live = Vec::new();
        println!("SHM go");
        std::io::stdout().flush().unwrap();
        loop {
            if live.len() < 200 && rng.gen_bool(0.5) {
                if let Ok(h) = arena.alloc(rng.gen_range(1..2000), 1 << rng.gen_range(0..13)) {
                    live.push(h);
                }
            } else if !live.is_empty() {
                let h = live.swap_remove(rng.gen_range(0..live.len()));
                arena.free(h).unwrap();
            }
        }
    }
    let name = unique("randkill");
    let _u = Unlink(name.clone());
    let arena = ShmArena::create(&name, 4 << 20).unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut recoveries_seen = 0;
    for _ in 0..12 {
        let mut kid = Kid(spawn_role(
            "killed_at_random_points_of_alloc_and_free_never_corrupts",
            "loop",
            &name,
        ));
        let mut out = BufReader::new(kid.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Let it run a random while, then kill it wherever it is.
        std::thread::sleep(Duration::from_micros(rng.gen_range(100..20_000)));
        kill(&kid);
        kid.wait().unwrap();
        let s = arena.check().expect("heap consistent after a kill");
        recoveries_seen = s.recoveries;
        assert_eq!(s.used_bytes + s.free_bytes, s.heap_bytes);
    }
    // The dead children's blocks stay allocated (their handles died with them).
    let h = arena.alloc(64, 64).unwrap();
    arena.free(h).unwrap();
    eprintln!("recoveries after 12 kills: {recoveries_seen}");
}

#[test]
fn forked_child_takes_the_lock_under_its_own_pid() {
    if let Some((_, name)) = role() {
        let arena = ShmArena::open(&name).unwrap();
        // Caches this process's pid in the lock code.
        let h = arena.alloc(8, 8).unwrap();
        arena.free(h).unwrap();
        // SAFETY: the forked child only takes the lock (atomics, getpid) and parks until killed;
        // it allocates nothing, so no lock held by another thread at the fork matters.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: prctl with integer arguments; dies with its parent if the test fails.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            arena.__park_while_locked(false, None);
        }
        // With the parent's cached pid the child would hold the lock as *us*: never recovered.
        wait_for(
            || arena.lock_holder() == pid as u32,
            "the forked child to hold the lock",
        );
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        let h = arena.alloc(8, 8).unwrap();
        arena.free(h).unwrap();
        assert_eq!(arena.check().unwrap().recoveries, 1);
        println!("SHM ok");
        return;
    }
    let name = unique("fork");
    let _u = Unlink(name.clone());
    let _arena = ShmArena::create(&name, 1 << 16).unwrap();
    let kid = spawn_role(
        "forked_child_takes_the_lock_under_its_own_pid",
        "fork",
        &name,
    );
    assert_eq!(child_lines(kid), ["ok"]);
}

fn dev_shm(name: &str) -> String {
    format!("/dev/shm{name}")
}

#[test]
fn wrong_magic_version_or_truncation_is_an_error() {
    let name = unique("bad");
    let _u = Unlink(name.clone());
    let size = ShmArena::create(&name, 1 << 16).unwrap().size();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_shm(&name))
        .unwrap();
    let opts = ShmOptions::new().attach_timeout(Duration::from_millis(50));

    file.write_at(&99u32.to_le_bytes(), 8).unwrap();
    assert_eq!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::BadVersion {
            found: 99,
            expected: 1
        }
    );
    file.write_at(&1u32.to_le_bytes(), 8).unwrap();
    assert!(ShmArena::open_with(&name, &opts).is_ok());

    file.write_at(b"notours!", 0).unwrap();
    assert_eq!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::BadMagic {
            found: u64::from_le_bytes(*b"notours!")
        }
    );
    file.write_at(b"tidyheap", 0).unwrap();

    file.set_len(size as u64 / 2).unwrap();
    assert_eq!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::Truncated {
            file_len: size as u64 / 2,
            expected: size as u64
        }
    );
    file.set_len(100).unwrap();
    assert!(matches!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::Truncated { file_len: 100, .. }
    ));

    // Random bytes: rejected by the magic or the init word, never formatted over.
    let mut rng = SmallRng::seed_from_u64(3);
    let junk: Vec<u8> = (0..size).map(|_| rng.r#gen()).collect();
    file.set_len(0).unwrap();
    file.write_at(&junk, 0).unwrap();
    assert!(matches!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::BadMagic { .. }
    ));
    assert!(matches!(
        ShmArena::open_or_create_with(&name, size, &opts).unwrap_err(),
        ShmError::BadMagic { .. }
    ));
    let mut after = vec![0; size];
    file.read_at(&mut after, 0).unwrap();
    assert_eq!(after, junk, "a foreign file is never written");
}

#[test]
fn stuck_or_missing_formatter_times_out_with_its_pid() {
    let name = unique("stuck");
    let _u = Unlink(name.clone());
    let opts = ShmOptions::new().attach_timeout(Duration::from_millis(30));
    let file = std::fs::File::create(dev_shm(&name)).unwrap();
    // Created but never sized: the creator died before ftruncate.
    assert!(matches!(
        ShmArena::open_with(&name, &opts).unwrap_err(),
        ShmError::StuckFormatter {
            pid: 0,
            alive: false,
            ..
        }
    ));
    // FORMATTING forever by a process that is dead, then by one that is alive (us).
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    file.set_len(1 << 16).unwrap();
    file.write_at(&1u32.to_le_bytes(), 12).unwrap();
    for (pid, alive) in [(dead_pid, false), (std::process::id(), true)] {
        file.write_at(&pid.to_le_bytes(), 24).unwrap();
        match ShmArena::open_with(&name, &opts).unwrap_err() {
            ShmError::StuckFormatter {
                pid: p,
                alive: a,
                waited,
            } => {
                assert_eq!((p, a), (pid, alive));
                assert!(waited >= Duration::from_millis(30));
            }
            e => panic!("expected StuckFormatter, got {e}"),
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    assert!(matches!(
        ShmArena::create_anonymous(1000),
        Err(ShmError::InvalidSize { .. })
    ));
    assert!(matches!(
        ShmArena::create_anonymous(usize::MAX),
        Err(ShmError::InvalidSize { .. })
    ));
    for bad in ["", "/", "noslash", "/a/b", "/nul\0x"] {
        assert_eq!(
            ShmArena::create(bad, 1 << 16).unwrap_err(),
            ShmError::InvalidName
        );
    }
    let name = unique("dup");
    let _u = Unlink(name.clone());
    let _a = ShmArena::create(&name, 1 << 16).unwrap();
    assert_eq!(
        ShmArena::create(&name, 1 << 16).unwrap_err(),
        ShmError::AlreadyExists
    );

    let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    for align in [0, 3, 8192] {
        assert_eq!(arena.alloc(8, align), Err(ShmError::InvalidAlign { align }));
    }
    for size in [1 << 16, usize::MAX, u32::MAX as usize] {
        assert!(matches!(
            arena.alloc(size, 8),
            Err(ShmError::OutOfMemory { .. })
        ));
    }
    let h = arena.alloc(0, 1).unwrap();
    assert_eq!(arena.usable_size(h).unwrap(), 16);
    assert!(matches!(
        arena.write(h, usize::MAX, &[1]),
        Err(ShmError::OutOfBounds { .. })
    ));
    for bits in [0, u64::MAX, h.to_bits() + 16, h.to_bits() ^ (1 << 32)] {
        let forged = ShmHandle::from_bits(bits);
        assert_eq!(arena.free(forged), Err(ShmError::Stale));
        assert_eq!(arena.read(forged, 0, &mut []), Err(ShmError::Stale));
    }
    arena.check().unwrap();
}

#[test]
fn user_data_posing_as_a_header_never_resolves() {
    let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    let a = arena.alloc(256, 16).unwrap();
    let victim = arena.alloc(32, 16).unwrap();
    let victim_gen = victim.generation();
    // Forge, inside `a`, a byte-exact copy of a live header with a known generation.
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&(64u64 | 1 | (32 << 32)).to_le_bytes());
    hdr[8..12].copy_from_slice(&victim_gen.to_le_bytes());
    arena.write(a, 64, &hdr).unwrap();
    let forged =
        ShmHandle::from_bits(u64::from(a.offset() + 64 + 16) | (u64::from(victim_gen) << 32));
    assert_eq!(arena.usable_size(forged), Err(ShmError::Stale));
    assert_eq!(arena.free(forged), Err(ShmError::Stale));
    // Stale after free, even when the same offset is reused at once.
    arena.free(victim).unwrap();
    let again = arena.alloc(32, 16).unwrap();
    assert_eq!(again.offset(), victim.offset());
    assert_ne!(again.generation(), victim.generation());
    assert_eq!(arena.read(victim, 0, &mut [0; 4]), Err(ShmError::Stale));
    arena.check().unwrap();
}

#[test]
fn a_header_recreated_where_one_was_reused_in_place_gets_a_fresh_generation() {
    let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    let a = arena.alloc(64, 16).unwrap();
    let mut b = arena.alloc(64, 16).unwrap();
    let c = arena.alloc(64, 16).unwrap();
    // Reuse b's block in place (exact fit, no split, so no new header) many times: each
    // free bumps its generation, and each old handle must stay stale.
    let mut stale = Vec::new();
    for _ in 0..8 {
        arena.free(b).unwrap();
        stale.push(b);
        let again = arena.alloc(64, 16).unwrap();
        assert_eq!(again.offset(), b.offset());
        b = again;
    }
    // Destroy b's header by merging it into a's block, then recreate it by a split.
    arena.free(b).unwrap();
    stale.push(b);
    arena.free(a).unwrap();
    let a2 = arena.alloc(64, 16).unwrap();
    let b2 = arena.alloc(64, 16).unwrap();
    assert_eq!(b2.offset(), b.offset());
    for old in stale {
        assert_eq!(
            arena.usable_size(old),
            Err(ShmError::Stale),
            "{old:?} resolves as {b2:?}"
        );
    }
    for h in [a2, b2, c] {
        arena.free(h).unwrap();
    }
    arena.check().unwrap();
}

#[test]
fn a_read_racing_a_free_and_reuse_is_whole_or_stale() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: u64 = 5000;
    let arena = ShmArena::create_anonymous(1 << 16).unwrap();
    let published = AtomicU64::new(0);
    let seen = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for k in 0..ROUNDS {
                let h = arena.alloc_bytes(&[k as u8; 256]).unwrap();
                published.store(h.to_bits(), Ordering::Release);
                // Free only after a read that began after publishing has completed, so every
                // round has at least one whole read; later reads race the free and the reuse.
                let start = seen.load(Ordering::Acquire);
                while seen.load(Ordering::Acquire) < start + 2 {
                    std::thread::yield_now();
                }
                arena.free(h).unwrap();
            }
            done.store(true, Ordering::Release);
        });
        let (mut whole, mut stale) = (0u64, 0u64);
        let mut buf = [0u8; 256];
        while !done.load(Ordering::Acquire) {
            let h = ShmHandle::from_bits(published.load(Ordering::Acquire));
            match arena.read(h, 0, &mut buf) {
                Ok(()) => {
                    assert!(
                        buf.iter().all(|&x| x == buf[0]),
                        "torn or reused bytes: {buf:?}"
                    );
                    whole += 1;
                }
                Err(ShmError::Stale) => stale += 1,
                Err(e) => panic!("{e}"),
            }
            seen.fetch_add(1, Ordering::Release);
        }
        assert!(whole >= ROUNDS, "{whole} whole reads, {stale} stale");
    });
    arena.check().unwrap();
}

#[test]
fn everything_freed_coalesces_back_to_one_block() {
    for seed in 0..4 {
        let arena = ShmArena::create_anonymous(1 << 20).unwrap();
        let heap = arena.heap_bytes() as u64;
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut hs = Vec::new();
        loop {
            let size = if rng.gen_bool(0.1) {
                rng.gen_range(32 << 10..256 << 10)
            } else {
                rng.gen_range(0..600)
            };
            match arena.alloc(size, 1 << rng.gen_range(0..13)) {
                Ok(h) => hs.push(h),
                Err(ShmError::OutOfMemory { .. }) if size < 64 => break,
                Err(ShmError::OutOfMemory { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        let full = arena.check().unwrap();
        assert!(full.free_bytes < heap / 10, "filled: {full:?}");
        hs.shuffle(&mut rng);
        for (i, h) in hs.into_iter().enumerate() {
            arena.free(h).unwrap();
            if i % 97 == 0 {
                arena.check().unwrap();
            }
        }
        let s = arena.check().unwrap();
        assert_eq!(
            (s.free_blocks, s.free_bytes, s.largest_free),
            (1, heap, heap)
        );
        assert_eq!((s.live_blocks, s.live_bytes, s.used_bytes), (0, 0, 0));
        assert_eq!(s.fragmentation(), 0.0);
    }
}

#[test]
fn threads_of_one_process_share_the_lock() {
    let arena = ShmArena::create_anonymous(4 << 20).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let arena = &arena;
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let mut live: Vec<(ShmPod<[u64; 4]>, u64)> = Vec::new();
                for i in 0..5000u64 {
                    if live.len() < 50 && rng.gen_bool(0.6) {
                        let v = t << 32 | i;
                        live.push((arena.alloc_pod(&[v; 4]).unwrap(), v));
                    } else if let Some((p, v)) = live.pop() {
                        assert_eq!(arena.get(p).unwrap(), [v; 4]);
                        arena.free_pod(p).unwrap();
                    }
                }
                for (p, _) in live {
                    arena.free_pod(p).unwrap();
                }
            });
        }
    });
    let s = arena.check().unwrap();
    assert_eq!((s.live_blocks, s.free_blocks), (0, 1));
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align_log: u32 },
    Free(usize),
    Write(usize, u8),
    Read(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![0usize..300, 300usize..5000, 30_000usize..70_000], 0u32..13)
            .prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Op::Write(i, b)),
        2 => any::<usize>().prop_map(Op::Read),
    ]
}

struct Live {
    h: ShmHandle,
    size: usize,
    fill: u8,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Alloc/free/read/write against a Vec model: data survives, live blocks never overlap,
    /// alignment and usable size hold, freed handles are stale, accounting matches.
    #[test]
    fn model_alloc_free(ops in proptest::collection::vec(op(), 1..300)) {
        let arena = ShmArena::create_anonymous(512 << 10).unwrap();
        let mut live: Vec<Live> = Vec::new();
        let mut dead: Vec<ShmHandle> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { size, align_log } => match arena.alloc(size, 1 << align_log) {
                    Ok(h) => {
                        prop_assert_eq!(h.offset() as usize % (1 << align_log), 0);
                        prop_assert!(arena.usable_size(h).unwrap() >= size);
                        arena.write(h, 0, &vec![0xA5; size]).unwrap();
                        live.push(Live { h, size, fill: 0xA5 });
                    }
                    Err(ShmError::OutOfMemory { .. }) => {}
                    Err(e) => prop_assert!(false, "alloc: {}", e),
                },
                Op::Free(i) if !live.is_empty() => {
                    let l = live.swap_remove(i % live.len());
                    arena.free(l.h).unwrap();
                    dead.push(l.h);
                }
                Op::Write(i, b) if !live.is_empty() => {
                    let n = live.len();
                    let l = &mut live[i % n];
                    arena.write(l.h, 0, &vec![b; l.size]).unwrap();
                    l.fill = b;
                }
                Op::Read(i) if !live.is_empty() => {
                    let l = &live[i % live.len()];
                    let mut buf = vec![0; l.size];
                    arena.read(l.h, 0, &mut buf).unwrap();
                    prop_assert!(buf.iter().all(|&b| b == l.fill));
                }
                _ => {}
            }
        }
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|l| (l.h.offset() as usize, arena.usable_size(l.h).unwrap()))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            prop_assert!(w[0].0 + w[0].1 <= w[1].0, "blocks overlap: {:?}", w);
        }
        for h in &dead {
            if !live.iter().any(|l| l.h == *h) {
                prop_assert_eq!(arena.usable_size(*h), Err(ShmError::Stale));
            }
        }
        let s = arena.check().unwrap();
        prop_assert_eq!(s.live_blocks, live.len() as u64);
        prop_assert_eq!(s.live_bytes, live.iter().map(|l| l.size as u64).sum::<u64>());
        for l in live {
            arena.free(l.h).unwrap();
        }
        let s = arena.check().unwrap();
        prop_assert_eq!((s.free_blocks, s.free_bytes), (1, s.heap_bytes));
    }
}
