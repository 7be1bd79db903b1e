//! A process-shared lock that survives a crashed holder.
//!
//! The lock is one 32-bit word in the segment holding the **pid of the holder** (0 = free),
//! plus a waiter count:
//!
//! ```text
//! lock:   CAS holder 0 -> me (Acquire)                      fast path, no syscall
//!         else spin a little, then: waiters += 1; if holder still == h: futex_wait(holder, h, 2 ms);
//!         waiters -= 1; every wake-up (or time-out) re-checks whether h is alive, and if it is
//!         dead (kill(h, 0) == ESRCH, or /proc/h/stat says zombie) CASes holder h -> me and
//!         reports the lock as *recovered*.
//! unlock: store holder = 0 (Release, a plain move); if waiters > 0 { futex_wake(holder, 1) }
//! ```
//!
//! Why no waiter sleeps past an unlock (for more than a bounded moment): a waiter increments
//! `waiters` (a locked RMW: a full barrier) before it re-reads `holder` and calls
//! `futex_wait(holder, h)`, and the kernel re-reads `holder` atomically before sleeping. If
//! the unlocker's load of `waiters` missed the increment, the unlocker's store of 0 was still
//! in its store buffer at that moment; it drains long before the waiter's syscall reaches
//! the kernel's check, which then sees `holder != h` and returns at once. The architecture
//! does not bound that drain, so waits are also capped at 2 ms: the worst case of that race is
//! a 2 ms delay, never a hang, never two holders. (A SeqCst swap in unlock would close the
//! window but costs a second `lock`-prefixed instruction per lock cycle, about 25 ns on our
//! VM: the hot alloc+free pair went from 228 ns to 194 ns without it.) A waiter that crashed with `waiters`
//! incremented costs only spurious wake syscalls.
//!
//! Why a steal is safe: only a CAS from the dead pid succeeds, so of several waiters that see
//! the holder dead exactly one takes the lock; the others see the new pid and wait on it.
//!
//! Limits (documented, not hidden): holders are identified by pid, so all processes must share
//! a pid namespace; a dead holder whose pid is reused by a new process before a waiter looks
//! keeps the lock until that process exits (liveness, not safety: nothing is stolen from a live
//! holder unless the pid was reused between the check and the CAS, a window of microseconds
//! after a crash). The lock is not re-entrant: a thread must not take it twice.

use std::sync::atomic::{AtomicU32, Ordering};

/// The lock's words inside the segment header.
#[repr(C)]
pub(super) struct LockWord {
    /// pid of the holder; 0 = free.
    holder: AtomicU32,
    /// Processes (threads) sleeping in `futex_wait`; only decides whether unlock wakes.
    waiters: AtomicU32,
    /// Times a waiter took the lock over from a dead holder.
    pub(super) recoveries: AtomicU32,
}

/// How the lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acquired {
    /// From a live holder or a free lock: the heap is consistent.
    Clean,
    /// Taken over from a dead holder (its pid): the heap may be mid-operation.
    FromDead(u32),
}

/// This process's pid, cached: `getpid` is a real syscall in glibc, and it was a third of a
/// hot alloc+free pair. A child of `fork` must not inherit the cache (it would take the lock
/// under its parent's pid), so an atfork handler clears it in the child.
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

pub(super) fn my_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    static ATFORK: std::sync::Once = std::sync::Once::new();
    ATFORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe
        // and valid in a freshly forked child; the handler is a plain `extern "C" fn`.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_pid_in_child));
        }
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// Whether process `pid` is alive (zombies count as dead: they can never unlock).
pub(super) fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the existence/permission check; it has no
    // memory-safety preconditions.
    let r = unsafe { libc::kill(raw, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // kill succeeds on zombies, which will never release the lock: look at the state letter.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => r == 0,
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 2_000_000,
    };
    // SAFETY:
    // - `word.as_ptr()` is a valid, aligned u32 in a mapping that outlives the call;
    // - FUTEX_WAIT (not PRIVATE, so it works across processes sharing the mapping) reads the
    //   word atomically and sleeps at most `ts`; a spurious return is handled by the caller's loop.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid and aligned.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1i32);
    }
}

impl LockWord {
    /// Takes the lock, waiting as long as a live process holds it.
    pub(super) fn lock(&self) -> Acquired {
        let me = my_pid();
        if self
            .holder
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Acquired::Clean;
        }
        self.lock_slow(me)
    }

    #[cold]
    fn lock_slow(&self, me: u32) -> Acquired {
        let mut spins = 0u32;
        loop {
            let cur = self.holder.load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .holder
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Acquired::Clean;
                }
                continue;
            }
            if spins < 64 {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if spins < 80 {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            if cur != me && !alive(cur) {
                if self
                    .holder
                    .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.recoveries.fetch_add(1, Ordering::Relaxed);
                    return Acquired::FromDead(cur);
                }
                continue;
            }
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if self.holder.load(Ordering::SeqCst) == cur {
                futex_wait(&self.holder, cur);
            }
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Releases the lock held by this process.
    pub(super) fn unlock(&self) {
        debug_assert_eq!(self.holder.load(Ordering::Relaxed), my_pid());
        self.holder.store(0, Ordering::Release);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            futex_wake(&self.holder);
        }
    }

    /// pid of the current holder, 0 if free (a snapshot).
    pub(super) fn holder(&self) -> u32 {
        self.holder.load(Ordering::Relaxed)
    }
}
