//! Two processes share one TLSF heap: the parent creates an anonymous segment (a memfd),
//! re-executes itself as the child with the segment's fd inherited, and both then allocate,
//! write and free concurrently while exchanging handles over a pipe (the child's stdin and
//! stdout).
//!
//! Run it with `cargo run --release --example shm_ipc`.
//!
//! Each side sends `MESSAGES` messages: a payload block of 16 B–4 KiB filled with a pattern,
//! plus a typed header block (`ShmPod<Msg>`) holding the payload's handle, its length, seed
//! and checksum. Only the 8-byte header handle crosses the pipe. The receiver checks the
//! checksum against the payload, then frees both blocks: every block is freed by the other
//! process than the one that allocated it. Each side also churns private blocks meanwhile.
//! At the end both print their stats and the parent checks the whole heap (every invariant)
//! and that nothing leaked: no live block, one free block spanning the heap.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use bytemuck::{Pod, Zeroable};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tidyheap::shm::{ShmArena, ShmHandle, ShmPod};

const MESSAGES: u64 = 20_000;
const FD_VAR: &str = "TIDYHEAP_SHM_IPC_FD";

/// The typed header that travels (by handle) to the other process.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Msg {
    payload: u64,
    len: u64,
    seed: u64,
    checksum: u64,
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len).map(|_| rng.r#gen()).collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Sends `MESSAGES` headers on `out`, churning private blocks in between.
fn send(arena: &ShmArena, side: u64, out: &mut impl Write) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(side);
    let mut private: Vec<ShmHandle> = Vec::new();
    for i in 0..MESSAGES {
        let len = rng.gen_range(16..4096);
        let seed = side << 32 | i;
        let data = pattern(seed, len);
        let payload = arena
            .alloc_bytes(&data)
            .map_err(|e| format!("alloc payload: {e}"))?;
        let msg = Msg {
            payload: payload.to_bits(),
            len: len as u64,
            seed,
            checksum: checksum(&data),
        };
        let head = arena
            .alloc_pod(&msg)
            .map_err(|e| format!("alloc header: {e}"))?;
        writeln!(out, "{}", head.raw().to_bits()).map_err(|e| e.to_string())?;
        if rng.gen_bool(0.5) {
            private.push(
                arena
                    .alloc(rng.gen_range(1..1024), 1 << rng.gen_range(0..7))
                    .map_err(|e| e.to_string())?,
            );
        }
        if private.len() > 32 {
            let h = private.swap_remove(rng.gen_range(0..private.len()));
            arena.free(h).map_err(|e| format!("free private: {e}"))?;
        }
    }
    for h in private {
        arena.free(h).map_err(|e| e.to_string())?;
    }
    writeln!(out, "end").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

/// Receives headers until `end`, checking and freeing each message. Returns the count.
fn receive(arena: &ShmArena, from: u64, input: impl BufRead) -> Result<u64, String> {
    for (n, line) in (0u64..).zip(input.lines()) {
        let line = line.map_err(|e| e.to_string())?;
        if line == "end" {
            return Ok(n);
        }
        let bits: u64 = line.parse().map_err(|_| format!("bad line {line:?}"))?;
        let head = ShmPod::<Msg>::from_raw(ShmHandle::from_bits(bits));
        let msg = arena.get(head).map_err(|e| format!("read header: {e}"))?;
        let payload = ShmHandle::from_bits(msg.payload);
        let mut data = vec![0; msg.len as usize];
        arena
            .read(payload, 0, &mut data)
            .map_err(|e| format!("read payload: {e}"))?;
        if msg.seed != from << 32 | n
            || checksum(&data) != msg.checksum
            || data != pattern(msg.seed, data.len())
        {
            return Err(format!("message {n} from side {from} is corrupt"));
        }
        arena
            .free(payload)
            .map_err(|e| format!("free payload: {e}"))?;
        arena
            .free_pod(head)
            .map_err(|e| format!("free header: {e}"))?;
    }
    Err("pipe closed before `end`".into())
}

/// Runs one side: sends on one thread while receiving on this one.
fn exchange(
    arena: &ShmArena,
    side: u64,
    out: impl Write + Send,
    input: impl BufRead,
) -> Result<u64, String> {
    std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let mut out = BufWriter::new(out);
            send(arena, side, &mut out)
        });
        let got = receive(arena, 1 - side, input);
        sender.join().map_err(|_| "sender panicked".to_string())??;
        got
    })
}

fn child(fd: i32) -> Result<(), String> {
    // SAFETY: the parent put an inherited, open fd of the segment under this number just for
    // us; nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let arena = ShmArena::from_fd(fd).map_err(|e| e.to_string())?;
    let got = exchange(&arena, 1, std::io::stdout(), std::io::stdin().lock())?;
    eprintln!(
        "child:  received and checked {got} messages; stats {:?}",
        arena.stats().map_err(|e| e.to_string())?
    );
    Ok(())
}

fn parent() -> Result<(), String> {
    let arena = ShmArena::create_anonymous(16 << 20).map_err(|e| e.to_string())?;
    let inherit = arena.inheritable_fd().map_err(|e| e.to_string())?;
    let mut kid = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(FD_VAR, inherit.as_raw_fd().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    drop(inherit);
    let start = Instant::now();
    let to_child = kid.stdin.take().ok_or("no child stdin")?;
    let from_child = BufReader::new(kid.stdout.take().ok_or("no child stdout")?);
    let got = exchange(&arena, 0, to_child, from_child)?;
    let status = kid.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("child failed: {status}"));
    }
    let elapsed = start.elapsed();
    let s = arena.check().map_err(|e| format!("heap check: {e}"))?;
    println!("parent: received and checked {got} messages; stats {s:?}");
    println!(
        "both:   {} allocations and {} frees in {:.0?} (pipe, copies and checks included), \
         fragmentation {:.3}",
        s.allocs,
        s.frees,
        elapsed,
        s.fragmentation()
    );
    if got != MESSAGES || s.live_blocks != 0 || s.free_blocks != 1 || s.free_bytes != s.heap_bytes {
        return Err(format!(
            "leak: {} live blocks, {} free blocks",
            s.live_blocks, s.free_blocks
        ));
    }
    println!("no leak: every block freed, the heap is one free block again");
    Ok(())
}

fn main() -> ExitCode {
    let r = match std::env::var(FD_VAR).ok().and_then(|v| v.parse().ok()) {
        Some(fd) => child(fd),
        None => parent(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm_ipc: {e}");
            ExitCode::FAILURE
        }
    }
}
