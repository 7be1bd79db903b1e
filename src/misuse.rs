//! Reporting misuse: a message on stderr, then `abort` (DESIGN invariant 9).
//!
//! A misuse found by the heap's checks (a double free, a foreign pointer, a wrong
//! layout) means the heap can no longer trust what the caller says, so it stops the
//! process instead of unwinding: unwinding would run destructors that free more blocks
//! through the same confused state, and a global allocator must not unwind at all.
//! The path never allocates (the message is formatted into a buffer on the stack and
//! written with one `write(2)`), so it works inside the global allocator too.
//!
//! # What is checked where
//!
//! | misuse | message | caught |
//! |---|---|---|
//! | double free of a pool block | `double free of 0x… (64 B class)` | every build, every free (the free stamp; a block of a span with no block out, under the arena lock) |
//! | foreign or stack pointer, another heap's block | `free of 0x…, which is not a block of this heap …` | every build, every free |
//! | movable (handle) block freed as fixed | `… as a fixed block, but it is a movable (handle) block` | every build, every free |
//! | layout of another class | `… with a layout of the 128 B class, but the block is of the 64 B class …` | every build, every free |
//! | interior pointer, pointer into a span's tail | `… which is not the start of a block (64 B class)` | every free with `hardened` or debug assertions; otherwise frees that miss the thread cache's hit path |
//! | large block freed twice or with another size | `… which is not a live large block …`, `… but its mapping is … B …` | every build |
//! | write past a block's requested bytes | `canary corrupted at 0x…, block of 100 B` | `hardened`, on free |
//! | write into a free block's list link | `free list corrupted at 0x…` | `hardened`, when the list reaches the block |
//! | write past the last block of a fixed span | `SIGSEGV` (the span's guard page) | `hardened` |
//!
//! The hot free path's checks are a page-map lookup and two compares (the span's owner
//! and class, `HeapInner::is_local`), plus a multiply-and-compare block-start test with
//! `hardened`; everything they reject goes to the slow path, which names the misuse.

use core::fmt::{self, Write};

/// Bytes of the message buffer; longer messages are cut (and end with `…`).
const MESSAGE_BYTES: usize = 512;

/// A message being formatted into a fixed buffer on the stack.
struct StackMessage {
    buf: [u8; MESSAGE_BYTES],
    len: usize,
    cut: bool,
}

impl Write for StackMessage {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = MESSAGE_BYTES - 4 - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        self.cut |= take < s.len();
        Ok(())
    }
}

/// Writes `tidyheap: <message>` and a newline to stderr, then aborts the process.
#[cold]
#[inline(never)]
pub(crate) fn fatal_args(args: fmt::Arguments<'_>) -> ! {
    let mut m = StackMessage {
        buf: [0; MESSAGE_BYTES],
        len: 0,
        cut: false,
    };
    // Formatting into the buffer never fails (it truncates instead).
    let _ = m.write_str("tidyheap: ");
    let _ = m.write_fmt(args);
    if m.cut {
        m.buf[m.len..m.len + 3].copy_from_slice("…".as_bytes());
        m.len += 3;
    }
    m.buf[m.len] = b'\n';
    m.len += 1;
    let mut done = 0;
    while done < m.len {
        // SAFETY: the range `[done, len)` lies in `buf`, which outlives the call; fd 2
        // is only written to (an invalid fd makes `write` fail, which ends the loop).
        let n = unsafe { libc::write(2, m.buf[done..].as_ptr().cast(), m.len - done) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    std::process::abort()
}

/// `fatal!("double free of {p:p}")`: formats without allocating and aborts.
macro_rules! fatal {
    ($($arg:tt)*) => {
        $crate::misuse::fatal_args(format_args!($($arg)*))
    };
}
pub(crate) use fatal;

/// A per-heap random key (never 0): `getrandom`, mixed with the address of a local
/// and the clock, so two heaps (or two runs) differ even if `getrandom` fails.
pub(crate) fn random_key(salt: u64) -> u64 {
    let mut k = 0u64;
    // SAFETY: writes at most 8 bytes into `k`; `GRND_NONBLOCK` never blocks.
    let got = unsafe { libc::getrandom((&raw mut k).cast(), 8, libc::GRND_NONBLOCK) };
    if got != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        k = t ^ ((&raw const k).addr() as u64).rotate_left(29);
    }
    let mut x = k ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // splitmix64's finaliser.
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    x | 1
}
