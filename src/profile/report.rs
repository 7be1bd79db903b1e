//! Reports: live blocks with their allocation sites, the top sites, and a
//! human-readable [`ProfileReport`]. Stacks are resolved to symbols here, at report
//! time, never when an allocation is recorded.

use core::fmt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use allocator_api2::vec::Vec as SysVec;

use super::config::Sampling;
use super::table::{Key, Record, Sys};
use super::tracker::{Profiler, quietly};
use crate::RawHandle;

/// One symbol at a return address (several when functions were inlined there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The demangled name, without its hash suffix, if known.
    pub name: Option<String>,
    /// The source file, if debug info has it.
    pub file: Option<PathBuf>,
    /// The source line, if debug info has it.
    pub line: Option<u32>,
}

/// One stack frame of an allocation site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The return address (instruction pointer) of the frame.
    pub ip: usize,
    /// What is known of the code there, innermost inlined function first; empty if the
    /// address could not be resolved.
    pub symbols: Vec<Symbol>,
}

/// Where blocks were allocated: a resolved stack, innermost frame first, starting at
/// the heap's entry point (the profiler's own frames are left out).
///
/// # Examples
///
/// ```
/// # #[inline(never)]
/// fn load_level(heap: &tidyheap::Heap) -> std::ptr::NonNull<u8> {
///     heap.alloc(std::alloc::Layout::new::<[u8; 128]>()).unwrap()
/// }
/// let heap = tidyheap::Heap::new();
/// let p = load_level(&heap);
/// let leaks = heap.leaks();
/// assert!(leaks[0].site.mentions("load_level"));
/// assert!(!leaks[0].site.frames().is_empty());
/// # unsafe { heap.dealloc(p, std::alloc::Layout::new::<[u8; 128]>()) };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationSite {
    frames: Vec<Frame>,
}

impl AllocationSite {
    /// The frames, innermost first.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// Whether any frame's symbol name contains `name` (for example a function's name
    /// or a path like `"my_game::assets::load"`).
    pub fn mentions(&self, name: &str) -> bool {
        self.symbol_names().any(|n| n.contains(name))
    }

    /// Every resolved symbol name, innermost first.
    pub fn symbol_names(&self) -> impl Iterator<Item = &str> {
        self.frames
            .iter()
            .flat_map(|f| f.symbols.iter())
            .filter_map(|s| s.name.as_deref())
    }
}

/// Symbol lines printed per site by `Display`.
const SHOWN_LINES: usize = 10;

/// Where `Display` stops a stack: the frames below are the runtime's (a thread's or
/// the test harness's start), as in std's short backtraces.
const SHORT_BACKTRACE_END: &str = "__rust_begin_short_backtrace";

impl fmt::Display for AllocationSite {
    /// One line per symbol (`name (file:line)`), indented by 6: at most 10 lines, and
    /// none below a `__rust_begin_short_backtrace` frame.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = 0;
        for frame in &self.frames {
            if frame.symbols.iter().any(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.contains(SHORT_BACKTRACE_END))
            }) {
                return Ok(());
            }
            if lines == SHOWN_LINES {
                return writeln!(f, "      …");
            }
            if frame.symbols.is_empty() {
                writeln!(f, "      {:#x}", frame.ip)?;
                lines += 1;
            }
            for s in frame
                .symbols
                .iter()
                .take(SHOWN_LINES - lines.min(SHOWN_LINES))
            {
                write!(f, "      {}", s.name.as_deref().unwrap_or("?"))?;
                match (&s.file, s.line) {
                    (Some(file), Some(line)) => writeln!(f, " ({}:{line})", file.display())?,
                    (Some(file), None) => writeln!(f, " ({})", file.display())?,
                    _ => writeln!(f)?,
                }
                lines += 1;
            }
        }
        Ok(())
    }
}

/// A recorded block that is still live.
#[derive(Clone, Debug)]
pub struct Leak {
    /// The block's address now (a movable block's current one, which compaction may
    /// have changed since it was allocated). `None` in the at-exit report for a movable
    /// block (the report has no heap to ask).
    pub address: Option<usize>,
    /// Requested bytes (after a realloc, the new size).
    pub size: usize,
    /// The block's handle, for a movable block.
    pub handle: Option<RawHandle>,
    /// Where it was allocated (a realloc keeps the original site).
    pub site: Arc<AllocationSite>,
}

/// The counters of one allocation site.
#[derive(Clone, Debug)]
pub struct SiteStats {
    /// The site.
    pub site: Arc<AllocationSite>,
    /// Recorded allocations from this site since the heap was created.
    pub allocations: u64,
    /// Their requested bytes.
    pub bytes: u64,
    /// Recorded blocks from this site still live.
    pub live_blocks: u64,
    /// Their requested bytes now.
    pub live_bytes: u64,
    /// The program's allocations from this site that the recorded ones stand for,
    /// estimated (see [`Sampling::represented`]); equal to `allocations` when every
    /// allocation is recorded.
    pub estimated_allocations: u64,
    /// Their bytes, estimated.
    pub estimated_bytes: u64,
    /// The program's blocks from this site still live, estimated from the recorded
    /// ones' current sizes.
    pub estimated_live_blocks: u64,
    /// Their bytes, estimated.
    pub estimated_live_bytes: u64,
}

/// The top allocation sites, by count and by bytes.
#[derive(Clone, Debug, Default)]
pub struct TopSites {
    /// Most allocations first (estimated, so sampling does not favour sites of small
    /// or large blocks; ties: most bytes first).
    pub by_count: Vec<SiteStats>,
    /// Most bytes first (estimated; ties: most allocations first).
    pub by_bytes: Vec<SiteStats>,
}

/// A heap's profile: what is still live, where it came from, and the hottest
/// allocation sites. `Display` prints it for humans.
///
/// With sampling, the recorded figures count the sampled allocations only, and the
/// `estimated_*` figures scale them up to the whole program (see
/// [`Sampling::represented`]); without sampling the two agree.
///
/// # Examples
///
/// ```
/// let heap = tidyheap::Heap::new();
/// let l = std::alloc::Layout::new::<[u8; 64]>();
/// let p = heap.alloc(l).unwrap();
/// let report = heap.profile_report(5);
/// assert_eq!(report.leaks.len(), 1);
/// assert_eq!(report.live_bytes(), 64);
/// assert!(report.to_string().contains("1 block still live, 64 B"));
/// // SAFETY: `p` came from `heap` with `l`.
/// unsafe { heap.dealloc(p, l) };
/// ```
#[derive(Clone, Debug)]
pub struct ProfileReport {
    /// The sampling rule the figures were recorded with.
    pub sampling: Sampling,
    /// The recorded blocks still live, by address (movable blocks without one last).
    pub leaks: Vec<Leak>,
    /// The top sites.
    pub top: TopSites,
    /// Sampled allocations that could not be recorded (the profiler's tables could not
    /// grow); 0 unless memory ran out.
    pub dropped: u64,
}

impl ProfileReport {
    /// Bytes of the live recorded blocks.
    pub fn live_bytes(&self) -> usize {
        self.leaks.iter().map(|l| l.size).sum()
    }

    /// The program's live bytes that the recorded blocks stand for, estimated (see
    /// [`Sampling::represented`]); [`ProfileReport::live_bytes`] when every allocation
    /// is recorded.
    ///
    /// # Examples
    ///
    /// ```
    /// use tidyheap::profile::{ProfilingConfig, Sampling};
    /// use tidyheap::{Heap, HeapConfig};
    ///
    /// let config = ProfilingConfig::new().with_sampling(Sampling::EveryNth(4));
    /// let heap = Heap::with_profiling(HeapConfig::DEFAULT, config);
    /// let l = std::alloc::Layout::new::<[u8; 32]>();
    /// let blocks: Vec<_> = (0..8).map(|_| heap.alloc(l).unwrap()).collect();
    /// let report = heap.profile_report(1);
    /// assert_eq!(report.leaks.len(), 2);
    /// assert_eq!(report.estimated_live_bytes(), 8 * 32);
    /// for p in blocks {
    ///     // SAFETY: `p` came from `heap` with `l`.
    ///     unsafe { heap.dealloc(p, l) };
    /// }
    /// ```
    pub fn estimated_live_bytes(&self) -> u64 {
        self.leaks
            .iter()
            .map(|l| self.sampling.represented(l.size).bytes)
            .sum()
    }

    /// The program's live blocks that the recorded ones stand for, estimated.
    ///
    /// # Examples
    ///
    /// ```
    /// let heap = tidyheap::Heap::new();
    /// let l = std::alloc::Layout::new::<u64>();
    /// let p = heap.alloc(l).unwrap();
    /// assert_eq!(heap.profile_report(1).estimated_live_blocks(), 1);
    /// // SAFETY: `p` came from `heap` with `l`.
    /// unsafe { heap.dealloc(p, l) };
    /// ```
    pub fn estimated_live_blocks(&self) -> u64 {
        self.leaks
            .iter()
            .map(|l| self.sampling.represented(l.size).allocations)
            .sum()
    }
}

/// A copy of the tables taken under the lock, in system-allocator memory (see the
/// locking rules on `Profiler`).
struct Snapshot {
    live: SysVec<(Key, Record), Sys>,
    /// Per site: its counters and its stack as a range of `stacks`.
    sites: SysVec<SiteRow, Sys>,
    stacks: SysVec<usize, Sys>,
    dropped: u64,
}

/// One site's counters in a [`Snapshot`] (the `SiteStats` figures without the resolved
/// stack), and its stack as `stacks[start..end]`.
#[derive(Clone, Copy)]
struct SiteRow {
    allocations: u64,
    bytes: u64,
    live_blocks: u64,
    live_bytes: u64,
    estimated_allocations: u64,
    estimated_bytes: u64,
    estimated_live_blocks: u64,
    estimated_live_bytes: u64,
    start: usize,
    end: usize,
}

impl Profiler {
    /// Copies the tables; `None` if the copy's memory could not be had.
    fn snapshot(&self) -> Option<Snapshot> {
        let t = self.lock();
        let mut live = SysVec::new_in(Sys);
        live.try_reserve_exact(t.live.len()).ok()?;
        live.extend(t.live.iter().map(|(k, r)| (*k, *r)));
        let mut sites = SysVec::new_in(Sys);
        sites.try_reserve_exact(t.sites.len()).ok()?;
        let mut stacks = SysVec::new_in(Sys);
        stacks
            .try_reserve_exact(t.sites.iter().map(|s| s.stack.len()).sum())
            .ok()?;
        for s in &t.sites {
            let start = stacks.len();
            stacks.extend_from_slice(&s.stack);
            sites.push(SiteRow {
                allocations: s.allocations,
                bytes: s.bytes,
                live_blocks: s.live_blocks,
                live_bytes: s.live_bytes,
                estimated_allocations: s.estimated_allocations,
                estimated_bytes: s.estimated_bytes,
                estimated_live_blocks: 0,
                estimated_live_bytes: 0,
                start,
                end: stacks.len(),
            });
        }
        for (_, r) in &live {
            let w = self.config.sampling.represented(r.size);
            let row = &mut sites[r.site as usize];
            row.estimated_live_blocks += w.allocations;
            row.estimated_live_bytes += w.bytes;
        }
        Some(Snapshot {
            live,
            sites,
            stacks,
            dropped: t.dropped,
        })
    }

    /// The live recorded blocks; `addr_of` finds a movable block's current address.
    pub(crate) fn leaks(&self, addr_of: &dyn Fn(RawHandle) -> Option<usize>) -> Vec<Leak> {
        quietly(|| {
            let Some(snap) = self.snapshot() else {
                return Vec::new();
            };
            leaks_of(&snap, &mut Resolver::default(), addr_of)
        })
    }

    /// The `n` top sites by count and by bytes.
    pub(crate) fn top_sites(&self, n: usize) -> TopSites {
        quietly(|| {
            let Some(snap) = self.snapshot() else {
                return TopSites::default();
            };
            top_of(&snap, &mut Resolver::default(), n)
        })
    }

    /// The full report with `n` sites per top table.
    pub(crate) fn report(
        &self,
        n: usize,
        addr_of: &dyn Fn(RawHandle) -> Option<usize>,
    ) -> ProfileReport {
        quietly(|| {
            let Some(snap) = self.snapshot() else {
                return ProfileReport {
                    sampling: self.config.sampling,
                    leaks: Vec::new(),
                    top: TopSites::default(),
                    dropped: 0,
                };
            };
            let mut r = Resolver::default();
            ProfileReport {
                sampling: self.config.sampling,
                leaks: leaks_of(&snap, &mut r, addr_of),
                top: top_of(&snap, &mut r, n),
                dropped: snap.dropped,
            }
        })
    }
}

fn leaks_of(
    snap: &Snapshot,
    r: &mut Resolver,
    addr_of: &dyn Fn(RawHandle) -> Option<usize>,
) -> Vec<Leak> {
    let mut leaks: Vec<Leak> = snap
        .live
        .iter()
        .map(|&(key, rec)| {
            let (address, handle) = match key {
                Key::Addr(a) => (Some(a), None),
                Key::Handle(h) => (addr_of(h), Some(h)),
            };
            Leak {
                address,
                size: rec.size,
                handle,
                site: r.site(snap, rec.site as usize),
            }
        })
        .collect();
    leaks.sort_by_key(|l| (l.address.is_none(), l.address));
    leaks
}

fn top_of(snap: &Snapshot, r: &mut Resolver, n: usize) -> TopSites {
    let mut order: Vec<usize> = (0..snap.sites.len()).collect();
    let stats = |i: usize, r: &mut Resolver| {
        let row = snap.sites[i];
        SiteStats {
            site: r.site(snap, i),
            allocations: row.allocations,
            bytes: row.bytes,
            live_blocks: row.live_blocks,
            live_bytes: row.live_bytes,
            estimated_allocations: row.estimated_allocations,
            estimated_bytes: row.estimated_bytes,
            estimated_live_blocks: row.estimated_live_blocks,
            estimated_live_bytes: row.estimated_live_bytes,
        }
    };
    let count = |i: usize| snap.sites[i].estimated_allocations;
    let bytes = |i: usize| snap.sites[i].estimated_bytes;
    order.sort_by_key(|&i| core::cmp::Reverse((count(i), bytes(i))));
    let by_count = order.iter().take(n).map(|&i| stats(i, r)).collect();
    order.sort_by_key(|&i| core::cmp::Reverse((bytes(i), count(i))));
    let by_bytes = order.iter().take(n).map(|&i| stats(i, r)).collect();
    TopSites { by_count, by_bytes }
}

/// Resolves stacks to symbols, each address and each site once per report.
#[derive(Default)]
struct Resolver {
    frames: HashMap<usize, Frame>,
    sites: HashMap<usize, Arc<AllocationSite>>,
}

impl Resolver {
    fn site(&mut self, snap: &Snapshot, i: usize) -> Arc<AllocationSite> {
        if let Some(s) = self.sites.get(&i) {
            return s.clone();
        }
        let SiteRow { start, end, .. } = snap.sites[i];
        let frames: Vec<Frame> = snap.stacks[start..end]
            .iter()
            .map(|&ip| self.frame(ip))
            .collect();
        let site = Arc::new(AllocationSite { frames });
        self.sites.insert(i, site.clone());
        site
    }

    fn frame(&mut self, ip: usize) -> Frame {
        self.frames
            .entry(ip)
            .or_insert_with(|| {
                let mut symbols = Vec::new();
                backtrace::resolve(core::ptr::without_provenance_mut(ip), |s| {
                    symbols.push(Symbol {
                        name: s.name().map(|n| format!("{n:#}")),
                        file: s.filename().map(PathBuf::from),
                        line: s.lineno(),
                    });
                });
                Frame { ip, symbols }
            })
            .clone()
    }
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Sampling::EveryAllocation | Sampling::EveryNth(0 | 1) => {
                f.write_str("every allocation")
            }
            Sampling::EveryNth(n) => write!(f, "every {n}th allocation"),
            Sampling::EveryBytes(n) => write!(f, "one allocation every {n} B"),
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tidyheap profile (recorded: {})", self.sampling)?;
        write!(
            f,
            "{} still live, {} B",
            plural(self.leaks.len() as u64, "block", "blocks"),
            self.live_bytes()
        )?;
        let sampled = !self.sampling.records_everything();
        if sampled {
            write!(
                f,
                " (recorded; about {} blocks, {} B in the program)",
                self.estimated_live_blocks(),
                self.estimated_live_bytes()
            )?;
        }
        writeln!(f)?;
        // Live blocks grouped by site, most bytes first.
        let mut groups: Vec<(&Arc<AllocationSite>, u64, usize, Vec<&Leak>)> = Vec::new();
        for l in &self.leaks {
            match groups.iter_mut().find(|g| Arc::ptr_eq(g.0, &l.site)) {
                Some(g) => {
                    g.1 += 1;
                    g.2 += l.size;
                    g.3.push(l);
                }
                None => groups.push((&l.site, 1, l.size, vec![l])),
            }
        }
        groups.sort_by_key(|g| core::cmp::Reverse(g.2));
        for (site, blocks, bytes, leaks) in &groups {
            write!(
                f,
                "  {bytes} B in {} at",
                plural(*blocks, "block", "blocks")
            )?;
            for l in leaks.iter().take(4) {
                match (l.address, l.handle) {
                    (Some(a), _) => write!(f, " {a:#x}")?,
                    (None, Some(h)) => write!(f, " {h:?}")?,
                    (None, None) => {}
                }
            }
            if leaks.len() > 4 {
                write!(f, " …")?;
            }
            writeln!(f, ", allocated at:")?;
            write!(f, "{site}")?;
        }
        for (title, sites) in [
            ("allocations", &self.top.by_count),
            ("bytes", &self.top.by_bytes),
        ] {
            writeln!(f, "top {} sites by {title}:", sites.len())?;
            for (i, s) in sites.iter().enumerate() {
                if sampled {
                    writeln!(
                        f,
                        "  #{} about {} allocations, {} B ({} live, {} B), from {} recorded, at:",
                        i + 1,
                        s.estimated_allocations,
                        s.estimated_bytes,
                        s.estimated_live_blocks,
                        s.estimated_live_bytes,
                        s.allocations
                    )?;
                } else {
                    writeln!(
                        f,
                        "  #{} {}, {} B ({} live, {} B) at:",
                        i + 1,
                        plural(s.allocations, "allocation", "allocations"),
                        s.bytes,
                        s.live_blocks,
                        s.live_bytes
                    )?;
                }
                write!(f, "{}", s.site)?;
            }
        }
        if self.dropped > 0 {
            writeln!(
                f,
                "{} not recorded (the profiler ran out of memory)",
                plural(self.dropped, "sampled allocation", "sampled allocations")
            )?;
        }
        Ok(())
    }
}
