//! Tracy integration (feature `tracy`): watch the heap and the compactor in the
//! [Tracy profiler](https://github.com/wolfpld/tracy).
//!
//! Build a heap with [`heap`] (or [`heap_with_config`]) and it reports to Tracy:
//!
//! * **memory pools** — one named pool per kind of memory: `<name> handles`
//!   (handle-addressed pool blocks), `<name> fixed` (raw-pointer pool blocks) and
//!   `<name> large` (direct mappings). A compaction move appears as a free of the old
//!   address then an alloc of the new one, in the order the moves happen;
//! * **zones** — `compaction pass` on the compacting thread, with `plan`, `moves` and
//!   `purge` inside;
//! * **a message per pass** with its report;
//! * **plots** — per pass: bytes moved, moves, pass duration, blocks skipped busy,
//!   movable fragmentation and committed bytes; per call of [`plot_heap`]: live bytes,
//!   committed bytes and pool fragmentation; per call of [`plot_scratch`] or
//!   [`report_frame_arena`]: scratch (frame-arena) bytes in use. The latter also keeps a
//!   memory pool per frame arena, *discarded* at every frame reset.
//!
//! [`frame_mark`] marks a frame for headless apps (Bevy marks frames only from its
//! renderer).
//!
//! # Why Tracy never sees an impossible memory event
//!
//! Tracy ends a session on an address allocated twice without a free, or a free of an
//! address it does not know. The events come from the heap's event hook
//! ([`crate::events`]), which emits alloc before an address can reach anyone who could
//! free or move it, free before the address can be reused, and a move as
//! free(old), alloc(new) under the slot's move lock; Tracy serialises them under its own
//! lock in that order. The sink is installed when the heap is built, so Tracy knows
//! every block from its birth. Each live heap gets pools of its own (a suffix `#2`,
//! `#3`, … when two live heaps share a name), and a dropped heap *discards* its pools,
//! so a later heap mapping the same addresses starts from a clean pool. In Tracy's
//! on-demand mode (feature `tracy-on-demand`) events before the connection are dropped
//! by Tracy; the server then ignores frees of blocks it never saw allocated (it does
//! so for every on-demand client), and no alloc can be doubled because every free
//! after the connection is sent.
//!
//! # Cost
//!
//! With no profiler connected, Tracy (without on-demand) queues every event until one
//! connects; with `tracy-on-demand` it drops them after one check. The measured
//! overhead is in `benches/README.md`.
//!
//! # Examples
//!
//! ```
//! let heap = tidyheap::tracy::heap("assets");
//! let h = heap.alloc_handle(256, 16)?;
//! heap.compact(tidyheap::Budget::blocks(64));
//! tidyheap::tracy::plot_heap(&heap);
//! tidyheap::tracy::frame_mark();
//! heap.free_handle(h)?;
//! # Ok::<(), tidyheap::HandleError>(())
//! ```

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_void};
use std::sync::{Arc, Mutex};

use tracy_client::{Client, PlotConfiguration, PlotFormat, PlotName, plot_name, span_location};

use crate::events::{HeapEvents, PassPhase, Pool};
use crate::{AllocError, CompactionObserver, CompactionReport, FrameStats, Heap, HeapConfig};

/// Pool names of one heap: `[handles, fixed, large]`, static C strings (Tracy keeps
/// the pointers).
type PoolNames = [&'static CStr; 3];

/// Pool name sets: `(heap name, set, in use by a live heap)`. A set is reused after its
/// heap is dropped (its pools were discarded), so names leak only once.
static POOLS: Mutex<Vec<(String, PoolNames, bool)>> = Mutex::new(Vec::new());

/// A free pool-name set for `name`, marked in use.
fn acquire_pools(name: &str) -> PoolNames {
    let mut sets = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = sets.iter_mut().find(|(n, _, used)| n == name && !used) {
        set.2 = true;
        return set.1;
    }
    let suffix = match sets.iter().filter(|(n, ..)| n == name).count() {
        0 => String::new(),
        n => format!(" #{}", n + 1),
    };
    let leak = |kind: &str| -> &'static CStr {
        let s = format!("{name}{suffix} {kind}").replace('\0', " ");
        Box::leak(CString::new(s).expect("NULs replaced").into_boxed_c_str())
    };
    let set = [leak("handles"), leak("fixed"), leak("large")];
    sets.push((name.to_owned(), set, true));
    set
}

/// Marks `set` free again.
fn release_pools(set: PoolNames) {
    let mut sets = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    for (_, s, used) in sets.iter_mut() {
        if s[0].as_ptr() == set[0].as_ptr() {
            *used = false;
        }
    }
}

const BYTES_MOVED: PlotName = plot_name!("tidyheap bytes moved per pass");
const MOVES: PlotName = plot_name!("tidyheap moves per pass");
const PASS_MS: PlotName = plot_name!("tidyheap pass duration (ms)");
const SKIPPED_BUSY: PlotName = plot_name!("tidyheap blocks skipped busy");
const MOVABLE_FRAG: PlotName = plot_name!("tidyheap movable fragmentation");
const MOVABLE_COMMITTED: PlotName = plot_name!("tidyheap movable committed bytes");
const LIVE: PlotName = plot_name!("tidyheap live bytes");
const COMMITTED: PlotName = plot_name!("tidyheap committed bytes");
const FRAGMENTATION: PlotName = plot_name!("tidyheap fragmentation");
const SCRATCH: PlotName = plot_name!("tidyheap scratch bytes in use");

/// Sends each plot's format once per process.
fn configure_plots(client: &Client) {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let cfg = |f: PlotFormat| PlotConfiguration::default().format(f);
        for p in [BYTES_MOVED, MOVABLE_COMMITTED, LIVE, COMMITTED, SCRATCH] {
            client.plot_config(p, cfg(PlotFormat::Memory));
        }
        for p in [MOVABLE_FRAG, FRAGMENTATION] {
            client.plot_config(p, cfg(PlotFormat::Percentage));
        }
        for p in [MOVES, PASS_MS, SKIPPED_BUSY] {
            client.plot_config(p, cfg(PlotFormat::Number));
        }
    });
}

thread_local! {
    /// Open compaction zones of this thread: the pass, then the phase inside it.
    static ZONES: RefCell<Vec<tracy_client::Span>> = const { RefCell::new(Vec::new()) };
}

/// Ends this thread's open zones, innermost first.
fn close_zones(zones: &mut Vec<tracy_client::Span>) {
    while let Some(z) = zones.pop() {
        drop(z);
    }
}

/// The Tracy sink of one heap: its event hook and its compaction observer.
struct Sink {
    client: Client,
    pools: PoolNames,
}

impl Sink {
    fn name(&self, pool: Pool) -> *const std::ffi::c_char {
        self.pools[pool.index()].as_ptr()
    }
}

impl HeapEvents for Sink {
    fn on_alloc(&self, pool: Pool, addr: usize, size: usize) {
        // SAFETY: the name is a static NUL-terminated string; Tracy only records `addr`
        // and never dereferences it; the client is running (we hold a `Client`).
        unsafe {
            tracy_client::sys::___tracy_emit_memory_alloc_named(
                addr as *const c_void,
                size,
                self.name(pool),
            );
        }
    }

    fn on_free(&self, pool: Pool, addr: usize, _size: usize) {
        // SAFETY: as in `on_alloc`.
        unsafe {
            tracy_client::sys::___tracy_emit_memory_free_named(
                addr as *const c_void,
                self.name(pool),
            );
        }
    }

    fn on_pass_phase(&self, phase: PassPhase) {
        let _ = ZONES.try_with(|z| {
            let mut z = z.borrow_mut();
            match phase {
                PassPhase::Begin => {
                    // A pass that unwound (a panicking observer) may have left zones open.
                    close_zones(&mut z);
                    z.push(
                        self.client
                            .clone()
                            .span(span_location!("compaction pass"), 0),
                    );
                }
                PassPhase::Plan | PassPhase::Moves | PassPhase::Purge => {
                    if z.len() > 1 {
                        drop(z.pop());
                    }
                    let loc = match phase {
                        PassPhase::Plan => span_location!("plan"),
                        PassPhase::Moves => span_location!("moves"),
                        _ => span_location!("purge"),
                    };
                    z.push(self.client.clone().span(loc, 0));
                }
                PassPhase::End => close_zones(&mut z),
            }
        });
    }

    fn on_heap_drop(&self) {
        for name in self.pools {
            // SAFETY: a static NUL-terminated string; the client is running.
            unsafe { tracy_client::sys::___tracy_emit_memory_discard(name.as_ptr()) };
        }
        release_pools(self.pools);
    }
}

impl CompactionObserver for Sink {
    fn on_pass(&self, r: &CompactionReport) {
        let c = &self.client;
        c.plot(BYTES_MOVED, r.bytes_moved as f64);
        c.plot(MOVES, r.blocks_moved as f64);
        c.plot(PASS_MS, r.elapsed.as_secs_f64() * 1e3);
        c.plot(SKIPPED_BUSY, r.skipped_busy as f64);
        c.plot(MOVABLE_FRAG, r.fragmentation_after * 100.0);
        c.plot(MOVABLE_COMMITTED, r.committed_after as f64);
        c.message(&pass_message(r), 0);
    }
}

/// The message Tracy shows for a pass.
fn pass_message(r: &CompactionReport) -> String {
    format!(
        "tidyheap pass: {} moves, {:.1} KiB moved, {} busy, {} pinned, {} spans emptied, \
         {:.1} KiB released, fragmentation {:.3} -> {:.3}, {:.0} us{}",
        r.blocks_moved,
        r.bytes_moved as f64 / 1024.0,
        r.skipped_busy,
        r.skipped_pinned,
        r.spans_emptied,
        r.bytes_released as f64 / 1024.0,
        r.fragmentation_before,
        r.fragmentation_after,
        r.elapsed.as_secs_f64() * 1e6,
        if r.complete { ", plan complete" } else { "" },
    )
}

/// A heap with the default configuration that reports to Tracy under `name`; starts the
/// Tracy client if it is not running.
///
/// # Panics
///
/// If the OS refuses the heap's bookkeeping; see [`try_heap_with_config`].
///
/// # Examples
///
/// ```
/// let heap = tidyheap::tracy::heap("meshes");
/// assert!(heap.has_events());
/// ```
pub fn heap(name: &str) -> Heap {
    heap_with_config(name, HeapConfig::DEFAULT)
}

/// A heap with `config` that reports to Tracy under `name`.
///
/// # Panics
///
/// If the OS refuses the heap's bookkeeping; see [`try_heap_with_config`].
///
/// # Examples
///
/// ```
/// let heap = tidyheap::tracy::heap_with_config("meshes", tidyheap::HeapConfig::DEFAULT);
/// assert!(heap.has_events());
/// ```
pub fn heap_with_config(name: &str, config: HeapConfig) -> Heap {
    match try_heap_with_config(name, config) {
        Ok(h) => h,
        Err(e) => panic!("tidyheap: cannot create a heap: {e}"),
    }
}

/// A heap with `config` that reports to Tracy under `name`, or the OS error.
///
/// # Errors
///
/// [`AllocError::OutOfMemory`] if the heap's bookkeeping cannot be mapped.
///
/// # Examples
///
/// ```
/// let heap = tidyheap::tracy::try_heap_with_config("meshes", Default::default())?;
/// assert!(heap.has_events());
/// # Ok::<(), tidyheap::AllocError>(())
/// ```
pub fn try_heap_with_config(name: &str, config: HeapConfig) -> Result<Heap, AllocError> {
    let client = Client::start();
    configure_plots(&client);
    let pools = acquire_pools(name);
    let sink = Arc::new(Sink { client, pools });
    match Heap::try_with_events(config, sink.clone()) {
        Ok(heap) => {
            heap.subscribe(sink);
            Ok(heap)
        }
        Err(e) => {
            release_pools(pools);
            Err(e)
        }
    }
}

/// Plots `heap`'s live bytes, committed bytes and pool fragmentation
/// (`1 − (fixed + movable live) / committed`); call it once a frame.
///
/// Does nothing if the Tracy client is not running.
///
/// # Examples
///
/// ```
/// tidyheap::tracy::plot_heap(&tidyheap::Heap::new());
/// ```
pub fn plot_heap(heap: &Heap) {
    let Some(c) = Client::running() else { return };
    configure_plots(&c);
    let s = heap.stats();
    let pool_live = s.fixed.live_bytes() + s.movable.live_bytes();
    c.plot(LIVE, s.live_bytes() as f64);
    c.plot(COMMITTED, s.committed_bytes as f64);
    let frag = if s.committed_bytes == 0 {
        0.0
    } else {
        1.0 - pool_live as f64 / s.committed_bytes as f64
    };
    c.plot(FRAGMENTATION, frag * 100.0);
}

/// Plots a frame arena's scratch bytes in use (the bytes of its last ended frame).
///
/// Does nothing if the Tracy client is not running.
///
/// # Examples
///
/// ```
/// let arena = tidyheap::FrameArena::new();
/// tidyheap::tracy::plot_scratch(&arena.stats());
/// ```
pub fn plot_scratch(stats: &FrameStats) {
    let Some(c) = Client::running() else { return };
    configure_plots(&c);
    c.plot(SCRATCH, stats.frame_bytes as f64);
}

/// Reports a frame arena's last ended frame to the Tracy memory pool `pool`: the pool is
/// *discarded* (the arena's reset frees the whole frame at once), then the frame's bytes
/// appear as one block; also plots them as [`plot_scratch`] does. Call it once per frame,
/// after [`FrameArena::begin_frame`](crate::FrameArena::begin_frame); give each arena
/// its own pool.
///
/// Does nothing if the Tracy client is not running.
///
/// # Examples
///
/// ```
/// let mut arena = tidyheap::FrameArena::new();
/// for _ in 0..3 {
///     let frame = arena.begin_frame();
///     frame.alloc([0u8; 64]);
///     drop(frame);
///     tidyheap::tracy::report_frame_arena(&arena, c"render scratch");
/// }
/// ```
pub fn report_frame_arena(arena: &crate::FrameArena, pool: &'static CStr) {
    if !Client::is_running() {
        return;
    }
    let stats = arena.stats();
    // SAFETY: `pool` is a static NUL-terminated string; the client is running; Tracy
    // only records the address (the arena's, so unique among arenas reporting here).
    unsafe {
        tracy_client::sys::___tracy_emit_memory_discard(pool.as_ptr());
        if stats.frame_bytes > 0 {
            tracy_client::sys::___tracy_emit_memory_alloc_named(
                (arena as *const crate::FrameArena).cast(),
                stats.frame_bytes,
                pool.as_ptr(),
            );
        }
    }
    plot_scratch(&stats);
}

/// Marks the end of a frame (Tracy's main frame set), for apps without a renderer that
/// marks frames. Does nothing if the Tracy client is not running.
///
/// # Examples
///
/// ```
/// tidyheap::tracy::frame_mark();
/// ```
pub fn frame_mark() {
    if let Some(c) = Client::running() {
        c.frame_mark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two live heaps never share a pool (a drop discards only its own); a dropped
    /// heap's names are reused, not leaked again.
    #[test]
    fn live_heaps_get_distinct_pools_and_names_are_reused() {
        let a = acquire_pools("registry test");
        let b = acquire_pools("registry test");
        assert_eq!(a[0].to_str().unwrap(), "registry test handles");
        assert_eq!(b[2].to_str().unwrap(), "registry test #2 large");
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        release_pools(a);
        let c = acquire_pools("registry test");
        assert_eq!(c[1].as_ptr(), a[1].as_ptr());
        release_pools(b);
        release_pools(c);
    }

    #[test]
    fn a_dropped_heap_frees_its_pool_names() {
        let first = heap("drop test");
        drop(first);
        let again = heap("drop test");
        let sets = POOLS.lock().unwrap();
        assert_eq!(sets.iter().filter(|(n, ..)| n == "drop test").count(), 1);
        drop(sets);
        drop(again);
    }
}
