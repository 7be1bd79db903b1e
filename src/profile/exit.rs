//! The at-exit report: every profiler that has recorded something is listed here
//! until its heap is dropped; when the process exits (`atexit`), each listed profiler
//! whose report is asked for prints what is still live.

use std::sync::{Mutex, Once, PoisonError};

use super::config::ProfilingConfig;
use super::tracker::{Profiler, quietly};
use crate::RawHandle;

/// Profilers listed at once; a heap beyond this many gets its report at drop only.
const SLOTS: usize = 64;

/// Addresses of the listed profilers (0: a free slot). A listed profiler stays at its
/// address and alive until it removes itself (its `Drop`), which takes this lock, so
/// the exit hook may read every listed profiler while it holds the lock.
static LISTED: Mutex<[usize; SLOTS]> = Mutex::new([0; SLOTS]);

static HOOK: Once = Once::new();

/// The environment variable that asks every profiled heap for its report.
pub(crate) const REPORT_ENV: &str = "TIDYHEAP_PROFILE_REPORT";

/// Lists `p` (once, when it first records). Called from inside allocator hooks, so it
/// only takes this module's lock and calls `atexit` (C code, not the Rust allocator).
pub(crate) fn register(p: &Profiler) {
    HOOK.call_once(|| {
        // SAFETY: `at_exit` is an `extern "C" fn()` that stays valid for the life of
        // the process (it is a function of this binary) and never unwinds.
        unsafe { libc::atexit(at_exit) };
    });
    let mut listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = listed.iter_mut().find(|s| **s == 0) {
        *slot = core::ptr::from_ref(p).expose_provenance();
    }
}

/// Removes `p` from the list (its heap is being dropped).
pub(crate) fn unregister(p: &Profiler) {
    let addr = core::ptr::from_ref(p).addr();
    let mut listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(slot) = listed.iter_mut().find(|s| **s == addr) {
        *slot = 0;
    }
}

/// Whether the report is asked for, by `config` or by the environment.
pub(crate) fn report_wanted(config: &ProfilingConfig) -> bool {
    config.report_at_exit || std::env::var_os(REPORT_ENV).is_some_and(|v| v != "0")
}

/// Prints `p`'s report to stderr with one `write(2)` per chunk, without taking the
/// stderr lock (a thread holding it may be inside an allocator hook waiting for
/// `LISTED`, which the exit hook holds).
pub(crate) fn print_report(p: &Profiler, addr_of: &dyn Fn(RawHandle) -> Option<usize>) {
    quietly(|| {
        let text = p.report(p.config.report_sites, addr_of).to_string();
        let bytes = text.as_bytes();
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: the range `[done, len)` lies in `bytes`, alive for the call; fd 2
            // is only written to (an invalid fd makes `write` fail, which ends the loop).
            let n = unsafe { libc::write(2, bytes[done..].as_ptr().cast(), bytes.len() - done) };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
    });
}

/// The `atexit` hook.
extern "C" fn at_exit() {
    // Unwinding out of an `extern "C"` function aborts, which is the right outcome for
    // a panic here too; nothing below is expected to panic.
    let listed = LISTED.lock().unwrap_or_else(PoisonError::into_inner);
    for &addr in listed.iter().filter(|&&a| a != 0) {
        // SAFETY: a listed address is a live profiler until it unregisters, which
        // needs the lock we hold (see `LISTED`).
        let p = unsafe { &*core::ptr::with_exposed_provenance::<Profiler>(addr) };
        if report_wanted(&p.config) {
            print_report(p, &|_| None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `report_sites` no other test uses: marks this test's profilers.
    const MARK: usize = 424_242;

    /// (listed profilers, listed profilers of this test).
    fn listed() -> (usize, usize) {
        let listed = LISTED.lock().unwrap();
        let live: Vec<usize> = listed.iter().copied().filter(|&a| a != 0).collect();
        let ours = live
            .iter()
            // SAFETY: listed profilers are alive while the lock is held (see `LISTED`).
            .filter(|&&a| unsafe { (*core::ptr::with_exposed_provenance::<Profiler>(a)).config }.report_sites == MARK)
            .count();
        (live.len(), ours)
    }

    #[test]
    fn dropped_profilers_leave_the_list_even_after_it_overflowed() {
        let config = ProfilingConfig::new().with_report_sites(MARK);
        let ps: Vec<Box<Profiler>> = (0..SLOTS + 8)
            .map(|_| Box::new(Profiler::new(config)))
            .collect();
        for (i, p) in ps.iter().enumerate() {
            // A first record lists the profiler (no memory is behind the address).
            p.on_alloc_ptr(core::ptr::without_provenance_mut(16 * (i + 1)), 8);
        }
        let (all, ours) = listed();
        assert!(all <= SLOTS && ours > 0, "{all} listed, {ours} of ours");
        drop(ps);
        assert_eq!(listed().1, 0, "no dropped profiler stays listed");
    }
}
