//! One command for the README's benchmark table:
//!
//! ```sh
//! cargo run --release --example report
//! ```
//!
//! Runs a short version of every benchmark — the key cases of `benches/alloc.rs`,
//! `handles.rs`, `frame.rs`, `compaction.rs` and `large.rs`, the workloads of
//! `benches/workloads.rs` and the mimalloc-bench ports of `benches/mimalloc_bench.rs`
//! (the last two share their code with this file, from `benches/common/`) — with its own
//! simple timing loops: each figure is the median of a few runs, the peers of a case
//! alternating run by run so they see the same machine load, results kept alive with
//! `black_box`. All inputs come from seeded RNGs, so every run prints the same rows.
//!
//! It prints one markdown table: `peer`, `workload`, `metric`, `tidyheap`, `peer value`,
//! `ratio` (tidyheap ÷ peer). Each metric says which way is better (↑ or ↓); the ratio
//! cell says **behind** where tidyheap is more than 5 % worse than the peer, `tie`
//! within 5 %, and `ahead` otherwise (fragmentation compares differences of more than
//! 0.02 instead). Nothing is asserted: the numbers are measured, not checked. The whole
//! run takes about a minute on a 2-core machine (well under 3).

#[allow(dead_code)] // each binary including the shared module uses part of it
#[path = "../../benches/common/mod.rs"]
mod common;

use std::alloc::Layout;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bumpalo::Bump;
use common::churn::{BURST_BLOCKS, Churn, burst_4k};
use common::peers::{self, Mi, Peer, Sys};
use common::{Mode, Outcome, Workload, mbench, measure, median};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use slotmap::{DefaultKey, SlotMap};
use tidyheap::frame::{FrameArena, FrameConfig};
use tidyheap::{Budget, Handle, Heap, RawHandle, Store};

const MIB: usize = 1 << 20;

/// Which way a metric improves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// How a value prints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Operations per second.
    PerSec,
    /// Nanoseconds.
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Mebibytes.
    Mib,
    /// GiB per second.
    GibPerSec,
    /// A plain ratio.
    Ratio,
    /// A fragmentation share, compared by difference.
    Frag,
}

/// One table row.
struct Row {
    peer: String,
    workload: String,
    metric: String,
    tidy: f64,
    other: f64,
    better: Better,
    unit: Unit,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::PerSec => {
            if v >= 1e9 {
                format!("{:.2} G/s", v / 1e9)
            } else if v >= 1e6 {
                format!("{:.2} M/s", v / 1e6)
            } else if v >= 1e3 {
                format!("{:.2} k/s", v / 1e3)
            } else {
                format!("{v:.1} /s")
            }
        }
        Unit::Ns => format!("{v:.2} ns"),
        Unit::Us => format!("{v:.1} µs"),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::Mib => format!("{v:.1} MiB"),
        Unit::GibPerSec => format!("{v:.2} GiB/s"),
        Unit::Ratio => format!("{v:.3}"),
        Unit::Frag => format!("{v:.3}"),
    }
}

fn verdict(r: &Row) -> String {
    let worse_by = |d: f64| match r.better {
        Better::Higher => -d,
        Better::Lower => d,
    };
    let tag = |worse: f64, band: f64| {
        if worse > band {
            "**behind**"
        } else if worse < -band {
            "ahead"
        } else {
            "tie"
        }
    };
    if r.unit == Unit::Frag {
        let tag = tag(worse_by(r.tidy - r.other), 0.02);
        return if r.other.abs() > 0.02 {
            format!("{:.2} {tag}", r.tidy / r.other)
        } else {
            format!("— {tag}")
        };
    }
    let ratio = r.tidy / r.other;
    let worse = match r.better {
        Better::Higher => 1.0 / ratio - 1.0,
        Better::Lower => ratio - 1.0,
    };
    format!("{ratio:.2} {}", tag(worse, 0.05))
}

/// The table being built.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    /// Lines printed after the table (figures without a peer to divide by).
    notes: Vec<String>,
}

impl Table {
    #[allow(clippy::too_many_arguments)] // one call per row reads best flat
    fn add(
        &mut self,
        peer: &str,
        workload: &str,
        metric: &str,
        better: Better,
        unit: Unit,
        tidy: f64,
        other: f64,
    ) {
        let arrow = match better {
            Better::Higher => "↑",
            Better::Lower => "↓",
        };
        self.rows.push(Row {
            peer: peer.to_string(),
            workload: workload.to_string(),
            metric: format!("{metric} {arrow}"),
            tidy,
            other,
            better,
            unit,
        });
    }

    fn print(&self) {
        println!("| peer | workload | metric | tidyheap | peer value | ratio |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.peer,
                r.workload,
                r.metric,
                fmt_value(r.tidy, r.unit),
                fmt_value(r.other, r.unit),
                verdict(r)
            );
        }
        for n in &self.notes {
            println!("{n}");
        }
    }
}

/// Runs every closure `runs` times, alternating, and returns each one's median.
fn interleaved(runs: usize, fs: &mut [&mut dyn FnMut() -> f64]) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(runs); fs.len()];
    for _ in 0..runs {
        for (f, s) in fs.iter_mut().zip(&mut samples) {
            s.push(f());
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

fn ns_per(t: Duration, n: usize) -> f64 {
    t.as_nanos() as f64 / n as f64
}

mod alloc;
mod compaction;
mod workloads;

use alloc::{alloc_rows, frame_rows, handle_rows};
use compaction::{compaction_rows, large_rows};
use workloads::{mbench_rows, workload_rows};

/// A named part of the report.
type Section = (&'static str, fn(&mut Table));

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    // Days since 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    let start = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let argv: Vec<String> = std::env::args().collect();
    println!("**tidyheap benchmark report**");
    println!();
    println!("- date: {} (UTC)", today());
    println!("- cores: {cores}");
    println!(
        "- command: `cargo run --release --example report` (argv: `{}`)",
        argv.join(" ")
    );
    println!(
        "- ratio = tidyheap ÷ peer; ↑ higher is better, ↓ lower is better; **behind** = \
         tidyheap more than 5 % worse (fragmentation: more than 0.02 higher)"
    );
    println!();

    let mut t = Table::default();
    let sections: [Section; 7] = [
        ("alloc", alloc_rows),
        ("handles", handle_rows),
        ("frame", frame_rows),
        ("compaction", compaction_rows),
        ("large", large_rows),
        ("workloads", workload_rows),
        ("mimalloc-bench ports", mbench_rows),
    ];
    for (name, f) in sections {
        let s = Instant::now();
        f(&mut t);
        eprintln!("report: {name} took {:.1?}", s.elapsed());
    }
    t.print();
    println!();
    println!("Total run time: {:.0?}.", start.elapsed());
}
